"""Write a student folder: hooked_bert.py with components to write, and the tests that check them.

    python scripts/make_exercises.py OUT_DIR [--course course.toml] [--blank CLASS ...]
                                     [--autograder autograder.zip]

Each chosen class keeps its signature and docstring; the body of its `forward` becomes a stub
that says what to compute, which hooks to call on what, which pytest command checks it, and
ends in `raise NotImplementedError`. The course file (default: course.toml in the repository)
says which classes to blank (--blank replaces its list), which count and how much, and the
instructor's own test files. OUT_DIR gets hooked_bert.py, the test files (KIT_FILES and the
course's files that are not hidden), conftest.py (the progress board), the course file,
pytest.ini, requirements.txt and STUDENT.md, and nothing else: no git history, no tutorial, and
not scripts/check_tests_catch_bugs.py (its mistakes are solution lines). --autograder also
writes Gradescope's autograder zip: the same kit with the hidden test files, setup.sh,
run_autograder and the grading scripts.

The classes and their `forward` are found with `ast`, by name, so the script works on any
version of hooked_bert.py that has these classes.
"""

import argparse
import ast
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course as courses  # noqa: E402  (scripts/course.py)

ROOT = Path(__file__).resolve().parent.parent
# The repository's files that go into every kit as they are; exercise_values.py (the formulas
# of the reference values) and test_diagnosis.py stay here.
KIT_FILES = ["test_hooked_bert.py", "conftest.py", "diagnosis.py"]
VALUES_FILE = "exercise_values.pt"  # the reference values the kit's tests read instead
# The scripts that go into the autograder (under scripts/), beside the kit.
AUTOGRADER_SCRIPTS = ["autograde.py", "grade.py", "course.py"]

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
        # In float16 or bfloat16, do 1-4 in float32 (x.float(): x.pow(2) overflows float16 above
        # 256), and return the output in the input's dtype.
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
        # hook_resid_mid holds resid_pre + attn_out (before ln1), hook_resid_post the sum that
        # ln2 normalizes.
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
        # self.hook_out. W_U is self.W_U, or self.W_E.T when self.tied (see __init__).
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
COMPONENTS = courses.COMPONENTS  # in the order data flows, as in hooked_bert.py
assert list(STUBS) == COMPONENTS, "a stub for each component a course can blank, in the same order"


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
tomli>=2; python_version < "3.11"
"""


def student_md(course) -> str:
    order = "\n".join(f"{i}. `{name}`: `{command(name)}`"
                      for i, name in enumerate(course["blank"], 1))
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

## The grade

{grading(course)}
"""


def grading(course) -> str:
    """What counts, as STUDENT.md says it."""
    parts = [f"`{name}` {points:g}" for name, points in course["points"].items()]
    parts += [f"`{test}` (a test of the whole model) {points:g}"
              for test, points in course["model_tests"].items()]
    hidden = " and tests of its own" if any(entry["hidden"] for entry in course["files"]) else ""
    return textwrap.fill(
        f"Points: {', '.join(parts)}. Each test function of a component (a step: "
        "`test_attention_scores`, ...) scores its share of the component's points when all of "
        "its tests pass, on every config and layer. The grader runs its own copy of the "
        f"tests{hidden} on your `hooked_bert.py`: submit that file alone, under that name.", 96)


def command(name: str) -> str:
    """The command that runs `name`'s tests: each of them starts with the stub's own selection."""
    return re.search(r"(?:Check|All of it): (pytest -k \w+)", STUBS[name]).group(1)


# Short tracebacks and no list of failures at the end: the progress board says where to go next.
PYTEST_INI = """[pytest]
addopts = --tb=short -rN
"""


def make_kit(out_dir: Path, course, root: Path = ROOT, hidden: bool = False,
             values: Path = None) -> None:
    """The student kit for `course` (a list of classes: a course that blanks and grades those);
    with hidden=True, the autograder's copy: the hidden test files too. `values`: an
    exercise_values.pt that record_values made (else it is made now: a run of the exercises)."""
    if not isinstance(course, dict):
        course = courses.load(None, blank=list(course))
    check_test_names(course, root)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise SystemExit(f"{out_dir} is not empty; give a new or empty folder")
    source = (root / "hooked_bert.py").read_text()
    (out_dir / "hooked_bert.py").write_text(blank(source, course["blank"]))
    for name in KIT_FILES:
        shutil.copyfile(root / name, out_dir / name)
    for entry in course["files"]:
        if hidden or not entry["hidden"]:
            shutil.copyfile(entry["source"], out_dir / entry["name"])
    if values is None:
        record_values(out_dir / VALUES_FILE, root)
    else:
        shutil.copyfile(values, out_dir / VALUES_FILE)
    (out_dir / "course.toml").write_text(courses.to_toml(course, hidden))
    (out_dir / "requirements.txt").write_text(REQUIREMENTS)
    (out_dir / "pytest.ini").write_text(PYTEST_INI)
    (out_dir / "STUDENT.md").write_text(student_md(course))


