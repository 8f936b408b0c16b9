"""deploy: make PyTorch vision models fast to serve without changing what they compute.

The public API is the CLI's verbs as functions (:mod:`deploy.api`): ``deploy.export``, ``fuse``, ``quantize``,
``prune``, ``check``, ``bench``, ``debug``, ``build``, ``pipeline``, ``verify`` and ``sweep``. Each takes a model
as an ``nn.Module`` (with ``shape``), a spec string or a path, the CLI's options as keyword arguments, and
returns the report the CLI prints (``.passed``, ``.summary()``, ``.to_dict()``); errors raise
:class:`deploy.errors.DeployError` subclasses. See docs/api.md.

Heavy optional dependencies (tensorrt, pycuda, CUDA) are imported only inside the runners that use them.
"""

from ._version import __version__
from .errors import BadInputError, CheckFailedError, DeployError, MissingDependencyError

VERBS = ("bench", "build", "check", "debug", "export", "fuse", "pipeline", "prune", "quantize", "sweep", "verify")
__all__ = ["BadInputError", "CheckFailedError", "DeployError", "MissingDependencyError", "__version__", *VERBS]


def __getattr__(name: str):
    """The verbs load on first use (PEP 562): `import deploy` and `deploy --help` need not import torch."""
    if name in VERBS or name == "api":
        import importlib

        api = importlib.import_module(f"{__name__}.api")  # not `from . import api`: that asks this hook again
        value = api if name == "api" else getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *VERBS, "api"})
