"""How the exercise tests run a component and say what a student got wrong.

test_hooked_bert.py's exercises use this file; it ships in the student kit beside them, and holds
no BERT formula: what a component must compute reaches it only as values (the reference tensors,
and what each catalogued mistake would make), never as code.

- The step runner: `run_until` runs a component, records what passes each of its hooks, feeds
  chosen values into the hooks of earlier steps, and stops right after the step under test.
- Stand-ins (`StandIn`) replace a component's sub-modules by recorded inputs and outputs, and
  `Wiring` replaces them by `Source`s that return random tensors, so that what each call got
  reads back as a sum of those ("passes self.ln2 mlp(...) alone").
- `check` compares a step's tensor with the reference and, only after a failure, diagnoses it:
  first the step's catalogued mistakes (values made from the same inputs), then structural
  signatures of the difference (a factor, an offset, a permutation, padding only, ...).
"""

import itertools
import keyword
import math
import os
import re
from types import SimpleNamespace

import pytest
import torch

import hooked_bert as hb

F64_ATOL = 1e-10  # float64 agrees to ~1e-14; a real bug moves numbers by far more


# Stand-ins: a component's sub-modules replaced by HuggingFace's recorded input and output, so
# that BertEmbed, BertBlock and the MLM head are tested on their own wiring, not on the
# LayerNorm, attention or MLP inside them (those have their own tests).


class WrongInput(AssertionError):
    """A stand-in got another input than HuggingFace's module got."""


class StandIn(torch.nn.Module):
    def __init__(self, what, inputs, output, hint):
        super().__init__()
        self.what, self.inputs, self.output, self.hint = what, inputs, output, hint

    def forward(self, *args):
        if len(args) != len(self.inputs):
            raise WrongInput(f"{self.what} takes {len(self.inputs)} argument(s), not {len(args)}"
                             f"\n\n{self.hint}")
        for index, (got, expected) in enumerate(zip(args, self.inputs)):
            if isinstance(got, torch.Tensor) and not same_kind(got, expected):
                raise WrongInput(f"{self.what} got argument {index} of dtype {got.dtype}; it takes "
                                 f"{expected.dtype}, as HuggingFace's module did at that place"
                                 f"\n\n{self.hint}")
            if not same(got, expected):
                raise WrongInput(f"{self.what} got another argument {index} than HuggingFace's "
                                 f"module at that place: compare what you pass it with the hint"
                                 f"\n\n{self.hint}")
        return self.output.clone()


def same(got, expected):
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return False
    if not same_kind(got, expected):
        return False
    if expected.is_floating_point():
        return torch.allclose(got.to(expected.dtype), expected, atol=F64_ATOL, rtol=0)
    return torch.equal(got, expected)


def same_kind(got, expected):
    """Both floating point, both bool, or both integers (float ids cannot index a table)."""
    return (got.is_floating_point() == expected.is_floating_point()
            and (got.dtype == torch.bool) == (expected.dtype == torch.bool))


def terms_of(value_sum):
    """'ln1 + hook_mlp_out' -> ['ln1', 'hook_mlp_out']; a + inside brackets is part of a name."""
    return [term.strip() for term in re.findall(r"(?:[^+(]|\([^)]*\))+", value_sum)]


def stream_input(shape):
    """A random input for a wiring check, independent of the global seed and of every Source's
    output (two equal random tensors would make the sums ambiguous)."""
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


class Source(torch.nn.Module):
    """Stands in for a sub-module or a hook: records its arguments and returns a random tensor
    (of `shape`, or else of its first argument's shape)."""

    def __init__(self, wiring, name, shape=None):
        super().__init__()
        self.wiring, self.name, self.shape = wiring, name, shape

    def forward(self, *args):
        shape = self.shape or getattr(args[0] if args else None, "shape", ())
        returned = torch.randn(shape, dtype=torch.float64, generator=self.wiring.generator)
        self.wiring.calls.setdefault(self.name, []).append((args, returned))
        return returned


