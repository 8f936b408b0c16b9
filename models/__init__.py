"""The model zoo: one file per family, registered by name (``deploy.models``).

Importing this package registers every family. Models are torchvision-compatible where torchvision has
the architecture: same parameter names and counts, so a torchvision checkpoint loads with ``--weights``.
"""

from . import acnet, alexnet, dbb, digits, mobilenet, mobileone, repvgg, resnet, shufflenet, tiny, vgg  # noqa: F401  (registers the families)
from .registry import (
    ModelEntry,
    UnknownModelError,
    create_model,
    get_model_entry,
    list_models,
    register_model,
)

__all__ = [
    "ModelEntry",
    "UnknownModelError",
    "create_model",
    "get_model_entry",
    "list_models",
    "register_model",
]
