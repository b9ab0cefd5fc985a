"""Rerun tutorial.md's part 2 over seeds and CPU kernels, and print how much each measurement varies.

Part 2 trains a tiny BERT; what it measures depends on the seed (the initial weights, the
batches, the dropout masks), and also on the machine: on one machine a seed gives the same
numbers every time, but another CPU runs other kernels (AVX-512 instead of AVX2, say), whose
float32 rounding differs in the last bit, and 250 steps of training with dropout grow that
into other numbers (training in float64 does not cure it: it only moves the rounding). So this
script runs part 2's own blocks from tutorial.md, with the line `SEED = 0` changed to each seed,
once with PyTorch's kernels for this CPU and once with its plain ones (ATEN_CPU_CAPABILITY=default,
standing in for another machine), each run in its own process on one thread, and prints each
measurement's lowest, median and highest value over all the runs. The prose of part 2 states
ranges that contain these (with a margin), and scripts/run_tutorial.py checks that they do.
Each run's result is kept in the temporary folder under the hash of what it ran (part 2's
code, hooked_bert.py, torch's version, the kernels), so a second call reruns only what changed.

    python scripts/tutorial_seeds.py                 seeds 0 to 15, both kernel sets, 2 runs at a time
    python scripts/tutorial_seeds.py --seeds 4       seeds 0 to 3
    python scripts/tutorial_seeds.py --kernels this  only this CPU's kernels
    python scripts/tutorial_seeds.py --jobs 1        one run at a time (default: one per core)
    python scripts/tutorial_seeds.py --update        also write the table into tutorial.md
"""

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from run_tutorial import TUTORIAL, blocks

PART_2 = "# Part 2"
SEED_LINE = re.compile(r"^SEED = 0\b", re.M)

NO_ATTENTION_DROPOUT, NO_DROPOUT = "4 heads, no attention dropout", "4 heads, no dropout at all"
KERNELS = {"this": None, "default": "default"}  # name: ATEN_CPU_CAPABILITY (None: this CPU's best)

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
    ("no attention dropout: twin share, lowest head", lambda s: s["lowest_twin"][NO_ATTENTION_DROPOUT], 3),
    ("no attention dropout: worst head zeroed", lambda s: s["worst_zeroed"][NO_ATTENTION_DROPOUT], 3),
    ("no attention dropout: loss, last 50 steps", lambda s: sum(s["no_attention_dropout_losses"][-50:]) / 50, 4),
    ("no dropout: held-out accuracy", lambda s: s["accuracy"](s["no_dropout"]), 3),
    ("no dropout: twin share, lowest head", lambda s: s["lowest_twin"][NO_DROPOUT], 3),
    ("no dropout: heads with twin share over 0.5", lambda s: sum(x > 0.5 for x in s["twin_shares"](s["no_dropout"])), 0),
    ("no dropout: worst head zeroed", lambda s: s["worst_zeroed"][NO_DROPOUT], 3),
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
    return [float(read(session)) for _, read, _ in MEASUREMENTS], failed


def cache_file(seed: int, kernels: str) -> Path:
    """Where the result of a run of part 2's code (as tutorial.md has it now) with `seed` and
    `kernels` (a key of KERNELS), this hooked_bert.py and this torch is kept."""
    import hashlib

    import torch
    key = hashlib.sha256("\n".join(part_2_code(seed) + [
        (TUTORIAL.parent / "hooked_bert.py").read_text(), torch.__version__,
        KERNELS[kernels] or "this", repr([label for label, _, _ in MEASUREMENTS])]).encode())
    return Path(tempfile.gettempdir()) / "tutorial_seeds" / f"{key.hexdigest()[:24]}.json"


def one_run(seed: int) -> tuple[list[float], list[str]]:
    """measure(seed) in this process, on one thread, or its result from an earlier run of the
    same part 2 code, hooked_bert.py, torch and kernels (kept in the temporary folder)."""
    import torch
    kernels = {value: name for name, value in KERNELS.items()}[os.environ.get("ATEN_CPU_CAPABILITY")]
    cached = cache_file(seed, kernels)
    if cached.exists():
        return tuple(json.loads(cached.read_text()))
    torch.set_num_threads(1)
    with contextlib.redirect_stdout(sys.stderr):
        result = measure(seed)
    cached.parent.mkdir(exist_ok=True)
    cached.write_text(json.dumps(result))
    return result