class Wiring:
    """`component` run on `inputs` (a dict, in argument order), each call in `flow` replaced by
    a Source (sub-modules return `shape`); `check` fails with one sentence on the first call
    that got the wrong value. `derived`: more values a call may get, such as act(resid @ W + b)."""

    def __init__(self, component, inputs, flow, shape, derived=None):
        self.cls, self.flow, self.calls = type(component).__name__, flow, {}
        self.generator = torch.Generator().manual_seed(2)  # (not stream_input's seed)
        for name in flow:
            if name != "return":  # (a hook returns a tensor of its input's shape)
                setattr(component, name, Source(self, name, None if name.startswith("hook_") else shape))
        self.component, self.inputs, self.derived = component, inputs, derived or {}

    def check(self, hint):
        __tracebackhide__ = True
        output = output_of(self.component, *self.inputs.values(), hint=hint)
        self.values = {**self.inputs, **self.derived,
                       **{name: calls[0][1] for name, calls in self.calls.items()}}
        self.calls["return"] = [((output,), None)]
        for name, wanted in self.flow.items():
            problem = self.problem(name, [terms_of(w) for w in
                                          ((wanted,) if isinstance(wanted, str) else wanted)])
            if problem:
                raise AssertionError(f"{problem}\n\n{hint}")

    def say(self, terms):
        """Value names as the message says them: what a call returned is `ln1(...)`."""
        return " + ".join(f"{term}(...)" if term in self.flow else term for term in terms)

    def problem(self, name, wanted):
        """What is wrong with the calls of `name`, in one sentence (None: nothing)."""
        calls, cls = self.calls.get(name, []), self.cls
        if not calls:
            return f"{cls}.forward never calls self.{name}: pass it {' and '.join(map(self.say, wanted))}"
        if len(calls) > 1:
            return f"{cls}.forward calls self.{name} {len(calls)} times: call it once"
        args, does = calls[0][0], "returns" if name == "return" else f"passes self.{name}"
        if len(args) != len(wanted):
            return (f"{cls}.forward {does} {len(args)} argument(s); it takes {len(wanted)}: "
                    f"{', '.join(map(self.say, wanted))}")
        for got, terms in zip(args, wanted):
            sentence = self.compare(got, terms)
            if sentence:
                return f"{cls}.forward {does} {sentence}"
        return None

    def compare(self, got, terms):
        """None if `got` is the sum of the values `terms`; else what it is, and what to do."""
        expected = self.values[terms[0]]
        for term in terms[1:]:
            expected = expected + self.values[term]
        if not isinstance(got, torch.Tensor):
            return f"a {type(got).__name__}, not a tensor: pass it {self.say(terms)}"
        if got.shape != expected.shape:
            return (f"a tensor of shape {tuple(got.shape)}: pass it {self.say(terms)}, of shape "
                    f"{tuple(expected.shape)}")
        if not expected.is_floating_point():
            if torch.equal(got, expected):
                return None
            other = [n for n, v in self.values.items() if v.shape == got.shape and torch.equal(v, got)]
            return f"{self.say(other[:1]) if other else 'another tensor'}, not {self.say(terms)}"
        basis = {n: v for n, v in self.values.items() if v.is_floating_point() and v.shape == got.shape}
        matrix = torch.stack([v.flatten() for v in basis.values()], dim=1)
        target = got.detach().to(torch.float64).flatten()
        weights = torch.linalg.lstsq(matrix, target[:, None]).solution[:, 0].tolist()
        if (matrix @ torch.tensor(weights, dtype=torch.float64) - target).norm() > 1e-6 * target.norm():
            return (f"a tensor that is no sum of the values {', '.join(self.say([n]) for n in basis)}: "
                    f"pass it {self.say(terms)}")
        used = {n: w for n, w in zip(basis, weights) if abs(w) > 1e-6}
        if any(abs(w - 1) > 1e-6 for w in used.values()):
            sum_said = " + ".join(f"{'' if abs(w - 1) < 1e-6 else f'{w:.3g} * '}{self.say([n])}"
                                  for n, w in used.items())
            return f"{sum_said or 'zeros'}: pass it {self.say(terms)}"
        return None if sorted(used) == sorted(terms) else self.what_to_do(list(used), terms)

    def what_to_do(self, got, terms):
        """The sentence for a sum of the wrong values: an ignored hook, a missing or extra one."""
        said = f"{self.say(got)}{' alone' if len(got) == 1 < len(terms) else ''}"
        for hook in terms:  # what went INTO a hook, instead of what it returned
            if hook.startswith("hook_") and isinstance(self.flow.get(hook), str):
                passed = [term for term in terms if term != hook] + terms_of(self.flow[hook])
                if sorted(passed) == sorted(got):
                    return (f"{said}, what went into self.{hook}, not what it returned: go on "
                            f"with {hook.removeprefix('hook_')} = self.{hook}(...)")
        missing, extra = [t for t in terms if t not in got], [t for t in got if t not in terms]
        fix = (f"add {self.say(missing)}" if not extra else
               f"leave out {self.say(extra)}" if not missing else
               f"use {self.say(missing)}, not {self.say(extra)}")
        return f"{said}; it should get {self.say(terms)}: {fix}"


