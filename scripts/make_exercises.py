"""Write a student folder: hooked_bert.py with components to write, and the tests that check them.

    python scripts/make_exercises.py OUT_DIR [--blank CLASS ...]

Each chosen class keeps its signature and docstring; the body of its `forward` becomes a stub
that says what to compute, which hooks to call on what, which pytest command checks it, and
ends in `raise NotImplementedError`. By default every BERT component, Embed to BertNSPHead,
is blanked. OUT_DIR gets hooked_bert.py, test_hooked_bert.py, conftest.py (the progress
board), requirements.txt and STUDENT.md, and nothing else: no git history, no tutorial, and
not scripts/check_tests_catch_bugs.py (its mistakes are solution lines).

The classes and their `forward` are found with `ast`, by name, so the script works on any
version of hooked_bert.py that has these classes.
"""

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The stub of each component's forward: what to compute, the hooks, the command that checks it.
STUBS = {
    "Embed": """
        # Look up row `token` of self.W_E for every token: [batch, pos] -> [batch, pos, d_model].
        # (F.embedding with padding_idx=self.pad_token_id also keeps the padding row untrained.)
        # Check: pytest -k test_embed
    """,
    "PosEmbed": """
        # Row `pos` of self.W_pos for positions 0, 1, ..., n_pos - 1, the same for every row of
        # the batch: [batch, pos] -> [batch, pos, d_model]. Return a new tensor, not a view of
        # W_pos (a hook that edits it in place must not change the weights).
        # Check: pytest -k test_pos_embed
    """,
    "TokenTypeEmbed": """
        # Row `token_type` of self.W_token_type: [batch, pos] -> [batch, pos, d_model].
        # Check: pytest -k test_token_type_embed
    """,
    "LayerNorm": """
        # Over the last dimension (d_model) of x [batch, pos, d_model]:
        # 1. centre x (subtract its mean);
        # 2. scale = sqrt(variance + self.eps), [batch, pos, 1], through self.hook_scale;
        # 3. normalized = (centred x) / scale, [batch, pos, d_model], through
        #    self.hook_normalized;
        # 4. return normalized * self.w + self.b.
        # Check: pytest -k test_layer_norm
    """,
    "BertEmbed": """
        # Sum three embeddings, each through its hook ([batch, pos, d_model] each):
        #   self.hook_embed(self.embed(tokens)), self.hook_pos_embed(self.pos_embed(tokens)),
        #   self.hook_token_type_embed(self.token_type_embed(token_type_ids)) (if token_type_ids
        #   is None, every token is sentence A: type 0),
        # then self.ln of the sum, then self.dropout. Call the sub-modules: the test replaces
        # them by stand-ins that check what you pass them.
        # Check: pytest -k test_bert_embed
    """,
    "Attention": """
        # Step by step; each step has its own test, which reads (and feeds) your values through
        # the hooks, so call every hook and go on with what it returns:
        # 1. q, k, v = resid @ W + b for W_Q, W_K, W_V: [batch, pos, head_index, d_head], through
        #    self.hook_q, self.hook_k, self.hook_v.                    pytest -k attention_qkv
        # 2. attn_scores = q . k / sqrt(d_head): [batch, head_index, query_pos, key_pos]; where
        #    key_is_padding (if not None) is True, put torch.finfo(dtype).min; through
        #    self.hook_attn_scores.                                    pytest -k attention_scores
        # 3. pattern = softmax over the keys, through self.hook_pattern, then self.dropout.
        #                                                             pytest -k attention_pattern
        # 4. z = for each query, the pattern-weighted sum of v: [batch, pos, head_index, d_head],
        #    through self.hook_z.                                      pytest -k attention_z
        # 5. output = z @ W_O summed over heads, + b_O: [batch, pos, d_model]. If
        #    self.cfg.use_attn_result: first each head's output [batch, pos, head_index, d_model]
        #    through self.hook_result, then the sum.                  pytest -k attention_out
        # All of it: pytest -k test_attention
    """,
    "MLP": """
        # 1. pre = x @ W_in + b_in: [batch, pos, d_mlp], through self.hook_pre.  pytest -k mlp_pre
        # 2. post = self.act_fn(pre), through self.hook_post.                   pytest -k mlp_post
        # 3. return post @ W_out + b_out: [batch, pos, d_model].
        # All of it: pytest -k test_mlp
    """,
    "BertBlock": """
        # Post-LN, as in BERT (not pre-LN, as in GPT-2): each sublayer reads the residual stream,
        # its output (after self.dropout) is added to it, and THEN comes the LayerNorm.
        # Attention (self.attn, with key_is_padding) and self.ln1, then self.mlp and self.ln2.
        # Hooks, in the order they fire, each [batch, pos, d_model]: self.hook_resid_pre,
        # self.hook_attn_out, self.hook_resid_mid, self.hook_mlp_out, self.hook_resid_post,
        # self.hook_normalized_resid_post (the block's output). Which stream does the MLP's
        # output get added to? The post-LN picture says; the test checks.
        # The test replaces attn, ln1, mlp and ln2 by stand-ins that check what you pass them.
        # Check: pytest -k test_block
    """,
    "BertMLMHead": """
        # resid @ W + b, then self.act_fn, then self.ln: [batch, pos, d_model].
        # Check: pytest -k test_mlm_head
    """,
    "Unembed": """
        # x through self.hook_in; logits = x @ W_U + b_U: [batch, pos, d_vocab], through
        # self.hook_out.
        # Check: pytest -k test_unembed
    """,
    "BertPooler": """
        # Take the first token's ([CLS]) vector [batch, d_model], apply W and b, then tanh;
        # through self.hook_pooler_out.
        # Check: pytest -k test_pooler
    """,
    "BertNSPHead": """
        # pooled @ W + b: two logits per sequence [batch, 2], through self.hook_nsp_out.
        # Check: pytest -k test_nsp_head
    """,
}
COMPONENTS = list(STUBS)  # in the order data flows, as in hooked_bert.py


