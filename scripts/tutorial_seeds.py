"""Rerun tutorial.md's part 2 over several seeds and print how much each measurement varies.

Part 2 trains a tiny BERT; what it measures depends on the seed (the initial weights, the
batches, the dropout masks). This script runs part 2's own blocks from tutorial.md, with the
line `SEED = 0` changed to each seed in turn, on one thread, and prints each measurement's
lowest, median and highest value over the seeds. The prose of part 2 quotes these ranges,
and scripts/run_tutorial.py checks the quotes against the table in tutorial.md.

    python scripts/tutorial_seeds.py               8 seeds, 0 to 7 (about 2 minutes on one core)
    python scripts/tutorial_seeds.py --seeds 12    more
    python scripts/tutorial_seeds.py --jobs 4      four seeds at a time (each still on one thread)
    python scripts/tutorial_seeds.py --update      also write the table into tutorial.md
"""

import argparse
import contextlib
import io
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
import traceback

import torch

from run_tutorial import TUTORIAL, blocks

PART_2 = "# Part 2"
SEED_LINE = re.compile(r"^SEED = 0\b", re.M)

# What part 2 measures: (label, how to read it from the finished session, decimals).
MEASUREMENTS = [
    ("held-out accuracy", lambda s: s["held_out"], 4),
    ("training loss, last 50 steps", lambda s: sum(s["losses"][-50:]) / 50, 4),
    ("twin share, lowest head", lambda s: min(s["twin_share"]), 3),
    ("twin share, highest head", lambda s: max(s["twin_share"]), 3),
    ("one head zeroed, worst head", lambda s: min(s["zero_one"]), 3),
    ("all but one zeroed, worst head", lambda s: min(s["keep_one"]), 3),
    ("all but one zeroed, best head", lambda s: max(s["keep_one"]), 3),
    ("all four zeroed", lambda s: s["zero_all"], 3),
    ("corrupted run, clean answer", lambda s: s["corrupted"], 3),
    ("corrupted run, new twin's symbol", lambda s: s["copies_new_twin"], 3),
    ("one head patched, best head", lambda s: max(s["patch_one"]), 3),
    ("all four patched", lambda s: s["patch_all"], 3),
    ("no attention dropout: held-out accuracy", lambda s: s["accuracy"](s["no_attention_dropout"]), 3),
    ("no attention dropout: worst head zeroed", lambda s: s["worst_zeroed"]["4 heads, no attention dropout"], 3),
    ("no attention dropout: loss, last 50 steps", lambda s: sum(s["no_attention_dropout_losses"][-50:]) / 50, 4),
    ("one head: held-out accuracy", lambda s: s["accuracy"](s["one_head"]), 3),
    ("one head: loss, last 50 steps", lambda s: s["one_head_late_loss"], 4),
    ("head output read out, worst head", lambda s: min(s["readout"]), 3),
    ("head output read out, best head", lambda s: max(s["readout"]), 3),
]


def part_2_code(seed: int) -> list[str]:
    """Part 2's python blocks, with SEED set to `seed`."""
    text = TUTORIAL.read_text()
    if len(SEED_LINE.findall(text)) != 1:
        raise SystemExit("tutorial.md must set `SEED = 0` on exactly one line of part 2")
    part_2 = SEED_LINE.sub(f"SEED = {seed}", text[text.index(PART_2):])
    return [code for kind, code, _ in blocks(part_2) if kind == "python"]


def run_part_2(seed: int) -> tuple[dict, list[str]]:
    """The session's namespace after running part 2 with `seed` (its prints are swallowed),
    and the asserts that failed. A block's assert is its last line, so the run goes on."""
    namespace, failed = {"__name__": "__tutorial__"}, []
    with contextlib.redirect_stdout(io.StringIO()):
        for i, code in enumerate(part_2_code(seed)):
            try:
                exec(compile(code, f"tutorial.md part 2, block {i}", "exec"), namespace)
            except AssertionError:
                line = traceback.extract_tb(sys.exc_info()[2])[-1].lineno
                failed.append(f"seed {seed}: {code.splitlines()[line - 1].strip()}")
    return namespace, failed


def measure(seed: int) -> tuple[list[float], list[str]]:
    """Each measurement of part 2 run with `seed`, and the asserts that failed."""
    import matplotlib
    matplotlib.use("Agg")  # part 2 shows a figure; not here
    if str(TUTORIAL.parent) not in sys.path:
        sys.path.insert(0, str(TUTORIAL.parent))  # for hooked_bert
    os.chdir(tempfile.mkdtemp())  # part 2 writes nothing, but if it did: not in the repository
    session, failed = run_part_2(seed)
    print(f"seed {seed} done", file=sys.stderr)
    return [float(read(session)) for _, read, _ in MEASUREMENTS], failed


def table(values: dict[str, list[float]], seeds: int, jobs: int, seconds: float) -> str:
    lines = [f"{seeds} seeds (0 to {seeds - 1}), each on one thread, {jobs} at a time: {seconds:.0f} s",
             f"{'measurement':44}{'min':>9}{'median':>9}{'max':>9}"]
    for label, _, decimals in MEASUREMENTS:
        low, mid, high = min(values[label]), statistics.median(values[label]), max(values[label])
        lines.append(f"{label:44}" + "".join(f"{v:9.{decimals}f}" for v in (low, mid, high)))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="how many seeds, from 0 (default 8)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, in separate processes (default 1)")
    parser.add_argument("--update", action="store_true", help="write the table into tutorial.md's ```text seeds block")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        parser.error(f"--seeds and --jobs must be at least 1, got {args.seeds} and {args.jobs}")
    start = time.perf_counter()
    if args.jobs == 1:
        runs = [measure(seed) for seed in range(args.seeds)]
    else:  # one process per seed at a time, each on one thread: the same numbers, sooner
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            runs = pool.map(measure, range(args.seeds), chunksize=1)
    values = {label: [run[i] for run, _ in runs] for i, (label, _, _) in enumerate(MEASUREMENTS)}
    failed = [line for _, failed_here in runs for line in failed_here]
    printed = table(values, args.seeds, args.jobs, time.perf_counter() - start)
    print(printed, end="")
    print("\n".join(["asserts that failed:"] + failed) if failed else "every assert of part 2 held on every seed")
    if args.update:
        text = TUTORIAL.read_text()
        new, count = re.subn(r"```text seeds\n.*?```\n", lambda _: f"```text seeds\n{printed}```\n", text, flags=re.S)
        if count != 1:
            raise SystemExit("tutorial.md has no single ```text seeds block to update")
        TUTORIAL.write_text(new)
        print("tutorial.md's seed table rewritten")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
