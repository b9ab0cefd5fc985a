"""hooked_bert.py: BERT in one readable file, with a hook on every interesting activation.

How to read it. Part 1 (up to the "Part 2" banner) is BERT: a tiny `HookPoint`, the `Config` (with
the activation functions and a named-dimension `einsum`), every component in the order data flows
through it (embeddings, LayerNorm, attention, MLP, the post-LN block, then the heads), and
`HookedEncoder`, which puts them together; its last methods are doors to part 2. Part 2 is the
machinery around BERT: the hook API and the activation cache, input checks and text input, loading
HuggingFace weights, and a demo (`python hooked_bert.py [model name or folder] [text]`). Read part
1 first; you may never need part 2. tutorial.md walks through both.

What it reproduces:
- Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
  Understanding" (arXiv:1810.04805): the architecture and its masked-LM and next-sentence heads.
- HuggingFace transformers' `models/bert/modeling_bert.py`: the numbers. test_hooked_bert.py
  checks, component by component, that ours agree with its `BertForMaskedLM`.
- TransformerLens's `HookedEncoder` (version 3.9): hook names, shapes and meanings, and the
  weight layout, so code written for it runs here (README, "Porting from TransformerLens").

Left out on purpose: fused or flash attention kernels, relative position embeddings, decoder and
cross-attention BERTs, weight processing (LayerNorm folding etc.). Importing this file needs only
torch; `transformers` is imported inside the functions that load HuggingFace weights or tokenize.
"""

from __future__ import annotations

import difflib
import functools
import gc
import json
import math
import os
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# =============================================================================================
# Part 1: BERT
# =============================================================================================


class HookPoint(nn.Module):
    """An identity module: BERT's numbers pass through it unchanged. It is where hook
    functions can hang, to read or edit an activation (the API is in part 2).

    A forward hook `fn(activation, hook)` sees the activation as it passes; it may return a
    tensor of the same shape to replace it, or None to leave it (or edit it in place). A
    backward hook `fn(grad, hook)` sees the gradient of the loss with respect to the activation,
    and may likewise return a replacement. Hooks are state of the model, as in PyTorch and
    TransformerLens: use one model per thread.
    """

    def __init__(self):
        super().__init__()
        self.name: Optional[str] = None  # set by HookedEncoder, e.g. "blocks.0.attn.hook_z"
        self.fwd_hooks: list[Callable] = []
        self.bwd_hooks: list[Callable] = []

    def add_hook(self, fn: Callable, dir: str = "fwd") -> None:
        if not callable(fn):
            raise TypeError(f"a hook must be a function fn(tensor, hook), got {type(fn).__name__}")
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        (self.fwd_hooks if dir == "fwd" else self.bwd_hooks).append(fn)

    def remove_hook(self, fn: Callable, dir: str) -> None:
        hooks = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        if fn in hooks:
            hooks.remove(fn)

    def remove_hooks(self, dir: str = "both") -> None:
        if dir in ("fwd", "both"):
            self.fwd_hooks.clear()
        if dir in ("bwd", "both"):
            self.bwd_hooks.clear()

    def __getstate__(self):  # a copy (copy.deepcopy, pickle) starts without hooks
        return {**super().__getstate__(), "fwd_hooks": [], "bwd_hooks": []}

    def forward(self, x: Tensor) -> Tensor:
        for fn in self.fwd_hooks:
            replacement = fn(x, hook=self)
            if replacement is not None:
                x = checked_replacement(self, replacement, x, "forward hook")
        if self.bwd_hooks:
            register_backward_hooks(self, x)  # autograd calls them when backward() reaches x
        return x


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU's tanh approximation (GPT-2's); HuggingFace calls it "gelu_new"."""
    return F.gelu(x, approximate="tanh")


# The activations BERT checkpoints use, by their HuggingFace `hidden_act` names.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    # HF's "gelu" is the exact GELU, x * Phi(x) with the erf; Google's own BERT code (modeling.py)
    # has computed the tanh approximation, HF's "gelu_new". Checkpoints name theirs.
    "gelu": F.gelu,
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
    d_head: int  # BERT checkpoints have d_model == n_heads * d_head; the components don't need it
    d_mlp: int  # width of the MLP's hidden layer (4 * d_model in BERT)
    n_layers: int
    n_token_types: int = 2  # segment embeddings: sentence A / sentence B
    eps: float = 1e-12  # BERT's LayerNorm epsilon, far smaller than PyTorch's default 1e-5
    act_fn: str = "gelu"  # a key of ACTIVATIONS; used in the MLP and in the masked-LM head
    hidden_dropout: float = 0.1  # on embeddings, attention output and MLP output (train() only)
    attention_dropout: float = 0.1  # on the attention pattern (train() only)
    use_attn_result: bool = False  # not BERT, a hook option: also compute each head's output
    initializer_range: float = 0.02  # std of the normal init of weight matrices and embeddings
    pad_token_id: Optional[int] = None  # this row of W_E gets no gradient (as in HuggingFace)
    tie_word_embeddings: bool = False  # True: the unembedding is W_E itself (see Unembed)

    def __post_init__(self):
        check_config(self)  # each field in its range, or a clear error (part 2)

    @classmethod
    def from_hf(cls, hf_config, tie_word_embeddings: bool = False) -> "Config":
        """The Config of a `transformers.BertConfig`; refuses what this file cannot reproduce.
        HF's own tie_word_embeddings (True in BERT checkpoints) is not read: ask for it."""
        return config_from_hf(hf_config, tie_word_embeddings)


@functools.lru_cache(maxsize=None)
def _einsum_letters(spec: str) -> str:
    """Translate named dimensions to the single letters torch.einsum wants:
    "batch pos d_model, d_model d_mlp -> batch pos d_mlp" becomes "abc,cd->abd". A name is only
    a label: the same name in two operands is the same axis, so the `pos` of q can be called
    `query_pos` and the `pos` of k `key_pos` when both appear in one einsum."""
    names = dict.fromkeys(re.findall(r"\w+", spec))  # each name once, in order of first use
    letters = {name: chr(ord("a") + i) for i, name in enumerate(names)}  # a, b, c, ...
    return re.sub(r"\w+", lambda word: letters[word.group()], spec).replace(" ", "")


def einsum(spec: str, *tensors: Tensor) -> Tensor:
    """torch.einsum with whole words as dimension names, so the shapes read as they are.
    A name missing from the output (after ->) is summed over: key_pos in the one that makes z."""
    try:
        return torch.einsum(_einsum_letters(spec), *tensors)
    except RuntimeError as error:  # torch's message names the letters: say it in our names
        raise einsum_error(spec, tensors, error) from None


# ---------------------------------------------------------------------------------------------
# The components, in the order data flows through them
# ---------------------------------------------------------------------------------------------


class Embed(nn.Module):
    """Token embedding: row `token` of W_E."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.pad_token_id = cfg.pad_token_id
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        # W_E[tokens], except that training never changes the padding token's row.
        return F.embedding(tokens, self.W_E, padding_idx=self.pad_token_id)  # [batch, pos, d_model]


class PosEmbed(nn.Module):
    """Learned position embedding: row `pos` of W_pos, for positions 0, 1, 2, ..."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        batch, n_pos = tokens.shape
        positions = torch.arange(n_pos, device=tokens.device).expand(batch, n_pos)  # [batch, pos]
        # Indexing makes a new tensor. (W_pos[:n_pos] would be a view of the weights, which a
        # hook editing its activation in place would change.)
        return self.W_pos[positions]  # [batch, pos, d_model]