def uses_what_its_hooks_return(component, args, hint):
    """Each hook of `component` in turn returns a changed tensor: the output must change (a
    forward that goes on with what it passed the hook, not what the hook returned, ignores
    every edit a user's hook makes)."""
    __tracebackhide__ = True
    seen = run_until(component, args, None, hint)
    generator = torch.Generator().manual_seed(0)
    for name in [name for name in seen if name != "out"]:
        x = seen[name]
        noise = torch.randn(x.shape, dtype=x.dtype, generator=generator)
        changed = x + noise * x[x > MASKED].std()  # (masked scores stay masked)
        out = run_until(component, args, None, hint, feed={name: changed})["out"]
        if same(out, seen["out"]):
            value = name.removeprefix("hook_")
            value = "x" if keyword.iskeyword(value) else value
            raise AssertionError(
                f"{type(component).__name__}.forward ignores what self.{name} returns: go on "
                f"with {value} = self.{name}({value}), not with what you passed it\n\n{hint}")


# The step runner: a component's forward pass watched (and fed) through its hooks.

# What each hook is called on, for the hint when a hook is never called.
HOOK_WHAT = {
    "hook_q": "the queries q [batch, pos, head_index, d_head]",
    "hook_k": "the keys k [batch, pos, head_index, d_head]",
    "hook_v": "the values v [batch, pos, head_index, d_head]",
    "hook_attn_scores": "the masked scores [batch, head_index, query_pos, key_pos], before the softmax",
    "hook_pattern": "the softmax of the scores [batch, head_index, query_pos, key_pos]",
    "hook_z": "the pattern-weighted values [batch, pos, head_index, d_head]",
    "hook_scale": "the standard deviation sqrt(var + eps) [batch, pos, 1]",
    "hook_normalized": "(x - mean) / scale [batch, pos, d_model], before w and b",
    "hook_pre": "x @ W_in + b_in [batch, pos, d_mlp]",
    "hook_post": "the activation of pre [batch, pos, d_mlp]",
}
ATTENTION_STEPS = ["hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"]


class StopForward(Exception):
    """Raised by a test's hook to end the forward pass once the step under test has run."""


def add_hint(error, hint, component, stop_at=None):
    """The exception to raise for `error`, raised inside `component`: it carries the test's hint
    (as a note, which pytest prints under the error; conftest.py's board reads `.hint`). A stub's
    NotImplementedError becomes a one-line failure: there is no code to debug yet."""
    where = f"{type(component).__name__}.forward"
    if isinstance(error, NotImplementedError):
        before = f" before calling self.{stop_at}" if stop_at else ""
        diagnosis = f"not written yet: {where} raises NotImplementedError{before}"
        error = pytest.fail.Exception(diagnosis, pytrace=False)
        error.hint = f"{diagnosis}\n\nIts stub in hooked_bert.py says what to compute."
        return error  # (no diagnosis of a mistake: there is none yet)
    else:
        diagnosis = f"{where} raised {type(error).__name__}: {error}"
        error.__notes__ = [*getattr(error, "__notes__", []), f"Hint: {hint}"]
    error.hint = f"{diagnosis}\n\n{hint}"  # what went wrong first: the board shows it first
    return error


