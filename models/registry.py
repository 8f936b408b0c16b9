"""Name → factory registry for the zoo, with glob listing and did-you-mean errors."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """What the zoo knows about a model before building it."""

    name: str
    factory: Callable[..., nn.Module]
    family: str
    input_shape: tuple[int, ...] = (1, 3, 224, 224)
    num_classes: int = 1000
    description: str = ""


class UnknownModelError(KeyError):
    """A zoo name that is not registered; carries close matches for the error message."""

    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown model '{name}'.{hint} (`deploy zoo` lists them)")

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence
        return self.args[0]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str | None = None,
    *,
    family: str,
    input_shape: tuple[int, ...] = (1, 3, 224, 224),
    num_classes: int = 1000,
    description: str = "",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a factory under ``name`` (default: the function's name)."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"model '{key}' registered twice")
        doc = description or ((factory.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[key] = ModelEntry(key, factory, family, tuple(input_shape), num_classes, doc)
        return factory

    return wrap


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        raise UnknownModelError(name, close) from None


def create_model(name: str, *, seed: int | None = 0, **kwargs) -> nn.Module:
    """Build a zoo model in eval mode.

    Initialisation is seeded (``seed=0`` by default) without touching the caller's global RNG, so the
    same name always gives the same weights: `deploy export resnet18` and `deploy check resnet18 …`
    agree without a checkpoint.
    """
    entry = get_model_entry(name)
    if seed is None:
        model = entry.factory(**kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = entry.factory(**kwargs)
    return model.eval()


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell glob (``"repvgg*"``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))
