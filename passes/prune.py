"""Structured channel pruning (torch stage, registered as ``prune``): remove whole output channels.

The groups come from :mod:`.prune_graph`. For every prunable group the pass ranks the channels by an
importance score, keeps the best ``size − ⌊size·ratio⌋`` rounded to a multiple of ``round_to``, and slices
every parameter axis of the group. What was kept is a **record** (``{module: {axis role: kept indices}}``),
and :func:`apply_record` replays a record on a freshly built copy of the architecture, so a pruned model
reloads from plain tensors (safetensors) and a JSON record, never from a pickle.

Importance (per channel ``i`` of a group, summed over its members):
  - ``l2``: √Σ w² over the rows/columns the channel owns (group magnitude, Li et al. 2017 for one layer);
  - ``l1``: Σ |w| over the same;
  - ``bn``: Σ |γᵢ| over the group's BatchNorms (Liu et al. 2017, network slimming); ``l2`` where it has none;
  - ``activation``: mean |aᵢ| of the group's producer outputs (after their BN) on calibration data.
Scores are normalised per group (divided by their mean) so one global ranking across groups is fair.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .core import PassReport, PassResult, Site, register_pass
from .prune_graph import _CONV_TRANSPOSES, _CONVS, ChannelGraph, Group, Layout, analyse

CRITERIA = ("l2", "l1", "bn", "activation")
RECORD_VERSION = 1


class RecordMismatchError(ValueError):
    """A pruning record that does not fit the architecture it is replayed on."""


@dataclass
class GroupPlan:
    group: Group
    keep: list[int]  # kept channel indices of the group's space, ascending

    @property
    def removed(self) -> int:
        return self.group.size - len(self.keep)


@dataclass
class PruneRecord:
    """Kept indices per module and parameter axis, with the original sizes (to check a replay fits)."""

    modules: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": RECORD_VERSION, "modules": self.modules, "sizes": self.sizes},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PruneRecord:
        data = json.loads(text)
        if data.get("version") != RECORD_VERSION:
            raise RecordMismatchError(f"pruning record version {data.get('version')} (this deploy reads "
                                      f"version {RECORD_VERSION})")
        return cls(data["modules"], data["sizes"])


def compose(first: PruneRecord, second: PruneRecord) -> PruneRecord:
    """The record of pruning with ``first``, then pruning the result with ``second``: indices of the second
    are positions among what the first kept; sizes stay those of the original architecture."""
    out = PruneRecord({m: dict(r) for m, r in first.modules.items()}, {m: dict(r) for m, r in first.sizes.items()})
    for module, roles in second.modules.items():
        for role, idx in roles.items():
            kept = first.modules.get(module, {}).get(role)
            if kept is None:
                out.modules.setdefault(module, {})[role] = list(idx)
                out.sizes.setdefault(module, {})[role] = second.sizes[module][role]
            else:
                out.modules[module][role] = [kept[i] for i in idx]
    return out


# ------------------------------------------------------------------------------------------ indices


def _layout_indices(layout: Layout, keep: dict[int, list[int]]) -> list[int]:
    """Indices along a member's axis that survive, given the kept channels of each space in its layout.
    A segment with ``repeat`` r (after flatten) owns features c·r … c·r + r − 1 of each channel c."""
    out: list[int] = []
    offset = 0
    for seg in layout:
        kept = keep.get(seg.space, range(seg.size))
        for c in kept:
            base = offset + c * seg.repeat
            out.extend(range(base, base + seg.repeat))
        offset += seg.size * seg.repeat
    return out


def _full(layout: Layout) -> int:
    return sum(s.size * s.repeat for s in layout)


def build_record(model: nn.Module, graph: ChannelGraph, plans: Iterable[GroupPlan]) -> PruneRecord:
    keep = {p.group.id: p.keep for p in plans if p.removed}
    record = PruneRecord()
    seen: set[tuple[str, str]] = set()
    for g in graph.groups:
        for m in g.members:
            if (m.module, m.role) in seen:
                continue
            seen.add((m.module, m.role))
            idx = _layout_indices(m.layout, keep)
            full = _full(m.layout)
            if len(idx) == full:
                continue
            role = "out" if m.role in ("out", "bn", "dw") else "in"
            record.modules.setdefault(m.module, {})[role] = idx
            record.sizes.setdefault(m.module, {})[role] = full
            if m.role == "dw":  # a depthwise conv's input channels are its output channels
                record.modules[m.module]["in"] = idx
                record.sizes[m.module]["in"] = full
    return record


# ------------------------------------------------------------------------------------------ slicing


def _axis_size(module: nn.Module, role: str) -> int:
    if isinstance(module, _CONVS):
        return module.out_channels if role == "out" else module.in_channels
    if isinstance(module, _CONV_TRANSPOSES):
        return module.out_channels if role == "out" else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if role == "out" else module.in_features
    if isinstance(module, _BatchNorm):
        return module.num_features
    raise RecordMismatchError(f"{type(module).__name__} has no prunable channels")


def _select(param: torch.Tensor | None, dim: int, idx: torch.Tensor) -> torch.Tensor | None:
    return None if param is None else param.detach().index_select(dim, idx).clone()


def _set(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is None:
        return
    if isinstance(getattr(module, name), nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=getattr(module, name).requires_grad))
    else:
        setattr(module, name, value)


def _slice_module(module: nn.Module, role: str, idx: list[int]) -> None:
    index = torch.tensor(idx, dtype=torch.long)
    n = len(idx)
    if isinstance(module, _CONVS):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        if role == "out":
            _set(module, "weight", _select(module.weight, 0, index))
            _set(module, "bias", _select(module.bias, 0, index))
            module.out_channels = n
            if depthwise:
                module.groups = n
        elif not depthwise:
            _set(module, "weight", _select(module.weight, 1, index))
            module.in_channels = n
        else:
            module.in_channels = n
    elif isinstance(module, _CONV_TRANSPOSES):  # weight is in × out/groups × k…
        if role == "out":
            _set(module, "weight", _select(module.weight, 1, index))
            _set(module, "bias", _select(module.bias, 0, index))
            module.out_channels = n
        else:
            _set(module, "weight", _select(module.weight, 0, index))
            module.in_channels = n
    elif isinstance(module, nn.Linear):
        if role == "out":
            _set(module, "weight", _select(module.weight, 0, index))
            _set(module, "bias", _select(module.bias, 0, index))
            module.out_features = n
        else:
            _set(module, "weight", _select(module.weight, 1, index))
            module.in_features = n
    elif isinstance(module, _BatchNorm):
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(module, name, None) is not None:
                _set(module, name, _select(getattr(module, name), 0, index))
        module.num_features = n


def apply_record(model: nn.Module, record: PruneRecord) -> None:
    """Slice ``model`` in place as the record says; a record that does not fit names the first layer."""
    names = dict(model.named_modules())
    for name, roles in record.modules.items():
        module = names.get(name)
        if module is None:
            raise RecordMismatchError(f"the pruning record names layer '{name}', which this model does not have")
        for role, idx in roles.items():
            try:
                size = _axis_size(module, role)
            except RecordMismatchError as err:
                raise RecordMismatchError(f"layer '{name}': {err}") from None
            expected = record.sizes.get(name, {}).get(role, size)
            if size != expected or (idx and (max(idx) >= size or min(idx) < 0)):
                raise RecordMismatchError(f"layer '{name}' has {size} {role}put channels; the pruning record was "
                                          f"made for {expected}")
    for name, roles in record.modules.items():
        module = names[name]
        depthwise = isinstance(module, _CONVS) and module.groups > 1 and \
            module.groups == module.in_channels == module.out_channels
        for role in sorted(roles, key=lambda r: r != "out"):  # depthwise: set groups from 'out' first
            if depthwise and role == "in":
                module.in_channels = len(roles[role])
                continue
            _slice_module(module, role, roles[role])


# ------------------------------------------------------------------------------------------ importance


def replay(model: nn.Module, record: PruneRecord, prepared: Sequence[str]) -> nn.Module:
    """The pruned architecture from the original one: the same preparation steps, then the record."""
    if "reparameterize" in prepared:
        from .reparam import reparameterize  # passes may import passes

        model = reparameterize(model.eval(), fuse_bn=False).model
    apply_record(model, record)
    return model.eval()


def _member_scores(module: nn.Module, role: str, layout: Layout, criterion: str) -> list[tuple[int, torch.Tensor]]:
    """Per-segment channel scores (Σ w² or Σ |w|) that one member contributes: [(space, scores)]."""
    if isinstance(module, _BatchNorm):
        return []
    w = module.weight.detach().float()
    if isinstance(module, _CONV_TRANSPOSES):
        w = w.transpose(0, 1)
    if role == "in" and not isinstance(module, nn.Linear):
        w = w.transpose(0, 1)
    elif role == "in":
        w = w.t()
    per = (w.abs() if criterion == "l1" else w.pow(2)).reshape(w.shape[0], -1).sum(1)
    out: list[tuple[int, torch.Tensor]] = []
    offset = 0
    for seg in layout:
        span = per[offset: offset + seg.size * seg.repeat].reshape(seg.size, seg.repeat).sum(1)
        out.append((seg.space, span))
        offset += seg.size * seg.repeat
    return out


def channel_scores(model: nn.Module, graph: ChannelGraph, criterion: str = "l2",
                   activations: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """Importance of every channel of every prunable group, normalised to mean 1 within the group."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown importance '{criterion}'; choose one of {', '.join(CRITERIA)}")
    names = dict(model.named_modules())
    scores: dict[int, torch.Tensor] = {}
    for g in graph.prunable():
        total = torch.zeros(g.size)
        if criterion == "activation" and activations and g.id in activations:
            total = activations[g.id].clone()
        elif criterion == "bn" and any(isinstance(names[m.module], _BatchNorm) for m in g.members):
            for m in g.members:
                module = names[m.module]
                if isinstance(module, _BatchNorm) and module.weight is not None:
                    _add_segments(total, g.id, m.layout, module.weight.detach().abs().float())
        else:
            kind = "l1" if criterion == "l1" else "l2"
            for m in g.members:
                for space, s in _member_scores(names[m.module], m.role, m.layout, kind):
                    if space == g.id:
                        total += s
            if kind == "l2":
                total = total.sqrt()
        scores[g.id] = total / total.mean().clamp_min(1e-12)
    return scores


