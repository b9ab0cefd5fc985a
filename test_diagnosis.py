"""Tests of the diagnosis (diagnosis.py) itself: hand-made wrong tensors and wrong blocks get
the right sentence. Repository only: they use the catalogues' formulas (exercise_values.py),
which a student kit does not carry.
"""

from types import SimpleNamespace

import pytest
import torch

import diagnosis
import hooked_bert as hb
from diagnosis import Wiring, run_until, stream_input
from exercise_values import scores_like
from test_hooked_bert import (BLOCK_FLOW, attention_inputs, check, fresh, make_mlp, mlp_input,  # noqa: F401
                              mlp_inputs, ref,
                              small_only)


# --- The diagnosis: hand-made wrong tensors get the right sentence ---------------------------


def diagnosis_of(actual, expected, step, given):
    """The first paragraph of check()'s failure for `actual`, or None if check passes."""
    try:
        check(actual, expected, "THE HINT", step=step, given=given)
    except AssertionError as error:
        return str(error).split("\n\n")[0]
    return None


@small_only
def test_diagnosis_names_the_shape_of_a_difference(ref):
    """Structural signatures, on steps whose catalogue has no such mistake (cfg: d_head 12)."""
    g = attention_inputs(ref, 0)
    z, pattern, scores, out = g["z"], g["pattern"], g["scores"], ref.outputs[
        "bert.encoder.layer.0.attention.output.dense"]
    padded_keys = ref.key_is_padding[:, None, None, :].expand_as(scores)
    cases = [
        (z * 12 ** 0.5, "attention_z", "Attention z: your z is the reference times sqrt(d_head)"),
        (z / 3, "attention_z", "divided by 3"),
        (z.transpose(1, 2), "attention_z", "laid out [batch, head_index, pos, d_head]; expected "
                                           "[batch, pos, head_index, d_head] = (3, 11, 4, 12)"),
        (z.roll(1, dims=2), "attention_z", "head_index entries in another order (rolled by 1"),
        (pattern.transpose(2, 3), "attention_pattern", "with query_pos and key_pos swapped"),
        (scores.masked_fill(padded_keys, -1e9), "attention_scores",
         "differ from the reference only at padded key positions (you: -1e+09"),
        (out + g["b_O"], "attention_out", "off by exactly b_O: you add b_O twice"),
        (pattern.softmax(0), "attention_pattern", "sums to 1 over batch"),
        (torch.where(padded_keys, float("nan"), pattern), "attention_pattern",
         "has NaN only at padded key positions"),
        (z.float(), "attention_z", "dtype torch.float32"),
        (g["v"].clone(), "attention_z", "your z is v, unchanged"),
    ]
    references = dict(attention_z=z, attention_pattern=pattern, attention_scores=scores,
                      attention_out=out)
    for wrong, step, says in cases:
        diagnosis = diagnosis_of(wrong, references[step], step, g)
        assert says in (diagnosis or ""), f"expected {says!r} in: {diagnosis}"
    assert diagnosis_of(z.clone(), z, "attention_z", g) is None, "a right tensor: no failure"
    noise = z + torch.randn_like(z)
    assert diagnosis_of(noise, z, "attention_z", g) == "THE HINT", "nothing fits: the hint first"


@small_only
def test_diagnosis_names_catalogued_mistakes_and_tells_similar_ones_apart(ref):
    g = attention_inputs(ref, 0)
    cases = [
        (scores_like(SimpleNamespace(**g), divide_by=48 ** 0.5), "q . k / sqrt(d_model)"),
        (scores_like(SimpleNamespace(**g), divide_by=12 ** -0.5), "q . k * sqrt(d_head)"),
        (scores_like(SimpleNamespace(**g), divide_by=1), "with no scaling"),  # or after the softmax
        (scores_like(SimpleNamespace(**g), swap=True), "k . q (q and k swapped"),
        (scores_like(SimpleNamespace(**g), mask="queries"), "mask the padded queries"),
    ]
    for wrong, says in cases:
        diagnosis = diagnosis_of(wrong, g["scores"], "attention_scores", g)
        assert diagnosis.startswith("Attention scores: your scores") and says in diagnosis, diagnosis
        assert "swapped" not in diagnosis or "k . q" in says, diagnosis


def test_diagnosis_names_randomness_left_on_in_eval():
    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hook_x = hb.HookPoint()

        def forward(self, x):
            return self.hook_x(torch.nn.functional.dropout(x, 0.5))  # training=True by default

    x = torch.ones(2, 5, 8, dtype=torch.float64)
    seen = run_until(Noisy().eval(), (x,), "hook_x", "THE HINT")
    assert "changes between two calls in eval() mode" in diagnosis_of(seen["hook_x"], x,
                                                                      "embed", {})


# --- The wiring checks: hand-made wrong blocks get the right sentence -------------------------


