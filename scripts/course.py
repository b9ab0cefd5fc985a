"""The course file, course.toml: what make_exercises.py blanks and what grade.py grades.

The commented course.toml at the top of the repository says what each entry means. Read one with
`load(path)`; `to_toml(course, folder)` writes the copy that goes into a kit (its own
test files named by their path in the kit) or into the autograder (the hidden ones too).
"""

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

# The components a kit can blank, in the order data flows (make_exercises.py has a stub for each).
COMPONENTS = ["Embed", "PosEmbed", "TokenTypeEmbed", "LayerNorm", "BertEmbed", "Attention", "MLP",
              "BertBlock", "BertMLMHead", "Unembed", "BertPooler", "BertNSPHead"]
KEYS = {"blank", "graded", "points", "steps", "model_tests", "files"}


class CourseError(SystemExit):
    """A mistake in the course file: the scripts stop with this message."""


def load(path, blank=None, components=COMPONENTS) -> dict:
    """The course in `path` (None: the default course: every component blanked and graded, one
    point each), checked. `blank` (make_exercises.py --blank) replaces its blanked components."""
    where = f"course file {path}" if path else "the default course"
    try:
        raw = tomllib.loads(Path(path).read_text()) if path else {}
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise CourseError(f"{where}: {error}")

    def fail(message):
        raise CourseError(f"{where}: {message}")

    if set(raw) - KEYS:
        fail(f"unknown entry {', '.join(sorted(set(raw) - KEYS))}; "
             f"the entries are {', '.join(sorted(KEYS))}")

    def names(key, value, allowed):
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            fail(f"{key} must be a list of component names, like [\"LayerNorm\", \"Attention\"]")
        unknown = [name for name in value if name not in allowed]
        if unknown:
            fail(f"{key}: unknown component {', '.join(unknown)}; "
                 f"choose from: {', '.join(allowed)}")
        return [name for name in allowed if name in value]  # in data-flow order

    def points_table(key, table, allowed=None):
        """{name: points} of a table (its names among `allowed`, if given)."""
        if not isinstance(table, dict):
            fail(f"[{key}] must be a table of points, like Attention = 3")
        names(key, list(table), allowed) if allowed is not None else None
        return {name: number(value, f"{key}.{name}", fail) for name, value in table.items()}

    blanked = names("blank", raw.get("blank", components) if blank is None else blank, components)
    graded = names("graded", raw.get("graded", blanked), blanked)  # not blanked: free points
    points = {name: 1 for name in graded} | points_table("points", raw.get("points", {}), graded)
    steps = raw.get("steps", {})
    if not isinstance(steps, dict) or not all(isinstance(table, dict) for table in steps.values()):
        fail("[steps.<component>] tables give steps their points, like test_attention_scores = 1")
    names("steps", list(steps), graded)
    steps = {name: points_table(f"steps.{name}", table) for name, table in steps.items()}
    for name, table in steps.items():
        if sum(table.values()) > points[name] + 1e-9:
            fail(f"[steps.{name}] gives {sum(table.values()):g} points, "
                 f"more than {name}'s {points[name]:g}")
    model_tests = points_table("model_tests", raw.get("model_tests", {}))
    folder = Path(path).parent if path else Path.cwd()
    files = [test_file(entry, components, folder, fail) for entry in raw.get("files", [])]
    kit_names = [entry["name"] for entry in files]
    if len(set(kit_names)) < len(kit_names):
        fail(f"two test files have the same name ({', '.join(kit_names)}): "
             "the kit puts them side by side")
    return dict(blank=blanked, graded=graded, points=points, steps=steps,
                model_tests=model_tests, files=files)


def number(value, key, fail):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        fail(f"{key} must be a number of points (0 or more), not {value!r}")
    return value


def test_file(entry, components, folder, fail):
    """One [[files]] entry: its path (relative to the course file), component and whether hidden."""
    if (not isinstance(entry, dict) or set(entry) - {"path", "component", "hidden"}
            or "path" not in entry):
        fail(f"each [[files]] entry has a path, a component and maybe hidden = true, not {entry!r}")
    source = folder / entry["path"]
    if not re.fullmatch(r"test_\w+\.py", source.name):
        fail(f"{entry['path']}: name it test_<something>.py, or pytest will not collect it")
    if not source.is_file():
        fail(f"{entry['path']}: no such file (paths are relative to the course file)")
    if entry.get("component") not in components:
        fail(f"{entry['path']}: component = one of {', '.join(components)}, "
             f"not {entry.get('component')!r}")
    return dict(source=source, name=source.name, component=entry["component"],
                hidden=bool(entry.get("hidden", False)))


def to_toml(course, hidden: bool) -> str:
    """The course as the copy in a kit (hidden=False: without the hidden test files) or in the
    autograder reads it: each test file by its name, beside the course file."""
    lines = ["# Written by scripts/make_exercises.py from the instructor's course file.",
             f"blank = {names_list(course['blank'])}", f"graded = {names_list(course['graded'])}",
             "", "[points]", *(f"{name} = {value!r}" for name, value in course["points"].items())]
    for name, table in course["steps"].items():
        lines += ["", f"[steps.{name}]", *(f"{step} = {value!r}" for step, value in table.items())]
    lines += ["", "[model_tests]",
              *(f"{test} = {value!r}" for test, value in course["model_tests"].items())]
    for entry in course["files"]:
        if hidden or not entry["hidden"]:
            lines += ["", "[[files]]", f'path = "{entry["name"]}"',
                      f'component = "{entry["component"]}"']
            lines += ["hidden = true"] if entry["hidden"] else []
    return "\n".join(lines) + "\n"


def names_list(names) -> str:
    return "[" + ", ".join(f'"{name}"' for name in names) + "]"
