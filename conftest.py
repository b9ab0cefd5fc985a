"""The progress board printed after every pytest run, and "blocked" for the later tests.

A test marked `component(name, select=...)` (test_hooked_bert.py's exercises) counts for that
component on the board. While a component's test fails, every later test without that mark
(the whole model, loading, hooks, text, tutorial) is skipped with "blocked by <component>":
it could only fail because of it. When every component passes, nothing is skipped and the
board only lists them. A failure that is only an unwritten stub (NotImplementedError) is
reported in one line instead of a traceback (test_hooked_bert.py's add_hint does that).
"""

import os

import pytest

# The tests' models are tiny: a second thread gains nothing, and on a busy machine threads that
# wait for each other made the suite several times slower (a tutorial run: 140 s, not 5 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# component name -> {"select": -k selection, "run": n, "passed": n, "first": (test, hint) or None}
BOARD: dict[str, dict] = {}
BLOCKED: list[str] = []
NOT_SELECTED: dict[str, int] = {}  # component name -> its tests that -k (or -m) left out


def pytest_configure(config):
    config.addinivalue_line("markers", "component(name, select): an exercise test of one component")


def pytest_deselected(items):
    for item in items:
        name, _ = component_of(item)
        if name is not None:
            NOT_SELECTED[name] = NOT_SELECTED.get(name, 0) + 1


def component_of(item):
    marker = item.get_closest_marker("component")
    return (marker.args[0], marker.kwargs["select"]) if marker else (None, None)


def first_failing():
    return next((name for name, row in BOARD.items() if row["passed"] < row["run"]), None)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    name, _ = component_of(item)
    failing = first_failing()
    if name is None and failing is not None:
        BLOCKED.append(item.nodeid)
        pytest.skip(f"blocked by {failing}: make its tests pass first "
                    f"(pytest -k {BOARD[failing]['select']})")


def hint_of(error):
    """The test's hint (the first paragraph of its message, or what the test attached to an
    exception raised inside the component) and the first line of what went wrong."""
    paragraphs = (getattr(error, "hint", None) or str(error)).strip().split("\n\n")
    return "\n".join([paragraphs[0]] + [p.splitlines()[0] for p in paragraphs[1:2] if p.strip()])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    name, select = component_of(item)
    if name is None or not (call.when == "call" or report.failed):
        return
    row = BOARD.setdefault(name, dict(select=select, run=0, passed=0, first=None))
    if call.when == "call" or report.failed:
        row["run"] += 1
        row["passed"] += report.passed
    if report.failed and call.excinfo is not None:
        error = call.excinfo.value
        if row["first"] is None:
            row["first"] = (item.name, item.originalname, hint_of(error))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    yield  # after pytest's own summary, so that the board is the last thing on the screen
    if not BOARD:
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "progress board: the components in the order data flows")
    for name, row in BOARD.items():
        status = "pass" if row["passed"] == row["run"] else "FAIL"
        score = f"{row['passed']:>3}/{row['run']:<3}"
        left_out = f"  ({NOT_SELECTED[name]} more not run)" if name in NOT_SELECTED else ""
        write(f"  {name:<15} {status}  {score}  pytest -k {row['select']}{left_out}")
    failing = first_failing()
    if failing is None and any(name in NOT_SELECTED for name in BOARD):
        write("every test that ran passes; some tests of these components did not run: "
              "run them all with pytest -k <the component's selection>")
        return
    if failing is None:
        write("every component that ran passes")
        return
    test, function, hint = BOARD[failing]["first"]
    write("")
    write(f"first failing: {failing} ({test})")
    for line in hint.splitlines():
        write(f"  {line}")
    select = BOARD[failing]["select"]
    write(f"rerun it: pytest -k {function}   (all of {failing}: pytest -k {select})")
    if BLOCKED:
        write(f"{len(BLOCKED)} later tests (whole model, loader, hooks, text, tutorial) were "
              f"skipped, blocked by {failing}; pytest -rs lists them")
