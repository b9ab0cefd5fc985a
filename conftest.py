"""The progress board printed after every pytest run, "blocked" for the later tests, and short
failure lists.

A test marked `component(name, select=...)` (test_hooked_bert.py's exercises) counts for that
component on the board. Every later test without that mark (the whole model, loading, hooks,
text, tutorial) is skipped with "blocked by <component>" while a component's test fails or a
component's `forward` still raises NotImplementedError (an unwritten stub of the student kit),
even one whose tests were not selected: it could only fail because of it. The board says how
many tests of each component did not run (-k, -m, node ids), names the first failing test and
its hint (a component's, or else a whole-model one), and lists the skipped tests and why.

Failures are listed once per test function: the first in full, each other parametrisation in
one line under it ("the same failure in ..." or its own first line); a test function whose
failure reads as an earlier one's (the same crash) is named in one line under that one. A stub's failures are
listed once per component: there is no code to debug yet. Frames inside torch are left out of
tracebacks (nn.Module's call machinery and the like): the student's line is what matters.

The instructor's test files listed in course.toml (beside this file) count for the component it
gives each. For grading (scripts/autograde.py): --grade-only runs only the graded components'
tests and the counted whole-model tests, --board-file writes the board to a file too, and every
component test carries its component in --junitxml's properties.
"""

import os
import sys
from pathlib import Path

import pytest

# The tests' models are tiny: a second thread gains nothing, and on a busy machine threads that
# wait for each other made the suite several times slower (a tutorial run: 140 s, not 5 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# component name -> {"select": -k selection, "run": n, "passed": n, "first": (test, hint) or None}
BOARD: dict[str, dict] = {}
COLLECTED: dict[str, dict] = {}  # component name -> {"select": ..., "tests": node ids}, all of them
RAN: dict[str, set] = {}  # component name -> node ids of its tests that ran
BLOCKED: dict[str, str] = {}  # node id of a test skipped as blocked -> what blocked it
SKIPPED: dict[str, list] = {}  # reason -> names of the (not blocked) tests skipped for it
OTHER_FAILURES: list = []  # (test, function, hint) of failing tests without a component mark
FAILURES: dict[tuple, list] = {}  # group (function, or a component's stubs) -> [(report, line)]
STUBS: list = []  # the classes whose forward still raises NotImplementedError, found once


def pytest_addoption(parser):
    group = parser.getgroup("board", "the progress board (and grading, for scripts/autograde.py)")
    group.addoption("--board-file", metavar="PATH", help="also write the progress board to PATH")
    group.addoption("--grade-only", metavar="NAMES", help="run only the tests of these components "
                    "and these test functions (comma-separated), as the course grades them")


def pytest_configure(config):
    config.addinivalue_line("markers", "component(name, select): an exercise test of one component")
    config.addinivalue_line("markers", "slow: an end-to-end run (a generated kit, the autograder, "
                                       "the tutorial); the repository's `pytest -m slow` runs them")
    config.pluginmanager.register(FailuresBack(), "board-failures-back")


def course_files():
    """{file name: component} for the instructor's test files in course.toml beside this file
    (the kit's copy names them by their name in the kit): their tests count for that component."""
    course = Path(__file__).with_name("course.toml")
    text = course.read_text() if course.is_file() else ""
    if "[[files]]" not in text:
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: requirements.txt installs tomli
        import tomli as tomllib
    return {Path(entry["path"]).name: entry["component"]
            for entry in tomllib.loads(text).get("files", [])}