def measure_in_process(seed: int, kernels: str) -> tuple[list[float], list[str]]:
    """measure(seed) in a new Python process, with the CPU kernels `kernels` (a key of KERNELS)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("ATEN_CPU_CAPABILITY", None)
    if KERNELS[kernels]:
        env["ATEN_CPU_CAPABILITY"] = KERNELS[kernels]  # read once, when torch is imported
    run = subprocess.run([sys.executable, __file__, "--one-run", str(seed)], env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"seed {seed}, {kernels} kernels, failed:\n{run.stderr}")
    print(f"seed {seed}, {kernels} kernels: done", file=sys.stderr)
    values, failed = json.loads(run.stdout.splitlines()[-1])
    return values, [f"{line} ({kernels} kernels)" for line in failed]


def describe(done: list[tuple[int, str]]) -> str:
    """What the runs `done` [(seed, kernels)] were, e.g. "seeds 0 to 15 on this CPU's kernels"."""
    parts = []
    for kernels in KERNELS:
        seeds = sorted(seed for seed, k in done if k == kernels)
        if seeds:
            span = f"{seeds[0]} to {seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else str(seeds)
            where = "this CPU's kernels" if kernels == "this" else "the plain kernels (ATEN_CPU_CAPABILITY=default)"
            parts.append(f"seeds {span} on {where}")
    return f"{len(done)} runs: " + ", and ".join(parts)


def table(values: dict[str, list[float]], done: list[tuple[int, str]], how: str) -> str:
    lines = [describe(done), how, f"{'measurement':46}{'min':>9}{'median':>9}{'max':>9}"]
    for label, _, decimals in MEASUREMENTS:
        low, mid, high = min(values[label]), statistics.median(values[label]), max(values[label])
        lines.append(f"{label:46}" + "".join(f"{v:9.{decimals}f}" for v in (low, mid, high)))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=16, help="how many seeds, from 0 (default 16)")
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help=f"kernel sets, comma-separated, of {list(KERNELS)} (default both)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="runs at once, each in its own process on one thread (default: one per core)")
    parser.add_argument("--update", action="store_true", help="write the table into tutorial.md's ```text seeds block")
    parser.add_argument("--cached", action="store_true",
                        help="run nothing: the table of the runs asked for that an earlier call has kept")
    parser.add_argument("--one-run", type=int, metavar="SEED", help=argparse.SUPPRESS)  # a worker process
    args = parser.parse_args(argv)
    if args.one_run is not None:
        print(json.dumps(one_run(args.one_run)))
        return 0
    kernels = args.kernels.split(",")
    if args.seeds < 1 or args.jobs < 1 or not set(kernels) <= set(KERNELS):
        parser.error(f"--seeds and --jobs must be at least 1 and --kernels among {list(KERNELS)}")
    start, asked = time.perf_counter(), [(seed, k) for k in kernels for seed in range(args.seeds)]
    if args.cached:
        done = [(seed, k) for seed, k in asked if cache_file(seed, k).exists()]
        runs = [tuple(json.loads(cache_file(seed, k).read_text())) for seed, k in done]
        how = "each run on one thread (kept from earlier calls)"
    else:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # each thread waits on a process
            runs, done = list(pool.map(lambda run: measure_in_process(*run), asked)), asked
        how = f"each run on one thread, {args.jobs} at a time: {time.perf_counter() - start:.0f} s"
    if not runs:
        raise SystemExit("no runs to make a table of")
    values = {label: [run[i] for run, _ in runs] for i, (label, _, _) in enumerate(MEASUREMENTS)}
    failed = [line for _, failed_here in runs for line in failed_here]
    printed = table(values, done, how)
    print(printed, end="")
    print("\n".join(["asserts that failed:"] + failed) if failed else "every assert of part 2 held in every run")
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