class TokenTypeEmbed(nn.Module):
    """Segment embedding: row `token_type` of W_token_type (0 for sentence A, 1 for B)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.W_token_type = nn.Parameter(torch.empty(cfg.n_token_types, cfg.d_model))

    def forward(self, token_type_ids: Tensor) -> Tensor:
        return self.W_token_type[token_type_ids]  # [batch, pos, d_model]


class LayerNorm(nn.Module):
    """LayerNorm over d_model: centre, divide by the standard deviation, then scale and shift.

    eps sits inside the square root, as in PyTorch and HuggingFace. hook_scale is the standard
    deviation [batch, pos, 1]; hook_normalized is (x - mean) / scale, before w and b (as in
    TransformerLens). In half precision the statistics are taken in float32 (and the hooks see
    float32): float16's largest number is 65504, so x.pow(2) overflows once |x| > 256, and
    bfloat16 keeps too few digits for a precise variance.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Tensor) -> Tensor:
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

    def forward(self, tokens: Tensor, token_type_ids: Optional[Tensor] = None) -> Tensor:
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
        self.hook_attn_scores = HookPoint()  # [batch, head_index, query_pos, key_pos], masked
        self.hook_pattern = HookPoint()  # [batch, head_index, query_pos, key_pos], before dropout
        self.hook_z = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head_index, d_model], if cfg.use_attn_result

    def forward(self, resid: Tensor, key_is_padding: Optional[Tensor] = None) -> Tensor:
        """resid [batch, pos, d_model]; key_is_padding [batch, key_pos], True at padded tokens."""
        # Queries, keys and values: the same projection, each with its own weights.
        project = "batch pos d_model, head_index d_model d_head -> batch pos head_index d_head"
        q = self.hook_q(einsum(project, resid, self.W_Q) + self.b_Q)
        k = self.hook_k(einsum(project, resid, self.W_K) + self.b_K)
        v = self.hook_v(einsum(project, resid, self.W_V) + self.b_V)

        # How much each query position wants to read from each key position:
        # attn_scores [batch, head_index, query_pos, key_pos].
        attn_scores = einsum(
            "batch query_pos head_index d_head, batch key_pos head_index d_head "
            "-> batch head_index query_pos key_pos", q, k,
        ) / math.sqrt(self.cfg.d_head)
        if key_is_padding is not None:
            # Padded keys get the most negative number, so softmax gives them zero weight. Not
            # -inf: a row whose keys are all padding then gets a uniform pattern, never NaN.
            padding = key_is_padding[:, None, None, :]  # [batch, 1, 1, key_pos]
            attn_scores = attn_scores.masked_fill(padding, torch.finfo(attn_scores.dtype).min)
        attn_scores = self.hook_attn_scores(attn_scores)
        pattern = self.hook_pattern(attn_scores.softmax(dim=-1))  # each row sums to 1 over keys
        pattern = self.dropout(pattern)

        # Each query position takes the pattern-weighted average of the values (pattern @ v).
        z = self.hook_z(einsum(
            "batch head_index query_pos key_pos, batch key_pos head_index d_head "
            "-> batch query_pos head_index d_head", pattern, v,
        ))
        # Each head writes back through its own W_O, and the heads' outputs are summed.
        if not self.cfg.use_attn_result:
            attn_out = einsum(
                "batch pos head_index d_head, head_index d_head d_model -> batch pos d_model",
                z, self.W_O,
            )
            return attn_out + self.b_O  # [batch, pos, d_model]
        # The same, with each head's output kept apart first (n_heads times the memory).
        result = self.hook_result(einsum(
            "batch pos head_index d_head, head_index d_head d_model "
            "-> batch pos head_index d_model", z, self.W_O,
        ))
        return result.sum(dim=2) + self.b_O  # [batch, pos, d_model]


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

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(x @ self.W_in + self.b_in)  # [batch, pos, d_mlp]
        post = self.hook_post(self.act_fn(pre))  # [batch, pos, d_mlp]
        return post @ self.W_out + self.b_out  # [batch, pos, d_model]