def component_of(item):
    marker = item.get_closest_marker("component")
    return (marker.args[0], marker.kwargs["select"]) if marker else (None, None)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Every component test that exists, whatever the selection: a node id or -k still collects
    the whole file first, so the board can say how many did not run."""
    report = yield
    for node in report.result if report.passed else ():
        name, select = component_of(node) if isinstance(node, pytest.Item) else (None, None)
        if name is None and isinstance(node, pytest.Item) and node.path.name in COURSE_FILES:
            name = COURSE_FILES[node.path.name]  # its select: the one of the component's own tests
            node.add_marker(pytest.mark.component(name, select=None))
        if name is not None:
            node.user_properties.append(("component", name))  # for grade.py, in --junitxml
            info = COLLECTED.setdefault(name, dict(select=select, tests=set()))
            info["select"] = info["select"] or select
            info["tests"].add(node.nodeid)
    return report


COURSE_FILES = course_files()


@pytest.hookimpl(tryfirst=True)  # before -k deselects
def pytest_collection_modifyitems(config, items):
    """The instructor's tests of a component run after the component's own (its board line
    names the first failing step), and its `pytest -k` selects them too; --grade-only keeps the
    tests of those components and those test functions, and the board lists only those."""
    if COURSE_FILES:
        items.sort(key=lambda item: (component_of(item)[0] is None, item.path.name in COURSE_FILES))
        for item in items:
            select = COLLECTED.get(component_of(item)[0], {}).get("select")
            if item.path.name in COURSE_FILES and select:
                item.extra_keyword_matches.add(select)
        order = list(dict.fromkeys(component_of(item)[0] for item in items))
        order += [name for name in COLLECTED if name not in order]  # none of them selected
        for name in sorted(COLLECTED, key=order.index):
            COLLECTED[name] = COLLECTED.pop(name)  # the board's rows in data-flow order again
    if not config.getoption("grade_only"):
        return
    names = set(config.getoption("grade_only").split(","))
    keep = [item for item in items if component_of(item)[0] in names
            or getattr(item, "originalname", item.name) in names]
    kept = {item.nodeid for item in keep}
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in kept])
    items[:] = keep
    for name in list(COLLECTED):
        COLLECTED[name]["tests"] &= kept
        if not COLLECTED[name]["tests"] or name not in names:
            del COLLECTED[name]


def first_failing():
    return next((name for name, row in BOARD.items() if row["passed"] < row["run"]), None)


def first_stub():
    """The first class of hooked_bert.py (if it is imported) whose `forward` names
    NotImplementedError, as the kit's stubs do; looked up once, from the loaded code."""
    if not STUBS:
        module = sys.modules.get("hooked_bert")
        classes = [obj for obj in vars(module).values() if isinstance(obj, type)
                   and obj.__module__ == "hooked_bert"] if module else []
        STUBS.append(next((cls.__name__ for cls in classes if "forward" in vars(cls)
                           and "NotImplementedError" in cls.forward.__code__.co_names), None))
    return STUBS[0]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if component_of(item)[0] is not None:
        return
    failing, stub = first_failing(), first_stub()
    if failing is not None:
        BLOCKED[item.nodeid] = failing
        pytest.skip(f"blocked by {failing}: make its tests pass first "
                    f"(pytest -k {BOARD[failing]['select']})")
    if stub is not None:
        BLOCKED[item.nodeid] = f"{stub} (not written yet)"
        select = COLLECTED.get(stub, {}).get("select")
        pytest.skip(f"blocked by {stub}: its forward still raises NotImplementedError"
                    + (f"; write it first (pytest -k {select})" if select else ""))


def hint_of(error):
    """The test's hint (the first paragraph of its message, or what the test attached to an
    exception raised inside the component) and the first line of what went wrong."""
    paragraphs = (getattr(error, "hint", None) or str(error)).strip().split("\n\n")
    return "\n".join([paragraphs[0]] + [p.splitlines()[0] for p in paragraphs[1:2] if p.strip()])


def is_stub(error):
    """Whether `error` is (or was raised while handling) a NotImplementedError."""
    while error is not None and not isinstance(error, NotImplementedError):
        error = error.__cause__ or error.__context__
    return error is not None


def drop_torch_frames(longrepr):
    """Leave out of a printed traceback the frames inside torch (nn.Module's call machinery,
    mostly), except the last one, which carries the error."""
    for traceback, _, _ in getattr(longrepr, "chain", ()):
        entries = traceback.reprentries
        traceback.reprentries = [entry for entry in entries[:-1] if f"{os.sep}torch{os.sep}" not in
                                 str(getattr(entry.reprfileloc, "path", ""))] + entries[-1:]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed and not item.config.getoption("fulltrace"):
        drop_torch_frames(report.longrepr)
    name, select = component_of(item)
    if report.skipped and item.nodeid not in BLOCKED and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        SKIPPED.setdefault(reason, []).append(item.name)
    if report.failed and call.when == "call":
        stub = name is not None and is_stub(call.excinfo.value)
        group = ("stubs", name) if stub else ("function", report.nodeid.split("[")[0])
        FAILURES.setdefault(group, []).append((report, call.excinfo.exconly().splitlines()[0]))
    if report.failed and name is None and call.excinfo is not None:
        OTHER_FAILURES.append((item.name, item.originalname, hint_of(call.excinfo.value)))
    if name is None or not (call.when == "call" or report.failed):
        return
    RAN.setdefault(name, set()).add(item.nodeid)
    row = BOARD.setdefault(name, dict(select=select, run=0, passed=0, first=None))
    row["select"] = row["select"] or COLLECTED.get(name, {}).get("select") or name
    row["run"] += 1
    row["passed"] += report.passed
    if report.failed and call.excinfo is not None and row["first"] is None:
        row["first"] = (item.name, item.originalname, hint_of(call.excinfo.value))


class WithNotes:
    """A failure's report as pytest prints it (its longrepr), then one-line notes."""

    def __init__(self, longrepr, notes):
        self.longrepr, self.notes = longrepr, notes

    def toterminal(self, out):
        if hasattr(self.longrepr, "toterminal"):
            self.longrepr.toterminal(out)
        else:
            out.line(str(self.longrepr))
        for note in self.notes:
            out.line(note, yellow=True)

    def __getattr__(self, name):  # reprcrash and the like, for pytest's one-line summaries
        return getattr(self.longrepr, name)


def short(line, width=100):
    return line if len(line) <= width else line[:width - 3] + "..."