def run_until(component, args, stop_at, hint, feed=None):
    """Run component(*args), recording what passes each of its hooks; a hook named in `feed`
    passes on that value instead of the component's own. Stops right after hook `stop_at`
    (None: runs to the end, output under "out"). Returns {hook name: what reached it}."""
    __tracebackhide__ = True  # a failure shows the test and the component's line, not this
    feed, seen = feed or {}, {}
    LAST_RUN[:] = [seen, lambda: run_until(component, args, stop_at, hint, feed)]  # (diagnosis)
    hooks = {name: point for name, point in component.named_children()
             if isinstance(point, hb.HookPoint)}

    def watch(x, hook, name):
        seen[name] = x
        if name == stop_at:
            raise StopForward
        return feed[name].clone() if name in feed else None

    for name, point in hooks.items():
        point.add_hook(lambda x, hook, name=name: watch(x, hook, name))
    try:
        seen["out"] = component(*args)
    except StopForward:
        return seen
    except WrongInput:
        raise
    except Exception as error:
        hinted = add_hint(error, hint, component, stop_at)
        if hinted is error:
            raise
        raise hinted from None
    finally:
        for point in hooks.values():
            point.remove_hooks()
    if stop_at is not None:
        reached(seen, type(component).__name__, stop_at, hint)
    return seen


def reached(seen, class_name, hook, hint):
    """What reached `hook`, or a failure that says which hook call is missing."""
    __tracebackhide__ = True
    if hook not in seen:
        raise AssertionError(f"{class_name}.forward never called self.{hook}(...): pass it "
                             f"{HOOK_WHAT[hook]}, and go on with what it returns\n\n{hint}")
    return seen[hook]


def output_of(component, *args, hint):
    """component(*args); an exception inside it fails the test with `hint`."""
    __tracebackhide__ = True
    return run_until(component, args, None, hint)["out"]


# --- Diagnosis: what a failing step's tensor says about the mistake ---------------------------

# Only after a failure, `check` hands `diagnose` the student's tensor, the reference and the
# step's inputs. First the step's catalogue (below): each candidate computes, from the SAME
# inputs, what one known mistake would produce; the closest one within tolerance names it.
# Then structural signatures of the difference, for the mistakes no catalogue lists: a wrong
# shape or dtype, randomness, NaN, differences confined to padding or to one index, a constant
# factor or offset (a bias), swapped or permuted dimensions, normalisation over another dim,
# an input passed through. Each gives one sentence: "your <what> ...: <what to do>".

MASKED = -1e30  # scores below this are masked (torch.finfo(dtype).min, or -inf)
LAST_RUN: list = []  # [what reached each hook, a function that runs the step again]: run_until's


def as_masked(x):
    """x with every masked score as -inf, so that any very large negative number counts."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.masked_fill(x < MASKED, float("-inf"))
    return x


def distance(actual, made):
    """Largest absolute difference (inf for another shape, or a NaN on one side only)."""
    if isinstance(made, Fingerprint):
        return made.distance(actual)
    if not isinstance(made, torch.Tensor) or actual.shape != made.shape:
        return float("inf")
    a, b = as_masked(actual.to(made.dtype)), as_masked(made)
    same = (a == b) | (a.isnan() & b.isnan())
    return torch.where(same, 0.0, (a - b).abs()).nan_to_num(nan=float("inf")).max().item()


def tolerance(expected, atol):
    """What counts as a match: the check's atol, times the reference's size (masks left out)."""
    ordinary = expected[(expected.abs() < -MASKED) & expected.isfinite()]
    return max(atol, 1e-12) * max(1.0, ordinary.abs().max().item() if ordinary.numel() else 1.0)


def check(actual, expected, hint, atol=F64_ATOL, step=None, inputs=None):
    """assert_close (masked scores: any value below -1e30 counts as the mask, -inf too). On a
    failure, the message's first paragraph says what the student did, if the diagnosis of
    `step` can tell; `inputs()` gives what it needs: the step's inputs (a dict) and its
    catalogued mistakes [(sentence, value)]. Then the hint; then torch's summary."""
    __tracebackhide__ = True  # a failure points at the test's line
    try:
        torch.testing.assert_close(as_masked(actual), as_masked(expected), atol=atol, rtol=0)
    except (AssertionError, TypeError) as error:
        summary = "\n".join([line for line in str(error).splitlines() if line.strip()][:3])
        diagnosis = diagnose(actual, expected, step, inputs, atol)
        raise AssertionError("\n\n".join(filter(None, [diagnosis, hint, summary]))) from None