def _add_segments(total: torch.Tensor, space: int, layout: Layout, values: torch.Tensor) -> None:
    offset = 0
    for seg in layout:
        if seg.space == space:
            total += values[offset: offset + seg.size]
        offset += seg.size


def activation_scores(model: nn.Module, graph: ChannelGraph,
                      batches: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
    """Mean |activation| per channel at each group's producers (their BN output when a BN follows)."""
    names = dict(model.named_modules())
    sums: dict[int, torch.Tensor] = {}
    hooks = []
    for g in graph.prunable():
        taps = [m for m in g.members if isinstance(names[m.module], _BatchNorm) and len(m.layout) == 1] or \
               [m for m in g.members if m.role == "out" and len(m.layout) == 1]
        for m in taps:
            def hook(_mod, _inp, out, gid=g.id):
                a = out.detach().abs().float()
                a = a.transpose(0, 1).reshape(a.shape[1], -1).mean(1)
                sums[gid] = sums.get(gid, 0) + a
            hooks.append(names[m.module].register_forward_hook(hook))
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for h in hooks:
            h.remove()
    return sums


# ------------------------------------------------------------------------------------------ planning


def ignored_groups(model: nn.Module, graph: ChannelGraph, patterns: Sequence[str]) -> tuple[set[int], list[str]]:
    """Groups touching a layer whose name matches a pattern (glob; a name also covers its children).
    Returns the group ids and the patterns that matched no layer."""
    names = [n for n, _ in model.named_modules() if n]
    unmatched = []
    hit: set[str] = set()
    for pattern in patterns:
        found = {n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*")}
        if not found:
            unmatched.append(pattern)
        hit |= found
    ids = {g.id for g in graph.prunable() if any(m.module in hit for m in g.members)}
    return ids, unmatched


def _round_keep(size: int, keep: float, round_to: int) -> int:
    """Channels to keep: ``keep`` rounded to the nearest multiple of ``round_to`` (at least one multiple,
    at most ``size``). A group narrower than 4·round_to rounds to the largest power of two ≤ size/4
    instead, so a 24-channel group can still lose 8 under a 32-channel rule."""
    round_to = max(1, min(round_to, 2 ** int(math.log2(max(size // 4, 1)))))
    n = max(round_to, int(round(keep / round_to)) * round_to)
    return min(size, max(1, n))


def plan_uniform(graph: ChannelGraph, scores: dict[int, torch.Tensor], ratio: float | dict[int, float],
                 round_to: int = 1, skip: set[int] | None = None) -> list[GroupPlan]:
    """Remove ``ratio`` of the channels of every prunable group (or a ratio per group id)."""
    plans = []
    for g in graph.prunable():
        if skip and g.id in skip:
            continue
        r = ratio.get(g.id, 0.0) if isinstance(ratio, dict) else ratio
        n = _round_keep(g.size, g.size - int(g.size * r), round_to) if r > 0 else g.size
        order = torch.argsort(scores[g.id], descending=True, stable=True)[:n]
        plans.append(GroupPlan(g, sorted(order.tolist())))
    return plans


def count(model: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """(parameters, MACs of Conv/Linear at the example's shape)."""
    macs = 0
    hooks = []

    def hook(mod, _inp, out):
        nonlocal macs
        from .prune_graph import _macs
        macs += _macs(mod, tuple(out.shape))

    for m in model.modules():
        if isinstance(m, _CONVS + _CONV_TRANSPOSES + (nn.Linear,)):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return params, macs


def apply_plans(model: nn.Module, graph: ChannelGraph, plans: Sequence[GroupPlan]) -> tuple[nn.Module, PruneRecord]:
    """A pruned deep copy of ``model`` and its record."""
    record = build_record(model, graph, plans)
    pruned = copy.deepcopy(model)
    apply_record(pruned, record)
    return pruned, record


@register_pass("prune", stage="torch")
def prune(model: nn.Module, example: tuple[torch.Tensor, ...], ratio: float = 0.3, importance: str = "l2",
          round_to: int = 1, ignore: Sequence[str] = (), calibration: Sequence[torch.Tensor] = ()) -> PassResult:
    """Structured channel pruning: remove a fraction of the output channels of every dependency group."""
    if not 0 < ratio < 1:
        raise ValueError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")
    start = time.perf_counter()
    model = model.eval()
    graph = analyse(model, example)
    skip, unmatched = ignored_groups(model, graph, ignore)
    if unmatched:
        raise ValueError(f"--ignore {', '.join(unmatched)} matches no layer of {type(model).__name__}")
    acts = activation_scores(model, graph, calibration) if importance == "activation" else None
    if importance == "activation" and not calibration:
        raise ValueError("importance 'activation' needs calibration data")
    scores = channel_scores(model, graph, importance, acts)
    plans = plan_uniform(graph, scores, ratio, round_to, skip)
    pruned, record = apply_plans(model, graph, plans)
    return PassResult(pruned, prune_report(model, pruned, graph, plans, example, time.perf_counter() - start,
                                           record=record, skip=skip))


def prune_report(model: nn.Module, pruned: nn.Module, graph: ChannelGraph, plans: Sequence[GroupPlan],
                 example: tuple[torch.Tensor, ...], seconds: float, record: PruneRecord | None = None,
                 skip: set[int] | None = None) -> PassReport:
    report = PassReport("prune", seconds=seconds)
    p0, m0 = count(model, example)
    p1, m1 = count(pruned, example)
    report.before = {"params": p0, "macs": m0, "groups": len(graph.groups), "prunable": len(graph.prunable())}
    report.after = {"params": p1, "macs": m1, "groups": len(graph.groups),
                    "pruned_groups": sum(1 for p in plans if p.removed)}
    for p in plans:
        if p.removed:
            report.sites.append(Site(p.group.describe(), f"{p.group.size} → {len(p.keep)} channels"))
    for g in graph.groups:
        if g.frozen and g.producers:
            report.skipped.append(Site(g.describe(), "kept whole: " + "; ".join(g.frozen[:2])))
        elif skip and g.id in skip:
            report.skipped.append(Site(g.describe(), "kept whole: --ignore"))
    return report
