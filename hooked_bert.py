"""hooked_bert.py: BERT written out in one file, with a hook on every interesting activation.

This file is meant to be read top to bottom. It contains:

1. `HookPoint`, an identity module that you can hang hook functions on,
2. `Config`, the handful of numbers that define a BERT,
3. every component in the order data flows through them: embeddings, LayerNorm, attention,
   MLP, the post-LayerNorm block, then the heads (masked-LM head and unembedding, pooler,
   next-sentence head),
4. `HookedEncoder`, the model, with `run_with_hooks`, `run_with_cache` and `ActivationCache`,
5. a loader for HuggingFace BERT weights and `from_pretrained`,
6. a small demo: `python hooked_bert.py [model name or folder] [text]`.

Hook names, shapes and weight layout follow TransformerLens's `HookedEncoder`, so code written
for it works here with a changed import. The numbers agree with HuggingFace's `BertForMaskedLM`
(test_hooked_bert.py checks this component by component; tutorial.md walks through it).

Left out on purpose: fused or flash attention kernels, relative position embeddings, the
decoder / cross-attention variants of BERT, and any weight processing (LayerNorm folding etc.).
Only torch is needed to import this file; `transformers` is imported inside the functions that
load HuggingFace weights or tokenize.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------
# 1. HookPoint
# ---------------------------------------------------------------------------------------------


class HookPoint(nn.Module):
    """An identity module. It returns its input unchanged unless hook functions hang on it.

    A forward hook `fn(activation, hook)` sees the activation as it passes. It may return a
    tensor of the same shape to replace the activation, or None to leave it alone.
    A backward hook `fn(grad, hook)` sees the gradient of the loss with respect to the
    activation, and may likewise return a replacement gradient.
    """

    def __init__(self):
        super().__init__()
        self.name: Optional[str] = None  # filled in by HookedEncoder, e.g. "blocks.0.attn.hook_z"
        self.fwd_hooks: list[Callable] = []
        self.bwd_hooks: list[Callable] = []
        self.ctx: dict = {}  # scratch space a hook function may use to keep state

    def add_hook(self, fn: Callable, dir: str = "fwd") -> None:
        if not callable(fn):
            raise TypeError(f"a hook must be a function fn(tensor, hook), got {type(fn).__name__}")
        if dir == "fwd":
            self.fwd_hooks.append(fn)
        elif dir == "bwd":
            self.bwd_hooks.append(fn)
        else:
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")

    def remove_hook(self, fn: Callable, dir: str) -> None:
        hooks = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        if fn in hooks:
            hooks.remove(fn)

    def remove_hooks(self, dir: str = "both") -> None:
        if dir in ("fwd", "both"):
            self.fwd_hooks.clear()
        if dir in ("bwd", "both"):
            self.bwd_hooks.clear()
        self.ctx.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fwd_hooks:
            replacement = fn(x, hook=self)
            if replacement is not None:
                x = self._check_replacement(replacement, x, "forward hook", "activation")
        if self.bwd_hooks and not torch.is_grad_enabled():
            raise RuntimeError(f"{self.name} has a backward hook (bwd_hooks or incl_bwd=True), but gradients are "
                               "disabled here (torch.no_grad() or torch.inference_mode()), so it could never run")
        if self.bwd_hooks and x.requires_grad:
            for fn in self.bwd_hooks:
                x.register_hook(self._tensor_hook_for(fn))
        return x

    def _tensor_hook_for(self, fn: Callable) -> Callable:
        """Wrap a backward hook so that autograd can call it with the gradient of `x`."""

        def on_grad(grad):
            if fn not in self.bwd_hooks:  # removed after the forward pass: stay silent
                return None
            replacement = fn(grad, hook=self)
            if replacement is None:
                return None
            return self._check_replacement(replacement, grad, "backward hook", "gradient")

        return on_grad

    def _check_replacement(self, new, old: torch.Tensor, kind: str, what: str) -> torch.Tensor:
        if not isinstance(new, torch.Tensor) or new.shape != old.shape:
            got = f"shape {tuple(new.shape)}" if isinstance(new, torch.Tensor) else type(new).__name__
            raise ValueError(
                f"{kind} on {self.name} returned {got}; it must return None or a tensor of the "
                f"{what}'s shape {tuple(old.shape)}"
            )
        return new.to(old.device, old.dtype)  # e.g. a float64 edit in a float32 model


# ---------------------------------------------------------------------------------------------
# 2. Config
# ---------------------------------------------------------------------------------------------

def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (GPT-2's); HuggingFace calls it "gelu_new"."""
    return F.gelu(x, approximate="tanh")


