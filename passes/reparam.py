"""`reparameterize`: turn train-time multi-branch blocks into their deploy form (torch stage).

The walker replaces every submodule that offers a conversion, found by duck typing as timm does:

  - ``fuse() -> nn.Module`` (the zoo's RepVGGBlock, ACBlock, DiverseBranchBlock, MobileOneBlock): the
    block is replaced in its parent by what ``fuse()`` returns, and the walk does not descend into it;
  - ``reparameterize()`` (apple/ml-mobileone) and ``switch_to_deploy()`` (DingXiaoH's RepVGG / DBB
    repositories): called in place; the walk then descends into the module, since such methods often
    convert only the module itself.

Only zero-argument *methods* count: a child module registered under the name ``fuse`` (feature-fusion
necks have them) or a VAE's ``reparameterize(mu, logvar)`` is not a conversion. The root module is
converted too when it offers one. Children of ``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict`` and
plain attributes are all reached (they are all registered children); modules kept in plain Python lists
are invisible to ``nn.Module`` and so to this pass. A block registered under several names is converted
once and the same deploy module is put everywhere.

With ``fuse_bn=True`` (the default) :func:`.fuse_conv_bn.fuse_conv_bn` then runs on the result when it
still holds a BatchNorm (otherwise the model keeps its own class rather than becoming a GraphModule), and its
report is merged into this one: its sites and skipped BNs are appended with the what prefixed by
``"fuse_conv_bn: "``, its warnings are added (the untrained-statistics warning only once), and its
counts become ``after``.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections import Counter
from collections.abc import Callable

from torch import nn

from .core import PassReport, PassResult, Site, register_pass
from .fuse_conv_bn import UNTRAINED_BN, check_eval, fuse_conv_bn, model_counts, untrained_bn_warning

CONVENTIONS = ("fuse", "reparameterize", "switch_to_deploy")  # in order of preference


def _conversion(module: nn.Module) -> tuple[str | None, Callable[[], object] | None, str | None]:
    """The first conversion ``module`` offers: (name, bound method, None); else (None, None, why a method of
    one of those names does not qualify, or None)."""
    why = None
    for name in CONVENTIONS:
        if getattr(type(module), name, None) is None:
            continue  # absent, or a child module / instance attribute of that name (not a method of the class)
        method = getattr(module, name)
        if not inspect.ismethod(method):
            why = why or f"{name} is not a method"
            continue
        try:
            params = inspect.signature(method).parameters.values()
        except (TypeError, ValueError):
            return name, method, None
        required = [p.name for p in params if p.default is inspect.Parameter.empty
                    and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                   inspect.Parameter.KEYWORD_ONLY)]
        if required:
            why = why or f"{name}() takes arguments ({', '.join(required)}): not a deploy conversion"
            continue
        return name, method, None
    return None, None, why


def _describe(module: nn.Module) -> str:
    """"Conv2d 3×3" for a conv; "RepVGGBlock [Conv2d 3×3]" for a module holding convs."""
    if isinstance(module, nn.modules.conv._ConvNd):
        size = "×".join(str(k) for k in module.kernel_size)
        groups = f", groups={module.groups}" if module.groups > 1 else ""
        return f"{type(module).__name__} {size}{groups}"
    convs = [_describe(m) for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs:
        return type(module).__name__
    inner = ", ".join(convs[:3]) + (f", … ({len(convs)} convs)" if len(convs) > 3 else "")
    return f"{type(module).__name__} [{inner}]"


def _structure(module: nn.Module) -> tuple:
    """What an in-place conversion changes: the module tree and the parameter shapes."""
    return (tuple((name, type(m)) for name, m in module.named_modules()),
            tuple((name, tuple(p.shape)) for name, p in module.named_parameters()))


class _Walker:
    def __init__(self, report: PassReport) -> None:
        self.report = report
        self.converted: Counter[str] = Counter()
        # id(module) → (module, what replaced it). Holding the module keeps its id from being reused by a
        # module created later in the walk (a replaced block is otherwise freed at once).
        self.done: dict[int, tuple[nn.Module, nn.Module]] = {}

    def visit(self, module: nn.Module, path: str) -> nn.Module:
        key = id(module)
        if key in self.done:
            return self.done[key][1]
        self.done[key] = (module, module)  # provisional: guards against cycles
        result = self._convert(module, path)
        self.done[key] = (module, result)
        return result

    def _convert(self, module: nn.Module, path: str) -> nn.Module:
        where = path or "(model)"
        cls = type(module).__name__
        name, method, why = _conversion(module)
        if name is None and why is not None:
            self.report.skipped.append(Site(where, f"{cls}: {why}"))
        if name == "fuse":
            new = method()
            if not isinstance(new, nn.Module):
                raise TypeError(f"{where}: {cls}.fuse() returned {type(new).__name__}, not an nn.Module")
            if new is module:
                self.report.skipped.append(Site(where, f"{cls}.fuse() returned the block itself (already deployed)"))
                return module
            self.report.sites.append(Site(where, f"{cls} → {_describe(new)}"))
            self.converted[cls] += 1
            return new.eval()
        if name is not None:  # in place
            before = _structure(module)
            method()
            if _structure(module) != before:
                self.report.sites.append(Site(where, f"{cls}.{name}() → {_describe(module)}"))
                self.converted[cls] += 1
            else:
                self.report.skipped.append(Site(where, f"{cls}.{name}() changed nothing (already deployed?)"))
            module.eval()
        for child_name, child in list(module._modules.items()):  # not named_children(): it hides repeats
            if child is None:
                continue
            new = self.visit(child, f"{path}.{child_name}" if path else child_name)
            if new is not child:
                setattr(module, child_name, new)
        return module


@register_pass("reparameterize", stage="torch")
def reparameterize(model: nn.Module, *, fuse_bn: bool = True) -> PassResult:
    """Replace train-time multi-branch blocks by their deploy form (fuse() / reparameterize() / switch_to_deploy()).

    Returns a converted copy in eval mode; the input is not modified. One site per converted block;
    ``report.before``/``after`` count ``params``, ``BatchNorm`` and ``modules``, and ``after`` adds
    ``converted`` (blocks converted) and ``converted.<Class>`` per block class. With ``fuse_bn`` the
    remaining conv-BN pairs are folded by fuse_conv_bn when any BatchNorm is left (its sites are prefixed
    ``"fuse_conv_bn: "``, ``after["fused_conv_bn"]`` counts them, and the model is then a
    ``torch.fx.GraphModule`` when fx could trace it; with no BatchNorm left the model keeps its class).
    """
    start = time.perf_counter()
    check_eval(model, "reparameterize")
    report = PassReport("reparameterize", before=model_counts(model))
    warning = untrained_bn_warning(model)
    if warning:
        report.warnings.append(warning)
    walker = _Walker(report)
    result = walker.visit(copy.deepcopy(model), "").eval()
    converted = {"converted": sum(walker.converted.values())}
    converted.update({f"converted.{cls}": n for cls, n in sorted(walker.converted.items())})
    if fuse_bn and model_counts(result)["BatchNorm"]:  # none left: keep the model's own class
        fused = fuse_conv_bn(result)
        result = fused.model
        report.sites.extend(Site(s.where, f"fuse_conv_bn: {s.what}") for s in fused.report.sites)
        report.skipped.extend(Site(s.where, f"fuse_conv_bn: {s.what}") for s in fused.report.skipped)
        report.warnings.extend(w for w in fused.report.warnings
                               if not w.startswith(UNTRAINED_BN) and w not in report.warnings)
        converted["fused_conv_bn"] = len(fused.report.sites)
    report.after = {**model_counts(result), **converted}
    report.seconds = time.perf_counter() - start
    return PassResult(result, report)
