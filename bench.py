"""Benchmark: hooked_bert against HuggingFace, side by side, in one process.

    python bench.py [--batch 8] [--pos 128] [--layers 4 12] [--repeats 9] [--train-repeats 5]
    python bench.py --training-only      # only the training-step tables
    (a Python with transformer-lens installed runs its HookedEncoder in the training table too)

A bert-base-sized model (vocab 30522, 768 wide, 12 heads) with random weights and a padded
batch, at each depth of --layers. The contenders run interleaved, after a warm-up, and the
median wall time of each is reported with its ratio to HuggingFace eager and to our plain
forward, then the peak memory each one adds, then a probing-style loop that caches one
activation over many batches.

Then one masked-LM training step (dropout off; forward with the loss on 15% of the tokens,
backward, AdamW step) on --train-batch rows, of HuggingFace's BertForMaskedLM and of ours
with the same weights: tied (W_U is W_E, as in HuggingFace) and untied (W_U a parameter of its
own, as in TransformerLens, so its step also updates those 23M weights). If TransformerLens is
importable, its HookedEncoder (untied, the same weights) runs in the same interleaving.

Memory is the process's peak resident set size above what it held before the run (Linux
VmHWM, reset through /proc/self/clear_refs). It is measured in a second process of this
script, run with MALLOC_MMAP_THRESHOLD_ set so that freed tensors go back to the OS instead of
staying in the allocator; the times are measured without that setting, which slows allocation.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch
from transformers import BertConfig, BertForMaskedLM

import hooked_bert as hb


def rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_memory_mib(fn) -> float:
    """How far fn() raises the process's peak memory above what it holds before."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the peak (VmHWM) to the current resident size
    before = rss_mib("VmRSS")
    fn()
    return rss_mib("VmHWM") - before


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 12], help="the depths to run, in turn")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--probe-batches", type=int, default=20)
    parser.add_argument("--train-batch", type=int, default=4, help="rows of the training step's batch")
    parser.add_argument("--train-repeats", type=int, default=5, help="timed training steps per contender")
    parser.add_argument("--training-only", action="store_true", help="time only the training step")
    parser.add_argument("--memory-only", action="store_true", help="(internal) print peak memory as JSON")
    args = parser.parse_args()
    for n_layers in args.layers:
        run_depth(args, n_layers)
        print()


