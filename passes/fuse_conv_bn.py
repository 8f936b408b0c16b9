"""`fuse_conv_bn`: fold every BatchNorm into the Conv, ConvTranspose or Linear that feeds it (torch stage).

Primary path: trace the model with torch.fx, match a pattern table with guards on the graph, fold the BN
into the producer's weight and bias (:mod:`.kernels` does the maths) and delete the BN node. The result is
a ``torch.fx.GraphModule`` that keeps the module names of the input.

Fallback, when fx cannot trace the whole model (data-dependent control flow, unsupported ops): walk the
module tree and fold
  - a conv child immediately followed by a BN child of a plain ``nn.Sequential`` (its forward is the
    chain, so the adjacency is the data flow), and
  - inside each submodule that fx *can* trace (one tensor input), the same guarded graph matches, applied
    in place (the conv takes the folded weights, the BN is replaced by ``nn.Identity``).
Registration order alone is never taken as data flow: a conv and a BN that sit next to each other in a
plain module may run in parallel or in another order, so outside those two cases the BN is skipped.

Every BN left unfused is reported in ``report.skipped`` with the reason. Fusing uses the running
statistics, so the pass refuses a model in training mode (where BN normalises with batch statistics).
"""

from __future__ import annotations

import copy
import inspect
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import kernels
from .core import PassReport, PassResult, Site, register_pass

UNTRAINED_BN = "BN statistics look untrained"

# ------------------------------------------------------------------------------------------ pattern table


def _weight_bias(layer: nn.Module) -> tuple[Tensor, Tensor]:
    weight = layer.weight
    bias = layer.bias if layer.bias is not None else weight.new_zeros(_out_channels(layer))
    return weight, bias


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _bn_params(bn: _BatchNorm, like: Tensor) -> kernels.BNParams:
    """The BN as kernels.BNParams on ``like``'s device (from_module makes γ/β on the CPU when not affine)."""
    p = kernels.BNParams.from_module(bn)
    return kernels.BNParams(*(t.to(like.device) for t in (p.gamma, p.beta, p.mean, p.var)), p.eps)