class BertBlock(nn.Module):
    """One BERT layer. Post-LN: add the sublayer's output to the residual, *then* LayerNorm.

    So ln1 comes after attention and ln2 after the MLP, and each LayerNorm's output *is* the
    residual stream from there on. (GPT-2 and most later models are pre-LN: their ln1 normalises
    attention's input, and the stream itself is never normalised.)
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
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model], the stream *before* ln2
        self.hook_normalized_resid_post = HookPoint()  # after ln2: what the next block reads

    def forward(self, resid_pre: Tensor, key_is_padding: Optional[Tensor] = None) -> Tensor:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.dropout(self.attn(resid_pre, key_is_padding)))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        normalized_resid_mid = self.ln1(resid_mid)  # the stream the MLP reads and adds to
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

    def forward(self, resid: Tensor) -> Tensor:
        x = resid @ self.W + self.b  # [batch, pos, d_model]
        return self.ln(self.act_fn(x))  # [batch, pos, d_model]


class Unembed(nn.Module):
    """The second half: map each position to a logit per vocabulary token, x @ W_U + b_U.

    By default W_U is a parameter of its own, as in TransformerLens: you can edit it without
    touching W_E. BERT's checkpoints tie it to the token embedding instead, W_U = W_E.T, one
    matrix used twice; cfg.tie_word_embeddings=True does that (pass the Embed's W_E), and is
    what trains like HuggingFace. The bias b_U is the MLM decoder's bias.
    """

    def __init__(self, cfg: Config, W_E: Optional[nn.Parameter] = None):
        super().__init__()
        self.tied = cfg.tie_word_embeddings
        if self.tied:
            if W_E is None:
                raise ValueError("Unembed with tie_word_embeddings=True needs the Embed's W_E")
            self.W_E = W_E  # the very parameter of Embed, not a copy: [d_vocab, d_model]
        else:
            self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_vocab]

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_in(x)
        W_U = self.W_E.T if self.tied else self.W_U  # [d_model, d_vocab]
        logits = x @ W_U  # [batch, pos, d_vocab]
        logits += self.b_U  # in place: the logits are by far the largest tensor, so don't copy them
        return self.hook_out(logits)


class BertPooler(nn.Module):
    """A sentence vector: the final hidden state of the first token ([CLS]), dense, tanh."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.W = nn.Parameter(torch.empty(cfg.d_model, cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pooler_out = HookPoint()  # [batch, d_model]

    def forward(self, resid: Tensor) -> Tensor:
        cls_token = resid[:, 0]  # [batch, d_model]: the first token, [CLS]
        pooled = einsum("batch d_model_in, d_model_in d_model -> batch d_model", cls_token, self.W)
        return self.hook_pooler_out(torch.tanh(pooled + self.b))


class BertNSPHead(nn.Module):
    """Next-sentence prediction from the pooled vector: logit 0 "B follows A", 1 "B is random"."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.W = nn.Parameter(torch.empty(cfg.d_model, 2))
        self.b = nn.Parameter(torch.zeros(2))
        self.hook_nsp_out = HookPoint()  # [batch, 2]

    def forward(self, pooled: Tensor) -> Tensor:
        nsp_logits = einsum("batch d_model, d_model nsp_class -> batch nsp_class", pooled, self.W)
        return self.hook_nsp_out(nsp_logits + self.b)  # [batch, 2]


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class HookedEncoder(nn.Module):
    """BERT: embeddings, n_layers post-LN blocks, and the heads, with hooks everywhere.

        model = HookedEncoder.from_pretrained("bert-base-uncased")
        logits = model("The capital of France is [MASK].")  # [batch, pos, d_vocab]
        logits, cache = model.run_with_cache(tokens)  # and cache["pattern", 0], ...
    """

    def __init__(self, cfg: Config, tokenizer=None):
        super().__init__()
        cfg = as_config(cfg)  # a Config, a dict of its fields, or an object that has them
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = BertEmbed(cfg)
        self.hook_full_embed = HookPoint()  # [batch, pos, d_model], after the embedding LayerNorm
        self.blocks = nn.ModuleList([BertBlock(cfg) for _ in range(cfg.n_layers)])
        self.mlm_head = BertMLMHead(cfg)
        self.unembed = Unembed(cfg, W_E=self.embed.embed.W_E)  # used only if tie_word_embeddings
        self.pooler = BertPooler(cfg)
        self.nsp_head = BertNSPHead(cfg)
        self.missing_heads = missing_heads_kept_in_state_dict(self)  # pretraining heads unloaded
        self.hook_dict = name_hook_points(self)  # {"blocks.0.attn.hook_z": that HookPoint, ...}
        self.init_weights()

    def init_weights(self):
        """BERT's initialisation: weights and embeddings ~ N(0, 0.02), biases 0, LayerNorm w 1."""
        for module in self.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, LayerNorm) and name == "w":  # LayerNorm's scale
                    nn.init.ones_(param)
                elif name.startswith("W"):  # weight matrices and embeddings: W_Q, W_E, ...
                    nn.init.normal_(param, std=self.cfg.initializer_range)
                else:
                    nn.init.zeros_(param)
        if self.cfg.pad_token_id is not None:
            nn.init.zeros_(self.W_E[self.cfg.pad_token_id])  # as HuggingFace does

    def encoder_output(self, tokens, token_type_ids=None, one_zero_attention_mask=None) -> Tensor:
        """The final hidden state [batch, pos, d_model] (HuggingFace's last_hidden_state)."""
        tokens, token_type_ids, mask = check_inputs(self, tokens, token_type_ids,
                                                     one_zero_attention_mask)  # each [batch, pos]
        key_is_padding = None if mask is None else mask == 0  # [batch, key_pos]; mask 1 = attend
        resid = self.hook_full_embed(self.embed(tokens, token_type_ids))  # [batch, pos, d_model]
        for block in self.blocks:
            resid = block(resid, key_is_padding)
        return resid

    def forward(self, input, return_type: Optional[str] = "logits", token_type_ids=None,
                one_zero_attention_mask=None, labels=None):
        """Run BERT on token ids [batch, pos], or on text: a string, a list of strings, or a
        (sentence A, sentence B) pair. return_type picks the output:
        "logits"      masked-LM logits [batch, pos, d_vocab]
        "predictions" for each sequence, the list of tokens predicted at its [MASK]s, in order
        "pooled"      the pooler's sentence vector [batch, d_model]
        "nsp_logits"  next-sentence logits [batch, 2] (0: B follows A, 1: B is random)
        "loss"        masked-LM cross entropy against labels [batch, pos] (-100 = ignore)
        None          run the encoder only (for its hooks) and return None
        """
        tokens, token_type_ids, mask, labels = prepare_input(  # text -> ids, and checks
            self, input, return_type, token_type_ids, one_zero_attention_mask, labels)
        resid = self.encoder_output(tokens, token_type_ids, mask)  # [batch, pos, d_model]
        if return_type is None:
            return None
        if return_type in ("pooled", "nsp_logits"):
            pooled = self.pooler(resid)  # [batch, d_model]
            return pooled if return_type == "pooled" else self.nsp_head(pooled)
        logits = self.unembed(self.mlm_head(resid))  # [batch, pos, d_vocab]
        if return_type == "loss":
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        if return_type == "predictions":
            return predicted_tokens(self, tokens, logits)
        return logits

    # Weights in TransformerLens's layout. The stacked ones are new tensors, computed when read:
    # model.W_Q[l, h] is the W_Q of head h in layer l, [d_model, d_head], but to change it, change
    # model.blocks[l].attn.W_Q. W_U is [d_model, d_vocab]; tied, it is W_E.T, a view of W_E.
    W_E = property(lambda self: self.embed.embed.W_E)  # [d_vocab, d_model]
    W_pos = property(lambda self: self.embed.pos_embed.W_pos)  # [n_ctx, d_model]
    W_E_pos = property(lambda self: torch.cat([self.W_E, self.W_pos]))  # [d_vocab + n_ctx, d_model]
    W_U = property(lambda self: self.unembed.W_E.T if self.unembed.tied else self.unembed.W_U)
    b_U = property(lambda self: self.unembed.b_U)  # [d_vocab]
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

    def _stack(self, sublayer: str, weight: str) -> Tensor:
        """One weight of every block, stacked: [n_layers, ...]; e.g. _stack("attn", "W_Q")."""
        return torch.stack([getattr(getattr(block, sublayer), weight) for block in self.blocks])

    def all_head_labels(self) -> list[str]:
        layers, heads = range(self.cfg.n_layers), range(self.cfg.n_heads)
        return [f"L{layer}H{head}" for layer in layers for head in heads]

    # The hook API, text input and loading. They are machinery, not BERT: see part 2.

    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True):
        """Hooks for the duration of a `with` block, removed at its end and after an error:
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", fn)]): model(tokens)"""
        return attach_hooks(self, fwd_hooks, bwd_hooks, reset_hooks_end)

    def run_with_hooks(self, *model_args, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True,
                       **model_kwargs):
        """model(*model_args, **model_kwargs) with hooks attached, removed again afterwards."""
        if bwd_hooks and reset_hooks_end:
            raise ValueError("bwd_hooks would be removed before you could call backward(); use "
                             "`with model.hooks(bwd_hooks=...):` around forward and backward, "
                             "or reset_hooks_end=False")
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end):
            return self(*model_args, **model_kwargs)

    def run_with_cache(self, *model_args, names_filter=None, remove_batch_dim=False,
                       incl_bwd=False, device=None, **model_kwargs):
        """Run the model and save activations: returns (output, ActivationCache). Options:
        see cache_activations (part 2); names_filter= saves only the hooks you name."""
        options = dict(names_filter=names_filter, remove_batch_dim=remove_batch_dim,
                       incl_bwd=incl_bwd, device=device)
        return cache_activations(self, model_args, model_kwargs, **options)

    def reset_hooks(self):
        """Remove every hook from every hook point."""
        for point in self.hook_dict.values():
            point.remove_hooks("both")

    def to_tokens(self, input, move_to_device: bool = True, truncate: bool = True):
        """Text -> (tokens, token_type_ids, attention_mask), each [batch, pos]."""
        return tokenize(self, input, move_to_device, truncate)

    def load_hf_state_dict(self, state_dict: dict[str, Tensor]) -> "HookedEncoder":
        """Load the weights of a HuggingFace BERT state dict (BertForMaskedLM, BertModel, ...)."""
        return load_state_dict_from_hf(self, state_dict)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, hf_model=None, tokenizer=None, device=None,
                        dtype=torch.float32, torch_dtype=None, revision=None,
                        tie_word_embeddings=False) -> "HookedEncoder":
        """A HookedEncoder with the weights of a HuggingFace BERT: a hub name such as
        "bert-base-uncased" or a local folder, or an `hf_model` already in memory (part 2).
        tie_word_embeddings=True: W_U is W_E, as in HF's BERT (to train it like HF does)."""
        dtype = torch_dtype or dtype  # torch_dtype is TransformerLens's name for it
        return load_pretrained(cls, name_or_path, hf_model, tokenizer, device, dtype, revision,
                               tie_word_embeddings)


# =============================================================================================
# Part 2: the machinery around BERT
# =============================================================================================

# ---------------------------------------------------------------------------------------------
# Hooks and the activation cache
# ---------------------------------------------------------------------------------------------


