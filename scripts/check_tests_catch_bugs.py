"""Do the tests catch the classic BERT mistakes, and point at the right component?

For each mistake below, this script writes a copy of hooked_bert.py with that mistake into a
temporary folder, runs test_hooked_bert.py against it, and checks that
  1. the test of the component with the mistake fails,
  2. its failure message carries that test's hint, and
  3. the tests of the components before it in the file still pass.
It prints a table and exits 1 if any mistake goes uncaught. Takes two or three minutes:
    python scripts/check_tests_catch_bugs.py
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The component (and step) tests, in the order they appear in test_hooked_bert.py's Part 1.
COMPONENT_TESTS = [
    "test_hook_point_is_identity", "test_activation_functions", "test_embed", "test_pos_embed",
    "test_token_type_embed", "test_layer_norm", "test_layer_norm_of_a_nearly_constant_input",
    "test_layer_norm_scale_hook",
    "test_layer_norm_normalized_hook", "test_bert_embed", "test_bert_embed_without_token_types",
    "test_attention_qkv", "test_attention_scores", "test_attention_pattern",
    "test_attention_pattern_rows_sum_to_one_and_ignore_padding", "test_attention_z", "test_attention_out",
    "test_attention_forward_all_steps_together", "test_attention_does_not_modify_its_input",
    "test_mlp_pre", "test_mlp_post", "test_mlp", "test_block", "test_mlm_head", "test_unembed",
    "test_pooler", "test_nsp_head", "test_convert_hf_state_dict_splits_heads_and_transposes",
]

# (mistake, text in hooked_bert.py, the mistaken text, the test that must catch it, words of its hint)
MISTAKES = [
    ("tanh GELU instead of the exact erf GELU",
     '"gelu": F.gelu,', '"gelu": lambda x: F.gelu(x, approximate="tanh"),',
     "test_activation_functions", "exact erf GELU"),
    ("position ids start at 1",
     "positions = torch.arange(n_pos, device", "positions = 1 + torch.arange(n_pos, device",
     "test_pos_embed", "not from 1"),
    ("eps outside the square root",
     "(x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()", "x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps",
     "test_layer_norm", "INSIDE the square root"),
    ("PyTorch's default eps 1e-5 instead of BERT's 1e-12",
     "self.eps = cfg.eps", "self.eps = 1e-5",
     "test_layer_norm", "eps = 1e-12"),
    ("unbiased variance (divides by n - 1)",
     "(x.pow(2).mean(-1, keepdim=True) + self.eps)", "(x.var(-1, keepdim=True) + self.eps)",
     "test_layer_norm", "biased variance"),
    ("hook_normalized after * w + b (TransformerLens hooks it before)",
     "normalized = self.hook_normalized(x / scale)\n        return (normalized * self.w + self.b).to(dtype)",
     "normalized = self.hook_normalized(x / scale * self.w + self.b)\n        return normalized.to(dtype)",
     "test_layer_norm_normalized_hook", "BEFORE multiplying by w"),
    ("token-type embeddings not added",
     "self.ln(embed + pos_embed + token_type_embed)", "self.ln(embed + pos_embed)",
     "test_bert_embed", "token-type embeddings"),
    ("scores scaled by sqrt(d_model) instead of sqrt(d_head)",
     "/ math.sqrt(self.cfg.d_head)", "/ math.sqrt(self.cfg.d_model)",
     "test_attention_scores", "sqrt(d_head)"),
    ("q and k swapped in the score einsum",
     'key_pos", q, k,', 'key_pos", k, q,',
     "test_attention_scores", "swap q and k"),
    ("padded keys not masked",
     "if key_is_padding is not None:", "if False:",
     "test_attention_scores", "padded keys"),
    ("softmax over the query dimension",
     "attn_scores.softmax(dim=-1)", "attn_scores.softmax(dim=-2)",
     "test_attention_pattern", "KEY dimension"),
    ("heads merged in the wrong order",
     'attn_out = einsum(\n                "batch pos head_index d_head, head_index d_head d_model -> batch pos d_model",\n'
     '                z, self.W_O,\n            )',
     "attn_out = z.transpose(2, 3).reshape(*z.shape[:2], -1) @ self.W_O.reshape(-1, self.W_O.shape[-1])",
     "test_attention_out", "merged in the same order"),
    ("residual added to the pre-LayerNorm stream (LayerNorm order)",
     "resid_post = self.hook_resid_post(normalized_resid_mid + mlp_out)", "resid_post = self.hook_resid_post(resid_mid + mlp_out)",
     "test_block", "post-LN"),
    ("MLM head: LayerNorm before the activation",
     "return self.ln(self.act_fn(x + self.b))", "return self.act_fn(self.ln(x + self.b))",
     "test_mlm_head", "dense, then the activation, then LayerNorm"),
    ("MLM decoder bias forgotten",
     "logits += self.b_U", "logits += 0",
     "test_unembed", "decoder bias"),
    ("pooler on the mean instead of the first token",
     "cls_token = resid[:, 0]", "cls_token = resid.mean(dim=1)",
     "test_pooler", "FIRST token"),
    ("pooler without tanh",
     "return self.hook_pooler_out(torch.tanh(pooled + self.b))", "return self.hook_pooler_out(pooled + self.b)",
     "test_pooler", "tanh"),
    # The kinds of mistake a student's half-written code makes besides a wrong formula:
    ("a step whose hook is never called",
     "attn_scores = self.hook_attn_scores(attn_scores)", "attn_scores = attn_scores",
     "test_attention_scores", "never called self.hook_attn_scores"),
    ("a crash inside a component (a bias of the wrong shape)",
     "k = self.hook_k(einsum(project, resid, self.W_K) + self.b_K)",
     "k = self.hook_k(einsum(project, resid, self.W_K) + self.b_K.T)",
     "test_attention_qkv", "Hint: Attention q, k, v"),
    ("PosEmbed returns a view of W_pos",
     "return self.W_pos[positions]", "return self.W_pos[:n_pos].expand(batch, n_pos, -1)",
     "test_pos_embed", "not a view of W_pos"),
    ("BertEmbed without token types: not sentence A",
     "token_type_ids = torch.zeros_like(tokens)  # everything is sentence A",
     "token_type_ids = torch.ones_like(tokens)",
     "test_bert_embed_without_token_types", "sentence A (token type 0)"),
    ("a crash inside a component (an index out of range)",
     "return self.W_pos[positions]", "return self.W_pos[positions + self.W_pos.shape[0]]",
     "test_pos_embed", "Hint: PosEmbed"),
    ("loader: heads split from the wrong dimension",
     "w.T.reshape(d_model, n_heads, d_head).permute(1, 0, 2)", "w.reshape(n_heads, d_model, d_head)",
     "test_convert_hf_state_dict_splits_heads_and_transposes", "split the OUT dimension"),
    ("loader: an [out, in] weight not transposed",
     "transpose = lambda w: w.T", "transpose = lambda w: w",
     "test_convert_hf_state_dict_splits_heads_and_transposes", "[out, in]"),
]


def run_tests(folder: Path) -> tuple[dict[str, bool], str]:
    """Run the test file in `folder`; returns ({test function: all its cases passed}, output)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "--tb=short", "-p", "no:cacheprovider",
         "test_hooked_bert.py", "-k", " or ".join(COMPONENT_TESTS)],
        cwd=folder, capture_output=True, text=True,
    )
    passed: dict[str, bool] = {}
    for outcome, test in re.findall(r"^(PASSED|FAILED|ERROR) test_hooked_bert\.py::(\w+)", result.stdout, re.M):
        passed[test] = passed.get(test, True) and outcome == "PASSED"
    return passed, result.stdout


