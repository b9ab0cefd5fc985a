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
  signatures of the difference (a factor, an offset, a table's row, a permutation, f(reference),
  padding only, ...); a hook that sees a neighbour of its value while the component's output
  is right is named as misplaced ("self.hook_attn_scores is called before the mask").
- A crash inside the student's forward is read (`read_crash`): the line, the expression that
  failed, its tensors in the step's dimension names, and what to do.
"""

import ast
import difflib
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
            never = [other for other in self.flow if other != "return" and other not in self.calls
                     and other.startswith("hook_") == name.startswith("hook_")]
            if never:
                return (f"{cls}.forward calls self.{name} {len(calls)} times and never calls "
                        f"self.{never[0]}: one of those calls should be self.{never[0]}")
            return f"{cls}.forward calls self.{name} {len(calls)} times: call it once"
        args, does = calls[0][0], "returns" if name == "return" else f"passes self.{name}"
        self.checking = name
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
            for name, value in self.values.items():
                if value.shape[1:] == got.shape and value.shape[0] > 1 and same(got, value[0]):
                    return (f"{self.say([name])}[0], its first batch row: self.{name} returns a "
                            f"tensor, not a tuple: pass it {self.say(terms)} whole")
            return (f"a tensor of shape {tuple(got.shape)}: pass it {self.say(terms)}, of shape "
                    f"{tuple(expected.shape)}")
        if not expected.is_floating_point():
            if torch.equal(got, expected):
                return None
            other = [n for n, v in self.values.items() if v.shape == got.shape and torch.equal(v, got)]
            return (self.hook_order(other[:1], terms, expected) or
                    f"{self.say(other[:1]) if other else 'another tensor'}, not {self.say(terms)}")
        basis = {n: v for n, v in self.values.items() if v.is_floating_point() and v.shape == got.shape}
        matrix = torch.stack([v.flatten() for v in basis.values()], dim=1)
        target = got.detach().to(torch.float64).flatten()
        weights = torch.linalg.lstsq(matrix, target[:, None]).solution[:, 0].tolist()
        if (matrix @ torch.tensor(weights, dtype=torch.float64) - target).norm() > 1e-6 * target.norm():
            function = function_of(got, expected)
            if function:
                return f"{function.format(self.say(terms))}"
            return (f"a tensor that is no sum of the values {', '.join(self.say([n]) for n in basis)}: "
                    f"pass it {self.say(terms)}")
        used = {n: w for n, w in zip(basis, weights) if abs(w) > 1e-6}
        if any(abs(w - 1) > 1e-6 for w in used.values()):
            sum_said = " + ".join(f"{'' if abs(w - 1) < 1e-6 else f'{w:.3g} * '}{self.say([n])}"
                                  for n, w in used.items())
            return f"{sum_said or 'zeros'}: pass it {self.say(terms)}"
        return None if sorted(used) == sorted(terms) else self.what_to_do(list(used), terms)

    def hook_order(self, got, terms, expected):
        """A hook called one call too early or too late: `got` is one call's value, and that call
        itself got what `terms` sum to. None if not so."""
        if len(got) != 1 or got[0] not in self.calls or got[0] == "return":
            return None
        other, args = got[0], self.calls[got[0]][0][0]
        if not args or not same(args[0], expected) or self.checking == other:
            return None
        if other.startswith("hook_"):  # a sub-module got what a hook returned
            return (f"{self.say(got)}: self.{other} is called on {self.say(terms)}, before "
                    f"{self.checking}: call it on what self.{self.checking} returns")
        if self.checking.startswith("hook_"):
            return (f"{self.say(got)}: self.{self.checking} is called after {other}: call it "
                    f"on {self.say(terms)}, and pass self.{other} what it returns")
        return None

    def what_to_do(self, got, terms):
        """The sentence for a sum of the wrong values: an ignored hook, a missing or extra one."""
        expected = self.values[terms[0]]
        for term in terms[1:]:
            expected = expected + self.values[term]
        order = self.hook_order(got, terms, expected)
        if order:
            return order
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


# Common functions a student may apply where none belongs (softmax: over the last dim).
ELEMENTWISE = {"tanh": torch.tanh, "relu": torch.relu, "GELU": torch.nn.functional.gelu,
               "sigmoid": torch.sigmoid, "softmax": lambda x: x.softmax(-1),
               "log_softmax": lambda x: x.log_softmax(-1), "exp": torch.exp, "abs": torch.abs}


def function_of(got, expected):
    """What `got` is as a generic function of `expected` ("tanh({})"), else None. Dropout:
    some entries zeroed, the rest scaled by 1 / (1 - p)."""
    got = got.detach().to(expected.dtype)
    for name, f in {**ELEMENTWISE, "-": torch.neg}.items():
        if torch.allclose(got, f(expected), atol=1e-9, rtol=1e-7):
            return f"{name}({{0}}): pass it {{0}} itself, with no {name} on the way"
    kept = got != 0
    if 0 < kept.sum() < got.numel() and (~kept).any():
        ratio = got[kept] / expected[kept]
        if ((ratio - ratio[0]).abs() < 1e-9).all() and ratio[0] > 1:
            return ("{0} with dropout on (entries zeroed, the rest scaled by "
                    f"{ratio[0].item():.3g}) in eval(): use self.dropout, which eval() turns off")
    return None


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
    "hook_out": "the logits, bias included [batch, pos, d_vocab]",
    "hook_pooler_out": "the pooled vector, after the tanh [batch, d_model]",
    "hook_nsp_out": "the NSP logits, bias included [batch, 2]",
}
ATTENTION_STEPS = ["hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"]


class StopForward(Exception):
    """Raised by a test's hook to end the forward pass once the step under test has run."""


