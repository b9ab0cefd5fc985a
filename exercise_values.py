"""The exercises' reference values that take a formula in our layout: repository only.

The exercise tests in test_hooked_bert.py compare a student's component with HuggingFace's
BERT. Where a value needs a formula of BERT written in our layout (the attention scores from
HuggingFace's q and k, LayerNorm's scale, what each catalogued mistake would make, ...), they
ask for it through `VALUES`, and here is where it is computed. This file is the solution in
another form, so it never goes into a student kit: scripts/make_exercises.py runs the exercises
once here with HB_RECORD_VALUES=<file> (`Recording`), and the kit gets those values
(exercise_values.pt, read by diagnosis.StoredValues), not this file.
"""

import atexit
import itertools
import os
from types import SimpleNamespace

import torch

import diagnosis
import hooked_bert as hb

def hf_heads(ref, layer, module):
    """HF's query/key/value output [batch, pos, n_heads * d_head] -> [.., head_index, d_head]."""
    x = ref.outputs[f"bert.encoder.layer.{layer}.attention.self.{module}"]
    return x.view(*x.shape[:2], ref.cfg.n_heads, ref.cfg.d_head)


def attention_reference(ref, layer):
    """HuggingFace's value at each of our attention hooks (scores masked as ours are)."""
    q, k, v = (hf_heads(ref, layer, module) for module in ("query", "key", "value"))
    scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / ref.cfg.d_head ** 0.5
    scores = scores.masked_fill(ref.key_is_padding[:, None, None, :], torch.finfo(scores.dtype).min)
    context = ref.outputs[f"bert.encoder.layer.{layer}.attention.self"][0]
    z = context.view(*context.shape[:2], ref.cfg.n_heads, ref.cfg.d_head)
    return dict(hook_q=q, hook_k=k, hook_v=v, hook_attn_scores=scores,
                hook_pattern=ref.out.attentions[layer], hook_z=z)


# The catalogues: for each step, (sentence, what that mistake makes from the step's inputs g).
# A sentence may name g's fields ({act_fn!r}) and {means}, what the activation should be.


def layer_norm_like(g, part="out", dim=-1, ddof=0, eps=None, eps_at="inside", centre=True,
                    sqrt=True, affine="wb"):
    """LayerNorm with one thing changed: its scale, normalized or output (part)."""
    x, eps = g.x, g.cfg.eps if eps is None else eps
    centred = x - x.mean(dim, keepdim=True)
    var = (centred if centre is True else x).pow(2).sum(dim, keepdim=True) / (x.shape[dim] - ddof)
    scale = var + eps if not sqrt else (var + eps).sqrt() if eps_at == "inside" else var.sqrt() + eps
    normalized = (centred if centre else x) / scale
    w, b = {"wb": (g.w, g.b), "w": (g.w, 0), "b": (1, g.b), "none": (1, 0), "bw": (g.b, g.w)}[affine]
    return dict(scale=scale, normalized=normalized, out=normalized * w + b)[part]


LAYER_NORM_MISTAKES = [
    ("your scale is sqrt(var) + eps: put eps inside the square root, sqrt(var + eps)",
     dict(eps_at="outside")),
    ("your LayerNorm uses the unbiased variance (divides by n - 1): use the mean of squared "
     "deviations (unbiased=False)", dict(ddof=1)),
    ("your LayerNorm uses eps = 1e-5 (PyTorch's default): use self.eps, BERT's 1e-12", dict(eps=1e-5)),
    ("your LayerNorm has no eps: add self.eps inside the square root", dict(eps=0.0)),
    ("your LayerNorm takes mean and variance over the positions (dim 1): take them over d_model "
     "(dim=-1)", dict(dim=1)),
    ("your LayerNorm divides by var + eps, not by its square root: scale = sqrt(var + eps)"
     " [hook: on the variance (var + eps), before the square root]", dict(sqrt=False)),
    ("your LayerNorm takes the variance of x itself: take the variance of the centred x, "
     "(x - mean) ** 2", dict(centre="numerator")),
    ("your LayerNorm does not subtract the mean (an RMS norm): centre x first, x - mean",
     dict(centre=False)),
    ("your LayerNorm output lacks w and b: return normalized * self.w + self.b", dict(affine="none")),
    ("your LayerNorm output lacks b: return normalized * self.w + self.b", dict(affine="w")),
    ("your LayerNorm output lacks w: return normalized * self.w + self.b", dict(affine="b")),
    ("your LayerNorm output has w and b swapped (normalized * b + w): normalized * self.w + self.b",
     dict(affine="bw")),
]


