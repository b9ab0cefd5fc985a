"""Does a student kit compute any blanked component, or a step of one, in any of its functions?

    python scripts/find_solutions_in_kit.py KIT_DIR

A kit must carry values, not formulas: nothing in it may compute a blanked component's
forward, or a step of it (q, the scores, LayerNorm's scale, ...), in our layout. This script
imports every Python file of the kit (run from inside it, so `hooked_bert` is the kit's, with
its stubs) and calls each of their functions, and each nn.Module class, the ways a student
could use them as a forward: on the forward's own arguments, as a method, on a namespace of the
component's inputs and weights (g.x, g.w, g.W_Q, ...), or on a reference and a layer. Every
tensor one returns is compared with HuggingFace's value of each blanked component and step; one
that matches, and is not simply one of the arguments handed back, is a solution in the kit.
Prints one line per finding; exits 1 if there is any. Subprocesses are refused while it runs.
"""

import importlib
import inspect
import os
import subprocess
import warnings
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent


def reference_values(kit_tests, layer=0):
    """(the reference, {blanked component's step: HuggingFace's value}, the arguments to try)."""
    import torch

    import exercise_values  # the repository's: the values of the steps inside attention

    ref = kit_tests.Reference(kit_tests.CONFIGS["small"])
    hf_layer, prefix = ref.layer(layer), f"bert.encoder.layer.{layer}"
    attention = exercise_values.attention_reference(ref, layer)
    x = ref.inputs["bert.embeddings.LayerNorm"]
    steps = {
        "Embed": ref.outputs["bert.embeddings.word_embeddings"],
        "PosEmbed": ref.outputs["bert.embeddings.position_embeddings"].expand(*ref.tokens.shape, -1),
        "TokenTypeEmbed": ref.outputs["bert.embeddings.token_type_embeddings"],
        "LayerNorm": ref.outputs["bert.embeddings.LayerNorm"],
        "LayerNorm hook_scale": exercise_values.layer_norm_scale(ref, x),
        "LayerNorm hook_normalized": exercise_values.layer_norm_normalized(ref, x),
        "BertEmbed": ref.out.hidden_states[0],
        **{f"Attention {name}": value for name, value in attention.items()},
        "Attention": ref.outputs[f"{prefix}.attention.output.dense"],
        "MLP hook_pre": ref.outputs[f"{prefix}.intermediate.dense"],
        "MLP hook_post": ref.outputs[f"{prefix}.intermediate"],
        "MLP": ref.outputs[f"{prefix}.output.dense"],
        "BertBlock": ref.out.hidden_states[layer + 1],
        "BertMLMHead": ref.outputs["cls.predictions.transform"],
        "Unembed": ref.out.prediction_logits,
        "BertPooler": ref.outputs["bert.pooler"],
        "BertNSPHead": ref.out.seq_relationship_logits,
    }
    cfg, hf = ref.cfg, ref.hf
    mlm_head = kit_tests.make_dense_head(kit_tests.hb.BertMLMHead, cfg, hf.cls.predictions.transform.dense)
    kit_tests.copy_layer_norm(mlm_head.ln, hf.cls.predictions.transform.LayerNorm)
    components = {  # each blanked class, with HuggingFace's weights, and its forward's arguments
        "Embed": (kit_tests.make_embed(cfg, hf.bert.embeddings).embed, (ref.tokens,)),
        "PosEmbed": (kit_tests.make_embed(cfg, hf.bert.embeddings).pos_embed, (ref.tokens,)),
        "TokenTypeEmbed": (kit_tests.make_embed(cfg, hf.bert.embeddings).token_type_embed,
                           (ref.token_type_ids,)),
        "LayerNorm": (kit_tests.make_layer_norm(cfg, hf.bert.embeddings.LayerNorm), (x,)),
        "BertEmbed": (kit_tests.make_embed(cfg, hf.bert.embeddings), (ref.tokens, ref.token_type_ids)),
        "Attention": (kit_tests.make_attention(cfg, hf_layer),
                      (ref.out.hidden_states[layer], ref.key_is_padding)),
        "MLP": (kit_tests.make_mlp(cfg, hf_layer), (ref.inputs[f"{prefix}.intermediate"],)),
        "BertBlock": (kit_tests.make_block(cfg, hf_layer),
                      (ref.out.hidden_states[layer], ref.key_is_padding)),
        "BertMLMHead": (mlm_head, (ref.out.hidden_states[-1],)),
        "Unembed": (kit_tests.make_unembed(cfg, hf.cls.predictions),
                    (ref.outputs["cls.predictions.transform"],)),
        "BertPooler": (kit_tests.make_dense_head(kit_tests.hb.BertPooler, cfg, hf.bert.pooler.dense),
                       (ref.out.hidden_states[-1],)),
        "BertNSPHead": (kit_tests.make_dense_head(kit_tests.hb.BertNSPHead, cfg, hf.cls.seq_relationship),
                        (ref.outputs["bert.pooler"],)),
    }
    return ref, steps, components, torch


