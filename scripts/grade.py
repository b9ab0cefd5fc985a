"""Grades per component from students' test runs: python scripts/grade.py STUDENT.xml [...]

Run each student's folder with your own copy of the tests (students can edit theirs):
    cp test_hooked_bert.py conftest.py pytest.ini STUDENT_DIR/
    (cd STUDENT_DIR && pytest --junitxml=grade.xml)
    python scripts/grade.py STUDENT_DIR/grade.xml
For each file it prints every component's tests passed/total, as the progress board does.

For Gradescope, write its results.json from one run instead:
    python scripts/grade.py --gradescope /autograder/results/results.json grade.xml
Each component is one test worth one point, scored by the share of its tests that passed; its
output lists the tests that failed, each with the first line of its message (the hint).
"""

import argparse
import ast
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "test_hooked_bert.py"


def exercises() -> dict[str, str]:
    """test_hooked_bert.py's EXERCISES: component -> the name prefix of its tests."""
    for node in ast.parse(TESTS.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "EXERCISES":
            return ast.literal_eval(node.value)
    raise SystemExit(f"no EXERCISES in {TESTS}")


def graded_cases(junit_xml: str, prefixes: dict[str, str]):
    """(component, test name, its <failure> or <error>, or None) for each exercise test that ran
    (not skipped) in one junit XML file."""
    for case in ElementTree.parse(junit_xml).iter("testcase"):
        name = case.get("name", "")
        component = next((c for c, prefix in prefixes.items() if name.startswith(prefix)), None)
        if component is not None and case.find("skipped") is None:
            yield component, name, next((e for e in case if e.tag in ("failure", "error")), None)


def grade(junit_xml: str, prefixes: dict[str, str]) -> dict[str, tuple[int, int]]:
    """component -> (tests passed, tests run) in one junit XML file."""
    counts = {component: [0, 0] for component in prefixes}
    for component, _, failure in graded_cases(junit_xml, prefixes):
        counts[component][0] += failure is None
        counts[component][1] += 1
    return {component: (passed, run) for component, (passed, run) in counts.items()}


def failures(junit_xml: str, prefixes: dict[str, str]) -> dict[str, list[str]]:
    """component -> "test name: the first line of its message" for each test that failed."""
    failed = {component: [] for component in prefixes}
    for component, name, failure in graded_cases(junit_xml, prefixes):
        if failure is not None:
            lines = (failure.get("message") or failure.text or "").strip().splitlines()
            failed[component].append(f"{name}: {lines[0] if lines else 'failed'}")
    return failed


def gradescope_results(junit_xml: str, prefixes: dict[str, str]) -> dict:
    """Gradescope's results.json: one test per component, worth one point."""
    tests, failed = [], failures(junit_xml, prefixes)
    for component, (passed, run) in grade(junit_xml, prefixes).items():
        summary = f"{passed} of {run} tests passed" if run else "none of its tests ran"
        tests.append({"name": component, "score": round(passed / run, 4) if run else 0.0,
                      "max_score": 1.0, "output": "\n".join([summary, *failed[component]])})
    return {"tests": tests}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit_xml", nargs="+", help="pytest --junitxml output, one per student")
    parser.add_argument("--gradescope", metavar="RESULTS_JSON",
                        help="write Gradescope's results.json for one junit XML file")
    args = parser.parse_args(argv)
    prefixes = exercises()
    if args.gradescope:
        if len(args.junit_xml) != 1:
            parser.error("--gradescope grades one junit XML file")
        results = gradescope_results(args.junit_xml[0], prefixes)
        Path(args.gradescope).write_text(json.dumps(results, indent=2))
        return 0
    for path in args.junit_xml:
        print(path)
        for component, (passed, run) in grade(path, prefixes).items():
            print(f"  {component:<15} {passed:>3}/{run:<3}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
