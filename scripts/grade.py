"""Grades from students' test runs, as course.toml says: python scripts/grade.py STUDENT.xml [...]

Run each student's folder with your own copy of the tests (students can edit theirs): the
test files, conftest.py, pytest.ini and course.toml of the autograder zip (make_exercises.py
--autograder), the graded components' tests and counted whole-model tests only; then grade:
    (cd STUDENT_DIR && pytest --grade-only LayerNorm,Attention,test_... --junitxml=grade.xml)
    python scripts/grade.py --course STUDENT_DIR/course.toml STUDENT_DIR/grade.xml
For each file it prints each graded component's (and counted whole-model test's) points.
The Gradescope autograder (make_exercises.py --autograder) does all this for you.

Only the graded components count, each by its steps: a step (a test function, with all its
parametrisations) scores its share of the component's points if every one of its tests passed.
`--gradescope results.json` writes Gradescope's results.json for one file: one test per graded
component and counted whole-model test, whose output is what the console shows (each failure's
first paragraph, the diagnosis, once per group of tests that fail alike), and the progress
board (--board, written by `pytest --board-file`) as the top-level output.
"""

import argparse
import ast
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course as courses  # noqa: E402  (scripts/course.py)

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "test_hooked_bert.py"


def exercises() -> dict[str, str]:
    """The tests' EXERCISES (component -> the name prefix of its tests), in test_hooked_bert.py
    or a module beside it: junit XML without conftest.py's component properties is read by it."""
    for path in [TESTS, *sorted(ROOT.glob("*.py"))]:
        for node in ast.parse(path.read_text()).body if path.is_file() else ():
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "EXERCISES":
                return ast.literal_eval(node.value)
    raise SystemExit(f"no EXERCISES in {TESTS} or beside it")


def read_cases(junit_xml, prefixes: dict[str, str]) -> list[dict]:
    """Each test case of a junit XML file: its name, function (the step), component (None for
    others), outcome (passed, failed, skipped) and message."""
    cases = []
    for case in ElementTree.parse(junit_xml).iter("testcase"):
        name = case.get("name", "")
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        component = props.get("component") or next(
            (c for c, prefix in prefixes.items() if name.startswith(prefix)), None)
        problem = next((e for e in case if e.tag in ("failure", "error", "skipped")), None)
        outcome = ("passed" if problem is None else
                   "skipped" if problem.tag == "skipped" else "failed")
        message = "" if problem is None else problem.get("message") or problem.text or problem.tag
        cases.append(dict(name=name, function=name.split("[")[0], component=component,
                          outcome=outcome, message=message,
                          text=problem.text if problem is not None else None))
    return cases


def collection_errors(cases) -> list[str]:
    """What pytest printed (its E lines) for each test file it could not import."""
    errors = [case for case in cases if case["message"] == "collection failure"]
    return [f"pytest could not import {case['name']}.py:\n" + "\n".join(
        line[4:] for line in (case["text"] or "").splitlines() if line.startswith("E "))
        for case in errors]


def diagnosis(message: str) -> str:
    """The first paragraph of a failure's message, as the console shows it."""
    lines = message.strip().splitlines() or ["failed"]
    lines = [lines[0].removeprefix("AssertionError: ").removeprefix("Failed: ")] + [
        line[2:] if line.startswith("  ") else line for line in lines[1:]]
    return "\n".join(lines).split("\n\n")[0].split("\n \n")[0].strip()


def grouped_failures(cases) -> list[str]:
    """Failures grouped as on the board: each distinct failure once, under the first test that
    had it, the others that failed alike in one line; a component's stubs once for all."""
    groups = {}
    for case in cases:
        if case["outcome"] == "failed":
            first_line = diagnosis(case["message"]).splitlines()[0]
            stub = "NotImplementedError" in first_line
            groups.setdefault("stub" if stub else first_line, []).append(case)
    text = []
    for key, (first, *others) in groups.items():
        text += ["", f"{first['name']}:", diagnosis(first["message"])]
        if key == "stub" and others:
            text.append(f"{len(others)} more of {first['component']}'s tests stop at a stub too "
                        "(NotImplementedError)")
            continue
        alike = [other["name"][len(first["function"]):] for other in others
                 if other["function"] == first["function"]]
        alike += [other["name"] for other in others if other["function"] != first["function"]]
        if alike:
            text.append(short(f"the same failure in {', '.join(alike)}"))
    return text


def short(line, width=300):
    return line if len(line) <= width else line[:width - 3] + "..."