def name_hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Name every HookPoint by its path in the model ("blocks.0.attn.hook_z") and list them."""
    hook_dict = {}
    for name, module in model.named_modules():
        if isinstance(module, HookPoint):
            module.name = name
            hook_dict[name] = module
    return hook_dict


def checked_replacement(point: HookPoint, new, old: Tensor, kind: str) -> Tensor:
    """What a hook returned, if it can stand in for `old`: same shape (cast to old's dtype)."""
    if not isinstance(new, Tensor) or new.shape != old.shape:
        got = f"shape {tuple(new.shape)}" if isinstance(new, Tensor) else type(new).__name__
        name = point.name or next((key for holder in gc.get_referrers(point)  # not in a model:
                                   if isinstance(holder, dict)  # its name in its parent module
                                   for key, value in holder.items() if value is point), "?")
        raise ValueError(f"a {kind} on {name} returned {got}, where {name} has shape "
                         f"{tuple(old.shape)}: return None or a tensor of that shape")
    return new.to(old.device, old.dtype)  # e.g. a float64 edit in a float32 model


def einsum_error(spec: str, tensors, error: RuntimeError) -> RuntimeError:
    """torch.einsum's `error` in the dimension names of `spec` (torch knows them as a, b, c)."""
    names = list(dict.fromkeys(re.findall(r"\w+", spec)))  # names[0] is a, as in _einsum_letters
    said = re.sub(r"subscript ([a-z])\b", lambda found: names[ord(found.group(1)) - ord("a")],
                  str(error)).removeprefix("einsum(): ")
    shapes = "; ".join(f"operand {i} [{part.strip()}] has shape {list(x.shape)}"
                       for i, (part, x) in enumerate(zip(spec.split("->")[0].split(","), tensors)))
    return RuntimeError(f"einsum {spec!r}: {said}; {shapes}")


def register_backward_hooks(point: HookPoint, x: Tensor):
    """Ask autograd to call each of point's backward hooks with the gradient of x."""
    if not torch.is_grad_enabled():
        raise RuntimeError(f"{point.name} has a backward hook (bwd_hooks or incl_bwd=True), but "
                           "gradients are disabled here (torch.no_grad() or "
                           "torch.inference_mode()), so it could never run")
    if not x.requires_grad:
        return
    for fn in point.bwd_hooks:
        def on_grad(grad, fn=fn):  # fn=fn: this loop's fn, not the last one
            if fn not in point.bwd_hooks:  # removed since the forward pass: stay silent
                return None
            replacement = fn(grad, hook=point)
            if replacement is not None:
                return checked_replacement(point, replacement, grad, "backward hook")
        x.register_hook(on_grad)


def select_hook_points(model: HookedEncoder, name_or_filter) -> list[HookPoint]:
    """The hook points a name, a list of names, or a predicate on names selects."""
    if isinstance(name_or_filter, (list, tuple)):
        return [point for name in name_or_filter for point in select_hook_points(model, name)]
    if isinstance(name_or_filter, str):
        if name_or_filter not in model.hook_dict:
            raise unknown_name_error(name_or_filter, model.hook_dict, "model.hook_dict")
        points = [model.hook_dict[name_or_filter]]
    elif callable(name_or_filter):
        points = [point for name, point in model.hook_dict.items() if name_or_filter(name)]
    else:
        raise TypeError("a hook is chosen by a name, a list of names or a function of the name; "
                        f"got {name_or_filter!r}")
    can_run = lambda point: model.cfg.use_attn_result or not point.name.endswith("hook_result")
    if points and not any(map(can_run, points)):
        raise ValueError(f"{points[0].name} only runs with use_attn_result=True: "
                         "set model.cfg.use_attn_result = True")
    return [point for point in points if can_run(point)]


@contextmanager
def attach_hooks(model: HookedEncoder, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True):
    """model.hooks(): attach (name or filter, function) pairs; always remove them after an error."""
    added = []  # (hook point, function, "fwd" or "bwd")

    def remove_added():
        for point, fn, dir in added:
            point.remove_hook(fn, dir)
    try:
        for dir, hook_list in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
            for pair in hook_list:
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and callable(pair[1])):
                    raise TypeError(f"{dir}_hooks must be a list of (name or filter, function) "
                                    f"pairs; got {pair!r} (a hook must be a function, second)")
                for point in select_hook_points(model, pair[0]):
                    point.add_hook(pair[1], dir)
                    added.append((point, pair[1], dir))
        yield model
    except BaseException:
        remove_added()  # after an error, never leave a hook behind
        raise
    if reset_hooks_end:
        remove_added()


def cache_activations(model: HookedEncoder, model_args, model_kwargs, names_filter=None,
                      remove_batch_dim=False, incl_bwd=False, device=None):
    """model.run_with_cache(). names_filter: a hook name, a list of names or a predicate (default:
    every hook). remove_batch_dim: for a batch of one, save [pos, ...] instead of [1, pos, ...].
    incl_bwd: also call backward() on the output (a scalar: return_type="loss") and save the
    gradients as "<hook name>_grad". device: where to keep the saved tensors (e.g. "cpu").
    Each cached tensor is what its hook saw, even if a later hook edits in place. Without other
    hooks nothing is copied, so the output is the same tensor as its hook's entry. Every
    hook of bert-base on 8 x 128 tokens is ~0.9 GB (README, "Speed")."""
    every_hook = lambda name: True
    points = select_hook_points(model, every_hook if names_filter is None else names_filter)
    cache: dict[str, Tensor] = {}
    # A hook of yours that edits in place could change a tensor already saved: then save copies.
    snapshot = any(point.fwd_hooks or point.bwd_hooks for point in model.hook_dict.values())

    def save(tensor, hook, suffix=""):
        if hook.name + suffix in cache:  # each hook runs once per run
            raise RuntimeError(f"{hook.name} ran twice in one run_with_cache: did a hook run the "
                               "model again? The cache would mix two runs; run it outside")
        if remove_batch_dim:
            if tensor.shape[0] != 1:
                raise ValueError("remove_batch_dim=True needs a batch of one, "
                                 f"got batch {tensor.shape[0]}")
            tensor = tensor[0]
        tensor = tensor.detach().clone() if snapshot else tensor.detach()
        cache[hook.name + suffix] = tensor if device is None else tensor.to(device)

    def save_grad(grad, hook):
        save(grad, hook, suffix="_grad")

    fwd_hooks = [(point.name, save) for point in points]
    bwd_hooks = [(point.name, save_grad) for point in points] if incl_bwd else []
    # incl_bwd: every weight, even a frozen one, requires grad for this run; .grad is put back.
    weights = [(param, param.grad, param.requires_grad) for param in model.parameters()]
    if incl_bwd:
        model.requires_grad_(True)
    try:
        with model.hooks(fwd_hooks, bwd_hooks):
            output = model(*model_args, **model_kwargs)
            if incl_bwd:
                if not isinstance(output, Tensor) or output.numel() != 1:
                    raise ValueError("incl_bwd=True needs a scalar output to differentiate, "
                                     "e.g. return_type='loss'")
                output.backward()
    except RuntimeError as error:  # torch.OutOfMemoryError is one
        if not isinstance(error, torch.OutOfMemoryError) and "allocate memory" not in str(error):
            raise
        wanted = len(fwd_hooks) + len(bwd_hooks)
        saved_gb = sum(tensor.nbytes for tensor in cache.values()) / 1e9
        needed_gb = saved_gb * wanted / max(len(cache), 1)
        raise type(error)(
            f"out of memory in run_with_cache after saving {len(cache)} of {wanted} activations "
            f"({saved_gb:.2f} GB; all would need roughly {needed_gb:.1f} GB). Save only what you "
            "need with names_filter=, or keep the cache elsewhere with device="
        ) from error
    finally:
        for param, grad, requires_grad in weights:
            param.grad, param.requires_grad = grad, requires_grad
    return output, ActivationCache(cache, model.cfg.n_layers)


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