class Fingerprint:
    """A catalogued mistake's value as the kit stores it: its shape and 64 of its entries, at
    places drawn once. Enough to tell a student's tensor from every other formula's."""

    def __init__(self, value, n=64):
        flat = value.detach().flatten()
        self.shape = tuple(value.shape)
        self.index = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:n]
        self.values = flat[self.index].clone()

    def distance(self, actual):
        if tuple(actual.shape) != self.shape:
            return math.inf
        return distance(actual.detach().flatten()[self.index], self.values)


def diagnose(actual, expected, step, inputs, atol):
    """The first paragraph of a failure, "<step>: your ...: do ...", or None if nothing fits."""
    if step is None:
        return None
    title, noun, dims = STEPS[step]
    if not isinstance(actual, torch.Tensor):
        return f"{title}: your {noun} is {type(actual).__name__}, not a tensor: return the tensor"
    try:
        given, candidates = inputs() if inputs else ({}, [])
        g, tol = SimpleNamespace(**given), tolerance(expected, atol)
        sentence = best_candidate(actual, candidates, tol) or signature(
            actual, expected, SimpleNamespace(noun=noun, dims=dims, g=g, tol=tol))
    except Exception:  # noqa: BLE001 (a diagnosis must never hide the failure itself)
        sentence = None
    return sentence and f"{title}: {sentence}"


def best_candidate(actual, candidates, tol):
    """The sentence of the catalogued mistake [(sentence, value)] closest to `actual`, if
    within tol."""
    found = [(distance(actual, made), sentence) for sentence, made in candidates]
    best = min(found, default=(math.inf, ""))
    return best[1] if best[0] <= tol else None


def signature(a, e, c):
    """The first structural signature that fits; c: noun, dims, inputs g, tolerance."""
    c.names = list(c.dims) if len(c.dims) == e.ndim else [f"dim {i}" for i in range(e.ndim)]
    plural = c.noun.endswith("s")  # "your scores are", "your pattern is"
    c.is_, c.has, c.s = ("are", "have", "") if plural else ("is", "has", "s")
    for test in (random_between_calls, wrong_shape, wrong_dtype, non_finite, an_input,
                 only_somewhere, swapped_dims, permuted, constant_factor, constant_offset,
                 normalised_elsewhere):
        sentence = test(a, e, c)
        if sentence:
            return sentence
    return None


def random_between_calls(a, e, c):
    seen, rerun = LAST_RUN or ({}, None)
    key = next((name for name, value in seen.items() if value is a), None)
    if key is None or distance(a, rerun()[key]) <= c.tol:
        return None
    return (f"your {c.noun} change{c.s} between two calls in eval() mode: something random is on "
            "(F.dropout(x, p) drops in eval() too): use self.dropout, which eval() turns off")


def wrong_shape(a, e, c):
    if a.shape == e.shape:
        return None
    expected = f"expected [{', '.join(c.names)}] = {tuple(e.shape)}"
    if a.ndim == e.ndim:
        for order in itertools.permutations(range(a.ndim)):
            if distance(a.permute(order), e) <= c.tol:
                layout = ", ".join(c.names[order.index(i)] for i in range(a.ndim))
                return (f"your {c.noun} {c.has} shape {tuple(a.shape)}, laid out [{layout}]; "
                        f"{expected}: put the dimensions in that order")
    missing = [name for name, size in zip(c.names, e.shape) if size not in a.shape]
    extra = [size for size in a.shape if size not in e.shape]
    more = (f" (no {', '.join(missing)}: summed or indexed away?)" if missing else
            f" (an extra dimension of size {extra[0]})" if extra else "")
    return f"your {c.noun} {c.has} shape {tuple(a.shape)}; {expected}{more}"