def step_points(component, functions, course) -> dict[str, float]:
    """Each step's points: its own from [steps.<component>], the rest shared by the others."""
    own = course["steps"].get(component, {})
    unknown = [step for step in own if step not in functions]
    if unknown:
        raise SystemExit(f"course file: [steps.{component}] names {', '.join(unknown)}, which "
                         f"is not a test function of {component}; its tests are "
                         f"{', '.join(functions)}")
    others = [step for step in functions if step not in own]
    rest = course["points"][component] - sum(own.values())
    if rest > 1e-9 and not others:
        raise SystemExit(f"course file: [steps.{component}] gives {sum(own.values()):g} of "
                         f"{component}'s {course['points'][component]:g} points, and it has no "
                         "other step")
    return {step: own.get(step, rest / len(others) if others else 0.0) for step in functions}


def grade_component(component, cases, course) -> dict:
    """Gradescope's test for one graded component: its score from its steps, and its output."""
    cases = [case for case in cases if case["component"] == component]
    max_score = course["points"][component]
    if not cases:
        return dict(name=component, score=0.0, max_score=max_score, output="none of its tests ran")
    steps = {}
    for case in cases:
        steps.setdefault(case["function"], []).append(case)
    points = step_points(component, list(steps), course)
    passing = [step for step, runs in steps.items() if passed(runs)]
    score = sum(points[step] for step in passing)
    lines = [f"{score:.4g} of {max_score:g} points: {len(passing)} of {len(steps)} steps pass "
             "(a step scores when every one of its tests passes)"]
    for step, runs in steps.items():
        if step not in passing:
            failed = sum(run["outcome"] != "passed" for run in runs)
            lines.append(f"  FAIL {step} ({points[step]:.4g} points): "
                         f"{failed} of {len(runs)} tests fail")
    lines += [f"  pass {', '.join(passing)}"] if passing else []
    lines += grouped_failures(cases)
    return dict(name=component, score=round(score, 4), max_score=max_score, output="\n".join(lines))


def passed(runs) -> bool:
    return bool(runs) and all(run["outcome"] == "passed" for run in runs)


def grade_model_test(test, cases, course) -> dict:
    """Gradescope's test for one counted whole-model test: all its points if it passed."""
    runs = [case for case in cases if case["function"] == test]
    skipped = [run["message"] for run in runs if run["outcome"] == "skipped"]
    output = ("passed" if passed(runs) else
              "\n".join(grouped_failures(runs)).strip() if len(skipped) < len(runs) else
              f"skipped: {skipped[0]}" if runs else
              "did not run: no test of that name (check its spelling in course.toml)")
    points = course["model_tests"][test]
    return dict(name=test, score=points if passed(runs) else 0.0, max_score=points, output=output)


def grade(junit_xml, course, prefixes=None) -> list[dict]:
    """Gradescope's tests: one per graded component, then one per counted whole-model test."""
    cases = read_cases(junit_xml, exercises() if prefixes is None else prefixes)
    return ([grade_component(component, cases, course) for component in course["graded"]]
            + [grade_model_test(test, cases, course) for test in course["model_tests"]])


def gradescope_results(junit_xml, course, board: str = "") -> dict:
    """Gradescope's results.json: the tests, and on top the total, the board and what stopped
    the tests from running, if anything did."""
    tests = grade(junit_xml, course)
    errors = collection_errors(read_cases(junit_xml, {}))
    total = sum(test["score"] for test in tests)
    top = [f"{total:.4g} of {sum(test['max_score'] for test in tests):g} points", *errors]
    top += [board.strip()] if board.strip() else []
    return dict(score=round(total, 4), output="\n\n".join(top), tests=tests)


def failed_results(course, why: str) -> dict:
    """results.json for a submission that could not be graded: 0, and why, at the top."""
    worth = course["points"] | course["model_tests"]
    tests = [dict(name=name, score=0.0, max_score=worth[name],
                  output="not graded: see the message at the top")
             for name in [*course["graded"], *course["model_tests"]]]
    return dict(score=0.0, output=why, tests=tests)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit_xml", nargs="+", help="pytest --junitxml output, one per student")
    parser.add_argument("--course", default=ROOT / "course.toml", type=Path,
                        help="the course file (default: course.toml in the repository)")
    parser.add_argument("--gradescope", metavar="RESULTS_JSON",
                        help="write Gradescope's results.json for one junit XML file")
    parser.add_argument("--board", type=Path,
                        help="the progress board (pytest --board-file), for --gradescope")
    args = parser.parse_args(argv)
    course = courses.load(args.course)
    if args.gradescope:
        if len(args.junit_xml) != 1:
            parser.error("--gradescope grades one junit XML file")
        board = args.board.read_text() if args.board and args.board.is_file() else ""
        results = gradescope_results(args.junit_xml[0], course, board)
        Path(args.gradescope).write_text(json.dumps(results, indent=2))
        return 0
    for path in args.junit_xml:
        tests = grade(path, course)
        total, worth = sum(t["score"] for t in tests), sum(t["max_score"] for t in tests)
        print(f"{path}: {total:.4g} of {worth:g} points")
        for test in tests:
            print(f"  {test['name']:<15} {test['score']:>6.4g} / {test['max_score']:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