def scores_like(g, divide_by=None, swap=False, mask="keys"):
    """The attention scores with one thing changed: the scaling, q and k, or the mask."""
    q, k = (g.k, g.q) if swap else (g.q, g.k)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / (divide_by or g.cfg.d_head ** 0.5)
    keys, queries = g.key_is_padding[:, None, None, :], g.key_is_padding[:, None, :, None]
    fill = dict(keys=keys, queries=queries, inverted=~keys, both=keys | queries).get(mask)
    if fill is not None:
        return scores.masked_fill(fill, torch.finfo(scores.dtype).min)
    if mask == "added":
        return scores + (~keys).to(scores.dtype)
    return scores * (~keys).to(scores.dtype) if mask == "multiplied" else scores


SCORES_MISTAKES = [
    ("your scores equal q . k / sqrt(d_model): divide by sqrt(d_head)",
     lambda g: scores_like(g, divide_by=g.cfg.d_model ** 0.5)),
    ("your scores equal q . k / d_head: divide by sqrt(d_head)",
     lambda g: scores_like(g, divide_by=g.cfg.d_head)),
    ("your scores equal q . k with no scaling: divide by sqrt(d_head), before the softmax",
     lambda g: scores_like(g, divide_by=1)),  # (on a hook: called before dividing)
    ("your scores equal q . k * sqrt(d_head): divide by sqrt(d_head), don't multiply",
     lambda g: scores_like(g, divide_by=g.cfg.d_head ** -0.5)),
    ("your scores equal k . q (q and k swapped: keys on dim 2): queries on dim 2, keys on dim 3",
     lambda g: scores_like(g, swap=True)),
    ("your scores mask the padded queries (rows), not the padded keys: mask dim 3, "
     "key_is_padding[:, None, None, :]", lambda g: scores_like(g, mask="queries")),
    ("your scores mask the padded queries as well as the padded keys: mask only the keys",
     lambda g: scores_like(g, mask="both")),
    ("your scores mask the real tokens and keep the padded ones (the mask inverted): fill where "
     "key_is_padding is True", lambda g: scores_like(g, mask="inverted")),
    ("your scores add the 1/0 attention mask: give padded keys torch.finfo(dtype).min "
     "(masked_fill)", lambda g: scores_like(g, mask="added")),
    ("your scores are multiplied by the 1/0 mask (0 at padded keys): padded keys need "
     "torch.finfo(dtype).min (masked_fill)", lambda g: scores_like(g, mask="multiplied")),
    ("your scores are not masked: fill the padded keys (key_is_padding True) with "
     "torch.finfo(dtype).min [hook: before the mask]", lambda g: scores_like(g, mask=None)),
    ("your scores are q . k, neither scaled nor masked: divide by sqrt(d_head), then mask the "
     "padded keys [hook: before dividing by sqrt(d_head) and masking]",
     lambda g: scores_like(g, divide_by=1, mask=None)),
]