def wrong_dtype(a, e, c):
    if a.dtype == e.dtype:
        return None
    return (f"your {c.noun} {c.has} dtype {a.dtype}; expected {e.dtype} (that of the inputs): "
            "compute in the input's dtype, without a .float() or torch.float32 on the way")


def non_finite(a, e, c):
    bad = ~a.isfinite() & ~((a < MASKED) & (e < MASKED))
    if not bad.any():
        return None
    kind = "NaN" if a.isnan().any() else "inf"
    return (f"your {c.noun} {c.has} {kind} {where(bad, e, c)}: a division by zero, or a softmax "
            "over a row of -inf? (mask with torch.finfo(dtype).min, not -inf)")


def where(bad, e, c):
    """Where `bad` is True, in words: at padded key positions, at head_index 2, or a count."""
    for name in ("key_pos", "query_pos", "pos"):
        padded = padding_of(e, c, name)
        if padded is not None and padded.any() and not (bad & ~padded).any():
            return f"only at padded {name.replace('_', ' ').replace('pos', 'positions')}"
    single = [f"{name} {bad.movedim(d, 0).flatten(1).any(1).nonzero().item()}"
              for d, name in enumerate(c.names) if bad.shape[d] > 1
              and bad.movedim(d, 0).flatten(1).any(1).sum() == 1]
    if single:
        return f"only at {', '.join(single)}"
    return f"at {bad.sum().item()} of {bad.numel()} entries"


def padding_of(e, c, dim_name):
    """key_is_padding [batch, pos] spread over e's dims: True where `dim_name` is padding."""
    pad = getattr(c.g, "key_is_padding", None)
    if pad is None or dim_name not in c.names or "batch" not in c.names:
        return None
    shape = [1] * e.ndim
    shape[c.names.index("batch")], shape[c.names.index(dim_name)] = pad.shape
    return pad.reshape(shape).expand(e.shape) if pad.reshape(shape).dim() == e.ndim else None


def an_input(a, e, c):
    for name, value in vars(c.g).items():
        if isinstance(value, torch.Tensor) and distance(a, value) <= c.tol:
            return (f"your {c.noun} {c.is_} {name}, unchanged: the step's computation is missing "
                    "(or you go on with its input instead of its result)")
    return None


def only_somewhere(a, e, c):
    bad = (as_masked(a) != as_masked(e)) & ((a - e).abs().nan_to_num(nan=float("inf")) > c.tol)
    if bad.all() or not bad.any():
        return None
    place = where(bad, e, c)
    if place.startswith("at "):
        return None  # spread out: not confined to padding or to one index
    yours, theirs = a[bad][0].item(), e[bad][0].item()
    fix = ("padded keys get torch.finfo(dtype).min in the scores, so zero weight: check how you "
           "use key_is_padding" if "padded key" in place else "look at what your code does there")
    return (f"your {c.noun} differ{c.s} from the reference {place} (you: {yours:.3g}, the reference: "
            f"{theirs:.3g}): {fix}")


def finite_pair(a, e):
    ordinary = (e.abs() < -MASKED) & a.isfinite() & e.isfinite()
    return a[ordinary].double(), e[ordinary].double()


def constant_factor(a, e, c):
    x, y = finite_pair(a, e)
    ratio = ((x * y).sum() / (y * y).sum()).item()
    if abs(ratio - 1) < 1e-9 or (x - ratio * y).abs().max() > c.tol * max(1.0, abs(ratio)):
        return None
    if abs(ratio + 1) < 1e-6:
        return f"your {c.noun} {c.is_} the reference with its sign flipped: look for a minus sign"
    return (f"your {c.noun} {c.is_} the reference {factor_in_words(ratio, getattr(c.g, 'cfg', None))} "
            f"(a constant factor {ratio:.4g}): look for a wrong or doubled scaling")


