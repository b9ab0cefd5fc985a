"""Run tutorial.md's Python blocks in order, as one session, and compare what they print.

A ```python block runs; the ```text block right after it, if any, is what it must print
(numbers may differ by a little: 2% or 0.015). A ```text varies block is output whose numbers
depend on training (part 2): only its words must match, and the `assert`s in the code block
above it state what its numbers must satisfy. A ```python no-run block (it needs the
internet) is shown but not run. test_hooked_bert.py calls `check_tutorial`.

    python scripts/run_tutorial.py            check that tutorial.md still prints what it shows
    python scripts/run_tutorial.py --update   rewrite its text blocks with what it prints now
"""

import contextlib
import io
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "tutorial.md"
BLOCK = re.compile(r"```(python|python no-run|text|text varies)\n(.*?)```\n", re.S)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def blocks(text: str):
    """[(kind, code, match)] for every fenced block of the tutorial, in order."""
    return [(m.group(1), m.group(2), m) for m in BLOCK.finditer(text)]


def run_blocks(text: str, workdir: Path) -> list[tuple[str, str, tuple[str, str] | None]]:
    """Run every python block in `workdir`; returns, for each, (code, what it printed, and the
    (kind, text) of the text block shown after it, or None)."""
    found, results, namespace = blocks(text), [], {"__name__": "__tutorial__"}
    sys.path.insert(0, str(ROOT))
    old_cwd = os.getcwd()
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    os.chdir(workdir)
    try:
        for i, (kind, code, _) in enumerate(found):
            if kind != "python":
                continue
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"tutorial.md block {i}", "exec"), namespace)
            following = found[i + 1] if i + 1 < len(found) else None
            shown = following if following and following[0].startswith("text") else None
            results.append((code, printed.getvalue(), shown and (shown[0], shown[1])))
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
    for a, b in zip(map(float, NUMBER.findall(printed)), map(float, NUMBER.findall(expected))):
        if abs(a - b) > 0.015 + 0.02 * max(abs(a), abs(b)):
            return False
    return True


def check_tutorial(workdir: Path) -> list[str]:
    """Problems found running the tutorial in `workdir` (empty if it all still holds)."""
    problems = []
    for code, printed, shown in run_blocks(TUTORIAL.read_text(), workdir):
        if shown is None:
            continue
        kind, expected = shown
        if not same_output(printed, expected, compare_numbers=kind == "text"):
            first_line = code.strip().splitlines()[0]
            problems.append(f"block starting {first_line!r} printed:\n{printed}\nbut tutorial.md shows:\n{expected}")
    return problems


def update(workdir: Path):
    """Rewrite each python block's text block with what the block prints now."""
    text = TUTORIAL.read_text()
    results = iter(run_blocks(text, workdir))
    pieces, last = [], 0
    found = blocks(text)
    for i, (kind, code, match) in enumerate(found):
        if kind != "python":
            continue
        _, printed, _ = next(results)
        following = found[i + 1] if i + 1 < len(found) else None
        if following and following[0].startswith("text"):
            pieces.append(text[last:following[2].start()] + f"```{following[0]}\n{printed}```\n")
            last = following[2].end()
    TUTORIAL.write_text("".join(pieces) + text[last:])


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true",
                        help="rewrite tutorial.md's text blocks (and its figures) with what it prints now")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.update:
            update(ROOT)  # here, so that the figure the tutorial writes lands beside it
            print("tutorial.md's outputs rewritten")
        else:
            problems = check_tutorial(Path(tmp))
            print("\n\n".join(problems) or "tutorial.md: every output still holds")
            sys.exit(1 if problems else 0)