def check_test_names(course, root: Path = ROOT) -> None:
    """Every step and whole-model test the course gives points is a test function of the kit's
    (or the hidden) test files: a misspelt one would silently score 0 in every submission."""
    test_files = [*(root / name for name in KIT_FILES if name.startswith("test_")),
                  *(entry["source"] for entry in course["files"])]
    functions = {node.name for path in test_files for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    named = [*course["model_tests"], *(step for table in course["steps"].values() for step in table)]
    unknown = [name for name in named if name not in functions]
    if unknown:
        raise SystemExit(f"course file: no test function is called {', '.join(unknown)} "
                         f"(in {', '.join(sorted(path.name for path in test_files))})")


def record_values(path: Path, root: Path = ROOT, seed: int = 0) -> None:
    """Run the exercise tests here once, on the complete hooked_bert.py, recording every value
    they take from exercise_values.py into `path`: the kit's tests read these instead. `seed`:
    of the references' weights and inputs (0: the repository's own)."""
    env = {**os.environ, "HB_RECORD_VALUES": str(path), "HF_HUB_OFFLINE": "1",
           "HB_REFERENCE_SEED": str(seed)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                          "component", "test_hooked_bert.py"], cwd=root, env=env,
                         capture_output=True, text=True)
    if run.returncode != 0 or not path.exists():
        raise SystemExit(f"the exercise tests fail in {root}, so no values for a kit:\n"
                         f"{run.stdout[-3000:]}{run.stderr[-2000:]}")


SETUP_SH = """\
#!/usr/bin/env bash
# Gradescope runs this once, when it builds the autograder's image: CPU torch, then the kit's
# requirements (a plain `pip install torch` would fetch a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip --version || (apt-get update && apt-get install -y python3-pip)
python3 -m pip install torch --index-url https://download.pytorch.org/whl/cpu
python3 -m pip install -r requirements.txt
"""

RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this for each submission: the tests in /autograder/source on the submitted
# hooked_bert.py (/autograder/submission), the grades into /autograder/results/results.json.
# AUTOGRADER_ROOT (default /autograder) lets you try it in another folder.
exec python3 "${AUTOGRADER_ROOT:-/autograder}/source/scripts/autograde.py"
"""


def make_autograder(zip_path: Path, course, root: Path = ROOT) -> None:
    """Gradescope's autograder zip: setup.sh and run_autograder at its top, the kit with the
    hidden test files beside them, and the grading scripts in scripts/. Its reference values
    are of other weights and inputs than the students' kit (a seed drawn now), so a forward
    that looks up the answers in the students' exercise_values.pt scores nothing."""
    with tempfile.TemporaryDirectory() as folder:
        source, values = Path(folder) / "source", Path(folder) / VALUES_FILE
        record_values(values, root, seed=secrets.randbelow(10 ** 6) + 1)
        make_kit(source, course, root, hidden=True, values=values)
        (source / "scripts").mkdir()
        for name in AUTOGRADER_SCRIPTS:
            shutil.copyfile(root / "scripts" / name, source / "scripts" / name)
        (source / "setup.sh").write_text(SETUP_SH)
        (source / "run_autograder").write_text(RUN_AUTOGRADER)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    info = zipfile.ZipInfo(str(path.relative_to(source)))
                    script = path.name in ("setup.sh", "run_autograder")
                    info.external_attr = (0o755 if script else 0o644) << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(info, path.read_bytes())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="the student folder to write (new or empty)")
    parser.add_argument("--course", type=Path, default=ROOT / "course.toml",
                        help="the course file (default: course.toml in the repository)")
    parser.add_argument("--blank", nargs="+", metavar="CLASS",
                        help="the classes whose forward to blank, instead of the course's "
                             f"(any of {', '.join(COMPONENTS)})")
    parser.add_argument("--autograder", type=Path, metavar="ZIP",
                        help="also write Gradescope's autograder zip")
    parser.add_argument("--values", type=Path, metavar="PT",
                        help=f"the reference values ({VALUES_FILE}) of an earlier kit of the same "
                             "repository version, instead of recording them again")
    args = parser.parse_args(argv)
    unknown = [name for name in args.blank or () if name not in STUBS]
    if unknown:
        parser.error(f"unknown class {', '.join(unknown)}; choose from: {', '.join(COMPONENTS)}")
    default = args.course == ROOT / "course.toml" and not args.course.is_file()
    course = courses.load(None if default else args.course, blank=args.blank)
    check_test_names(course)  # (before the values take their time)
    with tempfile.TemporaryDirectory() as folder:
        values = args.values or Path(folder) / VALUES_FILE
        if args.values is None:
            record_values(values)  # once, for the kit and the autograder
        make_kit(args.out_dir, course, values=values)
        print(f"wrote {args.out_dir}: blanked {', '.join(course['blank'])}; "
              "students start with STUDENT.md")
        if args.autograder:
            make_autograder(args.autograder, course)
            print(f"wrote {args.autograder}: upload it to Gradescope as the autograder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