def notes_on(group, failures):
    """One line for each failure listed under the first of its group (a stub's: one for all)."""
    (first, first_line), others = failures[0], failures[1:]
    if group[0] == "stubs":
        return [f"{len(others)} more of {group[1]}'s tests stop at a stub too (NotImplementedError)"]
    ids = [report.nodeid[len(group[1]):] for report, _ in others]  # "[small-layer1]", ...
    same = [param for param, (_, line) in zip(ids, others) if line == first_line]
    notes = [f"the same failure as above in {', '.join(same)}"] if same else []
    return notes + [short(f"{param}: {line}") for param, (_, line) in zip(ids, others)
                    if line != first_line]


def same_as_earlier():
    """Test functions whose failure reads as an earlier one's (a crash in a step that several
    tests run): {the earlier group: [later groups]}, listed under the earlier one in one line."""
    earlier, merged = {}, {}
    for group, failures in FAILURES.items():
        line = failures[0][1]
        if group[0] == "function" and line in earlier:
            merged.setdefault(earlier[line], []).append(group)
        elif group[0] == "function":
            earlier[line] = group
    return merged


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """Around pytest's own summary: its list of failures gets only the first of each group,
    with the others as notes under it; the board comes last, under everything."""
    stats = terminalreporter.stats
    hidden, merged = set(), same_as_earlier()
    for group, failures in FAILURES.items():
        if any(group in groups for groups in merged.values()):
            hidden.update(id(report) for report, _ in failures)
            continue
        later = [name.split("::")[-1] for _, name in merged.get(group, [])]
        notes = notes_on(group, failures) if len(failures) > 1 else []
        notes += [short(f"the same failure in {len(later)} more test(s): {', '.join(later)}", 300)
                  ] if later else []
        if notes:
            first = failures[0][0]
            first.longrepr = WithNotes(first.longrepr, notes)
            hidden.update(id(report) for report, _ in failures[1:])
    if hidden:
        EVERY_FAILURE.extend(stats["failed"])
        stats["failed"] = [report for report in EVERY_FAILURE if id(report) not in hidden]
    yield
    if COLLECTED or BOARD:
        write_board(terminalreporter)


EVERY_FAILURE: list = []  # pytest's own list of failed reports, while it prints the shorter one


class FailuresBack:
    """Puts every failure back once pytest has printed its list of failures, so that its -r
    summary and its count ("108 failed") see all of them. (A plugin object: a conftest can
    have only one function per hook, and this one must run inside pytest's own.)"""

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_terminal_summary(self, terminalreporter):
        if EVERY_FAILURE:
            terminalreporter.stats["failed"] = EVERY_FAILURE
        yield


def write_board(terminalreporter):
    title, lines = "progress board: the components in the order data flows", []
    terminalreporter.write_sep("=", title)

    def write(line):
        terminalreporter.write_line(line)
        lines.append(line)

    board_rows(write)
    board_file = terminalreporter.config.getoption("board_file")
    if board_file:
        Path(board_file).write_text("\n".join([title, *lines, ""]))


def board_rows(write):
    not_run = {name: len(info["tests"] - RAN.get(name, set())) for name, info in COLLECTED.items()}
    for name, row in {name: BOARD[name] for name in [*COLLECTED, *BOARD] if name in BOARD}.items():
        status = "pass" if row["passed"] == row["run"] else "FAIL"
        score = f"{row['passed']:>3}/{row['run']:<3}"
        left_out = f"  ({not_run[name]} more not run)" if not_run.get(name) else ""
        write(f"  {name:<15} {status}  {score}  pytest -k {row['select']}{left_out}")
    never = [name for name in COLLECTED if name not in BOARD]
    if never:
        write(f"  not run: {', '.join(never)}")
    failing = first_failing()
    if failing is not None:
        test, function, hint = BOARD[failing]["first"]
        select = BOARD[failing]["select"]
        write_first(write, f"first failing: {failing} ({test})", hint,
                    f"rerun it: pytest -k {function}   (all of {failing}: pytest -k {select})")
    elif OTHER_FAILURES:
        test, function, hint = OTHER_FAILURES[0]
        more = f" (and {len(OTHER_FAILURES) - 1} more failing tests)" if len(OTHER_FAILURES) > 1 else ""
        passing = ("every component passes" if not any(not_run.values()) and not never else
                   "the components that ran pass" if BOARD else "no component test ran")
        write_first(write, f"{passing}, but {test} fails{more}", hint,
                    f"rerun it: pytest -k {function}")
    elif any(not_run.values()) or never:
        write("every test that ran passes; some tests of the components did not run: "
              "run them all with a plain pytest")
    elif not BLOCKED:
        write("every component passes")
    if BLOCKED:
        blockers = ", ".join(dict.fromkeys(BLOCKED.values()))
        write(f"{len(BLOCKED)} later tests (whole model, loader, hooks, text, tutorial) were "
              f"skipped, blocked by {blockers}; pytest -rs lists them")
    for reason, tests in SKIPPED.items():
        names = ", ".join(tests[:2]) + (f" and {len(tests) - 2} more" if len(tests) > 2 else "")
        write(f"skipped: {names}: {reason}")


def write_first(write, title, hint, rerun):
    write("")
    write(title)
    for line in hint.splitlines():
        write(f"  {line}")
    write(rerun)