class PreLNBlock(hb.BertBlock):
    """GPT-2's order: each LayerNorm on its sublayer's input, none on the stream."""

    def forward(self, resid_pre, key_is_padding=None):
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre), key_is_padding))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        resid_post = self.hook_resid_post(resid_mid + self.hook_mlp_out(self.mlp(self.ln2(resid_mid))))
        return self.hook_normalized_resid_post(resid_post)


class ForgetfulBlock(hb.BertBlock):
    """Goes on with what it passed hook_resid_mid, and never calls hook_resid_post."""

    def forward(self, resid_pre, key_is_padding=None):
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(resid_pre, key_is_padding))
        self.hook_resid_mid(resid_pre + attn_out)
        normalized_resid_mid = self.ln1(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(normalized_resid_mid))
        return self.hook_normalized_resid_post(self.ln2(normalized_resid_mid + mlp_out))


@small_only
def test_wiring_names_what_each_call_got(ref):
    resid_pre = stream_input((3, 11, ref.cfg.d_model))
    inputs = dict(resid_pre=resid_pre, key_is_padding=ref.key_is_padding)
    cases = [
        (PreLNBlock, "PreLNBlock.forward passes self.attn ln1(...); it should get hook_resid_pre(...): "
                     "use hook_resid_pre(...), not ln1(...)"),
        (ForgetfulBlock, "ForgetfulBlock.forward passes self.ln1 hook_resid_pre(...) + hook_attn_out(...), "
                         "what went into self.hook_resid_mid, not what it returned"),
        (hb.BertBlock, None),
    ]
    for block_class, says in cases:
        try:
            Wiring(fresh(block_class(ref.cfg)), inputs, BLOCK_FLOW, resid_pre.shape).check("THE HINT")
            message = None
        except AssertionError as error:
            message = str(error).split("\n\n")
            assert message[1:] == ["THE HINT"], message  # one sentence, then the hint
        assert (message is None) if says is None else message[0].startswith(says), (block_class, message)


# --- Crashes, misplaced hooks, functions of a sum, rows of a table (issue 23) -----------------


class PosEmbedOfTokens(hb.PosEmbed):
    def forward(self, tokens):
        return self.W_pos[tokens]  # the token ids, not the positions


class LayerNormWithoutKeepdim(hb.LayerNorm):
    def forward(self, x):
        x = x - x.mean(-1)
        return x / (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt() * self.w + self.b


class MLPWithSwappedNames(hb.MLP):
    def forward(self, x):
        post = self.hook_post(self.act_fn(self.hook_pre(x @ self.W_in + self.b_in)))
        return hb.einsum("batch pos d_mlp, d_model d_mlp -> batch pos d_model", post, self.W_out)


def crash_report(component, args, monkeypatch):
    monkeypatch.setattr(diagnosis, "STUDENT_FILES", [__file__])
    with pytest.raises(BaseException) as caught:
        run_until(component, args, None, "THE HINT")
    return caught.value.hint.split("\n\n")[0]


@small_only
def test_a_crash_names_the_line_the_tensors_and_what_to_do(ref, monkeypatch):
    cfg = ref.cfg
    tokens = torch.full((3, 11), 46)
    x = torch.randn(3, 11, cfg.d_model, dtype=torch.float64)
    cases = [
        (fresh(PosEmbedOfTokens(cfg)), (tokens,), ["return self.W_pos[tokens]", "tokens [batch, pos]",
         "you index self.W_pos (32 rows, one per n_ctx) with tokens, values up to 46",
         "index it with the positions 0..pos-1"]),
        (fresh(LayerNormWithoutKeepdim(cfg)), (x,), ["x [batch, pos, d_model] (3, 11, 48), x.mean(-1) "
         "[batch, pos] (3, 11)", "keep it with keepdim=True"]),
        (fresh(MLPWithSwappedNames(cfg)), (x,), ["the einsum names self.W_out's dimensions [d_model, "
         "d_mlp], but self.W_out is [d_mlp, d_model]"]),
    ]
    for component, args, says in cases:
        report = crash_report(component, args, monkeypatch)
        assert len(report.splitlines()) <= 10, report
        for words in says:
            assert words in report, f"expected {words!r} in:\n{report}"


class MLPHookBeforeActivation(hb.MLP):
    def forward(self, x):
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        post = self.act_fn(self.hook_post(pre))  # the output is right; the hook sees pre
        return post @ self.W_out + self.b_out


@small_only
def test_a_misplaced_hook_is_named_when_the_output_is_right(ref):
    prefix = "bert.encoder.layer.0"
    for mlp_class, says in ((MLPHookBeforeActivation, "MLP hook_post: self.hook_post is called before "
                             "the activation: call it on the activation of pre"),
                            (hb.MLP, None)):
        mlp = fresh(mlp_class(ref.cfg))
        mlp.load_state_dict(make_mlp(ref.cfg, ref.layer(0)).state_dict())
        seen = run_until(mlp, (mlp_input(ref, 0),), "hook_post", "THE HINT",
                         feed={"hook_pre": ref.outputs[f"{prefix}.intermediate.dense"]})
        given = mlp_inputs(ref, mlp, 0, pre=ref.outputs[f"{prefix}.intermediate.dense"],
                           output=ref.outputs[f"{prefix}.output.dense"])
        diagnosis_said = diagnosis_of(seen["hook_post"], ref.outputs[f"{prefix}.intermediate"],
                                      "mlp_post", given)
        assert (diagnosis_said or "").startswith(says) if says else diagnosis_said is None, diagnosis_said


class BlockHookAfterLn1(hb.BertBlock):
    def forward(self, resid_pre, key_is_padding=None):
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(resid_pre, key_is_padding))
        normalized_resid_mid = self.hook_resid_mid(self.ln1(resid_pre + attn_out))
        resid_post = self.hook_resid_post(normalized_resid_mid + self.hook_mlp_out(self.mlp(normalized_resid_mid)))
        return self.hook_normalized_resid_post(self.ln2(resid_post))


