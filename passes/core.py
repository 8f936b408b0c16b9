"""What every pass returns, and the registry that lets the CLI compose passes by name.

A pass is a plain function ``(model, **options) -> PassResult``. Its report says what changed, in numbers:
the sites it rewrote, the sites it looked at and left alone (with the reason), and counts before/after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Site:
    """One place a pass looked at: where (node or module name), and what it did or why it did not."""

    where: str
    what: str

    def to_dict(self) -> dict:
        return {"where": self.where, "what": self.what}


@dataclass
class PassReport:
    name: str
    sites: list[Site] = field(default_factory=list)
    skipped: list[Site] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)  # e.g. {"nodes": 120, "params": 9_100_000, "Conv": 64}
    after: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Any site rewritten, or any count moved (a pass that changed the graph says so)."""
        return bool(self.sites) or (bool(self.before) and bool(self.after) and self.before != self.after)

    def to_dict(self) -> dict:
        return {"name": self.name, "changed": self.changed, "sites": [s.to_dict() for s in self.sites],
                "skipped": [s.to_dict() for s in self.skipped], "before": self.before, "after": self.after,
                "seconds": round(self.seconds, 3), "warnings": self.warnings}


@dataclass
class PassResult:
    model: Any
    report: PassReport


@dataclass(frozen=True)
class PassInfo:
    name: str
    stage: str  # "torch" or "onnx"
    fn: Callable[..., PassResult]
    summary: str


_PASSES: dict[str, PassInfo] = {}


def register_pass(name: str, stage: str) -> Callable[[Callable[..., PassResult]], Callable[..., PassResult]]:
    if stage not in ("torch", "onnx"):
        raise ValueError(f"stage must be 'torch' or 'onnx', got {stage!r}")

    def wrap(fn: Callable[..., PassResult]) -> Callable[..., PassResult]:
        if name in _PASSES:
            raise ValueError(f"pass '{name}' registered twice")
        summary = ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _PASSES[name] = PassInfo(name, stage, fn, summary)
        return fn

    return wrap


def get_pass(name: str) -> PassInfo:
    try:
        return _PASSES[name]
    except KeyError:
        raise KeyError(f"unknown pass '{name}'; passes: {', '.join(sorted(_PASSES))}") from None


def list_passes(stage: str | None = None) -> list[PassInfo]:
    return [p for p in _PASSES.values() if stage is None or p.stage == stage]