def add_hint(error, hint, component, stop_at=None, args=()):
    """The exception to raise for `error`, raised inside `component`: it carries the test's hint
    (as a note, which pytest prints under the error; conftest.py's board reads `.hint`). A stub's
    NotImplementedError becomes a one-line failure: there is no code to debug yet."""
    where = f"{type(component).__name__}.forward"
    if isinstance(error, NotImplementedError):
        before = f" before it reaches self.{stop_at}, which this test checks" if stop_at else ""
        diagnosis = f"not written yet: {where} raises NotImplementedError{before}"
        error = pytest.fail.Exception(diagnosis, pytrace=False)
        error.hint = f"{diagnosis}\n\nIts stub in hooked_bert.py says what to compute."
        return error  # (no diagnosis of a mistake: there is none yet)
    try:
        report = read_crash(error, component, args)
    except Exception:  # noqa: BLE001 (reading a crash must never hide it)
        report = None
    if report:  # under the traceback, what it does not say: the tensors, what to do
        read = report.split("\n", 1)[1].splitlines()
        more = read[[line.startswith(f"{type(error).__name__}: ") for line in read].index(True) + 1:]
        error.__notes__ = [*getattr(error, "__notes__", []), *more, f"Hint: {hint}"]
        error.hint = f"{report}\n\n{hint}"
        return error
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
    LAST_RUN[:] = [seen, lambda: run_until(component, args, stop_at, hint, feed),  # (diagnosis)
                   lambda: run_until(component, args, None, hint)]
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
        hinted = add_hint(error, hint, component, stop_at, args)
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


# --- Crash reading: an exception inside the student's forward, in the step's names -----------

# The dimension names of each parameter of our layout (the shape comments of hooked_bert.py):
# with the component's input, they name every size a crash shows.
PARAM_DIMS = {
    "W_E": ("d_vocab", "d_model"), "W_pos": ("n_ctx", "d_model"),
    "W_token_type": ("n_token_types", "d_model"), "W_Q": ("head_index", "d_model", "d_head"),
    "W_O": ("head_index", "d_head", "d_model"), "b_Q": ("head_index", "d_head"),
    "b_O": ("d_model",), "W_in": ("d_model", "d_mlp"), "b_in": ("d_mlp",),
    "W_out": ("d_mlp", "d_model"), "b_out": ("d_model",), "W_U": ("d_model", "d_vocab"),
    "b_U": ("d_vocab",), "w": ("d_model",), "b": ("d_model",), "W": ("d_model", "d_model"),
}
ROWS_ARE = {"d_vocab": "token ids", "n_ctx": "positions 0..pos-1",
            "n_token_types": "token types (token_type_ids)"}