PATTERN_MISTAKES = [
    ("your pattern is the softmax over the query dimension (dim=-2): take it over the keys "
     "(dim=-1)", lambda g: g.scores.softmax(-2)),
    ("your pattern is the softmax over the heads (dim=1): take it over the keys (dim=-1)",
     lambda g: g.scores.softmax(1)),
    ("your pattern is the scores, with no softmax: softmax over the keys (dim=-1) [hook: before "
     "the softmax]",
     lambda g: g.scores),
    ("your pattern is the softmax of the unmasked scores, masked afterwards: mask first, then "
     "softmax (rows sum to 1)",
     lambda g: scores_like(g, mask=None).softmax(-1).masked_fill(g.key_is_padding[:, None, None], 0)),
    ("your pattern is exp(scores), not normalised: softmax over the keys (dim=-1)",
     lambda g: g.scores.exp()),
    ("your pattern is log_softmax of the scores: use softmax", lambda g: g.scores.log_softmax(-1)),
    ("your pattern is the softmax of scores / sqrt(d_head): hook_attn_scores is already scaled, "
     "don't divide again", lambda g: (g.scores / g.cfg.d_head ** 0.5).softmax(-1)),
]

Z_MISTAKES = [
    ("your z uses the pattern transposed (queries and keys swapped): z[query] = sum over keys of "
     "pattern[query, key] * v[key]", lambda g: torch.einsum("bhkq,bkhd->bqhd", g.pattern, g.v)),
    ("your z sums over the query positions (it is indexed by keys): sum over key_pos, keep "
     "query_pos", lambda g: g.pattern.sum(2).transpose(1, 2)[..., None] * g.v),
    ("your z is the plain sum of v over the keys, without the pattern: weight each value by the "
     "pattern", lambda g: g.v.sum(1, keepdim=True).expand_as(g.v)),
]


def attention_out_like(g, merge_right=True, b_O_times=1, heads="sum"):
    """Attention's output with one thing changed: how heads merge, b_O, sum or mean."""
    if not merge_right:  # z flattened as [d_head, head_index], W_O's rows as [head_index, d_head]
        z = g.z.transpose(2, 3)
        return z.reshape(*z.shape[:2], -1) @ g.W_O.reshape(-1, g.W_O.shape[-1]) + g.b_O
    per_head = torch.einsum("bphd,hdm->bphm", g.z, g.W_O)  # [batch, pos, head_index, d_model]
    return (per_head.sum(2) if heads == "sum" else per_head.mean(2)) + b_O_times * g.b_O


OUT_MISTAKES = [
    ("your output merges the heads in the wrong order ([d_head, head_index]): flatten z as "
     "[head_index, d_head], the order of W_O's rows", lambda g: attention_out_like(g, merge_right=False)),
    ("your output lacks b_O: add it once, after summing the heads",
     lambda g: attention_out_like(g, b_O_times=0)),
    ("your output adds b_O once per head: add it once, after summing the heads",
     lambda g: attention_out_like(g, b_O_times=g.cfg.n_heads)),
    ("your output averages the heads: sum them", lambda g: attention_out_like(g, heads="mean")),
]


def qkv_mistakes(name):
    """q, k or v made with another projection's weight or bias, or without its bias."""
    wanted, mistakes = name.upper(), []
    for weight, bias in itertools.product("QKV", [*"QKV", None]):
        if (weight, bias) != (wanted, wanted):
            did = f"resid @ W_{weight}" + (f" + b_{bias}" if bias else ", no bias")
            at = f" [hook: before the bias b_{wanted}]" if (weight, bias) == (wanted, None) else ""
            mistakes.append((f"your {name} equals {did}: use W_{wanted} and b_{wanted}{at}",
                             lambda g, w=weight, b=bias: torch.einsum(
                                 "bpm,hmd->bphd", g.resid, getattr(g, f"W_{w}"))
                             + (getattr(g, f"b_{b}") if b else 0)))
    return mistakes
ACT_FORMS = {"the exact erf GELU": torch.nn.functional.gelu, "the tanh GELU": hb.gelu_tanh,
             "ReLU": torch.relu, "SiLU": torch.nn.functional.silu, "sigmoid": torch.sigmoid,
             "tanh": torch.tanh, "the sigmoid GELU x * sigmoid(1.702 x)":
             lambda x: x * torch.sigmoid(1.702 * x)}