def factor_in_words(ratio, cfg):
    named = {"2": 2.0}
    if cfg is not None:
        named = {"sqrt(d_head)": cfg.d_head ** 0.5, "d_head": cfg.d_head, "n_heads": cfg.n_heads,
                 "sqrt(d_model)": cfg.d_model ** 0.5, "d_model": cfg.d_model, **named}
    for name, value in named.items():
        for word, times in (("times", ratio), ("divided by", 1 / ratio)):
            if abs(times / value - 1) < 1e-6:
                return f"{word} {name}"
    for word, times in (("times", ratio), ("divided by", 1 / ratio)):
        if abs(times - round(times)) < 1e-6:
            return f"{word} {round(times)}"
    return f"times {ratio:.4g}"


def constant_offset(a, e, c):
    difference = torch.where(as_masked(a) == as_masked(e), 0.0, a - e)
    for lead in range(difference.ndim - 1, 0, -1):
        row = difference[(0,) * lead]
        if (difference - row).abs().max() > c.tol:
            continue
        for name, bias in vars(c.g).items():
            if (name == "b" or name.startswith("b_")) and bias.shape == row.shape:
                times = ((row * bias).sum() / (bias * bias).sum()).item()
                if abs(times - round(times)) < 1e-6 and (row - round(times) * bias).abs().max() <= c.tol:
                    return offset_in_words(c, name, round(times))
        at_every = ", ".join(c.names[:lead])
        return (f"your {c.noun} {c.is_} off by the same {tuple(row.shape)} vector at every "
                f"{at_every}: a bias (or a row) added or left out where it should not be")
    return None


def offset_in_words(c, name, times):
    if times == -1:
        return f"your {c.noun} lack{c.s} {name}: add it (once)"
    if times == 1:
        return f"your {c.noun} {c.is_} off by exactly {name}: you add {name} twice (or where it does not belong)"
    per_head = " (once per head?)" if times + 1 == getattr(c.g.cfg, "n_heads", None) else ""
    return f"your {c.noun} {c.has} {name} {times + 1} times{per_head}: add it once"


def swapped_dims(a, e, c):
    for i, j in itertools.combinations(range(a.ndim), 2):
        if a.shape[i] == a.shape[j] > 1 and distance(a.transpose(i, j), e) <= c.tol:
            return (f"your {c.noun} {c.is_} the reference with {c.names[i]} and {c.names[j]} swapped: "
                    "check the order of the dimensions you write (the einsum's output side)")
    return None


def permuted(a, e, c):
    """Each slice of `a` along a dim is some other slice of `e`: the order is wrong."""
    for d, name in enumerate(c.names):
        n = a.shape[d]
        if not 1 < n <= 64:
            continue
        order = []
        for i in range(n):
            match = [j for j in [i, *range(n)] if distance(a.select(d, i), e.select(d, j)) <= c.tol]
            order.append(match[0] if match else None)
        if None in order or sorted(order) != list(range(n)) or order == list(range(n)):
            continue
        return (f"your {c.noun} {c.has} the reference's {name} entries in another order "
                f"({order_in_words(order)}): keep them in the order of the input")
    return None


def order_in_words(order):
    n = len(order)
    if order == list(range(n))[::-1]:
        return "reversed"
    for shift in range(1, n):  # torch.roll(reference, shift) along that dim
        if order == [(i - shift) % n for i in range(n)]:
            shift = shift - n if shift > n / 2 else shift
            return f"rolled by {shift}: yours at i is the reference's at i - {shift}"
    return f"yours 0..{n - 1} are the reference's {order}"


def normalised_elsewhere(a, e, c):
    for what, test in ((f"sum{c.s} to 1", sums_to_one),
                       (f"{c.has} mean 0 and variance 1", standardised)):
        yours, theirs = ([c.names[d] for d in range(t.ndim) if t.shape[d] > 1
                          and test(without_affine(t, c.g), d)] for t in (a, e))
        if yours and yours != theirs:
            return (f"your {c.noun} {what} over {', '.join(yours)}; the reference over "
                    f"{', '.join(theirs) or 'another dim'}: normalise over that")
    return None


