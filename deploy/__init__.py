"""deploy: make PyTorch vision models fast to serve without changing what they compute.

Heavy optional dependencies (tensorrt, pycuda, CUDA) are imported only inside the runners that use them.
"""

__version__ = "0.1.0"