class BlockWithLn1Twice(hb.BertBlock):
    def forward(self, resid_pre, key_is_padding=None):
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(resid_pre, key_is_padding))
        normalized_resid_mid = self.ln1(self.hook_resid_mid(resid_pre + attn_out))
        resid_post = self.hook_resid_post(normalized_resid_mid + self.hook_mlp_out(self.mlp(normalized_resid_mid)))
        return self.hook_normalized_resid_post(self.ln1(resid_post))


class BlockWithTanh(hb.BertBlock):
    def forward(self, resid_pre, key_is_padding=None):
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(resid_pre, key_is_padding))
        normalized_resid_mid = self.ln1(self.hook_resid_mid(resid_pre + attn_out))
        mlp_out = self.hook_mlp_out(self.mlp(normalized_resid_mid))
        resid_post = self.hook_resid_post(torch.tanh(normalized_resid_mid + mlp_out))
        return self.hook_normalized_resid_post(self.ln2(resid_post))


@small_only
def test_wiring_names_misplaced_hooks_missing_calls_and_functions_of_a_sum(ref):
    resid_pre = stream_input((3, 11, ref.cfg.d_model))
    inputs = dict(resid_pre=resid_pre, key_is_padding=ref.key_is_padding)
    cases = [
        (BlockHookAfterLn1, "BlockHookAfterLn1.forward passes self.hook_resid_mid ln1(...): "
                            "self.hook_resid_mid is called after ln1"),
        (BlockWithLn1Twice, "BlockWithLn1Twice.forward calls self.ln1 2 times and never calls self.ln2"),
        (BlockWithTanh, "BlockWithTanh.forward passes self.hook_resid_post tanh(ln1(...) + hook_mlp_out(...))"),
    ]
    for block_class, says in cases:
        with pytest.raises(AssertionError) as caught:
            Wiring(fresh(block_class(ref.cfg)), inputs, BLOCK_FLOW, resid_pre.shape).check("THE HINT")
        assert str(caught.value).startswith(says), str(caught.value)


@small_only
def test_an_offset_by_rows_of_a_table_names_the_row(ref):
    W = ref.hf.bert.embeddings.token_type_embeddings.weight.detach()
    ids = ref.token_type_ids
    given = dict(cfg=ref.cfg, token_type_ids=ids, W_token_type=W, key_is_padding=ref.key_is_padding)
    only_b = ids[..., None] * W[1]  # sentence A gets zeros, not row 0
    said = diagnosis_of(only_b, W[ids], "token_type_embed", given)
    assert "lacks row 0 of W_token_type where token_type_ids is 0" in (said or ""), said
    assert diagnosis_of(W[ids] + W[1] * (ids[..., None] == 1), W[ids], "token_type_embed",
                        given).count("adds row 1 of W_token_type") == 1


@small_only
def test_a_function_of_the_reference_and_swapped_or_transposed_weights_are_named(ref):
    g = attention_inputs(ref, 0)
    out = g["output"]
    said = diagnosis_of(torch.tanh(out), out, "attention_out", g)
    assert "your attention output is tanh of the reference" in (said or ""), said
    expected = dict(a=torch.randn(4, 4, dtype=torch.float64), b=torch.randn(4, 4, dtype=torch.float64))
    swapped = dict(a=expected["b"], b=expected["a"])
    assert diagnosis.holds_another(swapped, expected, "a") == (
        "convert_hf_state_dict swaps a and b: each holds the other's values")
    assert "gives a transposed" in diagnosis.holds_another(dict(a=expected["a"].T), expected, "a")
    assert diagnosis.holds_another(expected, expected, "a") is None
