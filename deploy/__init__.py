"""deploy: make PyTorch vision models fast to serve without changing what they compute.

Heavy optional dependencies (tensorrt, pycuda, CUDA) are imported only inside the runners that use them.
"""

from ._version import __version__

__all__ = ["__version__"]