def run_depth(args, n_layers):
    """Every table for a model of n_layers layers."""
    torch.manual_seed(0)
    config = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=n_layers, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512)
    hf_eager = BertForMaskedLM(BertConfig(**config, attn_implementation="eager")).eval()
    hf_sdpa = BertForMaskedLM(BertConfig(**config, attn_implementation="sdpa")).eval()
    hf_sdpa.load_state_dict(hf_eager.state_dict())
    model = hb.HookedEncoder.from_pretrained("random bert-base", hf_model=hf_eager)

    tokens = torch.randint(1000, 30000, (args.batch, args.pos))
    mask = torch.ones_like(tokens)
    for row in range(args.batch):  # rows of different lengths, padded on the right
        mask[row, args.pos - row * args.pos // (2 * args.batch):] = 0
    token_type_ids = torch.zeros_like(tokens)
    hf_inputs = dict(input_ids=tokens, attention_mask=mask, token_type_ids=token_type_ids)
    our_inputs = dict(token_type_ids=token_type_ids, one_zero_attention_mask=mask)
    if args.training_only:
        time_training_step(args, hf_eager, hf_sdpa, model, hf_inputs, our_inputs)
        return
    middle = n_layers // 2

    def ablate_head(z, hook):
        z[:, :, 0] = 0.0

    contenders = {
        "HF eager": lambda: hf_eager(**hf_inputs).logits,
        "HF sdpa": lambda: hf_sdpa(**hf_inputs).logits,
        "ours, no hooks": lambda: model(tokens, **our_inputs),
        "ours, run_with_cache (every hook)": lambda: model.run_with_cache(tokens, **our_inputs),
        "ours, run_with_cache (one hook)": lambda: model.run_with_cache(
            tokens, names_filter=f"blocks.{middle}.hook_resid_post", **our_inputs),
        "ours, one fwd_hook editing hook_z": lambda: model.run_with_hooks(
            tokens, fwd_hooks=[(f"blocks.{middle}.attn.hook_z", ablate_head)], **our_inputs),
    }

    def probe(n_batches):
        """A probing-style loop: cache one activation per batch, keep only the [CLS] vector."""
        features = []
        with torch.no_grad():
            for _ in range(n_batches):
                _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{middle}.hook_resid_post", **our_inputs)
                features.append(cache["resid_post", middle][:, 0].clone())
        return torch.cat(features)

    if args.memory_only:
        with torch.no_grad():
            memory = {name: peak_memory_mib(fn) for name, fn in contenders.items()}
        memory["probe, 1 batch"] = peak_memory_mib(lambda: probe(1))
        memory["probe, many batches"] = peak_memory_mib(lambda: probe(args.probe_batches))
        print(json.dumps(memory))
        return

    with torch.no_grad():
        for fn in contenders.values():  # warm-up
            fn()
        times = {name: [] for name in contenders}
        for _ in range(args.repeats):  # interleaved, so that a slow moment hits everyone alike
            for name, fn in contenders.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    memory_args = [arg for arg in sys.argv[1:] if arg != "--training-only"]
    memory_run = subprocess.run([sys.executable, sys.argv[0], *memory_args, "--layers", str(n_layers), "--memory-only"],
                                capture_output=True, text=True,
                                env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}, check=True)
    memory = json.loads(memory_run.stdout.strip().splitlines()[-1])

    print(f"bert-base width, {n_layers} layers, batch {args.batch} x {args.pos} tokens (padded), "
          f"float32, torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} runs\n")
    baseline = statistics.median(times["HF eager"])
    ours = statistics.median(times["ours, no hooks"])
    print(f"| {'contender':36} | median ms | vs HF eager | vs ours | peak MiB added |")
    print(f"|{'-' * 38}|-----------|-------------|---------|----------------|")
    for name in contenders:
        median = statistics.median(times[name])
        print(f"| {name:36} | {median * 1000:9.1f} | {median / baseline:10.2f}x | {median / ours:6.2f}x "
              f"| {memory[name]:14.0f} |")
    print(f"\nProbing loop (run_with_cache of one hook, keep the [CLS] vector): peak memory added "
          f"{memory['probe, 1 batch']:.0f} MiB for 1 batch, {memory['probe, many batches']:.0f} MiB "
          f"for {args.probe_batches} batches.")
    print()
    time_training_step(args, hf_eager, hf_sdpa, model, hf_inputs, our_inputs)


def fused_layer_norms(model):
    """An ablation: every LayerNorm of model computed by F.layer_norm (its hooks then see nothing)."""
    for module in model.modules():
        if isinstance(module, hb.LayerNorm):
            module.forward = lambda x, ln=module: torch.nn.functional.layer_norm(x, x.shape[-1:], ln.w, ln.b, ln.eps)
    return model


def transformer_lens_encoder(hf_model):
    """TransformerLens's HookedEncoder with hf_model's weights, or None if it is not installed."""
    try:
        import transformer_lens
        from transformer_lens.pretrained.weight_conversions.bert import convert_bert_weights
        from transformers import BertForPreTraining
    except ImportError:
        return None
    hf_config = hf_model.config
    cfg = dict(d_model=hf_config.hidden_size, d_head=hf_config.hidden_size // hf_config.num_attention_heads,
               n_heads=hf_config.num_attention_heads, d_mlp=hf_config.intermediate_size,
               n_layers=hf_config.num_hidden_layers, n_ctx=hf_config.max_position_embeddings,
               eps=hf_config.layer_norm_eps, d_vocab=hf_config.vocab_size, act_fn="gelu",
               attention_dir="bidirectional", original_architecture="BertForMaskedLM", device="cpu")
    # TransformerLens converts a model with a pooler and a next-sentence head: give it one with
    # hf_model's weights (the two heads stay random; the masked-LM loss does not use them).
    pretraining = BertForPreTraining(hf_config)
    pretraining.load_state_dict(hf_model.state_dict(), strict=False)
    with warnings.catch_warnings():  # HookedEncoder is deprecated in TransformerLens 3
        warnings.simplefilter("ignore", DeprecationWarning)
        encoder = transformer_lens.HookedEncoder(cfg, move_to_device=False)
    encoder.load_state_dict(convert_bert_weights(pretraining, encoder.cfg), strict=False)
    return encoder


