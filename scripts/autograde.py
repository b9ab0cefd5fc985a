"""Gradescope's autograder: grade the submitted hooked_bert.py as course.toml says.

run_autograder (written by make_exercises.py --autograder) starts this. Its folders are
Gradescope's, under AUTOGRADER_ROOT (default /autograder): the tests in source/ (the kit, with
the hidden test files, course.toml and these scripts), the student's files in submission/, the
grades into results/results.json. It fails loudly: a missing or misplaced hooked_bert.py, or
one that does not import, scores 0 with what went wrong (where the file was, the error and its
line) as results.json's top-level output. Otherwise it runs the graded components' tests and
the counted whole-model tests (pytest --grade-only), and grade.py makes results.json from them,
with the progress board on top. Everything pytest prints goes to stdout, which Gradescope shows
to the instructor.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course as courses  # noqa: E402
import grade  # noqa: E402

ROOT = Path(os.environ.get("AUTOGRADER_ROOT", "/autograder"))
SOURCE, SUBMISSION = ROOT / "source", ROOT / "submission"
RESULTS = ROOT / "results" / "results.json"
# Seconds for the tests (for the course of README, about 10 on two cores), well under
# Gradescope's own limit, so that a forward that never returns gets 0 and is told so.
TIMEOUT = int(os.environ.get("AUTOGRADER_TIMEOUT", 5 * 60))
AGAIN = "Fix it and submit again."


def find_submission():
    """(the submitted hooked_bert.py, None), or (None, what is wrong with the submission)."""
    expected = SUBMISSION / "hooked_bert.py"
    if expected.is_file():
        return expected, None
    files = sorted(path for path in SUBMISSION.rglob("*") if path.is_file())
    names = [str(path.relative_to(SUBMISSION)) for path in files]
    nested = [name for path, name in zip(files, names) if path.name == "hooked_bert.py"]
    if nested:
        return None, (f"Your hooked_bert.py is at {nested[0]}, not at the top of your submission, "
                      "where the grader looks for it. Upload the file itself (not the folder that "
                      "holds it).")
    alike = [name for path, name in zip(files, names) if path.suffix == ".py"
             and "class BertBlock" in path.read_text(errors="replace")]
    if alike:
        return None, (f"Your submission has no hooked_bert.py, but {alike[0]} looks like it: "
                      "rename it hooked_bert.py and submit it under that name.")
    held = f" (it holds {', '.join(names[:10])})" if names else " (it is empty)"
    return None, f"Your submission has no hooked_bert.py{held}. Submit your hooked_bert.py."


def import_error():
    """What Python says when it imports the submitted hooked_bert.py, if that fails."""
    run = subprocess.run([sys.executable, "-c", "import hooked_bert"], cwd=SOURCE, text=True,
                         capture_output=True, timeout=600)
    if run.returncode == 0:
        return None
    lines = run.stderr.replace(f"{SOURCE}{os.sep}", "").splitlines()
    start = next((i for i, line in enumerate(lines) if 'File "hooked_bert.py"' in line), 0)
    return ("Your hooked_bert.py does not import, so no test could run:\n\n"
            + "\n".join(lines[start:])
            + f"\n\n{AGAIN} (Check with: python -c \"import hooked_bert\")")


def run_tests(course):
    """Run the graded tests; their junit XML and the board's text, or what stopped them."""
    counted = [*course["graded"], *course["model_tests"]]
    junit, board = SOURCE / "grade.xml", SOURCE / "board.txt"
    for old in (junit, board):
        old.unlink(missing_ok=True)  # (left by an earlier run in this folder)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
               f"--grade-only={','.join(counted)}", f"--board-file={board}", f"--junitxml={junit}"]
    try:
        run = subprocess.run(command, cwd=SOURCE, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                             timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, (f"The tests did not finish within {TIMEOUT} seconds: does a forward "
                      "loop forever? " + AGAIN)
    print(run.stdout)
    if not junit.is_file():
        return None, f"pytest stopped before any test ran:\n\n{run.stdout[-3000:]}"
    return junit, board.read_text() if board.is_file() else ""


def main() -> int:
    course = courses.load(SOURCE / "course.toml")
    submitted, problem = find_submission()
    if submitted is not None:
        shutil.copyfile(submitted, SOURCE / "hooked_bert.py")
        problem = import_error()
    if problem is None:
        junit, board = run_tests(course)
        problem = board if junit is None else None
    results = (grade.failed_results(course, f"Score 0. {problem}") if problem is not None
               else grade.gradescope_results(junit, course, board))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(results["output"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
