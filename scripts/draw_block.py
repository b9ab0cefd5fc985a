"""Draw BERT's embeddings and one post-LN block with every hook where it sits (tutorial.md, §1).

The hook names and their shapes are read from a real `hooked_bert.HookedEncoder`: the names
from its hook points, the shapes from a run on a small input whose sizes are all different, so
that each size names its dimension. Only where each hook sits is written here (PLACES); a
hook the model has and PLACES lacks, or the other way round, is an error, so the picture
cannot drift from the code. test_tutorial.py checks that every hook name is on it.

    python scripts/draw_block.py                  writes tutorial_block.png beside tutorial.md
    python scripts/draw_block.py --output x.png   elsewhere
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Where each hook sits, in the figure's coordinates (x 0-100 left to right, y 0-100 bottom to
# top): (x, y, side of the dot its label goes on). Names are relative to their part: the
# embeddings (`embed.*`, and the root's `hook_full_embed`) or the block `blocks.L`.
S = 28  # x of the residual stream
EMBED_PLACES = {
    "embed.hook_embed": (16, 89.5, "right"),
    "embed.hook_pos_embed": (46, 89.5, "right"),
    "embed.hook_token_type_embed": (76, 89.5, "right"),
    "embed.ln.hook_scale": (S - 8, 80.6, "left"),
    "embed.ln.hook_normalized": (S - 8, 77.6, "left"),
    "hook_full_embed": (S, 73.5, "right"),
}
BLOCK_PLACES = {
    "hook_resid_pre": (S, 66.5, "right"),
    "attn.hook_q": (42, 60.5, "right"),
    "attn.hook_k": (58, 57.5, "right"),
    "attn.hook_v": (74, 54.5, "right"),
    "attn.hook_attn_scores": (50, 51, "right"),
    "attn.hook_pattern": (50, 46.5, "right"),
    "attn.hook_z": (70, 43.5, "right"),
    "attn.hook_result": (70, 40.5, "right"),
    "hook_attn_out": (33, 36.5, "right"),
    "hook_resid_mid": (S, 33, "right"),
    "ln1.hook_scale": (S - 8, 30.5, "left"),
    "ln1.hook_normalized": (S - 8, 27.5, "left"),
    "mlp.hook_pre": (50, 22.5, "right"),
    "mlp.hook_post": (50, 17.5, "right"),
    "hook_mlp_out": (33, 12, "right"),
    "hook_resid_post": (S, 9, "right"),
    "ln2.hook_scale": (S - 8, 6.5, "left"),
    "ln2.hook_normalized": (S - 8, 3.5, "left"),
    "hook_normalized_resid_post": (S, -0.5, "right"),
}
# What the label says under a hook's name, after its shape, where the name alone does not say it.
NOTES = {
    "hook_full_embed": "embed.ln's output: the stream block 0 reads",
    "attn.hook_attn_scores": "q . k / sqrt(d_head), padded keys masked",
    "attn.hook_pattern": "softmax over key_pos",
    "attn.hook_z": "pattern @ v, per head",
    "attn.hook_result": "z @ W_O per head, if use_attn_result",
    "hook_attn_out": "the heads' z @ W_O, summed, + b_O",
    "hook_resid_mid": "resid_pre + attn_out",
    "mlp.hook_post": "GELU(pre)",
    "hook_mlp_out": "post @ W_out + b_out",
    "hook_resid_post": "ln1's output + mlp_out: the stream BEFORE ln2",
    "hook_normalized_resid_post": "ln2's output: what block L+1 (or the heads) reads",
}
NOTE_BELOW = {"attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_result"}
SIZES = dict(batch=2, pos=3, d_model=24, n_heads=4, d_head=6, d_mlp=10)  # all different


def tiny_model():
    """A one-layer HookedEncoder whose sizes are SIZES (random weights: only names and shapes
    are read)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import hooked_bert as hb
    s = SIZES
    cfg = hb.Config(d_vocab=7, n_ctx=5, d_model=s["d_model"], n_heads=s["n_heads"],
                    d_head=s["d_head"], d_mlp=s["d_mlp"], n_layers=1, use_attn_result=True)
    return hb.HookedEncoder(cfg)


def hook_shapes(model) -> dict[str, str]:
    """{hook name: its shape in dimension names}, from a run of `model` (sizes: SIZES)."""
    import torch
    names = {size: name for name, size in SIZES.items()}
    names[SIZES["n_heads"]], names[1] = "head_index", "1"
    tokens = torch.zeros(SIZES["batch"], SIZES["pos"], dtype=torch.long)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, return_type=None)
    shapes = {}
    for name in model.hook_dict:
        if name in cache:
            dims = [names[size] for size in cache[name].shape]
            if dims.count("pos") == 2:
                dims[dims.index("pos")], dims[dims.index("pos")] = "query_pos", "key_pos"
            shapes[name] = "[" + ", ".join(dims) + "]"
    return shapes


def hooks_to_place(model) -> tuple[dict[str, str], dict[str, str]]:
    """The model's embedding hooks and block-0 hooks (named as in EMBED_PLACES and
    BLOCK_PLACES), each with its shape. Refuses if PLACES and the model disagree."""
    shapes = hook_shapes(model)
    embed = {n: shapes.get(n, "") for n in model.hook_dict if n.startswith("embed.") or n == "hook_full_embed"}
    block = {n[len("blocks.0."):]: shapes.get(n, "") for n in model.hook_dict if n.startswith("blocks.0.")}
    for found, places, part in ((embed, EMBED_PLACES, "embeddings"), (block, BLOCK_PLACES, "block")):
        if set(found) != set(places):
            raise ValueError(f"the {part}' hooks and draw_block.py's places differ: the model has "
                             f"{sorted(set(found) - set(places))} with no place, and places "
                             f"{sorted(set(places) - set(found))} are not hooks of the model")
    return embed, block