def _fold_conv(layer: nn.Module, bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    weight, bias = _weight_bias(layer)
    return kernels.fold_bn(weight, bias, _bn_params(bn, weight))


def _fold_transposed(layer: nn.Module, bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    weight, bias = _weight_bias(layer)
    return kernels.fold_bn_transposed(weight, bias, _bn_params(bn, weight), layer.groups)


@dataclass(frozen=True)
class Pattern:
    """A producer type followed by a BN type; ``fold`` gives the producer's new (weight, bias)."""

    producers: tuple[type[nn.Module], ...]
    norms: tuple[type[nn.Module], ...]
    fold: Callable[[nn.Module, _BatchNorm], tuple[Tensor, Tensor]]


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# Conv{1,2,3}d may meet any BatchNorm{1,2,3}d here: a rank mismatch would not run at all, so a graph that runs
# pairs them correctly. Linear → BatchNorm1d assumes (N, features) input, the only layout where BN1d's
# channel axis is the Linear's output axis (on (N, L, features), BN1d normalises over L).
PATTERNS: tuple[Pattern, ...] = (
    Pattern((nn.Conv1d, nn.Conv2d, nn.Conv3d), _NORMS, _fold_conv),
    Pattern((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), _NORMS, _fold_transposed),
    Pattern((nn.Linear,), (nn.BatchNorm1d, nn.SyncBatchNorm), _fold_conv),
)
_PRODUCERS = tuple(t for p in PATTERNS for t in p.producers)
_FUNCTIONAL_BN = {F.batch_norm, torch.batch_norm}


def _base(module: nn.Module, types: tuple[type[nn.Module], ...]) -> type[nn.Module] | None:
    return next((t for t in types if isinstance(module, t)), None)


def _plain(module: nn.Module, base: type[nn.Module]) -> bool:
    """The module computes what ``base`` computes: a subclass that overrides forward (DBB's identity-based
    1×1, fake-quant QAT convs) reads more than ``weight``/``bias`` and must not be folded."""
    cls = type(module)
    return cls.forward is base.forward and getattr(cls, "_conv_forward", None) is getattr(base, "_conv_forward", None)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _pattern(producer: nn.Module, bn: nn.Module) -> Pattern | None:
    for pattern in PATTERNS:
        if isinstance(producer, pattern.producers) and isinstance(bn, pattern.norms):
            return pattern
    return None


def _module_problem(producer: nn.Module, bn: nn.Module, producer_desc: str) -> tuple[Pattern | None, str | None]:
    """Checks that need only the two modules; returns the pattern, or None and why not."""
    bn_base = _base(bn, _NORMS)
    if bn_base is None or not _plain(bn, bn_base):
        return None, f"{type(bn).__name__} is not a plain BatchNorm{{1,2,3}}d (it has its own forward)"
    if bn.running_mean is None or bn.running_var is None:
        return None, "BN has no running statistics (track_running_stats=False: it uses batch statistics)"
    base = _base(producer, _PRODUCERS)
    if base is None:
        return None, f"BN follows {producer_desc}, not a conv"
    if not _plain(producer, base):
        return None, f"BN follows {producer_desc}, a {base.__name__} subclass with its own forward"
    pattern = _pattern(producer, bn)
    if pattern is None:
        return None, f"{type(producer).__name__} → {type(bn).__name__} is not in the pattern table"
    if not isinstance(producer.weight, nn.Parameter):
        return None, f"{type(producer).__name__} weight is not a plain Parameter (weight_norm or a parametrization)"
    if not producer.weight.is_floating_point():
        return None, f"{type(producer).__name__} weight is {producer.weight.dtype}, not floating point"
    if _out_channels(producer) != bn.num_features:
        return None, f"BN has {bn.num_features} channels, {type(producer).__name__} gives {_out_channels(producer)}"
    if _has_hooks(producer) or _has_hooks(bn):
        return None, "the conv or the BN has forward hooks, which folding would bypass"
    return pattern, None


def _fold_into(producer: nn.Module, bn: _BatchNorm, pattern: Pattern) -> None:
    """Give ``producer`` the folded weight and a bias (created if it had none, same dtype and device)."""
    weight, bias = pattern.fold(producer, bn)
    with torch.no_grad():
        producer.weight.copy_(weight)
        if producer.bias is None:
            producer.bias = nn.Parameter(bias.to(producer.weight.device), producer.weight.requires_grad)
        else:
            producer.bias.copy_(bias)


# ------------------------------------------------------------------------------------------ eval / stats


def check_eval(model: nn.Module, pass_name: str) -> None:
    """Raise ValueError when any part of ``model`` is in training mode (one-line message)."""
    where = next((name or "the model" for name, m in model.named_modules() if m.training), None)
    if where is not None:
        what = "the model" if where == "the model" else f"submodule '{where}'"
        raise ValueError(f"{pass_name} needs eval mode but {what} is in training mode (BatchNorm would use batch "
                         "statistics, which no fused layer reproduces): call model.eval() first")


def untrained_bn_warning(model: nn.Module) -> str | None:
    """A warning naming the BNs whose running statistics are still at their initial values (mean 0, var 1).

    ``num_batches_tracked == 0`` alone is not taken as a sign: loading a checkpoint saved without that
    buffer (older torchvision weights, ported weights) leaves it at 0 with real statistics."""
    names = [name for name, m in model.named_modules()
             if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None
             and not torch.any(m.running_mean != 0) and not torch.any(m.running_var != 1)]
    if not names:
        return None
    shown = ", ".join(names[:5]) + (f", … ({len(names) - 5} more)" if len(names) > 5 else "")
    return (f"{UNTRAINED_BN}: {len(names)} BatchNorm layer(s) have running_mean 0 and running_var 1 ({shown}); "
            "the fused model equals the input, but check that trained weights were loaded")


def model_counts(model: nn.Module) -> dict[str, int]:
    return {"params": sum(p.numel() for p in model.parameters()),
            "BatchNorm": sum(isinstance(m, _BatchNorm) for m in model.modules()),
            "modules": sum(1 for _ in model.modules())}


# ------------------------------------------------------------------------------------------ fx path


class _Tracer(fx.Tracer):
    """The default tracer, plus: user subclasses of conv/linear/BN that keep the base forward are leaves too
    (so they appear as module calls the pattern table can match, not as functional ops)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        base = _base(m, _PRODUCERS + _NORMS)
        if base is not None and _plain(m, base):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _describe(node: fx.Node, get: Callable[[str], nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(get(node.target)).__name__} '{node.target}'"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        return f"the functional {name}()" if name.startswith(("conv", "linear")) else f"{name}()"
    if node.op == "call_method":
        return f"the tensor method .{node.target}()"
    if node.op == "placeholder":
        return f"the input '{node.target}'"
    if node.op == "get_attr":
        return f"the attribute '{node.target}'"
    return node.op


@dataclass
class _Fold:
    conv: fx.Node
    bn: fx.Node
    pattern: Pattern


def _plan(graph: fx.Graph, get: Callable[[str], nn.Module], in_place: bool, shared: set[int],
          prefix: str) -> tuple[list[_Fold], list[Site]]:
    """Every BN in ``graph``: a fold to do, or a skipped Site with the reason."""
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    reads = [n.target for n in graph.nodes if n.op == "get_attr"]

    def read_directly(target: str) -> bool:
        return any(r.startswith(target + ".") for r in reads)

    folds: list[_Fold] = []
    skipped: list[Site] = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _FUNCTIONAL_BN:
            stats = node.args[1] if len(node.args) > 1 else None
            where = stats.target.rpartition(".")[0] if isinstance(stats, fx.Node) and stats.op == "get_attr" else ""
            skipped.append(Site(prefix + (where or node.name), "functional batch_norm (not a module call)"))
            continue
        if node.op != "call_module" or not isinstance(get(node.target), _BatchNorm):
            continue
        bn = get(node.target)
        where = prefix + node.target
        src = node.args[0] if node.args else node.kwargs.get("input")
        if not isinstance(src, fx.Node):
            skipped.append(Site(where, "BN input is not a traced tensor"))
            continue
        if src.op != "call_module":
            skipped.append(Site(where, f"BN follows {_describe(src, get)}, not a conv"))
            continue
        producer = get(src.target)
        pattern, why = _module_problem(producer, bn, _describe(src, get))
        if why is not None:
            skipped.append(Site(where, why))
            continue
        others = [u for u in src.users if u is not node]
        if others:
            used_by = ", ".join(_describe(u, get) for u in others)
            skipped.append(Site(where, f"conv output also used by {used_by}"))
            continue
        if calls[src.target] > 1:
            skipped.append(Site(where, f"conv '{src.target}' is called {calls[src.target]} times (shared weights)"))
            continue
        if read_directly(src.target):
            skipped.append(Site(where, f"the parameters of conv '{src.target}' are also read directly"))
            continue
        if in_place:
            if calls[node.target] > 1:
                skipped.append(Site(where, f"BN '{node.target}' is called {calls[node.target]} times"))
                continue
            if read_directly(node.target):
                skipped.append(Site(where, "the BN's parameters or statistics are also read directly"))
                continue
            if id(producer) in shared or id(bn) in shared:
                skipped.append(Site(where, "the conv or the BN is registered under several names (shared)"))
                continue
        folds.append(_Fold(src, node, pattern))
    return folds, skipped


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _fuse_graph(graph: fx.Graph, root: nn.Module, report: PassReport, *, in_place: bool, shared: set[int],
                prefix: str = "", how: str = "") -> None:
    """Fold every matched pair of ``graph`` (traced from ``root``), to a fixed point (conv → BN → BN folds
    both); the BN nodes leave the graph. ``in_place`` also swaps each folded BN for nn.Identity in ``root``."""
    while True:
        folds, skipped = _plan(graph, root.get_submodule, in_place, shared, prefix)
        for fold in folds:
            conv, bn = root.get_submodule(fold.conv.target), root.get_submodule(fold.bn.target)
            _fold_into(conv, bn, fold.pattern)
            report.sites.append(Site(f"{prefix}{fold.conv.target} + {prefix}{fold.bn.target}",
                                     f"{type(bn).__name__} folded into {type(conv).__name__}{how}"))
            fold.bn.replace_all_uses_with(fold.conv)
            graph.erase_node(fold.bn)
            if in_place:
                _set_submodule(root, fold.bn.target, nn.Identity())
        if not folds:
            report.skipped.extend(skipped)
            return


def _unreached(before: nn.Module, after: nn.Module, report: PassReport) -> None:
    """BNs of the input that no graph node calls: tracing drops them (or they sit inside a leaf module)."""
    remaining = {name for name, m in after.named_modules() if isinstance(m, _BatchNorm)}
    accounted = {s.where for s in report.skipped} | {s.where.rpartition(" + ")[2] for s in report.sites}
    for name, m in before.named_modules():
        if isinstance(m, _BatchNorm) and name not in accounted:
            why = "inside a module fx does not trace into (a leaf)" if name in remaining else \
                "never called in forward: the traced model drops it"
            report.skipped.append(Site(name, why))


# ------------------------------------------------------------------------------------------ fallback


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _one_tensor_input(module: nn.Module) -> bool:
    """Trace only forwards of one positional argument: fx would make optional arguments proxies and trace
    a branch the parent may not take."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _fuse_sequential(seq: nn.Sequential, prefix: str, report: PassReport, shared: set[int]) -> None:
    names = list(seq._modules)
    for first, second in zip(names, names[1:]):
        conv, bn = seq._modules[first], seq._modules[second]
        if not isinstance(bn, _BatchNorm):
            continue
        where = prefix + second
        pattern, why = _module_problem(conv, bn, f"{type(conv).__name__} '{prefix + first}'")
        if why is None and (id(conv) in shared or id(bn) in shared):
            why = "the conv or the BN is registered under several names (shared)"
        if why is not None:
            report.skipped.append(Site(where, why))
            continue
        _fold_into(conv, bn, pattern)
        setattr(seq, second, nn.Identity())
        report.sites.append(Site(f"{prefix}{first} + {where}",
                                 f"{type(bn).__name__} folded into {type(conv).__name__} (fallback: nn.Sequential)"))


def _fallback(model: nn.Module, report: PassReport) -> nn.Module:
    alive = list(model.modules())  # keeps the ids below valid while folded BNs are swapped out and freed
    counts = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    shared = {key for key, n in counts.items() if n > 1}
    seen: set[int] = set()

    def visit(module: nn.Module, prefix: str, is_root: bool) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if _plain_sequential(module):
            _fuse_sequential(module, prefix, report, shared)
        elif not is_root and next(module.children(), None) is not None and _one_tensor_input(module):
            tracer = _Tracer()
            try:
                graph = tracer.trace(module)
            except Exception:  # noqa: BLE001  (any tracing failure means: look one level down)
                pass
            else:
                name = prefix[:-1]
                _fuse_graph(graph, module, report, in_place=True, shared=shared, prefix=prefix,
                            how=f" (fallback: fx on '{name}')")
                return
        for name, child in module.named_children():
            visit(child, f"{prefix}{name}.", False)

    visit(model, "", True)
    del alive
    reported = {s.where for s in report.skipped}
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and name not in reported:
            report.skipped.append(Site(name, "fx could not trace its enclosing module, and it is not right after a "
                                             "conv in an nn.Sequential"))
    return model


# ------------------------------------------------------------------------------------------ the pass


@register_pass("fuse_conv_bn", stage="torch")
def fuse_conv_bn(model: nn.Module) -> PassResult:
    """Fold BatchNorm into the Conv/ConvTranspose/Linear before it (torch stage, fx with a module-walk fallback).

    Returns a copy in eval mode (a ``torch.fx.GraphModule`` when fx traced the model; otherwise the copied
    model with folded convs and ``nn.Identity`` in place of the folded BNs); the input is not modified.
    ``report.before``/``after`` count ``params``, ``BatchNorm`` modules and ``modules``; one site per
    fused pair (``"conv + bn"``); every BN left is in ``report.skipped`` with the reason.
    """
    start = time.perf_counter()
    check_eval(model, "fuse_conv_bn")
    report = PassReport("fuse_conv_bn", before=model_counts(model))
    warning = untrained_bn_warning(model)
    if warning:
        report.warnings.append(warning)
    work = copy.deepcopy(model)
    tracer = _Tracer()
    try:
        graph = tracer.trace(work)
        # a GraphModule of its own: fails on a root whose child is named like a GraphModule attribute
        # ("meta", "graph", "code"), which tracing itself accepts
        gm = fx.GraphModule(tracer.root, graph, type(work).__name__)
    except Exception as exc:  # noqa: BLE001  (fx raises many types: TraceError, TypeError, RuntimeError, …)
        reason = (str(exc).strip().splitlines() or [""])[0]
        report.warnings.append(f"fx could not trace the model ({type(exc).__name__}: {reason}); used the "
                               "module-walk fallback (nn.Sequential pairs, fx on each traceable submodule)")
        result = _fallback(work, report)
    else:
        _fuse_graph(gm.graph, gm, report, in_place=False, shared=set())
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
        _unreached(work, gm, report)
        result = gm
    result.eval()
    report.after = model_counts(result)
    report.seconds = time.perf_counter() - start
    return PassResult(result, report)