def unknown_name_error(name: str, known, where: str) -> KeyError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return KeyError(f"no hook named {name!r} in {where}{hint}")


class ActivationCache(dict):
    """The activations run_with_cache saved: a dict from full hook name to tensor, which also
    takes TransformerLens's shorthand: cache["pattern", 0], cache["resid_pre", -1],
    cache["scale", 0, "ln1"]. With incl_bwd=True, gradients are under the name + "_grad"."""

    def __init__(self, cache_dict: dict[str, Tensor], n_layers: int):
        super().__init__(cache_dict)
        self.n_layers = n_layers

    def __getitem__(self, key) -> Tensor:
        asked = key
        if isinstance(key, tuple):
            name, layer, *layer_type = key
            if layer is not None and layer < 0:
                layer += self.n_layers
            key = get_act_name(name, layer, *layer_type)
        elif key not in self:
            key = get_act_name(key)
        if key not in self:
            raise unknown_name_error(key, self, f"this cache (asked for {asked!r}; names_filter "
                                     "chose what to save; no gradient if the output ignores it)")
        return super().__getitem__(key)

    @property
    def cache_dict(self) -> dict[str, Tensor]:
        """TransformerLens's name for the dict of saved tensors (this cache is that dict)."""
        return self

    def stack_activation(self, name: str, sublayer_type: Optional[str] = None) -> Tensor:
        """One activation from every layer, stacked: [n_layers, *activation shape]."""
        return torch.stack([self[name, layer, sublayer_type] for layer in range(self.n_layers)])

    def __repr__(self) -> str:
        return f"ActivationCache with {len(self)} activations: {list(self)[:4]}..."


# ---------------------------------------------------------------------------------------------
# Input checks and text input
# ---------------------------------------------------------------------------------------------


def check_config(cfg: Config):
    for name in ("d_vocab", "n_ctx", "d_model", "n_heads", "d_head", "d_mlp", "n_layers",
                 "n_token_types"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Config.{name} must be a positive int, got {value!r}")
    if cfg.act_fn not in ACTIVATIONS:
        raise ValueError(f"Config.act_fn must be one of {sorted(ACTIVATIONS)}, got {cfg.act_fn!r}")
    if not cfg.eps > 0:
        raise ValueError(f"Config.eps must be > 0, got {cfg.eps!r}")
    if cfg.pad_token_id is not None and not 0 <= cfg.pad_token_id < cfg.d_vocab:
        raise ValueError(f"Config.pad_token_id must be None or in [0, {cfg.d_vocab}), "
                         f"got {cfg.pad_token_id!r}")
    for name in ("hidden_dropout", "attention_dropout"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"Config.{name} must be in [0, 1), got {getattr(cfg, name)!r}")


def as_config(cfg) -> Config:
    """A Config, from a Config, a dict of its fields, or an object that has them (such as
    TransformerLens's HookedTransformerConfig, whose other fields are ignored)."""
    if isinstance(cfg, Config):
        return replace(cfg)  # a copy: two models built from one Config must not share it
    if all(hasattr(cfg, name) for name in ("d_vocab", "n_ctx", "d_model", "n_layers")):
        cfg = {f.name: getattr(cfg, f.name) for f in fields(Config) if hasattr(cfg, f.name)}
    if isinstance(cfg, dict):
        return Config(**cfg)
    raise TypeError(f"HookedEncoder needs a Config (or a dict of its fields), got "
                    f"{type(cfg).__name__}; to load a pretrained model, use "
                    "HookedEncoder.from_pretrained(name_or_folder)")


# The heads each return_type needs.
HEADS_NEEDED = {"logits": ["mlm_head"], "predictions": ["mlm_head"], "loss": ["mlm_head"],
                "pooled": ["pooler"], "nsp_logits": ["pooler", "nsp_head"], None: []}
RETURN_TYPES = tuple(HEADS_NEEDED)


def prepare_input(model: HookedEncoder, input, return_type, token_type_ids, mask, labels):
    """forward()'s checks, made before anything is computed. Tokenizes text input, whose
    token types and padding mask are used unless given."""
    if return_type not in RETURN_TYPES:
        raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
    if not isinstance(input, Tensor):
        input, text_token_types, text_mask = tokenize(model, input)
        token_type_ids = text_token_types if token_type_ids is None else token_type_ids
        mask = text_mask if mask is None else mask
    for head in HEADS_NEEDED[return_type]:
        if head in model.missing_heads:
            raise ValueError(f"return_type={return_type!r} needs the {head}, but the loaded "
                             f"checkpoint has no weights for it (missing: "
                             f"{sorted(model.missing_heads)}); use encoder_output() or a "
                             "return_type whose head was loaded")
    if return_type == "loss":
        labels = check_labels(model, labels, input)
    elif labels is not None:
        raise ValueError(f"labels= needs return_type='loss' (for the loss), got {return_type!r}")
    if return_type == "predictions":
        if model.tokenizer is None or model.tokenizer.mask_token_id is None:
            raise ValueError("return_type='predictions' needs a tokenizer with a [MASK] token")
        if not (input == model.tokenizer.mask_token_id).any():
            raise ValueError("return_type='predictions' needs at least one "
                             f"{model.tokenizer.mask_token} token in the input")
    return input, token_type_ids, mask, labels


def check_inputs(model: HookedEncoder, tokens, token_type_ids, one_zero_attention_mask):
    """encoder_output()'s checks. Returns the three inputs on the model's device, the ids as
    int64 (token_type_ids and the mask stay None when not given)."""
    if isinstance(tokens, Tensor) and tokens.ndim != 2:
        raise ValueError(f"tokens must be 2-D [batch, pos], got shape {tuple(tokens.shape)}"
                         + (" (for one sequence use tokens[None])" if tokens.ndim == 1 else ""))
    if isinstance(tokens, Tensor) and tokens.numel() == 0:
        raise ValueError(f"tokens is empty: shape {tuple(tokens.shape)}")
    tokens = check_ids(model, "tokens", tokens, None, model.cfg.d_vocab)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"the input has {tokens.shape[1]} positions but the model has only "
                         f"n_ctx={model.cfg.n_ctx} position embeddings; shorten the input "
                         "(to_tokens truncates)")
    if token_type_ids is not None:  # (None: BertEmbed takes every token as sentence A)
        token_type_ids = check_ids(model, "token_type_ids", token_type_ids, tokens.shape,
                                   model.cfg.n_token_types)
    mask = one_zero_attention_mask
    if mask is None:
        return tokens, token_type_ids, None
    if not isinstance(mask, Tensor) or mask.shape != tokens.shape:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError("one_zero_attention_mask must be a tensor of the tokens' shape "
                         f"{tuple(tokens.shape)}, got {got}")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("one_zero_attention_mask must hold only 1 (attend) and 0 (padding)")
    return tokens, token_type_ids, mask.to(tokens.device)