ARGUMENTS_ARE = {"tokens": "token ids", "token_type_ids": "token types"}
REDUCTIONS = {"mean", "sum", "var", "std", "amax", "amin", "max", "min", "norm", "prod",
              "logsumexp", "median"}


def dimension_names(component, args):
    """{size: name} for a crash's shapes: the input's [batch, pos(, d_model)], the parameters'."""
    names = {}
    first = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if first is not None and first.ndim >= 2:
        leading = ("batch", "pos", "d_model")[:first.ndim] if first.ndim <= 3 else ()
        if first.ndim == 2 and first.is_floating_point():
            leading = ("batch", "d_model")
        for size, name in zip(first.shape, leading):
            names.setdefault(size, name)
    for path, param in component.named_parameters():
        leaf = path.rsplit(".", 1)[-1]
        dims = PARAM_DIMS.get(leaf if leaf[:2] not in ("W_", "b_") or leaf in PARAM_DIMS
                              else f"{leaf[0]}_Q", ())
        if leaf == "W" and param.ndim == 2 and param.shape[1] != param.shape[0]:
            dims = ("d_model", "nsp_class")
        if len(dims) == param.ndim:
            for size, name in zip(param.shape, dims):
                names.setdefault(size, name)
    return names


def said_shape(value, names):
    if not isinstance(value, torch.Tensor):
        return type(value).__name__
    dims = ", ".join(names.get(size, str(size)) for size in value.shape)
    return f"[{dims}] {tuple(value.shape)}" if value.ndim else "a 0-d tensor"


STUDENT_FILES = [hb.__file__]  # where a student's forward is written


def student_frame(error):
    """The innermost frame of the crash in hooked_bert.py (the student's line), or None."""
    tb, frame = error.__traceback__, None
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) in map(os.path.abspath, STUDENT_FILES) \
                and (frame is None or tb.tb_frame.f_code.co_name == "forward"):
            frame = (tb.tb_frame, tb.tb_lineno)  # (the forward, not a helper it calls)
        tb = tb.tb_next
    return frame


def statement_at(path, lineno):
    """The source of the statement at `lineno` of `path` (all its lines), and its ast."""
    source = open(path).read()
    best = None
    for node in ast.walk(ast.parse(source)):
        compound = (ast.FunctionDef, ast.ClassDef, ast.If, ast.For, ast.While, ast.With, ast.Try)
        if isinstance(node, ast.stmt) and not isinstance(node, compound) and \
                node.lineno <= lineno <= node.end_lineno and (best is None or node.lineno >= best.lineno):
            best = node
    return (ast.get_source_segment(source, best), best) if best else (None, None)


class Unsafe(Exception):
    """An expression the crash reader must not run again (a sub-module or hook call)."""


def evaluate(node, frame):
    """`node`'s value in the student's frame, or Unsafe if it calls a sub-module or a hook, or
    changes something in place."""
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            if isinstance(call.func, ast.Attribute) and call.func.attr.endswith("_") and \
                    not call.func.attr.endswith("__"):
                raise Unsafe
            try:
                func = eval(compile(ast.Expression(call.func), "<crash>", "eval"),
                            frame.f_globals, dict(frame.f_locals))
            except Exception:  # noqa: BLE001
                raise Unsafe from None
            if isinstance(func, torch.nn.Module) or getattr(func, "__self__", None) is not None \
                    and isinstance(func.__self__, torch.nn.Module):
                raise Unsafe
    with torch.no_grad():
        return eval(compile(ast.Expression(node), "<crash>", "eval"), frame.f_globals,
                    dict(frame.f_locals))