def find_forward(tree: ast.Module, class_name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "forward":
                    return item
            raise SystemExit(f"class {class_name} in hooked_bert.py has no forward method")
    raise SystemExit(f"hooked_bert.py has no class {class_name}")


def body_lines(source: str, class_name: str) -> tuple[int, int, int]:
    """(first line, line after the last, indentation) of `class_name.forward`'s body after its
    docstring, 0-based. The comments between the signature (or docstring) and the first
    statement belong to the body."""
    forward = find_forward(ast.parse(source), class_name)
    body = forward.body
    first = body[0]
    has_docstring = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                     and isinstance(first.value.value, str))
    statements = body[1:] if has_docstring else body
    lines = source.splitlines(keepends=True)
    if has_docstring:
        start = body[0].end_lineno  # the line after the docstring, 0-based
    else:
        start = body[0].lineno - 1
        while start - 1 >= forward.lineno and lines[start - 1].strip().startswith("#"):
            start -= 1  # comments just above the first statement go too
    indent = (statements or body)[0].col_offset
    return start, forward.end_lineno, indent


def stub(class_name: str, indent: int) -> str:
    text = "\n".join(line.strip() for line in STUBS[class_name].strip("\n").splitlines())
    body = [" " * indent + line for line in text.splitlines()]
    message = f"{class_name}.forward: write it (see above)"
    body.append(" " * indent + f'raise NotImplementedError("{message}")')
    return "\n".join(body) + "\n"


def replace_body(source: str, class_name: str, new_body: str) -> str:
    start, end, _ = body_lines(source, class_name)
    lines = source.splitlines(keepends=True)
    return "".join(lines[:start]) + new_body + "".join(lines[end:])


def blank(source: str, class_names) -> str:
    for name in class_names:
        source = replace_body(source, name, stub(name, body_lines(source, name)[2]))
    ast.parse(source)  # still valid Python
    return source


def original_body(source: str, class_name: str) -> str:
    start, end, _ = body_lines(source, class_name)
    return "".join(source.splitlines(keepends=True)[start:end])


REQUIREMENTS = """\
# Install a CPU build of PyTorch first if you have none (a plain `pip install torch` may fetch
# a multi-GB CUDA build): pip install torch --index-url https://download.pytorch.org/whl/cpu
torch>=2.1,<3
transformers>=5.0,<6
pytest>=8
"""