def check_ids(model: HookedEncoder, name: str, ids, shape, high: int) -> Tensor:
    """ids must be an integer tensor (of the given shape) with values in [0, high)."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got dtype {ids.dtype} (use .long())")
    if shape is not None and ids.shape != shape:
        raise ValueError(f"{name} must have the tokens' shape {tuple(shape)}, "
                         f"got {tuple(ids.shape)}")
    low, top = int(ids.min()), int(ids.max())
    if low < 0 or top >= high:
        raise ValueError(f"{name} must lie in [0, {high}), got values from {low} to {top}")
    return ids.to(model.W_E.device, torch.long)


def check_labels(model: HookedEncoder, labels, tokens) -> Tensor:
    if labels is None:
        raise ValueError("return_type='loss' needs labels [batch, pos]: token ids, "
                         "-100 where not scored")
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a tensor, got {type(labels).__name__}")
    if labels.shape != tokens.shape or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be integer ids of the tokens' shape {tuple(tokens.shape)}, "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    scored = labels != -100
    if not scored.any():
        raise ValueError("labels are all -100: no position to compute the loss on")
    if (labels[scored] < 0).any() or (labels[scored] >= model.cfg.d_vocab).any():
        raise ValueError(f"labels must be -100 or token ids in [0, {model.cfg.d_vocab})")
    return labels.to(model.W_E.device, torch.long)


def tokenize(model: HookedEncoder, input, move_to_device: bool = True, truncate: bool = True):
    """Tokenize a string, a list of strings, a (sentence A, sentence B) pair or a list of pairs.
    Returns (tokens, token_type_ids, attention_mask), each [batch, pos]."""
    is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and all(isinstance(s, str) for s in x)
    if isinstance(input, str) or is_pair(input):
        input = [input]
    is_text = isinstance(input, list) and input and (all(isinstance(s, str) for s in input)
                                                     or all(is_pair(p) for p in input))
    if model.tokenizer is None:
        raise ValueError("text input needs a tokenizer: pass tokenizer= to HookedEncoder (or use "
                         "HookedEncoder.from_pretrained), or pass token ids [batch, pos] instead"
                         if is_text else f"token ids must be a tensor, got a {type(input).__name__}"
                         ": pass torch.tensor(ids) (text input needs a tokenizer; there is none)")
    if not is_text:
        raise TypeError("input must be a string, a non-empty list of strings, a (sentence A, "
                        "sentence B) pair, a list of such pairs, or token ids [batch, pos] as a "
                        f"tensor (torch.tensor(ids)); got {type(input).__name__}")
    first = [text if isinstance(text, str) else text[0] for text in input]
    second = None if isinstance(input[0], str) else [pair[1] for pair in input]
    max_length = model.cfg.n_ctx if truncate else None
    encoding = model.tokenizer(first, second, return_tensors="pt", padding=True,
                               truncation=truncate, max_length=max_length)
    tokens = encoding["input_ids"]
    token_type_ids = encoding.get("token_type_ids", torch.zeros_like(tokens))
    attention_mask = encoding.get("attention_mask", torch.ones_like(tokens))
    if not move_to_device:
        return tokens, token_type_ids, attention_mask
    device = model.W_E.device
    return tokens.to(device), token_type_ids.to(device), attention_mask.to(device)


def predicted_tokens(model: HookedEncoder, tokens: Tensor, logits: Tensor) -> list[list[str]]:
    """For each sequence, the tokens the model predicts at its [MASK] positions, in order."""
    predicted = logits.argmax(dim=-1)  # [batch, pos]
    is_mask = (tokens == model.tokenizer.mask_token_id).to(predicted.device)  # [batch, pos]
    to_strings = model.tokenizer.convert_ids_to_tokens
    return [to_strings(predicted[i][is_mask[i]].tolist()) for i in range(len(tokens))]


# ---------------------------------------------------------------------------------------------
# Loading HuggingFace weights
# ---------------------------------------------------------------------------------------------


def config_from_hf(hf_config, tie_word_embeddings: bool = False) -> Config:
    """Config.from_hf(): the Config of a transformers.BertConfig, or an error naming what this
    file does not implement."""
    get = lambda name, default=None: getattr(hf_config, name, default)
    if get("model_type") != "bert":
        raise ValueError(f"not a BERT config: model_type is {get('model_type')!r}, expected 'bert'")
    if get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"position_embedding_type={get('position_embedding_type')!r} is not "
                         "supported: hooked_bert only implements BERT's absolute position "
                         "embeddings")
    if get("is_decoder", False) or get("add_cross_attention", False):
        raise ValueError("decoder BERTs (is_decoder / add_cross_attention) are not supported")
    if get("hidden_act") not in ACTIVATIONS:
        raise ValueError(f"hidden_act={get('hidden_act')!r} is not supported; "
                         f"supported: {sorted(ACTIVATIONS)}")
    d_model, n_heads = hf_config.hidden_size, hf_config.num_attention_heads
    if d_model % n_heads != 0:
        raise ValueError(f"hidden_size {d_model} is not a multiple of num_attention_heads "
                         f"{n_heads}")
    return Config(
        d_vocab=hf_config.vocab_size, n_ctx=hf_config.max_position_embeddings, d_model=d_model,
        n_heads=n_heads, d_head=d_model // n_heads, d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers, n_token_types=hf_config.type_vocab_size,
        eps=hf_config.layer_norm_eps, act_fn=hf_config.hidden_act,
        hidden_dropout=hf_config.hidden_dropout_prob,
        attention_dropout=hf_config.attention_probs_dropout_prob,
        initializer_range=hf_config.initializer_range, pad_token_id=hf_config.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )


# Each head, and the HF weight whose presence says a state dict has it. The unembedding comes
# with the masked-LM head.
HF_HEADS = {"pooler": "pooler.dense.weight", "nsp_head": "cls.seq_relationship.weight",
            "mlm_head": "cls.predictions.transform.dense.weight",
            "unembed": "cls.predictions.transform.dense.weight"}


def hf_weight_table(cfg: Config, hf_names) -> list[tuple[str, str, tuple, Callable]]:
    """Every weight to load: (our name, HF name, HF shape, HF tensor -> ours), for the heads
    whose weights are among hf_names."""
    d_model, n_heads, d_head = cfg.d_model, cfg.n_heads, cfg.d_head
    same = lambda w: w
    transpose = lambda w: w.T  # nn.Linear keeps [out, in] for x @ weight.T; ours are [in, out]
    # [(head_index d_head), d_model] -> [head_index, d_model, d_head], and [d_model, (head_index
    # d_head)] -> [head_index, d_head, d_model]: the heads are blocks of d_head rows or columns.
    split_heads_in = lambda w: w.T.reshape(d_model, n_heads, d_head).permute(1, 0, 2)
    split_heads_out = lambda w: w.T.reshape(n_heads, d_head, d_model)
    split_bias = lambda b: b.reshape(n_heads, d_head)

    def linear(ours_w, ours_b, hf, d_out, d_in, weight=transpose, bias=same):
        return [(ours_w, f"{hf}.weight", (d_out, d_in), weight),
                (ours_b, f"{hf}.bias", (d_out,), bias)]

    def layer_norm(ours, hf):
        return [(f"{ours}.w", f"{hf}.LayerNorm.weight", (d_model,), same),
                (f"{ours}.b", f"{hf}.LayerNorm.bias", (d_model,), same)]

    table = [
        ("embed.embed.W_E", "embeddings.word_embeddings.weight", (cfg.d_vocab, d_model), same),
        ("embed.pos_embed.W_pos", "embeddings.position_embeddings.weight",
         (cfg.n_ctx, d_model), same),
        ("embed.token_type_embed.W_token_type", "embeddings.token_type_embeddings.weight",
         (cfg.n_token_types, d_model), same),
        *layer_norm("embed.ln", "embeddings"),
    ]
    for layer in range(cfg.n_layers):
        ours, hf = f"blocks.{layer}", f"encoder.layer.{layer}"
        for x, name in (("Q", "query"), ("K", "key"), ("V", "value")):
            table += linear(f"{ours}.attn.W_{x}", f"{ours}.attn.b_{x}",
                            f"{hf}.attention.self.{name}", n_heads * d_head, d_model,
                            split_heads_in, split_bias)
        table += linear(f"{ours}.attn.W_O", f"{ours}.attn.b_O", f"{hf}.attention.output.dense",
                        d_model, n_heads * d_head, split_heads_out)
        table += layer_norm(f"{ours}.ln1", f"{hf}.attention.output")
        table += linear(f"{ours}.mlp.W_in", f"{ours}.mlp.b_in", f"{hf}.intermediate.dense",
                        cfg.d_mlp, d_model)
        table += linear(f"{ours}.mlp.W_out", f"{ours}.mlp.b_out", f"{hf}.output.dense",
                        d_model, cfg.d_mlp)
        table += layer_norm(f"{ours}.ln2", f"{hf}.output")
    if HF_HEADS["pooler"] in hf_names:
        table += linear("pooler.W", "pooler.b", "pooler.dense", d_model, d_model)
    if HF_HEADS["nsp_head"] in hf_names:
        table += linear("nsp_head.W", "nsp_head.b", "cls.seq_relationship", 2, d_model)
    if HF_HEADS["mlm_head"] in hf_names:
        table += linear("mlm_head.W", "mlm_head.b", "cls.predictions.transform.dense",
                        d_model, d_model)
        table += layer_norm("mlm_head.ln", "cls.predictions.transform")
        decoder_weight, decoder_bias = hf_decoder_names(hf_names)
        if cfg.tie_word_embeddings:  # W_E under its second name; it must equal the decoder
            table.append(("unembed.W_E", decoder_weight, (cfg.d_vocab, d_model), same))
        else:
            table.append(("unembed.W_U", decoder_weight, (cfg.d_vocab, d_model), transpose))
        table.append(("unembed.b_U", decoder_bias, (cfg.d_vocab,), same))
    return table


def hf_decoder_names(hf_names) -> tuple[str, str]:
    """The HF names of the MLM decoder's weight and bias. The decoder is tied to the token
    embedding, and then not always stored. HF's forward adds cls.predictions.decoder.bias;
    older checkpoints store only its tied copy, cls.predictions.bias."""
    weight, bias = "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"
    if weight not in hf_names:
        weight = "embeddings.word_embeddings.weight"
    return weight, bias if bias in hf_names else "cls.predictions.bias"


def convert_hf_state_dict(state_dict: dict[str, Tensor], cfg: Config) -> tuple[dict, set[str]]:
    """Rename and reshape a HuggingFace BERT state dict into this file's parameters.

    Returns (our state dict, names of the heads the HF state dict has no weights for). Raises
    a ValueError listing every missing, unexpected, wrongly shaped or non-finite weight.
    """
    hf = {}
    for key, value in state_dict.items():
        key = key.removeprefix("bert.")  # BertFor* models keep the encoder under "bert."
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight")  # names of old checkpoints
        key = key.replace("LayerNorm.beta", "LayerNorm.bias")
        hf[key] = value
    if "embeddings.word_embeddings.weight" not in hf:
        raise ValueError("a HookedEncoder's state dict (model.state_dict()): load it with model."
                         "load_state_dict()" if "embed.embed.W_E" in hf else "not a BERT state "
                         f"dict: no embeddings.word_embeddings.weight among {list(hf)[:5]}...")
    if any(value.is_meta for value in hf.values()):
        raise ValueError("the state dict is on the meta device (shapes, no values): pass weights")
    for buffer in ("embeddings.position_ids", "embeddings.token_type_ids"):
        hf.pop(buffer, None)  # constant buffers older checkpoints stored; not weights

    ours, problems = {}, []
    used = {"cls.predictions.bias"}  # a tied copy of the decoder bias, when that is stored too
    for our_name, hf_name, shape, reshape in hf_weight_table(cfg, hf):
        used.add(hf_name)
        if hf_name not in hf:
            problems.append(f"missing: {hf_name}")
        elif tuple(hf[hf_name].shape) != shape:
            problems.append(f"wrong shape: {hf_name} is {tuple(hf[hf_name].shape)}, "
                            f"this config needs {shape}")
        else:
            ours[our_name] = reshape(hf[hf_name])
    word_embeddings = ours.get("embed.embed.W_E")
    if "unembed.W_E" in ours and word_embeddings is not None:  # tied: both names, one weight
        if not torch.equal(ours["unembed.W_E"], word_embeddings):
            problems.append(f"not tied: {hf_decoder_names(hf)[0]} differs from "
                            "embeddings.word_embeddings.weight, so this checkpoint cannot load "
                            "with tie_word_embeddings=True; load it untied")
    problems += [f"not finite (NaN or inf): {key}" for key, value in hf.items()
                 if value.is_floating_point() and not torch.isfinite(value).all()]
    unexpected = [f"unexpected: {key}" for key in hf if key not in used]
    if unexpected:
        problems += unexpected + ["(hooked_bert has the MLM, pooler and next-sentence heads "
                                  "only: drop the keys of any other head, such as a fine-tuned "
                                  "classifier, to load the encoder)"]
    if problems:
        raise ValueError("this state dict does not fit the config:\n  " + "\n  ".join(problems))
    return ours, {head for head, key in HF_HEADS.items() if key not in hf}


def missing_heads_kept_in_state_dict(model: HookedEncoder) -> set[str]:
    """An empty model.missing_heads, which state_dict() saves (a flag per head of HF_HEADS) and
    load_state_dict() restores: saved without a head, a model must not return with a random one."""
    model.register_state_dict_post_hook(save_missing_heads)
    model.register_load_state_dict_pre_hook(load_missing_heads)
    return set()


def save_missing_heads(model, state_dict, prefix, local_metadata):
    flags = [head in model.missing_heads for head in HF_HEADS]
    state_dict[prefix + "missing_heads"] = torch.tensor(flags)


def load_missing_heads(model, state_dict, prefix, *args):
    flags = state_dict.pop(prefix + "missing_heads", torch.zeros(len(HF_HEADS)))  # absent: none
    model.missing_heads = {head for head, missing in zip(HF_HEADS, flags.tolist()) if missing}


def load_state_dict_from_hf(model: HookedEncoder, state_dict: dict[str, Tensor]) -> HookedEncoder:
    """model.load_hf_state_dict(): the weights of a BertForMaskedLM, BertForPreTraining,
    BertForNextSentencePrediction or BertModel. Heads the state dict lacks keep their random
    weights and are listed in model.missing_heads; asking for their output is an error."""
    converted, missing_heads = convert_hf_state_dict(state_dict, model.cfg)
    for name, value in model.state_dict().items():
        if name.split(".")[0] in missing_heads:
            converted[name] = value
    if model.cfg.tie_word_embeddings:  # W_E's second name, even when the MLM head is missing
        converted["unembed.W_E"] = converted["embed.embed.W_E"]
    model.load_state_dict(converted, strict=True)
    model.missing_heads = missing_heads
    return model


def load_pretrained(cls, name_or_path, hf_model=None, tokenizer=None, device=None,
                    dtype=torch.float32, revision=None, tie_word_embeddings=False) -> HookedEncoder:
    """HookedEncoder.from_pretrained(). name_or_path: a str or a pathlib.Path; dtype: a torch dtype,
    its name ("float16") or "auto" (the checkpoint's). With hf_model given, converts that model
    and touches neither the hub nor the disk (pass tokenizer= for text input). README has more."""
    name_or_path = os.path.expanduser(os.fspath(name_or_path))
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but torch finds no GPU: leave device= out (CPU)")
    # The config first: a non-BERT checkpoint or a bad dtype is refused before the weights are read.
    hf_config = hf_model.config if hf_model is not None else read_hf_config(name_or_path, revision)
    cfg = Config.from_hf(hf_config, tie_word_embeddings)
    if dtype == "auto":  # as in HuggingFace: the dtype the checkpoint's config names
        dtype = getattr(hf_config, "dtype", None) or torch.float32
    named = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not (isinstance(named, torch.dtype) and named.is_floating_point):
        raise ValueError(f"dtype must be e.g. torch.float16, 'float16' or 'auto', got {dtype!r}")
    state_dict = hf_model.state_dict() if hf_model else read_hf_weights(name_or_path, revision)
    if hf_model is None and tokenizer is None:
        tokenizer = read_hf_tokenizer(name_or_path, revision)
    model = cls(cfg, tokenizer=tokenizer).load_hf_state_dict(state_dict)
    return model.to(device=device, dtype=named).eval()


def read_hf_config(name_or_path: str, revision=None):
    """The transformers config of a local folder or a hub name, with errors that say what to do."""
    import transformers

    if os.path.isfile(name_or_path):
        raise ValueError(f"{name_or_path!r} is a file: pass the folder that holds it and "
                         f"config.json ({os.path.dirname(name_or_path) or '.'!r})")
    looks_like_a_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_a_path and not os.path.isdir(name_or_path):  # hub names are "name" or "org/name"
        raise FileNotFoundError(f"no folder {name_or_path!r}: it does not exist")
    try:
        return transformers.AutoConfig.from_pretrained(name_or_path, revision=revision)
    except OSError as error:
        if os.path.isdir(name_or_path):
            raise
        raise OSError(f"could not load {name_or_path!r}: there is no such local folder, and the "
                      "HuggingFace hub did not give it (offline?). Pass the path of a folder with "
                      "config.json and the weights.") from error


def read_hf_tokenizer(name_or_path: str, revision=None):
    """The tokenizer of a checkpoint, or None (with a warning) for a local folder without one."""
    import transformers

    files = ("tokenizer.json", "vocab.txt")
    is_folder = os.path.isdir(name_or_path)
    if is_folder and not any(os.path.exists(os.path.join(name_or_path, f)) for f in files):
        warnings.warn(f"{name_or_path!r} has no tokenizer ({' or '.join(files)}): loaded without "
                      "one, so give token ids, or pass tokenizer=")
        return None
    return transformers.AutoTokenizer.from_pretrained(name_or_path, revision=revision)


def read_hf_weights(name_or_path: str, revision=None) -> dict[str, Tensor]:
    """The state dict of a checkpoint (a local folder or a hub name), read without unpickling
    code: safetensors, or torch.load(weights_only=True); a sharded one shard by shard."""
    for filename in ("model.safetensors", "pytorch_model.bin"):
        index = checkpoint_file(name_or_path, filename + ".index.json", revision)
        if index is not None:
            with open(index) as file:
                filenames = sorted(set(json.load(file)["weight_map"].values()))  # the shards
        else:
            filenames = [filename]
        paths = [checkpoint_file(name_or_path, name, revision) for name in filenames]
        if None not in paths:
            return {key: value for path in paths for key, value in read_weights_file(path).items()}
    raise FileNotFoundError(f"found neither model.safetensors nor pytorch_model.bin (nor a sharded "
                            f"*.index.json) for {name_or_path!r}")


def checkpoint_file(name_or_path: str, filename: str, revision=None) -> Optional[str]:
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


def read_weights_file(path: str) -> dict[str, Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"could not read the weights file {path}: {error}") from error


# ---------------------------------------------------------------------------------------------
# Demo: python hooked_bert.py [model name or folder] [text]
# ---------------------------------------------------------------------------------------------


def demo_random_weights():
    """Offline, in seconds: convert a small random HuggingFace BERT and look inside it."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    hf_config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=256,
                           max_position_embeddings=64, attn_implementation="eager")
    hf_model = BertForMaskedLM(hf_config).eval()
    model = HookedEncoder.from_pretrained("a random BertForMaskedLM", hf_model=hf_model)
    tokens = torch.randint(0, hf_config.vocab_size, (2, 12))
    with torch.no_grad():
        hf_logits = hf_model(tokens).logits
        logits, cache = model.run_with_cache(tokens)
    print(f"Largest |our logits - HuggingFace's logits|: {(logits - hf_logits).abs().max():.2e}\n")
    print(f"{len(cache)} hook points fired; their shapes for tokens {tuple(tokens.shape)}:")
    for name, activation in cache.items():
        if not name.startswith("blocks.") or name.startswith("blocks.0."):
            print(f"  {name:42} {tuple(activation.shape)}")
    print("  (blocks.1 has the same hooks as blocks.0)\n")

    # Attention is the only step that moves information between positions: change one token and,
    # with every head zero-ablated, the logits move at that position only.
    edited = tokens.clone()
    edited[:, 5] = (tokens[:, 5] + 1) % hf_config.vocab_size

    def ablate_every_head(z, hook):
        z.zero_()  # z: [batch, pos, head_index, d_head]; no head writes anything

    print("Change the token at position 5: how far the logits move, at position 5 and elsewhere")
    every_head = [(lambda name: name.endswith("hook_z"), ablate_every_head)]
    for label, fwd_hooks in [("intact", []), ("every head zero-ablated", every_head)]:
        with torch.no_grad():
            moved = (model.run_with_hooks(edited, fwd_hooks=fwd_hooks)
                     - model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)).abs().amax(dim=-1)
        print(f"  {label + ':':24} {moved[:, 5].max():.2f} at position 5, up to "
              f"{torch.cat([moved[:, :5], moved[:, 6:]], 1).max():.1e} at the other positions")