# The activations BERT checkpoints use, by their HuggingFace `hidden_act` names.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact GELU, x * Phi(x) with the erf: what original BERT uses
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass
class Config:
    """The numbers that define a BERT. Field names follow TransformerLens."""

    d_vocab: int  # number of tokens in the vocabulary
    n_ctx: int  # number of position embeddings: the longest input the model can read
    d_model: int  # width of the residual stream
    n_heads: int
    d_head: int  # BERT checkpoints have d_model == n_heads * d_head, but nothing here needs it
    d_mlp: int  # width of the MLP's hidden layer (4 * d_model in BERT)
    n_layers: int
    n_token_types: int = 2  # segment embeddings: sentence A / sentence B
    eps: float = 1e-12  # BERT's LayerNorm epsilon, far smaller than PyTorch's default 1e-5
    act_fn: str = "gelu"  # a key of ACTIVATIONS; used in the MLP and in the masked-LM head
    hidden_dropout: float = 0.1  # on embeddings, attention output and MLP output (train() only)
    attention_dropout: float = 0.1  # on the attention pattern (train() only)
    use_attn_result: bool = False  # also compute hook_result: each head's output, [.., d_model]
    initializer_range: float = 0.02  # std of the normal init of weight matrices and embeddings
    pad_token_id: Optional[int] = None  # this row of W_E gets no gradient (as in HuggingFace)

    def __post_init__(self):
        for name in ("d_vocab", "n_ctx", "d_model", "n_heads", "d_head", "d_mlp", "n_layers",
                     "n_token_types"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Config.{name} must be a positive int, got {value!r}")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"Config.act_fn must be one of {sorted(ACTIVATIONS)}, got {self.act_fn!r}")
        if not self.eps > 0:
            raise ValueError(f"Config.eps must be > 0, got {self.eps!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.d_vocab:
            raise ValueError(f"Config.pad_token_id must be None or in [0, {self.d_vocab}), got {self.pad_token_id!r}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"Config.{name} must be in [0, 1), got {getattr(self, name)!r}")

    @classmethod
    def from_hf(cls, hf_config) -> "Config":
        """The Config of a `transformers.BertConfig`. Refuses what this file cannot reproduce."""
        model_type = getattr(hf_config, "model_type", None)
        if model_type != "bert":
            raise ValueError(f"not a BERT config: model_type is {model_type!r}, expected 'bert'")
        position_type = getattr(hf_config, "position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"position_embedding_type={position_type!r} is not supported: hooked_bert only "
                "implements BERT's absolute position embeddings"
            )
        if getattr(hf_config, "is_decoder", False) or getattr(hf_config, "add_cross_attention", False):
            raise ValueError("decoder BERTs (is_decoder / add_cross_attention) are not supported")
        if hf_config.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={hf_config.hidden_act!r} is not supported; supported: {sorted(ACTIVATIONS)}"
            )
        if hf_config.hidden_size % hf_config.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {hf_config.hidden_size} is not a multiple of "
                f"num_attention_heads {hf_config.num_attention_heads}"
            )
        return cls(
            d_vocab=hf_config.vocab_size,
            n_ctx=hf_config.max_position_embeddings,
            d_model=hf_config.hidden_size,
            n_heads=hf_config.num_attention_heads,
            d_head=hf_config.hidden_size // hf_config.num_attention_heads,
            d_mlp=hf_config.intermediate_size,
            n_layers=hf_config.num_hidden_layers,
            n_token_types=hf_config.type_vocab_size,
            eps=hf_config.layer_norm_eps,
            act_fn=hf_config.hidden_act,
            hidden_dropout=hf_config.hidden_dropout_prob,
            attention_dropout=hf_config.attention_probs_dropout_prob,
            initializer_range=hf_config.initializer_range,
            pad_token_id=hf_config.pad_token_id,
        )


# ---------------------------------------------------------------------------------------------
# 3. Components, in the order data flows through them
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _einsum_letters(spec: str) -> str:
    """Translate named dimensions to the single letters torch.einsum wants:
    "batch pos d_model, d_model d_mlp -> batch pos d_mlp" becomes "abc,cd->abd"."""
    letters: dict[str, str] = {}  # dimension name -> letter, a, b, c, ... in order of first use

    def translate(part: str) -> str:
        return "".join(letters.setdefault(name, chr(ord("a") + len(letters))) for name in part.split())
    inputs, output = spec.split("->")
    return ",".join(translate(part) for part in inputs.split(",")) + "->" + translate(output)


def einsum(spec: str, *tensors: torch.Tensor) -> torch.Tensor:
    """torch.einsum with whole words as dimension names, so the shapes read as they are."""
    return torch.einsum(_einsum_letters(spec), *tensors)


class Embed(nn.Module):
    """Token embedding: row `token` of W_E."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.pad_token_id = cfg.pad_token_id
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # W_E[tokens], except that training never changes the padding token's row.
        return F.embedding(tokens, self.W_E, padding_idx=self.pad_token_id)  # [batch, pos, d_model]


class PosEmbed(nn.Module):
    """Learned position embedding: row `pos` of W_pos, for positions 0, 1, 2, ..."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, n_pos = tokens.shape
        positions = torch.arange(n_pos, device=tokens.device).expand(batch, n_pos)  # [batch, pos]
        # Indexing makes a new tensor, so a hook that edits it in place cannot change W_pos.
        return self.W_pos[positions]  # [batch, pos, d_model]


class TokenTypeEmbed(nn.Module):
    """Segment embedding: row `token_type` of W_token_type (0 for sentence A, 1 for B)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.W_token_type = nn.Parameter(torch.empty(cfg.n_token_types, cfg.d_model))

    def forward(self, token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.W_token_type[token_type_ids]  # [batch, pos, d_model]


class LayerNorm(nn.Module):
    """LayerNorm over d_model: centre, divide by the standard deviation, then scale and shift.

    eps sits inside the square root, as in PyTorch and HuggingFace. hook_scale is the standard
    deviation [batch, pos, 1]; hook_normalized is (x - mean) / scale, before w and b (as in
    TransformerLens). float16 overflows above 65504, so x.pow(2) does for |x| > 256: for half
    precision the statistics are taken in float32 (and the hooks see float32).
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = x - x.mean(-1, keepdim=True)  # [batch, pos, d_model]
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normalized = self.hook_normalized(x / scale)
        return (normalized * self.w + self.b).to(dtype)  # [batch, pos, d_model]


class BertEmbed(nn.Module):
    """Token + position + token-type embeddings, then LayerNorm (and dropout in training)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.token_type_embed = TokenTypeEmbed(cfg)
        self.ln = LayerNorm(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_token_type_embed = HookPoint()  # [batch, pos, d_model]

    def forward(self, tokens: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(tokens)  # everything is sentence A
        embed = self.hook_embed(self.embed(tokens))
        pos_embed = self.hook_pos_embed(self.pos_embed(tokens))
        token_type_embed = self.hook_token_type_embed(self.token_type_embed(token_type_ids))
        return self.dropout(self.ln(embed + pos_embed + token_type_embed))  # [batch, pos, d_model]


class Attention(nn.Module):
    """Bidirectional multi-head self-attention. Every position may look at every unpadded one.

    Each head reads the residual stream through its own W_Q, W_K, W_V [head_index, d_model,
    d_head] and writes back through its own W_O [head_index, d_head, d_model]; the heads'
    outputs are summed.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.W_Q = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_model, cfg.d_head))
        self.W_K = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_model, cfg.d_head))
        self.W_V = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_model, cfg.d_head))
        self.W_O = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_head, cfg.d_model))
        self.b_Q = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head))
        self.b_K = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head))
        self.b_V = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head))
        self.b_O = nn.Parameter(torch.zeros(cfg.d_model))
        self.dropout = nn.Dropout(cfg.attention_dropout)
        self.hook_q = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_k = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_v = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head_index, d_model], if cfg.use_attn_result

    def forward(self, resid: torch.Tensor, key_is_padding: Optional[torch.Tensor]) -> torch.Tensor:
        """resid [batch, pos, d_model]; key_is_padding [batch, key_pos], True at padded tokens."""
        # Queries, keys and values: the same projection, each with its own weights.
        project = "batch pos d_model, head_index d_model d_head -> batch pos head_index d_head"
        q = self.hook_q(einsum(project, resid, self.W_Q) + self.b_Q)
        k = self.hook_k(einsum(project, resid, self.W_K) + self.b_K)
        v = self.hook_v(einsum(project, resid, self.W_V) + self.b_V)

        # How much each query position wants to read from each key position:
        # attn_scores [batch, head_index, query_pos, key_pos].
        attn_scores = einsum(
            "batch query_pos head_index d_head, batch key_pos head_index d_head -> batch head_index query_pos key_pos",
            q, k,
        ) / math.sqrt(self.cfg.d_head)
        if key_is_padding is not None:
            # Padded keys get the most negative number, so softmax gives them zero weight. Not
            # -inf: a row whose keys are all padding then gets a uniform pattern, never NaN.
            padding = key_is_padding[:, None, None, :]  # [batch, 1, 1, key_pos]
            attn_scores = attn_scores.masked_fill(padding, torch.finfo(attn_scores.dtype).min)
        attn_scores = self.hook_attn_scores(attn_scores)
        pattern = self.hook_pattern(attn_scores.softmax(dim=-1))  # each row sums to 1 over keys
        pattern = self.dropout(pattern)

        # Each query position takes the pattern-weighted average of the values.
        z = self.hook_z(einsum(
            "batch key_pos head_index d_head, batch head_index query_pos key_pos -> batch query_pos head_index d_head",
            v, pattern,
        ))
        # Each head writes back through its own W_O, and the heads' outputs are summed.
        if self.cfg.use_attn_result:
            # The same, with each head's output kept apart first (n_heads times the memory).
            result = self.hook_result(einsum(
                "batch pos head_index d_head, head_index d_head d_model -> batch pos head_index d_model", z, self.W_O
            ))
            return result.sum(dim=2) + self.b_O  # [batch, pos, d_model]
        attn_out = einsum("batch pos head_index d_head, head_index d_head d_model -> batch pos d_model", z, self.W_O)
        return attn_out + self.b_O  # [batch, pos, d_model]