def culprit(statement, frame):
    """The innermost expression of `statement` that raises although its parts evaluate:
    (node, [(source, value) of its parts], the exception)."""
    found = []

    def visit(node):
        if isinstance(getattr(node, "ctx", None), (ast.Store, ast.Del)):
            return True  # (an assignment's target)
        ok = True
        for child in ast.iter_child_nodes(node):
            ok = visit(child) and ok
        if not isinstance(node, ast.expr) or isinstance(node, (ast.Constant, ast.Name)) and not ok:
            return ok
        if not ok or found:
            return False
        try:
            evaluate(node, frame)
            return True
        except Unsafe:
            return False
        except Exception as error:  # noqa: BLE001 (that is what we look for)
            found.append((node, error))
            return False

    visit(statement)
    if not found:
        return None
    node, error = found[0]
    parts = [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr)]
    if isinstance(node, ast.Call):
        parts = [*([node.func.value] if isinstance(node.func, ast.Attribute) else []),
                 *node.args, *[kw.value for kw in node.keywords]]
    values = []
    for part in parts:
        try:
            values.append((ast.unparse(part), evaluate(part, frame), part))
        except Exception:  # noqa: BLE001
            pass
    return node, values, error


def read_crash(error, component, args):
    """A short account of a crash in the student's forward: the line, the expression that
    failed, its tensors in the step's dimension names, and what to do; None if not ours."""
    where = student_frame(error)
    if where is None:
        return None
    frame, lineno = where
    source, statement = statement_at(frame.f_code.co_filename, lineno)
    names = dimension_names(component, args)
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    lines = [f"{type(component).__name__}.forward raised {type(error).__name__} at line {lineno} "
             f"of {os.path.basename(frame.f_code.co_filename)}:",
             *(f"    {line.strip()}" for line in source.splitlines()[:4]),
             f"{type(error).__name__}: {message}"]
    found = culprit(statement, frame) if statement is not None else None
    if found:
        node, values, _ = found
        tensors = [f"{text} {said_shape(value, names)}" for text, value, _ in values
                   if isinstance(value, torch.Tensor)]
        if tensors:
            lines.append(f"in {shorten(ast.unparse(node))}: {', '.join(tensors)}")
        advice = crash_advice(error, node, values, names, frame)
        if advice:
            lines.append(advice)
    return "\n".join(lines)


def shorten(text, n=70):
    return text if len(text) <= n else text[:n - 3] + "..."


