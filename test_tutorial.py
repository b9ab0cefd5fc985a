"""Tests of the tutorial's own machinery: the hook diagram, the exercises' solutions, the seed
ranges the prose states, and hooked_bert.py's docstring. (test_hooked_bert.py runs the tutorial.)"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

import hooked_bert as hb

ROOT = Path(__file__).resolve().parent
TUTORIAL = (ROOT / "tutorial.md").read_text()


def script(name: str):
    """scripts/<name>.py as a module."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def small_model():
    return hb.HookedEncoder(hb.Config(d_vocab=7, n_ctx=5, d_model=24, n_heads=4, d_head=6, d_mlp=10, n_layers=2))


def test_block_diagram_names_every_hook_of_the_embeddings_and_a_block():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    draw_block = script("draw_block")
    model = small_model()
    labels = draw_block.figure_labels(draw_block.draw_block(model))
    embed = [n for n in model.hook_dict if n.startswith("embed.") or n == "hook_full_embed"]
    block = [n[len("blocks.1."):] for n in model.hook_dict if n.startswith("blocks.1.")]
    assert len(embed) >= 6 and len(block) >= 19
    missing = [name for name in embed + block if name not in labels]
    assert not missing, f"hooks not on the diagram: {missing}"
    # and each shape label is the real shape, in dimension names
    assert "[batch, head_index, query_pos, key_pos]" in {label.split("   ")[0] for label in labels}
    assert "[batch, pos, 1]" in labels


def test_block_diagram_refuses_a_hook_it_has_no_place_for():
    pytest.importorskip("matplotlib")
    draw_block = script("draw_block")
    model = small_model()
    model.blocks[0].hook_extra = hb.HookPoint()
    model.hook_dict = hb.name_hook_points(model)
    with pytest.raises(ValueError, match="hook_extra"):
        draw_block.hooks_to_place(model)


def test_tutorial_shows_the_diagram_drawn_by_the_script():
    assert "![" in TUTORIAL and "(tutorial_block.png)" in TUTORIAL
    assert "draw_block" in TUTORIAL.split("(tutorial_block.png)")[0].rsplit("```python", 1)[-1]
    assert (ROOT / "tutorial_block.png").stat().st_size > 10_000


def exercises(text: str) -> list[tuple[str, str]]:
    """[(number, the text up to the next exercise or heading)] of every "**Exercise N.M**"."""
    found = list(re.finditer(r"^\*\*Exercise (\d+\.\d+)\b", text, re.M))
    ends = [m.start() for m in found[1:]] + [len(text)]
    return [(m.group(1), text[m.start():end].split("\n## ")[0].split("\n# Part")[0]) for m, end in zip(found, ends)]


def test_every_exercise_is_numbered_by_its_section_and_has_a_folded_solution():
    found = exercises(TUTORIAL)
    assert len(found) >= 10
    numbers = [number for number, _ in found]
    assert len(set(numbers)) == len(numbers), f"an exercise number is used twice: {numbers}"
    for number, body in found:
        section = int(number.split(".")[0])
        heading = TUTORIAL[:TUTORIAL.index(f"**Exercise {number}")].rsplit("\n## ", 1)[-1]
        assert heading.startswith(f"{section}. "), f"Exercise {number} is under section {heading.split(chr(10))[0]!r}"
        assert "<details>" in body and "</details>" in body and "Solution" in body, f"Exercise {number} has no solution"
    # no old-style references to "exercise 3" without its section
    assert not re.search(r"[Ee]xercise \d+\b(?!\.\d)", TUTORIAL), re.findall(r"[Ee]xercise \d+\b(?!\.\d)", TUTORIAL)


def test_seed_ranges_must_hold_every_run():
    run_tutorial = script("run_tutorial")
    row = ("0.600", "0.850", "0.970")
    assert run_tutorial.holds_every_run("0.55", "0.98", None, row)
    assert not run_tutorial.holds_every_run("0.65", "0.98", None, row)   # a run below the range
    assert not run_tutorial.holds_every_run("0.55", "0.96", None, row)   # a run above it
    assert run_tutorial.holds_every_run("", "0.6", "min", row)
    assert not run_tutorial.holds_every_run("", "0.61", "min", row)
    assert run_tutorial.holds_every_run("", "1.0", "max", row)
    assert not run_tutorial.holds_every_run("", "0.95", "max", row)
    assert run_tutorial.holds_every_run("", "0.850", "median", row)
    problems = run_tutorial.prose_problems("at least 0.7<!-- seeds: x min -->", {}, "", {"x": row})
    assert problems and "0.7" in problems[0]


def test_tutorial_seed_table_covers_seeds_0_to_15_and_another_kernel_set():
    first_line = TUTORIAL.split("```text seeds\n", 1)[1].splitlines()[0]
    assert "seeds 0 to 15 on this CPU's kernels, and seeds 0 to" in first_line, first_line
    assert "on the plain kernels (ATEN_CPU_CAPABILITY=default)" in first_line, first_line


def test_module_docstring_states_no_stale_line_numbers():
    source = (ROOT / "hooked_bert.py").read_text().splitlines()
    banner = next(i for i, line in enumerate(source, 1) if line.startswith("# Part 2"))
    for start, end in re.findall(r"lines (\d+)-(\d+)", hb.__doc__):
        assert source[int(start) - 1].startswith("# Part 1") or int(end) == banner - 2, (
            f"hooked_bert.py's docstring says part 1 is lines {start}-{end}; the Part 2 banner is at {banner}")


def test_notebook_leaves_out_large_html_but_keeps_figures():
    nbformat = pytest.importorskip("nbformat")
    run_tutorial = script("run_tutorial")
    view = nbformat.v4.new_output("display_data", data={"text/html": "x" * 200_000, "text/plain": "view"})
    figure = nbformat.v4.new_output("display_data", data={"image/png": "y" * 200_000, "text/plain": "fig"})
    small = nbformat.v4.new_output("display_data", data={"text/html": "<b>small</b>"})
    cell = nbformat.v4.new_code_cell("x", outputs=[view, figure, small])
    run_tutorial.leave_out_large_outputs(nbformat.v4.new_notebook(cells=[cell]))
    assert list(cell.outputs[0]["data"]) == ["text/plain"] and "not stored" in cell.outputs[0]["data"]["text/plain"]
    assert cell.outputs[1]["data"]["image/png"] == "y" * 200_000
    assert cell.outputs[2]["data"]["text/html"] == "<b>small</b>"


def test_a_solution_stays_folded_in_the_notebook():
    pytest.importorskip("jupytext")
    run_tutorial = script("run_tutorial")
    text = ("**Exercise 1.1. Try.** Do it.\n\n<details><summary>Solution</summary>\n\n"
            "```python solution\nx = 1\n```\n\n```text\n1\n```\n\nSo it is.\n\n</details>\n\n## 2. Next\n")
    cells = run_tutorial.notebook_cells(text)[2:]   # after the note and the Colab cell
    assert [c.cell_type for c in cells] == ["markdown"]
    assert cells[0].source.count("<details>") == cells[0].source.count("</details>") == 1
    assert "x = 1" in cells[0].source and "So it is." in cells[0].source