def time_training_step(args, hf_eager, hf_sdpa, model, hf_inputs, our_inputs):
    """One masked-LM training step (forward with the loss, backward, AdamW step), dropout off."""
    rows = slice(0, args.train_batch)
    tokens, mask, token_type_ids = (hf_inputs[key][rows] for key in ("input_ids", "attention_mask", "token_type_ids"))
    hf_inputs = dict(input_ids=tokens, attention_mask=mask, token_type_ids=token_type_ids)
    our_inputs = dict(token_type_ids=token_type_ids, one_zero_attention_mask=mask)
    generator = torch.Generator().manual_seed(1)
    scored = (torch.rand(tokens.shape, generator=generator) < 0.15) & (mask == 1)
    labels = torch.where(scored, torch.randint(1000, 30000, tokens.shape, generator=generator), -100)
    tied = hb.HookedEncoder.from_pretrained("random bert-base", hf_model=hf_eager, tie_word_embeddings=True)
    contenders = [
        ("HF eager", hf_eager, lambda: hf_eager(**hf_inputs, labels=labels).loss),
        ("HF sdpa", hf_sdpa, lambda: hf_sdpa(**hf_inputs, labels=labels).loss),
        ("ours, tied", tied, lambda: tied(tokens, return_type="loss", labels=labels, **our_inputs)),
        ("ours, untied", model, lambda: model(tokens, return_type="loss", labels=labels, **our_inputs)),
    ]
    # The price of our LayerNorm, written out op by op so that its hooks see scale and
    # normalized: the same tied model, with PyTorch's fused kernel in every LayerNorm.
    fused = fused_layer_norms(hb.HookedEncoder.from_pretrained("random", hf_model=hf_eager, tie_word_embeddings=True))
    contenders.append(("ours, tied, F.layer_norm", fused,
                       lambda: fused(tokens, return_type="loss", labels=labels, **our_inputs)))
    lens = transformer_lens_encoder(hf_eager)
    if lens is not None:
        def lens_loss():
            logits = lens(tokens, token_type_ids=token_type_ids, one_zero_attention_mask=mask)
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        contenders.append(("TransformerLens", lens, lens_loss))
    steps, optimizers = {}, {}
    for name, net, loss_fn in contenders:
        net.eval()  # dropout off: the same computation for everyone
        optimizer = optimizers[name] = torch.optim.AdamW(net.parameters(), lr=1e-5)

        def step(loss_fn=loss_fn, optimizer=optimizer):
            """Run one step; returns the seconds spent in forward, backward and optimizer step."""
            start = time.perf_counter()
            loss = loss_fn()
            forward = time.perf_counter()
            loss.backward()
            backward = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return forward - start, backward - forward, time.perf_counter() - backward

        steps[name] = step
    for step in steps.values():  # warm-up (and the optimizers allocate their state)
        step()
    phases = {name: [] for name in steps}
    for _ in range(args.train_repeats):
        for name, step in steps.items():
            phases[name].append(step())
    times = {name: [sum(p) for p in runs] for name, runs in phases.items()}
    # the weights each step updates (our unused pooler and next-sentence head get no gradient)
    updated = {name: sum(p.numel() for p in optimizer.state) for name, optimizer in optimizers.items()}
    print(f"Training step, {hf_eager.config.num_hidden_layers} layers (forward + loss on {int(scored.sum())} "
          f"masked tokens, backward, AdamW step), dropout off, batch {args.train_batch} x {args.pos}, "
          f"median of {args.train_repeats} steps (and of each phase, in ms); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores:\n")
    if lens is None:
        print("(TransformerLens is not importable here: its row is left out.)\n")
    baseline = statistics.median(times["HF eager"])
    width = max(len(name) for name in steps)
    print(f"| {'contender':{width}} | median ms | vs HF eager | forward | backward | optimizer | weights updated |")
    print(f"|{'-' * (width + 2)}|-----------|-------------|---------|----------|-----------|-----------------|")
    for name in steps:
        median = statistics.median(times[name])
        forward, backward, optimizer = (statistics.median(run[i] for run in phases[name]) * 1000 for i in range(3))
        print(f"| {name:{width}} | {median * 1000:9.1f} | {median / baseline:10.2f}x | {forward:7.0f} | {backward:8.0f} "
              f"| {optimizer:9.0f} | {updated[name] / 1e6:14.1f}M |")


if __name__ == "__main__":
    main()