def mlp_like(g, act=None, act_at="hidden", b_in=True, b_out=True):
    act = act or hb.ACTIVATIONS[g.act_fn]
    pre = g.x @ g.W_in + (g.b_in if b_in else 0)
    out = (act(pre) if act_at == "hidden" else pre) @ g.W_out + (g.b_out if b_out else 0)
    return act(out) if act_at == "output" else out


CANDIDATES = {
    "activation": [(f"your {{act_fn!r}} equals {form}: {{act_fn!r}} is {{means}}",
                    lambda g, f=f: f(g.x)) for form, f in ACT_FORMS.items()],
    "embed": [("your token embedding is W_E[tokens] * sqrt(d_model) (as in 'Attention is all you "
               "need'): BERT does not scale it", lambda g: g.W_E[g.tokens] * g.cfg.d_model ** 0.5)],
    "pos_embed": [
        ("your positions count from 1: count 0, 1, 2, ... (torch.arange(n_pos))",
         lambda g: g.W_pos[1:g.tokens.shape[1] + 1].expand(*g.tokens.shape, -1)),
        ("your position embedding looks up the token ids: look up the positions 0..n_pos-1",
         lambda g: g.W_pos[g.tokens]),
        ("your positions are all 0: use torch.arange(n_pos)",
         lambda g: g.W_pos[0].expand(*g.tokens.shape, -1))],
    "token_type_embed": [("your token types are all 0 (sentence A): look up token_type_ids",
                          lambda g: g.W_token_type[0].expand(*g.token_type_ids.shape, -1))],
    **{step: [(sentence, lambda g, knobs=knobs, part=part: layer_norm_like(g, part, **knobs))
              for sentence, knobs in LAYER_NORM_MISTAKES]
       for step, part in (("layer_norm", "out"), ("layer_norm_scale", "scale"))},
    "layer_norm_normalized": [
        ("your normalized already has w and b: hook_normalized is (x - mean) / scale, before them"
         " [hook: after w and b]",
         lambda g: (g.x - g.x.mean(-1, keepdim=True)) / g.scale * g.w + g.b),
        ("your normalized does not subtract the mean: (x - mean) / scale",
         lambda g: g.x / g.scale),
        ("your normalized multiplies by the scale: divide, (x - mean) / scale",
         lambda g: (g.x - g.x.mean(-1, keepdim=True)) * g.scale),
        ("your normalized is x - mean, not divided by the scale: (x - mean) / scale [hook: before "
         "dividing by the scale]", lambda g: g.x - g.x.mean(-1, keepdim=True))],
    **{name: qkv_mistakes(name) for name in "qkv"},
    "attention_scores": SCORES_MISTAKES,
    "attention_pattern": PATTERN_MISTAKES,
    "attention_z": Z_MISTAKES,
    "attention_out": OUT_MISTAKES,
    "mlp_pre": [("your pre lacks b_in: x @ W_in + b_in [hook: before the bias b_in]",
                 lambda g: g.x @ g.W_in),
                ("your pre already has the activation: hook_pre is x @ W_in + b_in, before it "
                 "[hook: after the activation]",
                 lambda g: hb.ACTIVATIONS[g.act_fn](g.x @ g.W_in + g.b_in)),
                ("your pre is the MLP's input x: x @ W_in + b_in [hook: on the input x, before W_in]",
                 lambda g: g.x)],
    "mlp_post": [*[(f"your post equals {form} of pre: use self.act_fn (cfg.act_fn is {{act_fn!r}}, "
                    "{means})",
                    lambda g, f=f: f(g.pre)) for form, f in ACT_FORMS.items()],
                 ("your post is pre, unchanged (no activation): act(pre) [hook: before the activation]",
                  lambda g: g.pre)],
    "mlp": [*[(f"your MLP uses {form}: cfg.act_fn is {{act_fn!r}}, {{means}}",
               lambda g, f=f: mlp_like(g, act=f)) for form, f in ACT_FORMS.items()],
            ("your MLP applies the activation to its output, not between the layers: "
             "act(x @ W_in + b_in) @ W_out + b_out", lambda g: mlp_like(g, act_at="output")),
            ("your MLP has no activation: act(x @ W_in + b_in) @ W_out + b_out",
             lambda g: mlp_like(g, act_at=None)),
            ("your MLP lacks b_in: act(x @ W_in + b_in) @ W_out + b_out",
             lambda g: mlp_like(g, b_in=False)),
            ("your MLP lacks b_out: act(x @ W_in + b_in) @ W_out + b_out",
             lambda g: mlp_like(g, b_out=False))],
    "unembed": [("your logits lack b_U, the decoder bias: x @ W_U + b_U [hook: before the "
                 "bias b_U]", lambda g: g.x @ g.W_U),
                ("your logits are probabilities (a softmax): return x @ W_U + b_U, no softmax",
                 lambda g: (g.x @ g.W_U + g.b_U).softmax(-1))],
    "pooler": [
        ("your pooler takes the mean over positions: take the first token, resid[:, 0]",
         lambda g: torch.tanh(g.resid.mean(1) @ g.W + g.b)),
        ("your pooler takes the last token: take the first token, resid[:, 0] ([CLS])",
         lambda g: torch.tanh(g.resid[:, -1] @ g.W + g.b)),
        ("your pooler uses W transposed (resid[:, 0] @ W.T): W is [d_model_in, d_model] as it "
         "is, tanh(resid[:, 0] @ W + b)", lambda g: torch.tanh(g.resid[:, 0] @ g.W.T + g.b)),
        ("your pooler has no tanh: tanh(resid[:, 0] @ W + b) [hook: before the tanh]",
         lambda g: g.resid[:, 0] @ g.W + g.b),
        ("your pooler adds b after the tanh: tanh(resid[:, 0] @ W + b)",
         lambda g: torch.tanh(g.resid[:, 0] @ g.W) + g.b)],
    "nsp_head": [("your NSP logits lack b: pooled @ W + b [hook: before the bias b]",
                 lambda g: g.pooled @ g.W),
                 ("your NSP logits are probabilities (a softmax): return pooled @ W + b, no softmax",
                  lambda g: (g.pooled @ g.W + g.b).softmax(-1)),
                 ("your NSP logits go through a tanh: pooled @ W + b, nothing after",
                  lambda g: torch.tanh(g.pooled @ g.W + g.b))],
}