class MLP(nn.Module):
    """Two-layer MLP applied at each position on its own: d_model -> d_mlp -> d_model."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.act_fn = ACTIVATIONS[cfg.act_fn]
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(einsum("batch pos d_model, d_model d_mlp -> batch pos d_mlp", x, self.W_in) + self.b_in)
        post = self.hook_post(self.act_fn(pre))
        return einsum("batch pos d_mlp, d_mlp d_model -> batch pos d_model", post, self.W_out) + self.b_out


class BertBlock(nn.Module):
    """One BERT layer. Post-LN: add the sublayer's output to the residual, *then* LayerNorm.

    (GPT-2 and most later models are pre-LN: they normalise a sublayer's input instead.)
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.attn = Attention(cfg)
        self.ln1 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.ln2 = LayerNorm(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]
        self.hook_normalized_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid_pre: torch.Tensor, key_is_padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.dropout(self.attn(resid_pre, key_is_padding)))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        normalized_resid_mid = self.ln1(resid_mid)
        mlp_out = self.hook_mlp_out(self.dropout(self.mlp(normalized_resid_mid)))
        resid_post = self.hook_resid_post(normalized_resid_mid + mlp_out)
        return self.hook_normalized_resid_post(self.ln2(resid_post))  # [batch, pos, d_model]


class BertMLMHead(nn.Module):
    """The first half of masked-LM prediction: dense layer, activation, LayerNorm."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.act_fn = ACTIVATIONS[cfg.act_fn]
        self.W = nn.Parameter(torch.empty(cfg.d_model, cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.ln = LayerNorm(cfg)

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        x = einsum("batch pos d_model_in, d_model_in d_model -> batch pos d_model", resid, self.W) + self.b
        return self.ln(self.act_fn(x))  # [batch, pos, d_model]


class Unembed(nn.Module):
    """The second half: map each position to a logit per vocabulary token.

    HuggingFace ties W_U to W_E (W_U = W_E.T) in BERT checkpoints; here W_U is its own copy,
    as in TransformerLens. The bias b_U is the MLM decoder's bias.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_vocab]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_in(x)
        logits = einsum("batch pos d_model, d_model d_vocab -> batch pos d_vocab", x, self.W_U)
        logits += self.b_U  # in place: the logits are by far the largest tensor, so don't copy them
        return self.hook_out(logits)


class BertPooler(nn.Module):
    """A sentence vector: the final hidden state of the first token ([CLS]), dense, tanh."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.W = nn.Parameter(torch.empty(cfg.d_model, cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pooler_out = HookPoint()  # [batch, d_model]

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        first_token = resid[:, 0]  # [batch, d_model]
        pooled = einsum("batch d_model_in, d_model_in d_model -> batch d_model", first_token, self.W) + self.b
        return self.hook_pooler_out(torch.tanh(pooled))


class BertNSPHead(nn.Module):
    """Next-sentence prediction from the pooled vector: logit 0 "B follows A", logit 1 "random B"."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.W = nn.Parameter(torch.empty(cfg.d_model, 2))
        self.b = nn.Parameter(torch.zeros(2))
        self.hook_nsp_out = HookPoint()  # [batch, 2]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.hook_nsp_out(einsum("batch d_model, d_model is_random -> batch is_random", pooled, self.W) + self.b)


# ---------------------------------------------------------------------------------------------
# 4. The model, its hooks and its cache
# ---------------------------------------------------------------------------------------------

_ATTN_HOOKS = {"q", "k", "v", "attn_scores", "pattern", "z", "result"}
_MLP_HOOKS = {"pre", "post"}
_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "query": "q", "key": "k", "value": "v",
            "mlp_pre": "pre", "mlp_post": "post"}


def get_act_name(name: str, layer: Optional[int] = None, layer_type: Optional[str] = None) -> str:
    """TransformerLens's shorthand for hook names: ("pattern", 0) -> "blocks.0.attn.hook_pattern",
    ("scale", 0, "ln1") -> "blocks.0.ln1.hook_scale", ("full_embed",) -> "hook_full_embed"."""
    if "." in name or name.startswith("hook_"):
        return name  # already a full name
    name = _ALIASES.get(name, name)
    if layer is None:
        return f"hook_{name}"
    if layer_type is None:
        layer_type = "attn" if name in _ATTN_HOOKS else "mlp" if name in _MLP_HOOKS else None
    sublayer = f"{layer_type}." if layer_type else ""
    return f"blocks.{layer}.{sublayer}hook_{name}"


def _unknown_name_error(name: str, known, where: str = "model.hook_dict") -> KeyError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return KeyError(f"no hook named {name!r} in {where}{hint}")


