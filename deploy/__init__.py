"""deploy: make PyTorch vision models fast to serve without changing what they compute.

The public API is the CLI's verbs as functions (:mod:`deploy.api`): ``deploy.export``, ``fuse``, ``quantize``,
``prune``, ``check``, ``bench``, ``debug``, ``build``, ``pipeline``, ``verify`` and ``sweep``. Each takes a model
as an ``nn.Module`` (with ``shape``), a spec string or a path, the CLI's options as keyword arguments, and
returns the report the CLI prints (``.passed``, ``.summary()``, ``.to_dict()``); errors raise
:class:`deploy.errors.DeployError` subclasses. See docs/api.md.

Heavy optional dependencies (tensorrt, pycuda, CUDA) are imported only inside the runners that use them.
"""

from ._version import __version__
from .api import bench, build, check, debug, export, fuse, pipeline, prune, quantize, sweep, verify
from .errors import BadInputError, CheckFailedError, DeployError, MissingDependencyError

__all__ = ["BadInputError", "CheckFailedError", "DeployError", "MissingDependencyError", "__version__", "bench",
           "build", "check", "debug", "export", "fuse", "pipeline", "prune", "quantize", "sweep", "verify"]