ACT_MEANS = {"gelu": "the exact erf GELU, F.gelu(x)", "relu": "F.relu(x)",
             "gelu_new": "the tanh approximation, F.gelu(x, approximate='tanh')",
             "gelu_pytorch_tanh": "the tanh approximation, F.gelu(x, approximate='tanh')",
             "silu": "F.silu(x) = x * sigmoid(x)", "swish": "F.silu(x) = x * sigmoid(x)"}


# The values the exercise tests ask for by name (VALUES.get("layer_norm_scale", ref, x)).


def attention_result(ref, layer):
    """Each head's output, z @ W_O head by head: [batch, pos, head_index, d_model]."""
    z = attention_reference(ref, layer)["hook_z"]
    dense = ref.layer(layer).attention.output.dense  # weight [d_model, n_heads * d_head]
    W_O = dense.weight.T.reshape(ref.cfg.n_heads, ref.cfg.d_head, ref.cfg.d_model)
    return torch.einsum("bphd,hdm->bphm", z, W_O)


def layer_norm_scale(ref, x):
    return (x.var(-1, unbiased=False, keepdim=True) + ref.cfg.eps).sqrt()


def layer_norm_normalized(ref, x):
    return (x - x.mean(-1, keepdim=True)) / layer_norm_scale(ref, x)


