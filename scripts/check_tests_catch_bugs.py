"""Do the tests catch the classic BERT mistakes, point at the right component, and name them?

For each mistake below, this script writes a student kit into a temporary folder: hooked_bert.py
with that mistake, test_hooked_bert.py, conftest.py, diagnosis.py and the exercise_values.pt
that scripts/make_exercises.py records once (values, not formulas), and runs the component
tests against it, in file order, up to the test that must catch it, stopping at the first
failure (-x), as the student would. Per mistake it reports
  caught     a test fails;
  localised  the first failing test is that mistake's own component's (step's) test;
  named      that failure's first paragraph (what the board shows first) contains the words
             of the diagnosis, e.g. "q . k / sqrt(d_model)".
MISTAKES have a candidate in the diagnosis catalogues of test_hooked_bert.py; UNLISTED ones have
none, and must be named by a structural signature of the difference (a factor, a permutation,
padding only, randomness, ...). Exits 1 if a mistake is not caught and localised, or a listed
one is not named. NEW: mistakes written without reading the catalogues (issue 23). One pytest
run per mistake, two at a time, after one recording run: slow (half an hour on a busy machine):
    python scripts/check_tests_catch_bugs.py [--only WORDS] [--sets listed unlisted new] [--jobs 2] [--show]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_exercises import KIT_FILES, PYTEST_INI, VALUES_FILE, record_values  # noqa: E402

# The component (and step) tests, in the order they appear in test_hooked_bert.py's Part 1.
COMPONENT_TESTS = [
    "test_hook_point_is_identity", "test_activation_functions", "test_embed", "test_pos_embed",
    "test_token_type_embed", "test_layer_norm", "test_layer_norm_of_a_nearly_constant_input",
    "test_layer_norm_scale_hook",
    "test_layer_norm_normalized_hook", "test_layer_norm_uses_what_its_hooks_return", "test_bert_embed", "test_bert_embed_without_token_types",
    "test_attention_qkv", "test_attention_scores", "test_attention_pattern",
    "test_attention_pattern_rows_sum_to_one_and_ignore_padding", "test_attention_z", "test_attention_out",
    "test_attention_forward_all_steps_together", "test_attention_does_not_modify_its_input",
    "test_attention_uses_what_its_hooks_return", "test_attention_pattern_hook_is_before_dropout",
    "test_mlp_pre", "test_mlp_post", "test_mlp", "test_mlp_uses_what_its_hooks_return",
    "test_block", "test_mlm_head", "test_unembed", "test_unembed_uses_what_its_hooks_return",
    "test_pooler", "test_pooler_uses_what_its_hook_returns", "test_nsp_head",
    "test_nsp_head_uses_what_its_hook_returns", "test_convert_hf_state_dict_splits_heads_and_transposes",
]

# (mistake, text in hooked_bert.py, the mistaken text, the test that must catch it, words its
# failure's first paragraph must contain). Several edits: a tuple of texts and one of mistaken
# texts. The first 24 are the classic ones; then more, one per catalogued candidate or so.
MISTAKES = [
    ("tanh GELU instead of the exact erf GELU",
     '"gelu": F.gelu,', '"gelu": lambda x: F.gelu(x, approximate="tanh"),',
     "test_activation_functions", "equals the tanh GELU"),
    ("position ids start at 1",
     "positions = torch.arange(n_pos, device", "positions = 1 + torch.arange(n_pos, device",
     "test_pos_embed", "count from 1"),
    ("eps outside the square root",
     "(x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()", "x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps",
     "test_layer_norm", "sqrt(var) + eps"),
    ("PyTorch's default eps 1e-5 instead of BERT's 1e-12",
     "self.eps = cfg.eps", "self.eps = 1e-5",
     "test_layer_norm", "eps = 1e-5"),
    ("unbiased variance (divides by n - 1)",
     "(x.pow(2).mean(-1, keepdim=True) + self.eps)", "(x.var(-1, keepdim=True) + self.eps)",
     "test_layer_norm", "unbiased variance"),
    ("hook_normalized after * w + b (TransformerLens hooks it before)",
     "normalized = self.hook_normalized(x / scale)\n        return (normalized * self.w + self.b).to(dtype)",
     "normalized = self.hook_normalized(x / scale * self.w + self.b)\n        return normalized.to(dtype)",
     "test_layer_norm_normalized_hook", "hook_normalized is called after w and b"),
    ("token-type embeddings not added",
     "self.ln(embed + pos_embed + token_type_embed)", "self.ln(embed + pos_embed)",
     "test_bert_embed", "add hook_token_type_embed(...)"),
    ("scores scaled by sqrt(d_model) instead of sqrt(d_head)",
     "/ math.sqrt(self.cfg.d_head)", "/ math.sqrt(self.cfg.d_model)",
     "test_attention_scores", "q . k / sqrt(d_model)"),
    ("q and k swapped in the score einsum",
     'key_pos", q, k,', 'key_pos", k, q,',
     "test_attention_scores", "k . q (q and k swapped"),
    ("padded keys not masked",
     "if key_is_padding is not None:", "if False:",
     "test_attention_scores", "not masked"),
    ("softmax over the query dimension",
     "attn_scores.softmax(dim=-1)", "attn_scores.softmax(dim=-2)",
     "test_attention_pattern", "over the query dimension"),
    ("heads merged in the wrong order",
     'attn_out = einsum(\n                "batch pos head_index d_head, head_index d_head d_model -> batch pos d_model",\n'
     '                z, self.W_O,\n            )',
     "attn_out = z.transpose(2, 3).reshape(*z.shape[:2], -1) @ self.W_O.reshape(-1, self.W_O.shape[-1])",
     "test_attention_out", "heads in the wrong order"),
    ("residual added to the pre-LayerNorm stream (LayerNorm order)",
     "resid_post = self.hook_resid_post(normalized_resid_mid + mlp_out)", "resid_post = self.hook_resid_post(resid_mid + mlp_out)",
     "test_block", "use ln1(...), not hook_resid_mid(...)"),
    ("MLM head: LayerNorm before the activation",
     "return self.ln(self.act_fn(x))", "return self.act_fn(self.ln(x))",
     "test_mlm_head", "use act(resid @ W + b), not (resid @ W + b)"),
    ("MLM decoder bias forgotten",
     "logits += self.b_U", "logits += 0",
     "test_unembed", "lack b_U"),
    ("pooler on the mean instead of the first token",
     "cls_token = resid[:, 0]", "cls_token = resid.mean(dim=1)",
     "test_pooler", "mean over positions"),
    ("pooler without tanh",
     "return self.hook_pooler_out(torch.tanh(pooled + self.b))", "return self.hook_pooler_out(pooled + self.b)",
     "test_pooler", "no tanh"),
    # The kinds of mistake a student's half-written code makes besides a wrong formula:
    ("a step whose hook is never called",
     "attn_scores = self.hook_attn_scores(attn_scores)", "attn_scores = attn_scores",
     "test_attention_scores", "never called self.hook_attn_scores"),
    ("a crash inside a component (a bias of the wrong shape)",
     "k = self.hook_k(einsum(project, resid, self.W_K) + self.b_K)",
     "k = self.hook_k(einsum(project, resid, self.W_K) + self.b_K.T)",
     "test_attention_qkv", "Attention.forward raised RuntimeError"),
    ("PosEmbed returns a view of W_pos",
     "return self.W_pos[positions]", "return self.W_pos[:n_pos].expand(batch, n_pos, -1)",
     "test_pos_embed", "not a view of W_pos"),
    ("BertEmbed without token types: not sentence A",
     "token_type_ids = torch.zeros_like(tokens)  # everything is sentence A",
     "token_type_ids = torch.ones_like(tokens)",
     "test_bert_embed_without_token_types", "sentence A (token type 0)"),
    ("a crash inside a component (an index out of range)",
     "return self.W_pos[positions]", "return self.W_pos[positions + self.W_pos.shape[0]]",
     "test_pos_embed", "PosEmbed.forward raised IndexError"),
    ("loader: heads split from the wrong dimension",
     "w.T.reshape(d_model, n_heads, d_head).permute(1, 0, 2)", "w.reshape(n_heads, d_model, d_head)",
     "test_convert_hf_state_dict_splits_heads_and_transposes", "split the OUT dimension"),
    ("loader: an [out, in] weight not transposed",
     "transpose = lambda w: w.T", "transpose = lambda w: w",
     "test_convert_hf_state_dict_splits_heads_and_transposes", "[out, in]"),
    # More mistakes a catalogue candidate names:
    ("scores divided by d_head", "/ math.sqrt(self.cfg.d_head)", "/ self.cfg.d_head",
     "test_attention_scores", "q . k / d_head"),
    ("scores not scaled", ") / math.sqrt(self.cfg.d_head)", ")",
     "test_attention_scores", "with no scaling"),
    ("scores multiplied by sqrt(d_head)", "/ math.sqrt(self.cfg.d_head)", "* math.sqrt(self.cfg.d_head)",
     "test_attention_scores", "q . k * sqrt(d_head)"),
    ("scores scaled after the softmax",
     (") / math.sqrt(self.cfg.d_head)", "self.hook_pattern(attn_scores.softmax(dim=-1))"),
     (")", "self.hook_pattern(attn_scores.softmax(dim=-1) / math.sqrt(self.cfg.d_head))"),
     "test_attention_scores", "with no scaling"),
    ("padding mask on the queries", "padding = key_is_padding[:, None, None, :]",
     "padding = key_is_padding[:, None, :, None]", "test_attention_scores", "mask the padded queries"),
    ("padding mask inverted", "attn_scores.masked_fill(padding,", "attn_scores.masked_fill(~padding,",
     "test_attention_scores", "mask inverted"),
    ("the 1/0 mask added to the scores",
     "attn_scores = attn_scores.masked_fill(padding, torch.finfo(attn_scores.dtype).min)",
     "attn_scores = attn_scores + (~padding).to(attn_scores.dtype)",
     "test_attention_scores", "add the 1/0 attention mask"),
    ("scores multiplied by the 1/0 mask",
     "attn_scores = attn_scores.masked_fill(padding, torch.finfo(attn_scores.dtype).min)",
     "attn_scores = attn_scores * (~padding).to(attn_scores.dtype)",
     "test_attention_scores", "multiplied by the 1/0 mask"),
    ("mask applied to the pattern, after the softmax",
     ("if key_is_padding is not None:", "self.hook_pattern(attn_scores.softmax(dim=-1))"),
     ("if False:", "self.hook_pattern(attn_scores.softmax(dim=-1).masked_fill("
      "key_is_padding[:, None, None, :], 0))"), "test_attention_scores", "not masked"),
    ("softmax over the heads", "attn_scores.softmax(dim=-1)", "attn_scores.softmax(dim=1)",
     "test_attention_pattern", "over the heads"),
    ("no softmax", "self.hook_pattern(attn_scores.softmax(dim=-1))", "self.hook_pattern(attn_scores)",
     "test_attention_pattern", "no softmax"),
    ("exp of the scores, not normalised", "attn_scores.softmax(dim=-1)", "attn_scores.exp()",
     "test_attention_pattern", "not normalised"),
    ("scores scaled again before the softmax", "attn_scores.softmax(dim=-1)",
     "(attn_scores / math.sqrt(self.cfg.d_head)).softmax(dim=-1)",
     "test_attention_pattern", "already scaled"),
    ("pattern transposed in z", '"batch head_index query_pos key_pos, batch key_pos head_index d_head "',
     '"batch head_index key_pos query_pos, batch key_pos head_index d_head "',
     "test_attention_z", "pattern transposed"),
    ("z summed over the queries", '"-> batch query_pos head_index d_head", pattern, v,',
     '"-> batch key_pos head_index d_head", pattern, v,',
     "test_attention_z", "sums over the query positions"),
    ("b_O forgotten", "return attn_out + self.b_O  # [batch, pos, d_model]",
     "return attn_out  # [batch, pos, d_model]", "test_attention_out", "lacks b_O"),
    ("b_O added once per head", "return attn_out + self.b_O  # [batch, pos, d_model]",
     "return attn_out + self.cfg.n_heads * self.b_O", "test_attention_out", "once per head"),
    ("heads averaged, not summed", "return attn_out + self.b_O  # [batch, pos, d_model]",
     "return attn_out / self.cfg.n_heads + self.b_O", "test_attention_out", "averages the heads"),
    ("q computed with W_K", "q = self.hook_q(einsum(project, resid, self.W_Q) + self.b_Q)",
     "q = self.hook_q(einsum(project, resid, self.W_K) + self.b_Q)",
     "test_attention_qkv", "resid @ W_K + b_Q"),
    ("v without its bias", "v = self.hook_v(einsum(project, resid, self.W_V) + self.b_V)",
     "v = self.hook_v(einsum(project, resid, self.W_V))", "test_attention_qkv", "W_V, no bias"),
    ("tanh GELU in the MLP", "post = self.hook_post(self.act_fn(pre))",
     'post = self.hook_post(F.gelu(pre, approximate="tanh"))', "test_mlp_post", "tanh GELU of pre"),
    ("ReLU in the MLP", "post = self.hook_post(self.act_fn(pre))", "post = self.hook_post(F.relu(pre))",
     "test_mlp_post", "ReLU of pre"),
    ("b_in forgotten", "x @ self.W_in + self.b_in)", "x @ self.W_in)", "test_mlp_pre", "lacks b_in"),
    ("activation on the MLP's output instead of its hidden layer",
     ("post = self.hook_post(self.act_fn(pre))", "return post @ self.W_out + self.b_out  # [batch, pos, d_model]"),
     ("post = self.hook_post(pre)", "return self.act_fn(post @ self.W_out + self.b_out)"),
     "test_mlp_post", "post is pre, unchanged"),
    ("LayerNorm without w and b", "return (normalized * self.w + self.b).to(dtype)",
     "return normalized.to(dtype)", "test_layer_norm", "lacks w and b"),
    ("LayerNorm with w and b swapped", "return (normalized * self.w + self.b).to(dtype)",
     "return (normalized * self.b + self.w).to(dtype)", "test_layer_norm", "w and b swapped"),
    ("LayerNorm statistics over the positions",
     ("x = x - x.mean(-1, keepdim=True)", "(x.pow(2).mean(-1, keepdim=True) + self.eps)"),
     ("x = x - x.mean(1, keepdim=True)", "(x.pow(2).mean(1, keepdim=True) + self.eps)"),
     "test_layer_norm", "over the positions"),
    ("LayerNorm without eps", "self.eps = cfg.eps", "self.eps = 0.0",
     "test_layer_norm", "has no eps"),
    ("LayerNorm does not subtract the mean", "x = x - x.mean(-1, keepdim=True)", "x = x",
     "test_layer_norm", "does not subtract the mean"),
    ("LayerNorm divides by the variance", "(x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()",
     "(x.pow(2).mean(-1, keepdim=True) + self.eps)", "test_layer_norm", "not by its square root"),
    ("token embedding scaled by sqrt(d_model)",
     "return F.embedding(tokens, self.W_E, padding_idx=self.pad_token_id)",
     "return F.embedding(tokens, self.W_E, padding_idx=self.pad_token_id) * self.W_E.shape[1] ** 0.5",
     "test_embed", "W_E[tokens] * sqrt(d_model)"),
    ("token types ignored (all sentence A)", "return self.W_token_type[token_type_ids]",
     "return self.W_token_type[torch.zeros_like(token_type_ids)]",
     "test_token_type_embed", "token types are all 0"),
    ("pooler on the last token", "cls_token = resid[:, 0]", "cls_token = resid[:, -1]",
     "test_pooler", "last token"),
    ("pooler adds its bias after the tanh", "torch.tanh(pooled + self.b)", "torch.tanh(pooled) + self.b",
     "test_pooler", "adds b after the tanh"),
    ("softmax on the MLM logits", "return self.hook_out(logits)", "return self.hook_out(logits.softmax(-1))",
     "test_unembed", "probabilities"),
    ("NSP bias forgotten", "return self.hook_nsp_out(nsp_logits + self.b)",
     "return self.hook_nsp_out(nsp_logits)", "test_nsp_head", "lack b"),
    # Wiring: what goes into each sub-module and hook, and going on with what a hook returns.
    ("a hook's return value ignored (the scores)", "attn_scores = self.hook_attn_scores(attn_scores)",
     "self.hook_attn_scores(attn_scores)", "test_attention_uses_what_its_hooks_return",
     "ignores what self.hook_attn_scores returns"),
    ("a hook's return value ignored (LayerNorm's scale)",
     "scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())",
     "scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt(); self.hook_scale(scale)",
     "test_layer_norm_uses_what_its_hooks_return", "ignores what self.hook_scale returns"),
    ("a hook's return value ignored (the MLP's post)", "post = self.hook_post(self.act_fn(pre))",
     "post = self.act_fn(pre); self.hook_post(post)", "test_mlp_uses_what_its_hooks_return",
     "ignores what self.hook_post returns"),
    ("a hook's return value ignored (Unembed's input)", "x = self.hook_in(x)", "self.hook_in(x)",
     "test_unembed_uses_what_its_hooks_return", "go on with x = self.hook_in(x)"),
    ("a hook's return value ignored (the block's resid_mid)",
     "resid_mid = self.hook_resid_mid(resid_pre + attn_out)",
     "resid_mid = resid_pre + attn_out; self.hook_resid_mid(resid_mid)",
     "test_block", "what went into self.hook_resid_mid"),
    ("a hook's return value ignored (the token embedding)", "embed = self.hook_embed(self.embed(tokens))",
     "embed = self.embed(tokens); self.hook_embed(embed)", "test_bert_embed", "what went into self.hook_embed"),
    ("hook_pattern after dropout",
     "pattern = self.hook_pattern(attn_scores.softmax(dim=-1))  # each row sums to 1 over keys\n"
     "        pattern = self.dropout(pattern)",
     "pattern = self.hook_pattern(self.dropout(attn_scores.softmax(dim=-1)))",
     "test_attention_pattern_hook_is_before_dropout", "taken after dropout"),
    ("hook_resid_mid after ln1",
     "resid_mid = self.hook_resid_mid(resid_pre + attn_out)\n"
     "        normalized_resid_mid = self.ln1(resid_mid)",
     "resid_mid = resid_pre + attn_out\n"
     "        normalized_resid_mid = self.hook_resid_mid(self.ln1(resid_mid))",
     "test_block", "passes self.hook_resid_mid ln1(...)"),
    ("no residual before ln1", "self.hook_resid_mid(resid_pre + attn_out)", "self.hook_resid_mid(attn_out)",
     "test_block", "add hook_resid_pre(...)"),
    ("no residual before ln2", "self.hook_resid_post(normalized_resid_mid + mlp_out)",
     "self.hook_resid_post(mlp_out)", "test_block", "add ln1(...)"),
    ("pre-LN block, as in GPT-2",
     "attn_out = self.hook_attn_out(self.dropout(self.attn(resid_pre, key_is_padding)))",
     "attn_out = self.hook_attn_out(self.dropout(self.attn(self.ln1(resid_pre), key_is_padding)))",
     "test_block", "passes self.attn ln1(...)"),
    ("MLM head without its activation", "return self.ln(self.act_fn(x))",
     "return self.ln(x)", "test_mlm_head", "use act(resid @ W + b)"),
]

# Mistakes no catalogue candidate describes: a structural signature must name them.
UNLISTED = [
    ("scores divided by 3 * sqrt(d_head)", "/ math.sqrt(self.cfg.d_head)",
     "/ (3 * math.sqrt(self.cfg.d_head))", "test_attention_scores", "divided by 3"),
    ("padded keys get -10000 (old BERT's value), not the dtype's minimum",
     "torch.finfo(attn_scores.dtype).min)", "-10000.0)",
     "test_attention_scores", "only at padded key positions"),
    ("q's heads rolled by one", "q = self.hook_q(einsum(project, resid, self.W_Q) + self.b_Q)",
     "q = self.hook_q((einsum(project, resid, self.W_Q) + self.b_Q).roll(1, dims=2))",
     "test_attention_qkv", "rolled by 1"),
    ("positions reversed", "positions = torch.arange(n_pos, device",
     "positions = torch.arange(n_pos - 1, -1, -1, device", "test_pos_embed", "reversed"),
    ("the last position clamped to the one before",
     "positions = torch.arange(n_pos, device=tokens.device)",
     "positions = torch.arange(n_pos, device=tokens.device).clamp(max=n_pos - 2)",
     "test_pos_embed", "only at pos 10"),
    ("LayerNorm statistics over the batch",
     ("x = x - x.mean(-1, keepdim=True)", "(x.pow(2).mean(-1, keepdim=True) + self.eps)"),
     ("x = x - x.mean(0, keepdim=True)", "(x.pow(2).mean(0, keepdim=True) + self.eps)"),
     "test_layer_norm", "mean 0 and variance 1 over batch"),
    ("b_in added twice", "x @ self.W_in + self.b_in)", "x @ self.W_in + 2 * self.b_in)",
     "test_mlp_pre", "you add b_in twice"),
    ("b_out added twice", "return post @ self.W_out + self.b_out  # [batch, pos, d_model]",
     "return post @ self.W_out + 2 * self.b_out", "test_mlp", "you add b_out twice"),
    ("attention dropout left on in eval()", "pattern = self.dropout(pattern)",
     "pattern = F.dropout(pattern, self.cfg.attention_dropout)",
     "test_attention_z", "changes between two calls"),
    ("z with the heads before the positions", '"-> batch query_pos head_index d_head", pattern, v,',
     '"-> batch head_index query_pos d_head", pattern, v,',
     "test_attention_z", "laid out [batch, head_index, pos, d_head]"),
    ("padded tokens' z zeroed", "        # Each head writes back through its own W_O",
     "        z = z.masked_fill(key_is_padding[:, :, None, None], 0)\n"
     "        # Each head writes back through its own W_O",
     "test_attention_out", "only at padded positions"),
    ("MLM logits in float32", "logits += self.b_U", "logits = logits.float() + self.b_U.float()",
     "test_unembed", "dtype torch.float32"),
    ("a log on the MLM logits", "return self.hook_out(logits)", "return self.hook_out(logits.log())",
     "test_unembed", "have NaN"),
    ("pooler's batch rows reversed", "cls_token = resid[:, 0]", "cls_token = resid.flip(0)[:, 0]",
     "test_pooler", "batch entries in another order (reversed)"),
    ("NSP logits in the other order", "return self.hook_nsp_out(nsp_logits + self.b)",
     "return self.hook_nsp_out((nsp_logits + self.b).flip(-1))",
     "test_nsp_head", "nsp_class entries in another order"),
    ("the attention output added twice", "self.hook_resid_mid(resid_pre + attn_out)",
     "self.hook_resid_mid(resid_pre + 2 * attn_out)", "test_block", "hook_resid_pre(...) + 2 * hook_attn_out(...)"),
    ("ln2 applied twice", "self.hook_normalized_resid_post(self.ln2(resid_post))",
     "self.hook_normalized_resid_post(self.ln2(self.ln2(resid_post)))", "test_block",
     "calls self.ln2 2 times"),
    ("the MLP reads the stream before ln1", "self.mlp(normalized_resid_mid)", "self.mlp(resid_mid)",
     "test_block", "passes self.mlp hook_resid_mid(...)"),
    ("token types looked up from the token ids", "self.token_type_embed(token_type_ids)",
     "self.token_type_embed(tokens)", "test_bert_embed", "tokens, not token_type_ids"),
    ("the pooler's hook return ignored", "return self.hook_pooler_out(torch.tanh(pooled + self.b))",
     "self.hook_pooler_out(torch.tanh(pooled + self.b))\n        return torch.tanh(pooled + self.b)",
     "test_pooler_uses_what_its_hook_returns", "ignores what self.hook_pooler_out returns"),
    ("v's hook return ignored", "v = self.hook_v(einsum(project, resid, self.W_V) + self.b_V)",
     "v = einsum(project, resid, self.W_V) + self.b_V; self.hook_v(v)",
     "test_attention_uses_what_its_hooks_return", "ignores what self.hook_v returns"),
]

# Mistakes written for issue 23 by a helper who had not read the catalogues (crashes, hooks at
# the wrong point, extra or misplaced operations); their words are what a teacher would say.
# Ten of the words were the writer's guesses at a phrasing, changed to the diagnosis's words
# for the same fact ("W_E[tokens] * sqrt(d_model)" for "multiplied by sqrt(d_model)", "not the
# padded keys" for "mask the key positions", ...). Three need a path the component tests reach
# only in train(), with use_attn_result, or default token types (the lead's tests).
NEW = [
    # ---------------------------------------------------------------- Embed
    # (a) confirmed: IndexError/RuntimeError (index_select needs a 1-D index) in eval forward.
    ("W_E.index_select with the 2-D tokens",
     "return F.embedding(tokens, self.W_E, padding_idx=self.pad_token_id)  # [batch, pos, d_model]",
     "return self.W_E.index_select(0, tokens)  # [batch, pos, d_model]",
     "test_embed", "index_select needs a 1-D index"),
    # (c) confirmed: logits and every cached activation after hook_embed change (eval).
    ("token embedding multiplied by sqrt(d_model)",
     "return F.embedding(tokens, self.W_E, padding_idx=self.pad_token_id)  # [batch, pos, d_model]",
     "return F.embedding(tokens, self.W_E, padding_idx=self.pad_token_id) * math.sqrt(self.W_E.shape[1])",
     "test_embed", "W_E[tokens] * sqrt(d_model)"),

    # ---------------------------------------------------------------- PosEmbed
    # (a) confirmed: RuntimeError "The expanded size of the tensor ... must match" (batch != pos).
    ("positions expanded to (batch,) only",
     "positions = torch.arange(n_pos, device=tokens.device).expand(batch, n_pos)",
     "positions = torch.arange(n_pos, device=tokens.device).expand(batch)",
     "test_pos_embed", "expand(batch, n_pos)"),
    # (c) confirmed: logits change (rows 1..n_pos of W_pos instead of 0..n_pos-1).
    ("positions counted from 1",
     "positions = torch.arange(n_pos, device=tokens.device).expand(batch, n_pos)",
     "positions = torch.arange(1, n_pos + 1, device=tokens.device).expand(batch, n_pos)",
     "test_pos_embed", "positions count from 1"),

    # ---------------------------------------------------------------- TokenTypeEmbed
    # (a) confirmed: IndexError "tensors used as indices must be long, int, byte or bool".
    ("token_type_ids converted to float before indexing",
     "return self.W_token_type[token_type_ids]  # [batch, pos, d_model]",
     "return self.W_token_type[token_type_ids.float()]  # [batch, pos, d_model]",
     "test_token_type_embed", "float index"),
    # (c) confirmed: logits change (sentence A gets zeros instead of W_token_type[0]).
    ("only sentence B gets a segment embedding (W_token_type[1] times the id)",
     "return self.W_token_type[token_type_ids]  # [batch, pos, d_model]",
     "return token_type_ids[..., None] * self.W_token_type[1]  # [batch, pos, d_model]",
     "test_token_type_embed", "lacks row 0 of W_token_type"),

    # ---------------------------------------------------------------- LayerNorm
    # (a) confirmed: RuntimeError in the broadcast [batch, pos, d_model] - [batch, pos].
    ("mean taken without keepdim=True",
     "x = x - x.mean(-1, keepdim=True)  # [batch, pos, d_model]",
     "x = x - x.mean(-1)  # [batch, pos, d_model]",
     "test_layer_norm", "keepdim=True"),
    # (a) confirmed: RuntimeError, (batch, pos) from the matmul + b (d_model,) do not broadcast.
    ("w applied with a matrix product (normalized @ self.w)",
     "return (normalized * self.w + self.b).to(dtype)  # [batch, pos, d_model]",
     "return (normalized @ self.w + self.b).to(dtype)  # [batch, pos, d_model]",
     "test_layer_norm", "elementwise, not a matrix product"),
    # (b) confirmed: output unchanged in eval; cached hook_scale differs (it is the variance + eps).
    ("hook_scale called on the variance, sqrt taken after the hook",
     "scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())",
     "scale = self.hook_scale(x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()",
     "test_layer_norm_scale_hook", "hook_scale is called on the variance"),
    # (b) confirmed: output unchanged in eval; cached hook_normalized differs (centred x, not divided).
    ("hook_normalized called before dividing by scale",
     "normalized = self.hook_normalized(x / scale)",
     "normalized = self.hook_normalized(x) / scale",
     "test_layer_norm_normalized_hook", "hook_normalized is called before dividing"),
    # (c) confirmed: logits change (random LayerNorm inputs have a non-zero mean).
    ("variance of the uncentred x (centred x kept only for the numerator)",
     ("x = x - x.mean(-1, keepdim=True)  # [batch, pos, d_model]",
      "normalized = self.hook_normalized(x / scale)"),
     ("centred = x - x.mean(-1, keepdim=True)  # [batch, pos, d_model]",
      "normalized = self.hook_normalized(centred / scale)"),
     "test_layer_norm", "variance of the centred x"),

    # ---------------------------------------------------------------- BertEmbed
    # (c) confirmed: with token_type_ids=None, IndexError inside TokenTypeEmbed (float indices);
    # with token_type_ids given, nothing changes.
    ("default token_type_ids made with torch.zeros (float)",
     "token_type_ids = torch.zeros_like(tokens)  # everything is sentence A",
     "token_type_ids = torch.zeros(tokens.shape)  # everything is sentence A",
     "test_bert_embed_without_token_types", "integer (long) token_type_ids"),
    # (a) confirmed: TypeError "sum() takes at most 2 arguments (3 given)".
    ("builtin sum called with the three embeddings as arguments",
     "return self.dropout(self.ln(embed + pos_embed + token_type_embed))  # [batch, pos, d_model]",
     "return self.dropout(self.ln(sum(embed, pos_embed, token_type_embed)))  # [batch, pos, d_model]",
     "test_bert_embed", "sum() takes at most 2 arguments"),
    # (b) confirmed: output unchanged; cached hook_token_type_embed is the ids [batch, pos].
    ("hook_token_type_embed called on the ids, before the lookup",
     "token_type_embed = self.hook_token_type_embed(self.token_type_embed(token_type_ids))",
     "token_type_embed = self.token_type_embed(self.hook_token_type_embed(token_type_ids))",
     "test_bert_embed", "hook_token_type_embed is called on token_type_ids"),

    # ---------------------------------------------------------------- Attention
    # (b) confirmed: output unchanged; cached hook_attn_scores differs (not divided by sqrt(d_head)).
    ("hook_attn_scores called before dividing by sqrt(d_head)",
     ("attn_scores = einsum(\n",
      ") / math.sqrt(self.cfg.d_head)",
      "        attn_scores = self.hook_attn_scores(attn_scores)\n"),
     ("attn_scores = self.hook_attn_scores(einsum(\n",
      ")) / math.sqrt(self.cfg.d_head)",
      ""),
     "test_attention_scores", "before dividing by sqrt(d_head)"),
    # (b) confirmed: output unchanged; cached hook_k differs by b_K.
    ("hook_k called before adding b_K",
     "k = self.hook_k(einsum(project, resid, self.W_K) + self.b_K)",
     "k = self.hook_k(einsum(project, resid, self.W_K)) + self.b_K",
     "test_attention_qkv", "hook_k is called before the bias"),
    # (c) confirmed: logits change with a padded row (padded query rows masked, keys not).
    ("padding mask indexed as query positions",
     "padding = key_is_padding[:, None, None, :]  # [batch, 1, 1, key_pos]",
     "padding = key_is_padding[:, None, :, None]  # [batch, 1, 1, key_pos]",
     "test_attention_scores", "not the padded keys"),
    # (a) confirmed: TypeError from torch.finfo(tensor), only when a mask is given.
    ("torch.finfo given the tensor, not its dtype",
     "torch.finfo(attn_scores.dtype).min",
     "torch.finfo(attn_scores).min",
     "test_attention_scores", "torch.finfo(attn_scores.dtype)"),
    # (a) confirmed: hook_z gets [batch, head_index, pos, d_head]; the W_O einsum then raises
    # (head_index has two sizes).
    ("z einsum outputs batch head_index query_pos d_head",
     "\"-> batch query_pos head_index d_head\", pattern, v,",
     "\"-> batch head_index query_pos d_head\", pattern, v,",
     "test_attention_z", "expected [batch, pos, head_index, d_head]"),
    # (c) confirmed: with use_attn_result=True, the attention output is [batch, head, d_model]
    # and the residual add crashes or the values change; unchanged with use_attn_result=False.
    ("per-head results summed over positions (dim=1) instead of heads",
     "return result.sum(dim=2) + self.b_O  # [batch, pos, d_model]",
     "return result.sum(dim=1) + self.b_O  # [batch, pos, d_model]",
     "test_attention_out", "sum over the heads"),

    # ---------------------------------------------------------------- MLP
    # (b) confirmed: output unchanged; cached hook_post equals hook_pre.
    ("hook_post called before the activation",
     "post = self.hook_post(self.act_fn(pre))",
     "post = self.act_fn(self.hook_post(pre))",
     "test_mlp_post", "hook_post is called before the activation"),
    # (b) confirmed: output unchanged; cached hook_pre is x [batch, pos, d_model].
    ("hook_pre called on the input x, before W_in",
     "pre = self.hook_pre(x @ self.W_in + self.b_in)",
     "pre = self.hook_pre(x) @ self.W_in + self.b_in",
     "test_mlp_pre", "hook_pre is called on the input"),
    # (a) confirmed: einsum error, d_mlp and d_model each get two sizes (W_out read as [d_model, d_mlp]).
    ("W_out used transposed (the nn.Linear habit)",
     "return post @ self.W_out + self.b_out",
     "return post @ self.W_out.T + self.b_out",
     "test_mlp", "W_out is [d_mlp, d_model]"),
    # (c) confirmed: logits change (act_fn is exact "gelu" in the check).
    ("tanh-approximate GELU hard-coded instead of self.act_fn",
     "post = self.hook_post(self.act_fn(pre))",
     "post = self.hook_post(F.gelu(pre, approximate=\"tanh\"))",
     "test_mlp_post", "use self.act_fn"),

    # ---------------------------------------------------------------- BertBlock
    # (a) confirmed: TypeError, LayerNorm.forward() takes 2 positional arguments but 3 were given.
    ("key_is_padding passed to ln1 too",
     "normalized_resid_mid = self.ln1(resid_mid)",
     "normalized_resid_mid = self.ln1(resid_mid, key_is_padding)",
     "test_block", "passes self.ln1 2 argument(s); it takes 1"),
    # (b) confirmed: same logits in eval; in train() (same seed) cached hook_attn_out differs.
    ("hook_attn_out called before the dropout",
     "attn_out = self.hook_attn_out(self.dropout(self.attn(resid_pre, key_is_padding)))",
     "attn_out = self.dropout(self.hook_attn_out(self.attn(resid_pre, key_is_padding)))",
     "test_block", "hook_attn_out is called before the dropout"),
    # (b) confirmed: logits unchanged; cached hook_resid_mid equals ln1's output.
    ("hook_resid_mid called on ln1's output",
     ("resid_mid = self.hook_resid_mid(resid_pre + attn_out)",
      "normalized_resid_mid = self.ln1(resid_mid)"),
     ("resid_mid = resid_pre + attn_out",
      "normalized_resid_mid = self.hook_resid_mid(self.ln1(resid_mid))"),
     "test_block", "hook_resid_mid is called after ln1"),
    # (c) confirmed: logits change (every position gets batch row 0's attention output).
    ("attention output indexed [0] as if it returned a tuple (HuggingFace style)",
     "self.dropout(self.attn(resid_pre, key_is_padding)))",
     "self.dropout(self.attn(resid_pre, key_is_padding)[0]))",
     "test_block", "attn returns a tensor, not a tuple"),

    # ---------------------------------------------------------------- BertMLMHead
    # (c) confirmed: logits change (the repeated name takes W's diagonal).
    ("the same dimension name twice for W (einsum takes its diagonal)",
     "einsum(\"batch d_model_in, d_model_in d_model -> batch d_model\", cls_token, self.W)",
     "einsum(\"batch d_model, d_model d_model -> batch d_model\", cls_token, self.W)",
     "test_pooler", "diagonal of W"),
    # (a) confirmed: TypeError, layer_norm's normalized_shape must be a tuple of ints.
    ("F.layer_norm called with w and b in place of normalized_shape",
     "return self.ln(self.act_fn(x))  # [batch, pos, d_model]",
     "return F.layer_norm(self.act_fn(x), self.ln.w, self.ln.b)  # [batch, pos, d_model]",
     "test_mlm_head", "call self.ln"),

    # ---------------------------------------------------------------- Unembed
    # (a) confirmed: with tie_word_embeddings=True, einsum error (W_E is [d_vocab, d_model]);
    # untied, nothing changes.
    ("tied W_E used without transposing",
     "W_U = self.W_E.T if self.tied else self.W_U  # [d_model, d_vocab]",
     "W_U = self.W_E if self.tied else self.W_U  # [d_model, d_vocab]",
     "test_unembed", "use self.W_E.T"),
    # (b) confirmed: logits unchanged; cached hook_out differs by b_U.
    ("hook_out called before adding b_U",
     ("        logits += self.b_U  # in place: the logits are by far the largest tensor, so don't copy them\n",
      "return self.hook_out(logits)"),
     ("",
      "return self.hook_out(logits) + self.b_U"),
     "test_unembed", "hook_out is called before the bias"),

    # ---------------------------------------------------------------- BertPooler
    # (c) confirmed: pooled and NSP logits change (last position, a padding token in one row).
    ("last token pooled instead of the first ([CLS])",
     "cls_token = resid[:, 0]  # [batch, d_model]: the first token, [CLS]",
     "cls_token = resid[:, -1]  # [batch, d_model]: the first token, [CLS]",
     "test_pooler", "first token"),
    # (b) confirmed: pooled output unchanged; cached hook_pooler_out is before the tanh.
    ("hook_pooler_out called before the tanh",
     "return self.hook_pooler_out(torch.tanh(pooled + self.b))",
     "return torch.tanh(self.hook_pooler_out(pooled + self.b))",
     "test_pooler", "hook_pooler_out is called before the tanh"),

    # ---------------------------------------------------------------- BertNSPHead
    # (c) confirmed: NSP output changes (probabilities instead of logits).
    ("softmax applied to the NSP logits",
     "return self.hook_nsp_out(nsp_logits + self.b)  # [batch, 2]",
     "return self.hook_nsp_out((nsp_logits + self.b).softmax(dim=-1))  # [batch, 2]",
     "test_nsp_head", "no softmax"),
    # (a) confirmed: RuntimeError, mat1 and mat2 shapes cannot be multiplied.
    ("W transposed in pooled @ W (pooled @ self.W.T)",
     "nsp_logits = einsum(\"batch d_model, d_model nsp_class -> batch nsp_class\", pooled, self.W)",
     "nsp_logits = pooled @ self.W.T",
     "test_nsp_head", "W is [d_model, nsp_class]"),
]

# A plugin for the run: writes the first failing test and its failure's first paragraph.
PROBE = '''
import json, pytest
FIRST = {}
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed and not FIRST and call.excinfo is not None:
        error = call.excinfo.value
        text = (getattr(error, "hint", None) or str(error)).strip()
        FIRST.update(test=item.originalname or item.name, paragraph=text.split("\\n\\n")[0])
def pytest_sessionfinish(session):
    with open("first_failure.json", "w") as file:
        json.dump(FIRST, file)
'''


def mistaken(source: str, mistake: str, old, new) -> str:
    for before, after in zip(*((old, new) if isinstance(old, tuple) else ((old,), (new,)))):
        if source.count(before) != 1:
            raise SystemExit(f"{mistake!r}: the text to change must occur exactly once in "
                             f"hooked_bert.py: {before!r}")
        source = source.replace(before, after)
    return source


def run(source: str, row: tuple, values: Path) -> dict:
    """Run the component tests up to `row`'s test on hooked_bert.py with `row`'s mistake, in a
    student kit: the tests, the board, diagnosis.py and the recorded `values` (no formulas)."""
    mistake, old, new, test, words = row
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "hooked_bert.py").write_text(mistaken(source, mistake, old, new))
        for name in KIT_FILES:  # the student's view: hints, board, diagnosis
            shutil.copy(ROOT / name, folder)
        shutil.copy(values, folder / VALUES_FILE)
        (folder / "pytest.ini").write_text(PYTEST_INI)
        (folder / "first_failure_probe.py").write_text(PROBE)
        tests = COMPONENT_TESTS[:COMPONENT_TESTS.index(test) + 1]
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "-p", "first_failure_probe", *(f"test_hooked_bert.py::{t}" for t in tests)],
                       cwd=folder, capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": str(folder)})
        first = json.loads((folder / "first_failure.json").read_text() or "{}")
    first_test, paragraph = first.get("test"), first.get("paragraph", "")
    return dict(mistake=mistake, test=test, caught=first_test is not None,
                localised=first_test == test, named=words in paragraph, first=first_test,
                paragraph=paragraph)


def table(title: str, results: list[dict], show: bool) -> None:
    print(f"\n{title}")
    header = ("mistake", "its test", "caught", "localised", "named")
    rows = [(r["mistake"], r["test"].removeprefix("test_"), *("yes" if r[k] else "NO" for k in
             ("caught", "localised", "named"))) for r in results]
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    for r in results:
        if show or not (r["localised"] and r["named"]):
            first = "" if r["localised"] else f" (first failing: {r['first']})"
            print(f"  {r['mistake']}{first}:\n    {r['paragraph'][:300]}")
    counts = {k: sum(r[k] for r in results) for k in ("caught", "localised", "named")}
    print(f"{len(results)} mistakes: {counts['caught']} caught, {counts['localised']} localised, "
          f"{counts['named']} named")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="only the mistakes whose description contains this")
    parser.add_argument("--jobs", type=int, default=2, help="mistakes checked at once")
    parser.add_argument("--show", action="store_true", help="print every first paragraph")
    parser.add_argument("--sets", nargs="+", choices=("listed", "unlisted", "new"),
                        default=("listed", "unlisted", "new"), help="which sets of mistakes")
    args = parser.parse_args()
    source = (ROOT / "hooked_bert.py").read_text()
    chosen = {name: [row for row in rows if not args.only or args.only in row[0]]
              for name, rows in (("listed", MISTAKES), ("unlisted", UNLISTED), ("new", NEW))
              if name in args.sets}
    with tempfile.TemporaryDirectory() as tmp:
        values = Path(tmp) / VALUES_FILE
        record_values(values)  # once: what a kit made from this repository carries
        with ThreadPoolExecutor(args.jobs) as pool:
            results = {name: list(pool.map(lambda row: run(source, row, values), rows))
                       for name, rows in chosen.items()}
    titles = dict(listed="Mistakes the catalogues list:",
                  unlisted="Mistakes no catalogue lists (named by the shape of the difference):",
                  new="Mistakes written by someone who had not read the catalogues (issue 23):")
    for name, rows in results.items():
        table(titles[name], rows, args.show)
    everything = [r for rows in results.values() for r in rows]
    good = all(r["caught"] and r["localised"] for r in everything) and all(
        r["named"] for r in results.get("listed", ()))
    print("\nevery mistake caught and localised, every listed one named" if good else
          "\nSOME MISTAKES WERE NOT CAUGHT, LOCALISED OR NAMED")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