class ActivationCache:
    """The activations run_with_cache saved, by full hook name.

    Also takes TransformerLens's shorthand: cache["pattern", 0], cache["resid_pre", -1],
    cache["scale", 0, "ln1"]. With incl_bwd=True, gradients are under the name + "_grad".
    """

    def __init__(self, cache_dict: dict[str, torch.Tensor], n_layers: int, has_batch_dim: bool = True):
        self.cache_dict = cache_dict
        self.n_layers = n_layers
        self.has_batch_dim = has_batch_dim

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, tuple):
            name, layer, *layer_type = key
            if layer is not None and layer < 0:
                layer += self.n_layers
            key = get_act_name(name, layer, *layer_type)
        elif key not in self.cache_dict:
            key = get_act_name(key)
        if key not in self.cache_dict:
            raise _unknown_name_error(key, self.cache_dict, "this cache (run_with_cache's names_filter chose what to save)")
        return self.cache_dict[key]

    def __contains__(self, name: str) -> bool:
        return name in self.cache_dict

    def __iter__(self):
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def items(self):
        return self.cache_dict.items()

    def stack_activation(self, name: str, sublayer_type: Optional[str] = None) -> torch.Tensor:
        """One activation from every layer, stacked: [n_layers, *activation shape]."""
        return torch.stack([self[name, layer, sublayer_type] for layer in range(self.n_layers)])

    def __repr__(self) -> str:
        return f"ActivationCache with {len(self)} activations: {list(self.cache_dict)[:4]}..."


RETURN_TYPES = ("logits", "predictions", "pooled", "nsp_logits", "loss", None)