def crash_advice(error, node, values, names, frame):
    """What to do, for the crashes students make most: in the step's names."""
    text = str(error)
    tensors = [(t, v, part) for t, v, part in values if isinstance(v, torch.Tensor)]
    if isinstance(node, ast.Subscript) and len(tensors) == 2:
        (table_text, table, _), (index_text, index, _) = tensors
        if index.is_floating_point():
            return (f"you index {table_text} with a float index ({index_text} is {index.dtype}): "
                    "an index must be an integer (long) or bool tensor; drop the float conversion")
        rows = names.get(table.shape[0], str(table.shape[0]))
        if index.numel() and index.max() >= table.shape[0]:
            what = f", which are {ARGUMENTS_ARE[index_text]}" if index_text in ARGUMENTS_ARE else ""
            meaning = ROWS_ARE.get(rows)
            return (f"you index {table_text} ({table.shape[0]} rows, one per {rows}) with "
                    f"{index_text}, values up to {int(index.max())}{what}"
                    + (f": index it with the {meaning}" if meaning else ""))
    if isinstance(node, ast.BinOp) and len(tensors) == 2:
        (left_text, left, left_node), (right_text, right, right_node) = tensors
        for side_text, side, side_node in tensors:
            if isinstance(side_node, ast.Call) and isinstance(side_node.func, ast.Attribute) \
                    and side_node.func.attr in REDUCTIONS and not any(
                        kw.arg == "keepdim" for kw in side_node.keywords):
                return (f"{side_text} drops the dimension it reduces, so it does not broadcast "
                        f"against the rest: keep it with keepdim=True")
            if isinstance(side_node, ast.BinOp) and isinstance(side_node.op, ast.MatMult):
                return (f"{side_text} is a matrix product (@ sums over the shared dimension); "
                        "to scale each entry, multiply elementwise, not a matrix product: *")
        if isinstance(node.op, ast.MatMult):
            for side_text, side, side_node in tensors:
                if isinstance(side_node, ast.Attribute) and side_node.attr in ("T", "mT"):
                    plain = ast.unparse(side_node.value)
                    original = side.transpose(-1, -2)
                    return (f"{plain} is {said_shape(original, names).split(' (')[0]} "
                            f"{tuple(original.shape)} already: use it without .T")
            return (f"@ needs the last dimension of {left_text} to match the first of "
                    f"{right_text}: check which weight, and its layout")
        return (f"{left_text} and {right_text} do not broadcast: their dimensions must match "
                "from the right (or be 1)")
    if isinstance(node, ast.Call):
        func = ast.unparse(node.func)
        if func.endswith("einsum") and node.args and isinstance(node.args[0], ast.Constant):
            return einsum_advice(node.args[0].value, [v for _, v, _ in tensors],
                                 [t for t, _, _ in tensors], names, frame)
        if func.endswith(".expand") and tensors:
            sizes = [v for _, v, _ in values[1:] if isinstance(v, int)]
            have = list(tensors[0][1].shape)
            full = [size for size in sizes if size not in have] + have
            ints = {v: k for k, v in frame.f_locals.items() if type(v) is int}  # batch, n_pos
            said = ", ".join(ints.get(size, str(size)) for size in full)
            return (f"expand takes every dimension of the result, the new ones first: "
                    f"{func}({said})")
        floats = [t for t, v, _ in tensors if v.is_floating_point() and t in ARGUMENTS_ARE or
                  v.is_floating_point() and ("indices" in text or "Long" in text)]
        if floats and ("indices" in text or "Long" in text or "scalar type" in text):
            return (f"{floats[0]} is a float index: an index must be an integer (long) tensor; "
                    "drop the float conversion (torch.zeros_like(tokens) keeps the long dtype)")
        if "vector" in text or "1-D" in text or "1D" in text:
            index = next((f"{t} is {said_shape(v, names).split(' (')[0]}" for t, v, _ in tensors
                          if not v.is_floating_point()), "")
            return (f"{func.rsplit('.', 1)[-1]} needs a 1-D index; {index}: index with "
                    "[...] (W[ids] keeps the ids' shape), or flatten and reshape")
        if isinstance(error, TypeError):
            for i, (t, v, part) in enumerate(tensors):
                call = ast.Call(func=node.func, keywords=[], args=[
                    ast.Attribute(value=part, attr="dtype", ctx=ast.Load()) if a is part else a
                    for a in node.args])
                try:
                    evaluate(ast.fix_missing_locations(ast.copy_location(call, node)), frame)
                except Exception:  # noqa: BLE001
                    continue
                return f"{func} takes a dtype, not a tensor: {func}({t}.dtype)"
            if func == "sum" and len(node.args) > 1:
                return ("Python's sum takes one list (sum([a, b, c])); to add tensors, write "
                        "a + b + c")
    if isinstance(node, ast.Attribute) and isinstance(error, AttributeError) and values:
        owner, value = ast.unparse(node.value), values[0][1]
        if isinstance(value, torch.nn.Module):
            return (f"{owner} is a sub-module: call {owner}(...) on its input instead of using "
                    f"its {node.attr} yourself")
        close = difflib.get_close_matches(node.attr, dir(value), n=1)
        kind = "a tensor" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
        return f"{owner} is {kind}, which has no {node.attr}" + (
            f": did you mean {owner}.{close[0]}?" if close else "")
    return None