def failure_report(output: str, test: str) -> str:
    """The part of pytest's output that reports the failures of `test` (all its cases)."""
    parts = re.split(r"^_{3,} (\S+) _{3,}$", output, flags=re.M)  # [before, name, report, name, report, ...]
    return "".join(report for name, report in zip(parts[1::2], parts[2::2]) if name.split("[")[0] == test)


def main() -> int:
    source = (ROOT / "hooked_bert.py").read_text()
    rows, all_caught = [], True
    for mistake, old, new, test, hint in MISTAKES:
        if source.count(old) != 1:
            raise SystemExit(f"{mistake!r}: the text to change must occur exactly once in hooked_bert.py: {old!r}")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "hooked_bert.py").write_text(source.replace(old, new))
            shutil.copy(ROOT / "test_hooked_bert.py", folder)
            shutil.copy(ROOT / "conftest.py", folder)  # the student's view: hints, one-line stubs
            passed, output = run_tests(folder)
        fails = passed.get(test) is False
        hinted = hint in failure_report(output, test)
        earlier = COMPONENT_TESTS[:COMPONENT_TESTS.index(test)]
        broken_earlier = [name for name in earlier if passed.get(name) is False]
        caught = fails and hinted and not broken_earlier
        all_caught &= caught
        later = [name for name in COMPONENT_TESTS[COMPONENT_TESTS.index(test) + 1:] if passed.get(name) is False]
        rows.append((mistake, test, "yes" if fails else "NO", "yes" if hinted else "NO",
                     "yes" if not broken_earlier else "NO: " + ", ".join(broken_earlier), len(later)))

    header = ("mistake", "test that must fail", "fails", "hint shown", "earlier tests green", "later tests failing")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    print("\nall mistakes caught" if all_caught else "\nSOME MISTAKES WERE NOT CAUGHT")
    return 0 if all_caught else 1


if __name__ == "__main__":
    sys.exit(main())
