"""A student kit carries values, not formulas: no function in it computes a blanked component.

scripts/find_solutions_in_kit.py calls every function and module class of a kit every way a
student could use it as a blanked component's forward, and compares what it returns with
HuggingFace's value of each component and step. Here it runs on a kit with every component
blanked, into which this test plants two solutions of its own (in a file of their own): it must
find exactly those two, so the search works and the kit's own files hold none.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "scripts"))
try:
    import make_exercises as kit
finally:
    sys.path.pop(0)

PLANTED = '''
import torch


def normalise(g):  # LayerNorm, catalogue style
    centred = g.x - g.x.mean(-1, keepdim=True)
    return centred / (centred.pow(2).mean(-1, keepdim=True) + g.cfg.eps).sqrt() * g.w + g.b


def head_scores(g):  # the attention scores, from q and k
    scores = torch.einsum("bqhd,bkhd->bhqk", g.q, g.k) / g.cfg.d_head ** 0.5
    return scores.masked_fill(g.key_is_padding[:, None, None, :], torch.finfo(scores.dtype).min)


class Relu2(torch.nn.Module):  # has a forward, but computes nothing of BERT's
    def forward(self, x):
        return torch.relu(x) * 2
'''


@pytest.mark.slow
def test_no_function_of_the_kit_computes_a_blanked_component(tmp_path):
    empty = tmp_path / "empty.pt"
    torch.save({}, empty)  # the values are data; the search looks at the code
    folder = tmp_path / "kit"
    kit.make_kit(folder, kit.COMPONENTS, values=empty)
    (folder / "planted.py").write_text(PLANTED)
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "find_solutions_in_kit.py"),
                          str(folder)], cwd=folder, capture_output=True, text=True, timeout=300)
    findings = run.stdout.split("\n")
    assert run.returncode == 1 and sorted(filter(None, findings)) == [
        "planted.head_scores computes Attention hook_attn_scores",
        "planted.normalise computes LayerNorm"], run.stdout + run.stderr[-3000:]