def demo_pretrained(name_or_path: str, text: str):
    """Load a real BERT and show what its heads do in `text`: what each head attends to most from
    the tokens between [CLS] and [SEP] (the previous token, itself, the next, or [CLS]/[SEP])."""
    try:
        model = HookedEncoder.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        sys.exit(f"{error}\nWithout the internet, give a local folder, or run "
                 "`python hooked_bert.py` for the offline demo.")
    print(f"Loaded {name_or_path}: {model.cfg}\n")
    mask_token = model.tokenizer.mask_token if model.tokenizer else None
    if "mlm_head" not in model.missing_heads and mask_token and mask_token in text:
        print(f"Predictions at the {mask_token} tokens: {model(text, return_type='predictions')}\n")
    tokens, token_type_ids, mask = model.to_tokens(text)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, token_type_ids=token_type_ids,
                                        one_zero_attention_mask=mask, return_type=None,
                                        names_filter=lambda name: name.endswith("hook_pattern"))
    print(f"Tokens: {model.tokenizer.convert_ids_to_tokens(tokens[0].tolist())}")
    print("What each head attends to most, from the tokens between [CLS] and [SEP] (mean share):")
    kinds = ["the previous token", "itself", "the next token", "[CLS] or [SEP]"]
    heads_of = {kind: [] for kind in kinds}  # kind -> "L0H2 1.00", ...
    words = torch.arange(1, tokens.shape[1] - 1)  # query positions between [CLS] and [SEP]
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer][0]  # [head_index, query_pos, key_pos]
        shares = [pattern[:, words, words + offset] for offset in (-1, 0, 1)]  # [head_index, word]
        shares.append(pattern[:, words][:, :, [0, -1]].sum(dim=-1))  # on [CLS] and [SEP]
        share = torch.stack(shares).mean(dim=-1)  # [kind, head_index]
        for head, kind in enumerate(share.argmax(dim=0).tolist()):
            heads_of[kinds[kind]].append(f"L{layer}H{head} {share[kind, head]:.2f}")
    for kind, heads in heads_of.items():
        listed = ", ".join(heads) if len(heads) <= 8 else f"{len(heads)} heads"
        print(f"  {kind + ':':19} {listed or 'none'}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Look inside a BERT. With no arguments: a small "
                                     "random one, offline, checked against HuggingFace's.")
    parser.add_argument("model", nargs="?", help="a hub name (bert-base-uncased) or a local folder")
    parser.add_argument("text", nargs="?", default="The capital of France is [MASK].",
                        help="the text to look at (default: %(default)s)")
    args = parser.parse_args()
    if args.model:
        demo_pretrained(args.model, args.text)
    else:
        demo_random_weights()