def einsum_advice(equation, operands, texts, names, frame):
    """Which operand's dimensions the equation names in another order than its shape has."""
    inputs = equation.split("->")[0].split(",")
    owner = frame.f_locals.get("self")
    for spec, value, text in zip(inputs, operands, texts):
        written = spec.split() if " " in spec.strip() else list(spec.strip())
        actual = [names.get(size, str(size)) for size in value.shape]
        param = next((f"self.{n}" for n, p in (owner.named_parameters() if owner is not None else ())
                      if p is value and f"self.{n}" != text), None)
        if len(written) == 2 == len(actual) and written == actual[::-1] and param:
            return (f"{text} is {param}, [{', '.join(actual)}], and the einsum reads it as "
                    f"[{', '.join(written)}]: use {param}.T")
        if len(written) == len(actual) and written != actual and sorted(written) == sorted(actual):
            return (f"the einsum names {text}'s dimensions [{', '.join(written)}], but {text} is "
                    f"[{', '.join(actual)}]: write them in that order")
        if len(written) != len(actual):
            return (f"the einsum names {len(written)} dimensions for {text}, which has "
                    f"{len(actual)}: [{', '.join(actual)}]")
    return None


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


def first_wrong_hook(actual, g, tol, run):
    """For an output no signature explains: the first hook of the same run whose value differs
    from its reference in g (q, scores, scale, pre, ...), said by its own signatures, so that
    the first failure already says what a later step's test would."""
    seen = run[0] if run else {}
    if not any(value is actual for value in seen.values()):
        return None
    for hook, value in seen.items():
        if value is actual:  # (no earlier hook differs: this step's own value is the first)
            return None
        key = hook.removeprefix("hook_").removeprefix("attn_")
        reference = getattr(g, key, None)
        step = next((name for name, (title, noun, dims) in STEPS.items()
                     if title.endswith(f" {key}") or title.endswith(f" hook_{key}")), None)
        if hook == "out" or not isinstance(reference, torch.Tensor) or step is None:
            continue
        if distance(value, reference) <= tolerance(reference, tol):
            continue
        title, noun, dims = STEPS[step]
        said = signature(value, reference, SimpleNamespace(noun=noun, dims=dims, g=g, tol=tol))
        said = said and said.partition(HOOK_AT)[0]
        return (f"the first value that differs is what reaches self.{hook}"
                f"{': ' + said if said else ''} (its own test, {title}, checks it)")
    return None


HOOK_AT = " [hook: "  # a catalogued sentence may end so: where a misplaced hook would see it


def hook_placement(actual, sentence, g, tol, run):
    """If `actual` is what a hook saw, and the student's component nevertheless returns the
    right output (g.output), the hook is only misplaced: say where it is called. The sentence
    of the catalogued neighbour may say where ("... [hook: before the mask]")."""
    seen, _, whole = run if len(run) == 3 else ({}, None, None)
    hook = next((name for name, value in seen.items() if value is actual and name != "out"), None)
    output, place = getattr(g, "output", None), (sentence or "").partition(HOOK_AT)[2].rstrip("]")
    if hook is None or output is None or not place:  # (no known neighbour: not a claim to make)
        return None
    try:
        out = seen["out"] if "out" in seen else whole()["out"]
    except (Exception, pytest.fail.Exception):  # noqa: BLE001 (a crash further on, a stub)
        return None
    if distance(out, output) > tolerance(output, tol):
        return None
    what = HOOK_WHAT.get(hook, "the value it names")
    return (f"self.{hook} is called {place}: call it on {what} (your output is right: only the "
            "hook sees the wrong value)")


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
        run = list(LAST_RUN)  # (a signature may run the step again, which replaces LAST_RUN)
        sentence = best_candidate(actual, candidates, tol) or signature(
            actual, expected, SimpleNamespace(noun=noun, dims=dims, g=g, tol=tol))
        sentence = hook_placement(actual, sentence, g, atol, run) or sentence
        sentence = sentence or first_wrong_hook(actual, g, tol, run)
        sentence = sentence and sentence.partition(HOOK_AT)[0]
    except (Exception, pytest.fail.Exception):  # noqa: BLE001 (never hide the failure itself)
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
                 only_somewhere, swapped_dims, permuted, constant_factor, rows_of_a_table,
                 constant_offset, function_of_reference, normalised_elsewhere):
        sentence = test(a, e, c)
        if sentence:
            return sentence
    return None