class HookedEncoder(nn.Module):
    """BERT: embeddings, n_layers post-LN blocks, and the heads, with hooks everywhere.

    model(input, return_type=...) where input is a string, a list of strings or a
    (sentence A, sentence B) pair (all need a tokenizer), or token ids [batch, pos].
    """

    def __init__(self, cfg: Config, tokenizer=None):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = Config(**cfg)
        if not isinstance(cfg, Config):
            raise TypeError(f"HookedEncoder needs a Config (or a dict of its fields), got {type(cfg).__name__}; "
                            "to load a pretrained model, use HookedEncoder.from_pretrained(name_or_folder)")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = BertEmbed(cfg)
        self.hook_full_embed = HookPoint()  # [batch, pos, d_model], after the embedding LayerNorm
        self.blocks = nn.ModuleList([BertBlock(cfg) for _ in range(cfg.n_layers)])
        self.mlm_head = BertMLMHead(cfg)
        self.unembed = Unembed(cfg)
        self.pooler = BertPooler(cfg)
        self.nsp_head = BertNSPHead(cfg)
        # Heads whose weights the loaded checkpoint did not have: asking for them is an error.
        self.missing_heads: set[str] = set()

        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module
        self.init_weights()

    def init_weights(self):
        """BERT's initialisation: weights and embeddings ~ N(0, 0.02), biases 0, LayerNorm 1 and 0."""
        for module in self.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, LayerNorm) and name == "w":
                    nn.init.ones_(param)
                elif name.startswith("W"):
                    nn.init.normal_(param, std=self.cfg.initializer_range)
                else:
                    nn.init.zeros_(param)

    # -- Weights, stacked over layers, in TransformerLens's layout ---------------------------

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.embed.W_E  # [d_vocab, d_model]

    @property
    def W_pos(self) -> torch.Tensor:
        return self.embed.pos_embed.W_pos  # [n_ctx, d_model]

    @property
    def W_E_pos(self) -> torch.Tensor:
        """W_E and W_pos stacked, [d_vocab + n_ctx, d_model]: every input direction at once."""
        return torch.cat([self.W_E, self.W_pos])

    @property
    def W_U(self) -> torch.Tensor:
        return self.unembed.W_U  # [d_model, d_vocab]

    @property
    def b_U(self) -> torch.Tensor:
        return self.unembed.b_U  # [d_vocab]

    def _stack(self, sublayer: str, weight: str) -> torch.Tensor:
        """One weight of every block, stacked: [n_layers, ...]; e.g. _stack("attn", "W_Q")."""
        return torch.stack([getattr(getattr(block, sublayer), weight) for block in self.blocks])

    # Each of these is computed when read: model.W_Q[layer, head] is head `head`'s W_Q.
    W_Q = property(lambda self: self._stack("attn", "W_Q"))  # [n_layers, n_heads, d_model, d_head]
    W_K = property(lambda self: self._stack("attn", "W_K"))  # [n_layers, n_heads, d_model, d_head]
    W_V = property(lambda self: self._stack("attn", "W_V"))  # [n_layers, n_heads, d_model, d_head]
    W_O = property(lambda self: self._stack("attn", "W_O"))  # [n_layers, n_heads, d_head, d_model]
    b_Q = property(lambda self: self._stack("attn", "b_Q"))  # [n_layers, n_heads, d_head]
    b_K = property(lambda self: self._stack("attn", "b_K"))  # [n_layers, n_heads, d_head]
    b_V = property(lambda self: self._stack("attn", "b_V"))  # [n_layers, n_heads, d_head]
    b_O = property(lambda self: self._stack("attn", "b_O"))  # [n_layers, d_model]
    W_in = property(lambda self: self._stack("mlp", "W_in"))  # [n_layers, d_model, d_mlp]
    W_out = property(lambda self: self._stack("mlp", "W_out"))  # [n_layers, d_mlp, d_model]
    b_in = property(lambda self: self._stack("mlp", "b_in"))  # [n_layers, d_mlp]
    b_out = property(lambda self: self._stack("mlp", "b_out"))  # [n_layers, d_model]

    def all_head_labels(self) -> list[str]:
        return [f"L{layer}H{head}" for layer in range(self.cfg.n_layers) for head in range(self.cfg.n_heads)]

    # -- Inputs --------------------------------------------------------------------------------

    def to_tokens(self, input, move_to_device: bool = True, truncate: bool = True):
        """Tokenize a string, a list of strings, a (sentence A, sentence B) pair or a list of
        pairs. Returns (tokens, token_type_ids, attention_mask), each [batch, pos]."""
        if self.tokenizer is None:
            raise ValueError(
                "text input needs a tokenizer: pass tokenizer= to HookedEncoder (or use "
                "HookedEncoder.from_pretrained), or pass token ids [batch, pos] instead"
            )
        is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and all(isinstance(s, str) for s in x)
        if isinstance(input, str):
            first, second = [input], None
        elif is_pair(input):
            first, second = [input[0]], [input[1]]
        elif isinstance(input, list) and input and all(isinstance(s, str) for s in input):
            first, second = input, None
        elif isinstance(input, list) and input and all(is_pair(p) for p in input):
            first, second = [a for a, _ in input], [b for _, b in input]
        else:
            raise TypeError(
                "input must be a string, a non-empty list of strings, a (sentence A, sentence B) "
                f"pair, a list of such pairs, or token ids [batch, pos]; got {type(input).__name__}"
            )
        encoding = self.tokenizer(first, second, return_tensors="pt", padding=True,
                                  truncation=truncate, max_length=self.cfg.n_ctx if truncate else None)
        tokens = encoding["input_ids"]
        token_type_ids = encoding.get("token_type_ids", torch.zeros_like(tokens))
        attention_mask = encoding.get("attention_mask", torch.ones_like(tokens))
        if move_to_device:
            device = self.W_E.device
            tokens, token_type_ids, attention_mask = (t.to(device) for t in (tokens, token_type_ids, attention_mask))
        return tokens, token_type_ids, attention_mask

    def _check_ids(self, name: str, ids, shape, high: int) -> torch.Tensor:
        """ids must be an integer tensor of the given shape with values in [0, high)."""
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer ids, got dtype {ids.dtype} (use .long())")
        if shape is not None and ids.shape != shape:
            raise ValueError(f"{name} must have the tokens' shape {tuple(shape)}, got {tuple(ids.shape)}")
        low_seen, high_seen = int(ids.min()), int(ids.max())
        if low_seen < 0 or high_seen >= high:
            raise ValueError(f"{name} must lie in [0, {high}), got values from {low_seen} to {high_seen}")
        return ids.to(self.W_E.device, torch.long)

    def _check_inputs(self, tokens, token_type_ids, one_zero_attention_mask):
        """Validate the three [batch, pos] inputs. Returns tokens, token_type_ids and
        key_is_padding (True where the mask is 0, or None when there is no mask)."""
        if isinstance(tokens, torch.Tensor) and tokens.ndim != 2:
            raise ValueError(
                f"tokens must be 2-D [batch, pos], got shape {tuple(tokens.shape)}"
                + (" (for one sequence use tokens[None])" if tokens.ndim == 1 else "")
            )
        if isinstance(tokens, torch.Tensor) and tokens.numel() == 0:
            raise ValueError(f"tokens is empty: shape {tuple(tokens.shape)}")
        tokens = self._check_ids("tokens", tokens, None, self.cfg.d_vocab)
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"the input has {tokens.shape[1]} positions but the model has only n_ctx="
                f"{self.cfg.n_ctx} position embeddings; shorten the input (to_tokens truncates)"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(tokens)
        token_type_ids = self._check_ids("token_type_ids", token_type_ids, tokens.shape, self.cfg.n_token_types)
        if one_zero_attention_mask is None:
            return tokens, token_type_ids, None
        mask = one_zero_attention_mask
        if not isinstance(mask, torch.Tensor) or mask.shape != tokens.shape:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"one_zero_attention_mask must be a tensor of the tokens' shape {tuple(tokens.shape)}, got {got}")
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("one_zero_attention_mask must hold only 1 (attend) and 0 (padding)")
        return tokens, token_type_ids, (mask == 0).to(self.W_E.device)

    # -- Forward -------------------------------------------------------------------------------

    def encoder_output(self, tokens, token_type_ids=None, one_zero_attention_mask=None) -> torch.Tensor:
        """The final hidden state [batch, pos, d_model] (HuggingFace's last_hidden_state)."""
        tokens, token_type_ids, key_is_padding = self._check_inputs(tokens, token_type_ids, one_zero_attention_mask)
        resid = self.hook_full_embed(self.embed(tokens, token_type_ids))  # [batch, pos, d_model]
        for block in self.blocks:
            resid = block(resid, key_is_padding)
        return resid

    def forward(self, input, return_type: Optional[str] = "logits", token_type_ids=None,
                one_zero_attention_mask=None, labels=None):
        """Run BERT. return_type picks the output:
        "logits"      masked-LM logits [batch, pos, d_vocab]
        "predictions" for each sequence, the list of tokens predicted at its [MASK]s, in order
        "pooled"      the pooler's sentence vector [batch, d_model]
        "nsp_logits"  next-sentence logits [batch, 2] (0: B follows A, 1: B is random)
        "loss"        masked-LM cross entropy against labels [batch, pos] (-100 = ignore)
        None          run the encoder only (for its hooks) and return None
        Text input is tokenized, and its token types and padding mask are used unless given.
        """
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
        if not isinstance(input, torch.Tensor):
            tokens, text_token_types, text_mask = self.to_tokens(input)
            token_type_ids = text_token_types if token_type_ids is None else token_type_ids
            one_zero_attention_mask = text_mask if one_zero_attention_mask is None else one_zero_attention_mask
        else:
            tokens = input
        if return_type in ("logits", "predictions", "loss"):
            self._require_head("mlm_head", return_type)
        if return_type in ("pooled", "nsp_logits"):
            self._require_head("pooler", return_type)
        if return_type == "nsp_logits":
            self._require_head("nsp_head", return_type)
        if return_type == "loss":
            labels = self._check_labels(labels, tokens)
        if return_type == "predictions":
            mask_positions = self._mask_positions(tokens)

        resid = self.encoder_output(tokens, token_type_ids, one_zero_attention_mask)
        if return_type is None:
            return None
        if return_type in ("pooled", "nsp_logits"):
            pooled = self.pooler(resid)
            return pooled if return_type == "pooled" else self.nsp_head(pooled)
        logits = self.unembed(self.mlm_head(resid))  # [batch, pos, d_vocab]
        if return_type == "loss":
            return F.cross_entropy(logits.reshape(-1, self.cfg.d_vocab), labels.reshape(-1), ignore_index=-100)
        if return_type == "predictions":
            predicted = logits.argmax(dim=-1)  # [batch, pos]
            return [self.tokenizer.convert_ids_to_tokens(predicted[i, positions].tolist())
                    for i, positions in enumerate(mask_positions)]
        return logits

    def _require_head(self, head: str, return_type: str):
        if head in self.missing_heads:
            raise ValueError(
                f"return_type={return_type!r} needs the {head}, but the loaded checkpoint has no "
                f"weights for it (missing: {sorted(self.missing_heads)}); use encoder_output() "
                "or a return_type whose head was loaded"
            )

    def _check_labels(self, labels, tokens) -> torch.Tensor:
        if labels is None:
            raise ValueError("return_type='loss' needs labels [batch, pos]: token ids, -100 where not scored")
        if not isinstance(labels, torch.Tensor) or labels.shape != tokens.shape or labels.dtype.is_floating_point:
            got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels must be integer ids of the tokens' shape {tuple(tokens.shape)}, got {got}")
        scored = labels != -100
        if not scored.any():
            raise ValueError("labels are all -100: no position to compute the loss on")
        if (labels[scored] < 0).any() or (labels[scored] >= self.cfg.d_vocab).any():
            raise ValueError(f"labels must be -100 or token ids in [0, {self.cfg.d_vocab})")
        return labels.to(self.W_E.device, torch.long)

    def _mask_positions(self, tokens) -> list[torch.Tensor]:
        if self.tokenizer is None or self.tokenizer.mask_token_id is None:
            raise ValueError("return_type='predictions' needs a tokenizer with a [MASK] token")
        is_mask = tokens == self.tokenizer.mask_token_id
        if not is_mask.any():
            raise ValueError(f"return_type='predictions' needs at least one {self.tokenizer.mask_token} token in the input")
        return [row.nonzero().flatten() for row in is_mask.cpu()]

    # -- Hooks -----------------------------------------------------------------------------------

    def _hook_points(self, name_or_filter) -> list[HookPoint]:
        """The hook points a name, a list of names, or a predicate on names selects."""
        if isinstance(name_or_filter, str):
            if name_or_filter not in self.hook_dict:
                raise _unknown_name_error(name_or_filter, self.hook_dict)
            points = [self.hook_dict[name_or_filter]]
        elif isinstance(name_or_filter, (list, tuple)):
            return [point for name in name_or_filter for point in self._hook_points(name)]
        elif callable(name_or_filter):
            points = [point for name, point in self.hook_dict.items() if name_or_filter(name)]
        else:
            raise TypeError(f"a hook is chosen by a name, a list of names or a function of the name; got {name_or_filter!r}")
        firing = [point for point in points if self.cfg.use_attn_result or not point.name.endswith("hook_result")]
        if points and not firing:
            raise ValueError(f"{points[0].name} only runs with use_attn_result=True: set model.cfg.use_attn_result = True")
        return firing

    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True):
        """Attach hooks for the duration of a `with` block:
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", fn)]): model(tokens)
        The hooks are removed at the end, and always when an exception escapes."""
        added = []
        try:
            for dir, hook_list in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for pair in hook_list:
                    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                        raise TypeError(f"{dir}_hooks must be a list of (name or filter, function) pairs; got an item {pair!r}")
                    name_or_filter, fn = pair
                    for point in self._hook_points(name_or_filter):
                        point.add_hook(fn, dir)
                        added.append((point, fn, dir))
            yield self
        except BaseException:
            self._remove(added)  # after an error, never leave a hook behind
            raise
        if reset_hooks_end:
            self._remove(added)

    @staticmethod
    def _remove(added: list[tuple[HookPoint, Callable, str]]):
        for point, fn, dir in added:
            point.remove_hook(fn, dir)

    def run_with_hooks(self, *model_args, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, **model_kwargs):
        """model(*model_args, **model_kwargs) with hooks attached, removed again afterwards."""
        if bwd_hooks and reset_hooks_end:
            raise ValueError(
                "bwd_hooks would be removed before you could call backward(); use "
                "`with model.hooks(bwd_hooks=...):` around forward and backward, or reset_hooks_end=False"
            )
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end):
            return self(*model_args, **model_kwargs)

    def reset_hooks(self):
        """Remove every hook from every hook point."""
        for point in self.hook_dict.values():
            point.remove_hooks("both")

    def run_with_cache(self, *model_args, names_filter=None, remove_batch_dim: bool = False,
                       incl_bwd: bool = False, device=None, **model_kwargs):
        """Run the model and save activations. Returns (output, ActivationCache).

        names_filter: a hook name, a list of names or a predicate (default: every hook).
        remove_batch_dim: for a batch of one, save [pos, ...] instead of [1, pos, ...].
        incl_bwd: also call backward() on the output (a scalar, e.g. return_type="loss") and
        save the gradients, as "<hook name>_grad".
        device: where to keep the saved tensors (e.g. "cpu" to spare accelerator memory).
        Every hook of bert-base on 8 x 128 tokens is ~0.9 GB; on CPU, the time that costs is the
        OS handing out fresh memory, not the hooks (README, "Speed"): filter what you need.
        """
        points = self._hook_points(names_filter if names_filter is not None else lambda name: True)
        cache: dict[str, torch.Tensor] = {}
        # A hook of yours that edits in place could change a tensor already saved: then save copies.
        snapshot = any(point.fwd_hooks or point.bwd_hooks for point in self.hook_dict.values())

        def save(tensor, hook, suffix=""):
            if remove_batch_dim:
                if tensor.shape[0] != 1:
                    raise ValueError(f"remove_batch_dim=True needs a batch of one, got batch {tensor.shape[0]}")
                tensor = tensor[0]
            tensor = tensor.detach().clone() if snapshot else tensor.detach()
            cache[hook.name + suffix] = tensor if device is None else tensor.to(device)

        def save_grad(grad, hook):
            save(grad, hook, suffix="_grad")

        fwd_hooks = [(point.name, save) for point in points]
        bwd_hooks = [(point.name, save_grad) for point in points] if incl_bwd else []
        try:
            with self.hooks(fwd_hooks, bwd_hooks):
                output = self(*model_args, **model_kwargs)
                if incl_bwd:
                    if not isinstance(output, torch.Tensor) or output.numel() != 1:
                        raise ValueError("incl_bwd=True needs a scalar output to differentiate, e.g. return_type='loss'")
                    output.backward()
        except RuntimeError as error:  # torch.OutOfMemoryError is one
            if not isinstance(error, torch.OutOfMemoryError) and "allocate memory" not in str(error):
                raise
            wanted, saved_gb = len(fwd_hooks) + len(bwd_hooks), sum(t.nbytes for t in cache.values()) / 1e9
            raise type(error)(
                f"out of memory in run_with_cache after saving {len(cache)} of {wanted} activations "
                f"({saved_gb:.2f} GB; all would need roughly {saved_gb * wanted / max(len(cache), 1):.1f} GB). "
                "Save only what you need with names_filter=, or keep the cache elsewhere with device="
            ) from error
        return output, ActivationCache(cache, self.cfg.n_layers, has_batch_dim=not remove_batch_dim)

    # -- Loading (the conversion itself is in section 5) -------------------------------------

    def load_hf_state_dict(self, state_dict: dict[str, torch.Tensor]) -> "HookedEncoder":
        """Load the weights of a HuggingFace BertForMaskedLM, BertForPreTraining,
        BertForNextSentencePrediction or BertModel state dict. Heads the state dict lacks are
        recorded in self.missing_heads, and asking for their output raises an error."""
        converted, missing_heads = convert_hf_state_dict(state_dict, self.cfg)
        ours = self.state_dict()
        for name in ours:
            if name.split(".")[0] in missing_heads:
                converted[name] = ours[name]  # keep them; missing_heads records they are not real
        self.load_state_dict(converted, strict=True)
        self.missing_heads = missing_heads
        return self

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, hf_model=None, tokenizer=None, device=None,
                        dtype: torch.dtype = torch.float32, torch_dtype=None, revision=None) -> "HookedEncoder":
        """A HookedEncoder with the weights of a HuggingFace BERT: a hub name such as
        "bert-base-uncased" (revision= picks a hub branch or commit) or a local folder. With
        hf_model given, converts that model and touches neither the hub nor the disk (pass
        tokenizer= for text input). torch_dtype= is TransformerLens's name for dtype=."""
        dtype = torch_dtype or dtype
        if hf_model is not None:
            cfg, state_dict = Config.from_hf(hf_model.config), hf_model.state_dict()
        else:
            # The config first, so that a non-BERT checkpoint is refused before its weights are read.
            cfg = Config.from_hf(read_hf_config(name_or_path, revision))
            state_dict = read_hf_weights(name_or_path, revision)
            if tokenizer is None:
                tokenizer = read_hf_tokenizer(name_or_path, revision)
        model = cls(cfg, tokenizer=tokenizer)
        model.load_hf_state_dict(state_dict)
        return model.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------------------------------------