def sums_to_one(t, d):
    return bool((t >= 0).all() and ((t.sum(d) - 1).abs() < 1e-6).all())


def standardised(t, d):
    return bool((t.mean(d).abs() < 1e-6).all() and ((t.var(d, unbiased=False) - 1).abs() < 1e-4).all())


def without_affine(t, g):
    """A LayerNorm's output with its w and b taken off, (t - b) / w; other tensors as they are."""
    w, b = getattr(g, "w", None), getattr(g, "b", None)
    if isinstance(w, torch.Tensor) and w.shape == t.shape[-1:] == b.shape:
        return (t - b) / w
    return t


# The steps: the name on a failure, what the student's tensor is called, its dimensions.
BPD, HEADS = ("batch", "pos", "d_model"), ("batch", "pos", "head_index", "d_head")
GRID, HIDDEN = ("batch", "head_index", "query_pos", "key_pos"), ("batch", "pos", "d_mlp")
STEPS = {
    "activation": ("Activation", "activation", ("x",)),
    "embed": ("Embed", "token embedding", BPD),
    "pos_embed": ("PosEmbed", "position embedding", BPD),
    "token_type_embed": ("TokenTypeEmbed", "token-type embedding", BPD),
    "layer_norm": ("LayerNorm", "LayerNorm output", BPD),
    "layer_norm_scale": ("LayerNorm hook_scale", "scale", ("batch", "pos", "1")),
    "layer_norm_normalized": ("LayerNorm hook_normalized", "normalized", BPD),
    "bert_embed": ("BertEmbed", "embedding output", BPD),
    **{name: (f"Attention hook_{name}", name, HEADS) for name in "qkv"},
    "attention_scores": ("Attention scores", "scores", GRID),
    "attention_pattern": ("Attention pattern", "pattern", GRID),
    "attention_z": ("Attention z", "z", HEADS),
    "attention_out": ("Attention output", "attention output", BPD),
    "attention_result": ("Attention hook_result", "result", ("batch", "pos", "head_index", "d_model")),
    "attention": ("Attention", "attention output", BPD),
    "mlp_pre": ("MLP hook_pre", "pre", HIDDEN),
    "mlp_post": ("MLP hook_post", "post", HIDDEN),
    "mlp": ("MLP", "MLP output", BPD),
    "block": ("BertBlock", "block output", BPD),
    "mlm_head": ("MLM head", "MLM head output", BPD),
    "unembed": ("Unembed", "logits", ("batch", "pos", "d_vocab")),
    "pooler": ("Pooler", "pooled vector", ("batch", "d_model")),
    "nsp_head": ("NSP head", "NSP logits", ("batch", "nsp_class")),
}


# --- Values the student kit carries ----------------------------------------------------------

# In the repository, the exercises compute their reference values (exercise_values.py). In a
# student kit, those that take a formula come from exercise_values.pt, each stored under the
# test that asked for it and how many times it had asked before (its key).


class Keys:
    """The key of the next value a test asks for: "test_attention_scores[small-layer0]|check|0"."""

    def __init__(self):
        self.test, self.counts = None, {}

    def __call__(self, name):
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::", 1)[-1].rsplit(" (", 1)[0]
        if test != self.test:
            self.test, self.counts = test, {}
        self.counts[name] = self.counts.get(name, -1) + 1
        return f"{test}|{name}|{self.counts[name]}"


class StoredValues:
    """The values of a student kit, as the repository's run of the same tests recorded them."""

    def __init__(self, path):
        self.path, self.values, self.key = path, torch.load(path, weights_only=False), Keys()
        self.seed = self.values.get("seed", 0)  # of the references these values belong to

    def get(self, name, *args):
        key = self.key(name)
        if key not in self.values:
            raise LookupError(f"{self.path.name} has no value {key}: the tests and the values "
                              "come from different versions; make the kit again")
        return self.values[key]

    def check_inputs(self, step, given):
        key = self.key("check")
        return lambda: self.values.get(key, ({}, []))