def namespace(ref, component, args, attention, leave_out=None):
    """What a catalogue-style function reads: g.x, g.resid, g.tokens, ..., the weights, cfg, and
    for attention the reference's q, k, v, scores, pattern and z, except the step `leave_out`."""
    names = dict(x=args[0], resid=args[0], pooled=args[0], tokens=ref.tokens,
                 token_type_ids=ref.token_type_ids, key_is_padding=ref.key_is_padding,
                 cfg=ref.cfg, act_fn=ref.cfg.act_fn)
    names.update({name: value.detach() for name, value in component.named_parameters()
                  if "." not in name})
    names.update({short: value for short, value in ((name.removeprefix("hook_").replace(
        "attn_", ""), value) for name, value in attention.items()) if short != leave_out})
    return SimpleNamespace(**names)


def recorded_by(ref):
    """The storages of every tensor the reference holds (HuggingFace's recorded values)."""
    held = [*ref.inputs.values(), *ref.outputs.values(), *vars(ref.out).values()]
    return {t.untyped_storage().data_ptr() for t in tensors_in(held) if t is not None}


def tensors_in(value, depth=0):
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict) and depth < 2:
        for item in value.values():
            yield from tensors_in(item, depth + 1)
    elif isinstance(value, (list, tuple)) and depth < 2:
        for item in value:
            yield from tensors_in(item, depth + 1)


def matches(result, expected, arguments, held, torch):
    """The steps that a tensor in `result` equals: not one of the arguments handed back, nor a
    value the reference holds (storages in `held`)."""
    found = []
    for tensor in tensors_in(result):
        if not tensor.is_floating_point() or tensor.untyped_storage().data_ptr() in held or any(
                tensor.shape == a.shape and torch.equal(tensor.detach(), a) for a in arguments):
            continue
        for step, value in expected.items():
            if (tensor.shape == value.shape and torch.allclose(
                    tensor.detach().to(value.dtype), value, atol=1e-8, rtol=1e-6)):
                found.append(step)
    return found


def tries_of(obj, ref, component, args, attention, steps, torch):
    """(function, arguments, the steps it may be found to compute) for each way to use `obj`."""
    if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and "forward" in vars(obj):
        try:
            instance = obj(ref.cfg)
            instance.load_state_dict(component.state_dict(), strict=False)
            return [(instance.double().eval(), args, steps)]
        except Exception:  # noqa: BLE001 (not built that way)
            return []
    if not inspect.isfunction(obj):
        return []
    tries = [(obj, call, steps) for call in (args, (component, *args), (ref, 0), (ref,), (ref, *args))]
    for step in steps:  # a namespace without the step's own value (attention: q, ..., z)
        leave_out = step.split()[-1].removeprefix("hook_").replace("attn_", "")
        tries.append((obj, (namespace(ref, component, args, attention, leave_out),), [step]))
    return tries


def kit_modules(kit):
    """Every Python file of the kit, imported (hooked_bert first: the kit's own, with stubs)."""
    sys.path.insert(0, str(kit))
    names = ["hooked_bert"] + sorted(p.stem for p in kit.glob("*.py") if p.stem != "hooked_bert")
    return {name: importlib.import_module(name) for name in names}


def refuse(*args, **kwargs):
    raise RuntimeError("no subprocesses while looking for solutions")


def find(kit: Path) -> list[str]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore")  # (the functions get odd arguments on purpose)
    modules = kit_modules(kit)
    sys.path.append(str(ROOT))  # after the kit: exercise_values for the reference steps only
    ref, steps, components, torch = reference_values(modules["test_hooked_bert"])
    blanked = [name for name, obj in vars(modules["hooked_bert"]).items() if inspect.isclass(obj)
               and "forward" in vars(obj) and "NotImplementedError" in obj.forward.__code__.co_names]
    expected = {step: value for step, value in steps.items() if step.split()[0] in blanked}
    attention = {name: value for name, value in steps.items() if name.startswith("Attention hook")}
    attention = {name.split()[1]: value for name, value in attention.items()}
    subprocess.run = subprocess.Popen = subprocess.call = subprocess.check_output = refuse
    held, findings = recorded_by(ref), set()
    for module_name, module in modules.items():
        for name, obj in list(vars(module).items()):
            if getattr(obj, "__module__", None) != module_name or name.startswith(("test_", "pytest_")):
                continue
            for component_name in blanked:
                component, args = components[component_name]
                own = [step for step in expected if step.split()[0] == component_name]
                for function, call, may in tries_of(obj, ref, component, args, attention, own, torch):
                    try:
                        with torch.no_grad():
                            result = function(*call)
                    except BaseException:  # noqa: BLE001 (pytest.fail raises BaseException)
                        continue
                    arguments = list(tensors_in([*call, *vars(call[0]).values()] if isinstance(
                        call[0], SimpleNamespace) else list(call)))
                    for step in matches(result, {s: expected[s] for s in may}, arguments, held, torch):
                        findings.add(f"{module_name}.{name} computes {step}")
    return sorted(findings)


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    kit = Path(args[0]).resolve()
    if not (kit / "hooked_bert.py").exists():
        print(f"{kit} has no hooked_bert.py: give a kit folder", file=sys.stderr)
        return 2
    findings = find(kit)
    print("\n".join(findings) if findings else f"no solution found in {kit}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