@torch.no_grad()
def embeddings_of_sentence_a(ref):
    """BertEmbed with token_type_ids=None: HuggingFace's embeddings of type 0 (sentence A),
    their sum with the token and position embeddings, and the LayerNorm of that sum."""
    embeddings = ref.hf.bert.embeddings
    types_a = embeddings.token_type_embeddings(torch.zeros_like(ref.tokens))
    summed = (ref.outputs["bert.embeddings.word_embeddings"] + types_a
              + ref.outputs["bert.embeddings.position_embeddings"])
    return dict(types_a=types_a, summed=summed, out=embeddings.LayerNorm(summed))


def mlm_head_values(ref, resid):
    """What the MLM head's LayerNorm may get, for its wiring check."""
    dense = ref.hf.cls.predictions.transform.dense
    pre = resid @ dense.weight.T + dense.bias
    diagonal = resid * dense.weight.diagonal() + dense.bias  # (one name twice in an einsum)
    act = hb.ACTIVATIONS[ref.cfg.act_fn]
    return {"(resid @ W + b)": pre, "act(resid @ W + b)": act(pre),
            "act(resid * the diagonal of W + b)": act(diagonal),
            "act(resid @ W.T + b)": act(resid @ dense.weight + dense.bias)}


def catalogue(step, g):
    """[(sentence, value)]: what each catalogued mistake of `step` makes from its inputs g."""
    found = []
    for sentence, mistake in CANDIDATES.get(step, ()):
        try:
            made = mistake(g)
            said = sentence.format(**vars(g), means=ACT_MEANS.get(getattr(g, "act_fn", None), ""))
        except Exception:  # noqa: BLE001 (a mistake these inputs cannot make)
            continue
        found.append((said, made))
    return found


class Live:
    """The values, computed now (the repository's test runs), for the references of seed
    HB_REFERENCE_SEED (default 0)."""

    seed = int(os.environ.get("HB_REFERENCE_SEED", "0"))

    def get(self, name, *args):
        return globals()[name](*args)

    def check_inputs(self, step, given):
        def inputs():
            g = given() if callable(given) else dict(given or {})
            return g, catalogue(step, SimpleNamespace(**g))

        return inputs


class Recording(Live):
    """Live values, each also kept under the test that asked for it, written to `path` when the
    run ends: what a student kit's tests will ask for, in the same order."""

    def __init__(self, path):
        self.path, self.key, self.quiet = path, diagnosis.Keys(), False
        self.values = {"seed": self.seed}
        atexit.register(self.save)

    def get(self, name, *args):
        value = super().get(name, *args)
        if not self.quiet:  # (inside a check's inputs, the check's own entry keeps them)
            self.values[self.key(name)] = value
        return value

    def check_inputs(self, step, given):
        key, self.quiet = self.key("check"), True
        try:
            g, candidates = super().check_inputs(step, given)()
        finally:
            self.quiet = False
        self.values[key] = (g, [(sentence, diagnosis.Fingerprint(made)) for sentence, made in candidates
                                if isinstance(made, torch.Tensor)])
        return lambda: (g, candidates)

    def save(self):
        torch.save(shared(self.values, {}), self.path)


def shared(value, seen):
    """`value` with equal tensors made one (the same weights and inputs reach many checks), so
    that the file stores each once."""
    if isinstance(value, torch.Tensor):
        key = (value.dtype, tuple(value.shape), value.detach().contiguous().cpu().numpy().tobytes())
        return seen.setdefault(key, value.detach().clone())  # (a view would store its whole base)
    if isinstance(value, dict):
        return {name: shared(item, seen) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(shared(item, seen) for item in value)
    if isinstance(value, diagnosis.Fingerprint):
        value.index, value.values = shared(value.index, seen), shared(value.values, seen)
    return value