def draw_block(model=None):
    """The figure: the embeddings, then one block, with a dot and a label for every hook."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    embed, block = hooks_to_place(model if model is not None else tiny_model())
    fig, ax = plt.subplots(figsize=(14, 15))
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.97)
    ax.set(xlim=(0, 100), ylim=(-6, 101))
    ax.axis("off")

    def box(x0, y0, x1, y1, title, color, title_at="right"):
        ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0.4",
                                    facecolor=color, edgecolor="gray", linewidth=1, zorder=-2))
        ax.text(x1 - 0.5 if title_at == "right" else x0 + 0.5, y0 + 0.3, title, ha=title_at, va="bottom",
                fontsize=10, style="italic", color="dimgray")

    def line(*points, width=1.2, head=True):
        xs, ys = zip(*points)
        ax.plot(xs[:-1] if head else xs, ys[:-1] if head else ys, color="black", lw=width, zorder=-1)
        if head:
            ax.annotate("", points[-1], points[-2], arrowprops=dict(arrowstyle="-|>", color="black", lw=width))

    def plus(x, y):
        ax.text(x, y, "+", ha="center", va="center", fontsize=14, fontweight="bold",
                bbox=dict(boxstyle="circle,pad=0.15", facecolor="white", edgecolor="black"))

    def step(x, y, text):
        ax.text(x, y, text, ha="center", va="center", fontsize=10,
                bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="black"))

    # The embeddings: three lookups, summed, then LayerNorm.
    box(2, 71, 98, 100, "BertEmbed (embed), then the root's hook_full_embed", "#eef4fb")
    for x, text in ((16, "W_E[tokens]"), (46, "W_pos[0, 1, 2, ...]"), (76, "W_token_type[token_type_ids]")):
        step(x, 95, text)
        line((x, 93.8), (x, 89.5))
        line((x, 89.5), (S + (0 if x == 16 else 1.2), 85))
    plus(S, 84)
    line((S, 82.8), (S, 80.2))
    step(S, 79, "LayerNorm (embed.ln)")
    line((S, 77.8), (S, 67.2), width=2.5)

    # One block: attention, add, ln1, MLP, add, ln2.
    box(2, -5, 98, 69, "BertBlock (blocks.L), one of n_layers: post-LN, add then normalise", "#fbf6ee")
    line((S, 66.5), (S, 37.7), width=2.5)                          # the residual stream
    box(36, 37.8, 96, 64.5, "Attention (attn), per head: W_Q, W_K, W_V, W_O", "#ffffff", "left")
    ax.plot([S, 74], [63.5, 63.5], color="black", lw=1.2, zorder=-1)
    for name in ("q", "k", "v"):
        x, y, _ = BLOCK_PLACES[f"attn.hook_{name}"]
        line((x, 63.5), (x, y))
    line((42, 60.5), (50, 51))
    line((58, 57.5), (50, 51))
    line((50, 51), (50, 46.5))
    line((50, 46.5), (50, 43.5), (70, 43.5))
    line((74, 54.5), (74, 47.5), (70, 47.5), (70, 43.5))
    line((70, 43.5), (70, 40.5))
    line((70, 40.5), (70, 36.5), (S + 1.2, 36.5))
    plus(S, 36.5)
    line((S, 35.3), (S, 30.2))
    step(S, 29, "LayerNorm (ln1)")
    ax.text(S + 7.5, 29, "ln1's output is the stream from here on", fontsize=8, color="dimgray", va="center")
    line((S, 27.8), (S, 13.2), width=2.5)
    box(36, 14.5, 96, 26, "MLP (mlp): W_in, GELU, W_out", "#ffffff")
    line((S, 25), (50, 25), (50, 22.5))
    line((50, 22.5), (50, 17.5))
    line((50, 17.5), (50, 12), (S + 1.2, 12))
    plus(S, 12)
    line((S, 10.8), (S, 6.2))
    step(S, 5, "LayerNorm (ln2)")
    line((S, 3.8), (S, -4))

    for hooks, places in ((embed, EMBED_PLACES), (block, BLOCK_PLACES)):
        for name, shape in hooks.items():
            x, y, side = places[name]
            ax.plot([x], [y], "o", color="crimson", markersize=7, zorder=3)
            dx, ha = (1.2, "left") if side == "right" else (-1.2, "right")
            ax.text(x + dx, y + 0.35, name, ha=ha, va="bottom", fontsize=10, family="monospace",
                    color="crimson")
            below = name in NOTE_BELOW  # the note on its own line: it would cross a line
            beside = f"   {NOTES[name]}" if name in NOTES and not below else ""
            ax.text(x + dx, y - 0.1, shape + beside, ha=ha, va="top", fontsize=8, color="dimgray")
            if below:
                ax.text(x + dx, y - 1.3, NOTES[name], ha=ha, va="top", fontsize=8, color="dimgray")
    fig.suptitle("BERT's embeddings and one post-LN block, with every hook (red dots) where it sits",
                 fontsize=13)
    return fig


def figure_labels(fig) -> set[str]:
    """Every text drawn on the figure (the test reads the hook names from here)."""
    return {text.get_text() for ax in fig.axes for text in ax.texts} | {t.get_text() for t in fig.texts}


if __name__ == "__main__":
    import argparse

    import matplotlib
    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "tutorial_block.png")
    args = parser.parse_args()
    draw_block().savefig(args.output, dpi=80)
    print(f"wrote {args.output}")
