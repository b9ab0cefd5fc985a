"""Grades per component from students' test runs: python scripts/grade.py STUDENT.xml [...]

Run each student's folder with your own copy of the tests (students can edit theirs):
    cp test_hooked_bert.py conftest.py pytest.ini STUDENT_DIR/
    (cd STUDENT_DIR && pytest --junitxml=grade.xml)
    python scripts/grade.py STUDENT_DIR/grade.xml
For each file it prints every component's tests passed/total, as the progress board does.
"""

import ast
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "test_hooked_bert.py"


def exercises() -> dict[str, str]:
    """test_hooked_bert.py's EXERCISES: component -> the name prefix of its tests."""
    for node in ast.parse(TESTS.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "EXERCISES":
            return ast.literal_eval(node.value)
    raise SystemExit(f"no EXERCISES in {TESTS}")


def grade(junit_xml: str, prefixes: dict[str, str]) -> dict[str, tuple[int, int]]:
    """component -> (tests passed, tests run) in one junit XML file."""
    counts = {component: [0, 0] for component in prefixes}
    for case in ElementTree.parse(junit_xml).iter("testcase"):
        component = next((c for c, prefix in prefixes.items()
                          if case.get("name", "").startswith(prefix)), None)
        if component is None or case.find("skipped") is not None:
            continue
        counts[component][1] += 1
        counts[component][0] += case.find("failure") is None and case.find("error") is None
    return {component: (passed, run) for component, (passed, run) in counts.items()}


def main(paths: list[str]) -> int:
    if not paths or paths[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if paths else 2
    prefixes = exercises()
    for path in paths:
        grades = grade(path, prefixes)
        print(path)
        for component, (passed, run) in grades.items():
            print(f"  {component:<15} {passed:>3}/{run:<3}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