def student_md(blanked) -> str:
    order = "\n".join(f"{i}. `{name}`: `{command(name)}`" for i, name in enumerate(blanked, 1))
    return f"""\
# Write BERT yourself

`hooked_bert.py` is a complete BERT, except for the `forward` of these classes, which you
write, in this order (the order data flows through BERT):

{order}

Each `forward` keeps its signature and docstring; its body says what to compute, which hooks to
call, and which command checks it. Look at each class's `__init__` for its weights and hooks.

## Setup

```bash
pip install torch --index-url https://download.pytorch.org/whl/cpu   # if you have no torch yet
pip install -r requirements.txt
pytest
```

## The hooks are part of the exercise

Every `self.hook_...` named in a stub must be called, on the tensor it names, and you go on
with what it returns: `q = self.hook_q(...)`. The tests read your values there, step by step:
the test of the attention scores feeds HuggingFace's own q and k through `hook_q` and `hook_k`,
checks what reaches `hook_attn_scores`, and stops your forward right there. So a step's test
passes as soon as that step is right, even while the later steps still `raise
NotImplementedError`, and a mistake in one step fails that step's test only. If a hook is never
called, the test says which `self.hook_...` call is missing and on what.

Components that contain others (`BertEmbed`, `BertBlock`, `BertMLMHead`) are tested with
stand-ins for their sub-modules: call `self.ln(...)`, `self.attn(...)`, ... as the stub says.

## Reading a failure

- The first paragraph of every failure is its hint: what the step computes and the usual
  mistake. Then come the numbers (how many elements differ, by how much).
- `not written yet: ... raises NotImplementedError` (one line, no traceback): you have not
  started that step. It is listed once per component ("44 more of Attention's tests stop at a
  stub too"): the board counts them all.
- `... raised IndexError: ...` (or any other error): your code crashed; the traceback below
  the hint shows the line (torch's own frames are left out).
- Each test runs on several small BERTs (and layers): a test's first failure is shown in full,
  and its other parametrisations in one line under it ("the same failure as above in ...").
- An `einsum` that does not fit its tensors says so in your dimension names ("d_model has size
  12 for operand 1 ..."), with each operand's names and shape.
- The comparisons are in float64 to within 1e-10: "close" is not enough, the formula must be
  the same as HuggingFace's.

## The board

After every run, pytest prints a board: each component in data-flow order, pass or FAIL, and
how many of its tests pass. Under it: the first failing component, its first hint, and the
command to rerun just it. Tests of the whole model (loading weights, hooks, text input) run
only once every component passes and no `forward` still raises NotImplementedError; until
then each is skipped as "blocked by <component>" (`pytest -rs` lists them). With `pytest -k ...`
or a test's name (`pytest test_hooked_bert.py::test_attention_qkv`) the board shows what ran and
says how many tests of each component did not ("39 more not run"). When every component passes
but a test of the whole model fails, the board names that test and its hint. Tests skipped for
another reason (a package that is not installed) are listed with the reason.

When the board says every component passes and pytest reports no failures, you are done.
"""


def command(name: str) -> str:
    """The command that runs `name`'s tests: each of them starts with the stub's own selection."""
    return re.search(r"(?:Check|All of it): (pytest -k \w+)", STUBS[name]).group(1)


# Short tracebacks and no list of failures at the end: the progress board says where to go next.
PYTEST_INI = """[pytest]
addopts = --tb=short -rN
"""


# The repository's files a kit gets as they are; exercise_values.py (the reference values'
# formulas) and test_diagnosis.py stay here.
KIT_FILES = ("test_hooked_bert.py", "conftest.py", "diagnosis.py")
VALUES_FILE = "exercise_values.pt"


def record_values(path: Path, root: Path = ROOT) -> None:
    """Run the exercise tests here once, on the complete hooked_bert.py, recording every value
    they take from exercise_values.py into `path`: the kit's tests read these instead."""
    env = {**os.environ, "HB_RECORD_VALUES": str(path), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                          "component", "test_hooked_bert.py"], cwd=root, env=env,
                         capture_output=True, text=True)
    if run.returncode != 0 or not path.exists():
        raise SystemExit(f"the exercise tests fail in {root}, so no values for a kit:\n"
                         f"{run.stdout[-3000:]}{run.stderr[-2000:]}")


def make_kit(out_dir: Path, blanked, root: Path = ROOT, values: Path = None) -> None:
    """Write the kit into `out_dir`; `values`: an exercise_values.pt that record_values made
    (else it is made now, which takes a run of the exercise tests)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise SystemExit(f"{out_dir} is not empty; give a new or empty folder")
    source = (root / "hooked_bert.py").read_text()
    (out_dir / "hooked_bert.py").write_text(blank(source, blanked))
    for name in KIT_FILES:
        (out_dir / name).write_text((root / name).read_text())
    if values is None:
        record_values(out_dir / VALUES_FILE, root)
    else:
        shutil.copyfile(values, out_dir / VALUES_FILE)
    (out_dir / "requirements.txt").write_text(REQUIREMENTS)
    (out_dir / "pytest.ini").write_text(PYTEST_INI)
    (out_dir / "STUDENT.md").write_text(student_md(blanked))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="the student folder to write (new or empty)")
    parser.add_argument("--blank", nargs="+", metavar="CLASS", default=COMPONENTS,
                        help="the classes whose forward to blank (default: all, "
                             f"{', '.join(COMPONENTS)})")
    args = parser.parse_args(argv)
    unknown = [name for name in args.blank if name not in STUBS]
    if unknown:
        parser.error(f"unknown class {', '.join(unknown)}; choose from: {', '.join(COMPONENTS)}")
    blanked = [name for name in COMPONENTS if name in args.blank]  # in data-flow order
    make_kit(args.out_dir, blanked)
    print(f"wrote {args.out_dir}: blanked {', '.join(blanked)}; students start with STUDENT.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