def random_between_calls(a, e, c):
    seen, rerun = LAST_RUN[:2] if LAST_RUN else ({}, None)
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
                    f"(or you go on with its input instead of its result){HOOK_AT}on {name}]")
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
    said = factor_in_words(ratio, getattr(c.g, "cfg", None))
    return (f"your {c.noun} {c.is_} the reference {said} (a constant factor {ratio:.4g}): look "
            f"for a wrong or doubled scaling{HOOK_AT}before the scaling (it sees the reference {said})]")


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


def rows_of_a_table(a, e, c):
    """The difference is, position by position, a table's row chosen by an index tensor of the
    inputs, left out (or added) where the index takes some values: "lacks row 0 of
    W_token_type where token_type_ids is 0"."""
    if a.ndim < 2:
        return None
    difference = a.double() - e.double()
    for table_name, table in vars(c.g).items():
        if not isinstance(table, torch.Tensor) or table.ndim != 2 or table.shape[-1] != a.shape[-1]:
            continue
        for index_name, index in vars(c.g).items():
            if not isinstance(index, torch.Tensor) or index.is_floating_point() or \
                    index.dtype == torch.bool or \
                    index.shape != a.shape[:-1] or index.max() >= table.shape[0] or index.min() < 0:
                continue
            rows = table[index].double()
            for sign, does in ((-1, "lack"), (1, "add")):
                off = ((difference - sign * rows).abs().amax(-1) <= c.tol)
                zero = difference.abs().amax(-1) <= c.tol
                if not (off | zero).all() or not off.any() or (off & zero).all():
                    continue
                values = sorted(set(index[off & ~zero].tolist()))
                if any(((index == v) & ~off).any() for v in values):
                    continue
                which = " and ".join(map(str, values))
                fix = f"add row {which} there" if sign < 0 else "add it once"
                return (f"your {c.noun} {does}{c.s} row {which} of {table_name} where {index_name} "
                        f"is {which}{' (a second time)' if sign > 0 else ''}: {fix}, "
                        f"{table_name}[{index_name}] at every position")
    return None


def function_of_reference(a, e, c):
    """`a` is f(reference) for a common f: an activation or softmax where none belongs, or
    applied a second time."""
    for name, f in ELEMENTWISE.items():
        with torch.no_grad():
            made = f(e.double()) if e.is_floating_point() else None
        if made is not None and distance(a.double(), made) <= c.tol:
            return (f"your {c.noun} {c.is_} {name} of the reference: a {name} where none belongs "
                    f"(or applied a second time): leave it out{HOOK_AT}after the {name}]")
    return None


def holds_another(ours, expected, name):
    """For a loader: None if ours[name] is right; else which other parameter's values it holds
    ("swaps ln1.w and ln2.w"), or that it is transposed."""
    mine = ours.get(name)
    if not isinstance(mine, torch.Tensor) or same(mine, expected[name]):
        return None
    for other, value in expected.items():
        if other != name and value.shape == mine.shape and same(mine, value):
            both = other in ours and same(ours[other], expected[name])
            return (f"convert_hf_state_dict swaps {name} and {other}: each holds the other's "
                    "values" if both else f"convert_hf_state_dict gives {name} the values of {other}")
    if mine.ndim == 2 and mine.shape[::-1] == expected[name].shape and same(mine.T, expected[name]):
        return f"convert_hf_state_dict gives {name} transposed: nn.Linear stores [out, in]"
    return None


def offset_in_words(c, name, times):
    if times == -1:
        return f"your {c.noun} lack{c.s} {name}: add it (once){HOOK_AT}before the bias {name}]"
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