# 5. HuggingFace weights -> ours
# ---------------------------------------------------------------------------------------------


def convert_hf_state_dict(state_dict: dict[str, torch.Tensor], cfg: Config) -> tuple[dict, set[str]]:
    """Rename and reshape a HuggingFace BERT state dict into this file's parameters.

    Returns (our state dict, names of the heads the HF state dict has no weights for). Raises
    a ValueError listing every missing, unexpected or wrongly shaped weight.
    """
    hf = {}
    for key, value in state_dict.items():
        key = key.removeprefix("bert.")  # BertFor* models keep the encoder under "bert."
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        hf[key] = value
    if "embeddings.word_embeddings.weight" not in hf:
        raise ValueError(f"not a BERT state dict: no embeddings.word_embeddings.weight among {list(state_dict)[:5]}...")
    for buffer in ("embeddings.position_ids", "embeddings.token_type_ids"):
        hf.pop(buffer, None)  # constant buffers older checkpoints stored; not weights

    problems, used = [], set()
    d_model, n_heads, d_head = cfg.d_model, cfg.n_heads, cfg.d_head

    def take(key: str, *shape: int) -> torch.Tensor:
        """The HF weight `key`, checked to have `shape` (as HF stores it: [out, in])."""
        if key not in hf:
            problems.append(f"missing: {key}")
            return torch.zeros(shape)
        used.add(key)
        if tuple(hf[key].shape) != shape:
            problems.append(f"wrong shape: {key} is {tuple(hf[key].shape)}, this config needs {shape}")
            return torch.zeros(shape)
        return hf[key]

    def linear(prefix: str, d_out: int, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
        """nn.Linear stores weight as [out, in] for x @ weight.T; we store W [in, out] for x @ W."""
        return take(f"{prefix}.weight", d_out, d_in).T, take(f"{prefix}.bias", d_out)

    def layer_norm(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        return take(f"{prefix}.LayerNorm.weight", d_model), take(f"{prefix}.LayerNorm.bias", d_model)

    ours = {
        "embed.embed.W_E": take("embeddings.word_embeddings.weight", cfg.d_vocab, d_model),
        "embed.pos_embed.W_pos": take("embeddings.position_embeddings.weight", cfg.n_ctx, d_model),
        "embed.token_type_embed.W_token_type": take("embeddings.token_type_embeddings.weight", cfg.n_token_types, d_model),
    }
    ours["embed.ln.w"], ours["embed.ln.b"] = layer_norm("embeddings")

    for layer in range(cfg.n_layers):
        hf_layer, our_layer = f"encoder.layer.{layer}", f"blocks.{layer}"
        for name, hf_name in (("Q", "query"), ("K", "key"), ("V", "value")):
            W, b = linear(f"{hf_layer}.attention.self.{hf_name}", n_heads * d_head, d_model)
            # [d_model, (head_index d_head)] -> [head_index, d_model, d_head]
            ours[f"{our_layer}.attn.W_{name}"] = W.reshape(d_model, n_heads, d_head).permute(1, 0, 2)
            ours[f"{our_layer}.attn.b_{name}"] = b.reshape(n_heads, d_head)
        W_O, ours[f"{our_layer}.attn.b_O"] = linear(f"{hf_layer}.attention.output.dense", d_model, n_heads * d_head)
        ours[f"{our_layer}.attn.W_O"] = W_O.reshape(n_heads, d_head, d_model)  # [(head_index d_head), d_model]
        ours[f"{our_layer}.ln1.w"], ours[f"{our_layer}.ln1.b"] = layer_norm(f"{hf_layer}.attention.output")
        ours[f"{our_layer}.mlp.W_in"], ours[f"{our_layer}.mlp.b_in"] = linear(f"{hf_layer}.intermediate.dense", cfg.d_mlp, d_model)
        ours[f"{our_layer}.mlp.W_out"], ours[f"{our_layer}.mlp.b_out"] = linear(f"{hf_layer}.output.dense", d_model, cfg.d_mlp)
        ours[f"{our_layer}.ln2.w"], ours[f"{our_layer}.ln2.b"] = layer_norm(f"{hf_layer}.output")

    missing_heads = set()
    if "pooler.dense.weight" in hf:
        ours["pooler.W"], ours["pooler.b"] = linear("pooler.dense", d_model, d_model)
    else:
        missing_heads.add("pooler")
    if "cls.seq_relationship.weight" in hf:
        ours["nsp_head.W"], ours["nsp_head.b"] = linear("cls.seq_relationship", 2, d_model)
    else:
        missing_heads.add("nsp_head")
    if "cls.predictions.transform.dense.weight" in hf:
        ours["mlm_head.W"], ours["mlm_head.b"] = linear("cls.predictions.transform.dense", d_model, d_model)
        ours["mlm_head.ln.w"], ours["mlm_head.ln.b"] = layer_norm("cls.predictions.transform")
        # The decoder is usually tied to the token embedding, and then not always stored.
        if "cls.predictions.decoder.weight" in hf:
            ours["unembed.W_U"] = take("cls.predictions.decoder.weight", cfg.d_vocab, d_model).T
        else:
            ours["unembed.W_U"] = ours["embed.embed.W_E"].T
        # HF's forward adds cls.predictions.decoder.bias; older checkpoints store only
        # cls.predictions.bias, which newer ones keep as a tied copy.
        has_decoder_bias = "cls.predictions.decoder.bias" in hf
        bias_key = "cls.predictions.decoder.bias" if has_decoder_bias else "cls.predictions.bias"
        ours["unembed.b_U"] = take(bias_key, cfg.d_vocab)
        used.add("cls.predictions.bias")
    else:
        missing_heads.update(("mlm_head", "unembed"))

    problems += [f"not finite (NaN or inf): {key}" for key, value in hf.items()
                 if value.is_floating_point() and not torch.isfinite(value).all()]
    unexpected = [key for key in hf if key not in used]
    problems += [f"unexpected: {key}" for key in unexpected]
    if unexpected:
        problems.append("(hooked_bert has the MLM, pooler and next-sentence heads only: drop the keys of any "
                        "other head, such as a fine-tuned classifier, to load the encoder)")
    if problems:
        raise ValueError("this state dict does not fit the config:\n  " + "\n  ".join(problems))
    return ours, missing_heads


def read_hf_config(name_or_path: str, revision=None):
    """The transformers config of a local folder or a hub name, with errors that say what to do."""
    import transformers

    if os.path.isfile(name_or_path):
        raise ValueError(f"{name_or_path!r} is a file: pass the folder that holds it and config.json "
                         f"({os.path.dirname(name_or_path) or '.'!r})")
    is_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if is_path and not os.path.isdir(name_or_path):
        raise FileNotFoundError(f"no folder {name_or_path!r}: it does not exist")
    try:
        return transformers.AutoConfig.from_pretrained(name_or_path, revision=revision)
    except OSError as error:
        if os.path.isdir(name_or_path):
            raise
        raise OSError(f"could not load {name_or_path!r}: there is no such local folder, and the HuggingFace hub "
                      f"did not give it (offline?). Pass the path of a folder with config.json and the weights."
                      ) from error


def read_hf_tokenizer(name_or_path: str, revision=None):
    """The tokenizer of a checkpoint, or None for a local folder without tokenizer files (then
    token ids still work and text input says it needs a tokenizer)."""
    import transformers

    files = ("tokenizer.json", "vocab.txt")
    if os.path.isdir(name_or_path) and not any(os.path.exists(os.path.join(name_or_path, f)) for f in files):
        warnings.warn(f"{name_or_path!r} has no tokenizer ({' or '.join(files)}): loaded without one, "
                      "so give token ids, or pass tokenizer=")
        return None
    return transformers.AutoTokenizer.from_pretrained(name_or_path, revision=revision)


def read_hf_weights(name_or_path: str, revision=None) -> dict[str, torch.Tensor]:
    """The state dict of a HuggingFace checkpoint, a local folder or a hub name, read without
    unpickling code (safetensors, or torch.load with weights_only=True). A sharded checkpoint
    (model.safetensors.index.json) is read shard by shard."""
    for filename in ("model.safetensors", "pytorch_model.bin"):
        index = _checkpoint_file(name_or_path, filename + ".index.json", revision)
        if index is not None:
            with open(index) as file:
                shards = sorted(set(json.load(file)["weight_map"].values()))
            paths = [_checkpoint_file(name_or_path, shard, revision) for shard in shards]
        else:
            paths = [_checkpoint_file(name_or_path, filename, revision)]
        if None not in paths:
            state_dict = {}
            for path in paths:
                state_dict.update(_read_weights_file(path))
            return state_dict
    raise FileNotFoundError(f"found neither model.safetensors nor pytorch_model.bin (nor their sharded "
                            f".index.json) for {name_or_path!r}")


def _checkpoint_file(name_or_path: str, filename: str, revision=None) -> Optional[str]:
    """The local path of one file of a checkpoint (downloaded if it is on the hub), or None."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        return path if os.path.exists(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(name_or_path, filename, revision=revision)
    except EntryNotFoundError:
        return None


def _read_weights_file(path: str) -> dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"could not read the weights file {path}: {error}") from error


# ---------------------------------------------------------------------------------------------
# 6. Demo: python hooked_bert.py [model name or folder] [text]
# ---------------------------------------------------------------------------------------------


def demo_random_weights():
    """Offline, in seconds: convert a small random HuggingFace BERT and look inside it."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    hf_config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=256, max_position_embeddings=64, attn_implementation="eager")
    hf_model = BertForMaskedLM(hf_config).eval()
    model = HookedEncoder.from_pretrained("a random BertForMaskedLM", hf_model=hf_model)
    tokens = torch.randint(0, hf_config.vocab_size, (2, 12))

    with torch.no_grad():
        hf_logits = hf_model(tokens).logits
        logits, cache = model.run_with_cache(tokens)
    print(f"Largest |our logits - HuggingFace's logits|: {(logits - hf_logits).abs().max().item():.2e}\n")

    print(f"{len(cache)} hook points fired; their shapes for tokens of shape {tuple(tokens.shape)}:")
    for name, activation in cache.items():
        if not name.startswith("blocks.") or name.startswith("blocks.0."):
            print(f"  {name:42} {tuple(activation.shape)}")
    print("  (blocks.1 has the same hooks as blocks.0)\n")

    def ablate_head_0(z, hook):
        z[:, :, 0] = 0.0  # z: [batch, pos, head_index, d_head]; head 0 now writes nothing

    with torch.no_grad():
        ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", ablate_head_0)])
    changed = (ablated.argmax(-1) != logits.argmax(-1)).float().mean().item()
    print("Zero-ablating head L0H0 moves the logits by up to "
          f"{(ablated - logits).abs().max().item():.3f} and changes the top prediction at {changed:.0%} of positions.")


def demo_pretrained(model: "HookedEncoder", name_or_path: str, text: str):
    """Show what a real BERT sees in `text`."""
    print(f"Loaded {name_or_path}: {model.cfg}\n")
    if "mlm_head" not in model.missing_heads and model.tokenizer.mask_token in text:
        print(f"Predictions at the {model.tokenizer.mask_token} tokens: {model(text, return_type='predictions')}\n")
    tokens, token_type_ids, mask = model.to_tokens(text)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, token_type_ids=token_type_ids, one_zero_attention_mask=mask,
                                        return_type=None, names_filter=lambda name: name.endswith("hook_pattern"))
    str_tokens = model.tokenizer.convert_ids_to_tokens(tokens[0].tolist())
    print(f"Tokens: {str_tokens}")
    print("Where each head looks: the token it attends to most, averaged over all query positions.")
    for layer in range(model.cfg.n_layers):
        attention_received = cache["pattern", layer][0].mean(dim=1)  # [head_index, key_pos]
        favourites = [str_tokens[key] for key in attention_received.argmax(dim=-1).tolist()]
        print(f"  layer {layer}: " + " ".join(f"H{head}:{token}" for head, token in enumerate(favourites)))


if __name__ == "__main__":
    if len(sys.argv) == 1:
        demo_random_weights()
        sys.exit()
    try:
        model = HookedEncoder.from_pretrained(sys.argv[1])
    except (OSError, ValueError) as error:
        sys.exit(f"{error}\nWithout the internet, give a local folder instead, or run `python hooked_bert.py` "
                 "for the offline demo.")
    demo_pretrained(model, sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "The capital of France is [MASK].")
