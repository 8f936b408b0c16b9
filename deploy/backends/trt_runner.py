"""The ``trt`` backend: a TensorRT engine run by tensor name on a CUDA stream.

It runs a built engine (``deploy build``'s ``.engine`` with its ``.engine.json`` record, checked against
this machine before loading) or an ONNX file, which it builds on first use at each batch size — profile
min 1, opt = that batch, max = max(batch, 8), the file's own precision — and caches by the file's hash,
the TensorRT version and the GPU under ``~/.cache/deploy/engines``.

Device buffers come from torch's CUDA allocator when torch has CUDA, else from pycuda. I/O is bound
with ``set_input_shape``/``set_tensor_address`` and run with ``execute_async_v3``; the timer records CUDA
events around the device work (``include_copies`` adds the host↔device copies), and with torch it can
replay the run as a captured CUDA graph.

Not run by this project's tests: no machine here has TensorRT (see the README's TensorRT section).
Convention for the API-surface test: TensorRT objects live in ``runtime``, ``engine``, ``context`` and
``logger`` (or ``self._runtime``, …).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import BadInputError, MissingDependencyError
from .base import Runner

DEFAULT_MAX_BATCH = 8


class TrtRunner(Runner):
    name = "trt"
    device = "cuda"
    artifact_kind = "onnx"
    also_runs = ("engine",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        from ..gpu import trt_status

        status = trt_status()
        return status.ok, status.detail

    def load(self) -> None:
        ok, why = self.available()
        if not ok:
            raise MissingDependencyError(f"{self.name} unavailable: {why}")
        from ..gpu import import_tensorrt

        self._trt = import_tensorrt()
        trt = self._trt
        self._device = _device_memory()  # the CUDA context first (pycuda: the primary one), then TensorRT
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engines: dict[int, tuple] = {}  # batch → (engine, context, profile); one entry for an engine file
        if self.artifact.kind == "engine":
            self._engines[0] = self._deserialize(Path(self.artifact.engine_path), check=True)
        elif self.artifact.onnx_path is None:
            raise BadInputError(f"{self.artifact.label}: {self.name} needs an ONNX file or an engine; export it first")

    def close(self) -> None:
        self._engines = {}
        self._runtime = None

    # -- engines --------------------------------------------------------------------------------------

    def _deserialize(self, path: Path, check: bool) -> tuple:
        from ..artifacts.engine_record import read_sidecar, require_compatible
        from ..gpu import device_facts

        data = path.read_bytes()
        record = read_sidecar(path)
        if check:
            require_compatible(record, path, self._trt.__version__, device_facts(), data)
        runtime = self._runtime
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BadInputError(f"{path}: TensorRT could not deserialize it (built elsewhere?): rebuild with "
                                f"`deploy build {record.onnx} -o {path}`")
        context = engine.create_execution_context()
        return engine, context, record.profile()

    def _for_batch(self, batch: int) -> tuple:
        if 0 in self._engines:
            engine, context, shapes_by_input = self._engines[0]
            for spec in self.input_specs:
                shapes = shapes_by_input.get(spec.name)
                if shapes is not None and not shapes.min[0] <= batch <= shapes.max[0]:
                    raise BadInputError(f"{self.artifact.label}: batch {batch} is outside the engine's profile "
                                        f"({shapes.describe()} for '{spec.name}'): rebuild with --max-batch {batch}")
            return self._engines[0]
        if batch not in self._engines:
            self._engines[batch] = self._deserialize(self._cached_build(batch), check=False)
        return self._engines[batch]

    def _cached_build(self, batch: int) -> Path:
        from ..artifacts.files import default_cache_dir, sha256_file
        from ..gpu import device_facts
        from .trt_build import BuildOptions, build_engine

        options = BuildOptions(batch=(1, batch, max(batch, DEFAULT_MAX_BATCH)),
                               profile=self._profile_from_specs(batch))
        facts = device_facts()
        key = hashlib.sha256("|".join([sha256_file(self.artifact.onnx_path), str(options.to_dict()),
                                       self._trt.__version__, str(facts.get("gpu")),
                                       str(facts.get("compute_capability"))]).encode()).hexdigest()[:20]
        folder = default_cache_dir() / "engines"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{key}.engine"
        if not path.exists():
            try:
                build_engine(self.artifact.onnx_path, path, options)
            except BadInputError as err:
                raise BadInputError(f"{err} (or build the engine yourself with `deploy build` and run that)") from None
        return path

    def _profile_from_specs(self, batch: int) -> dict:
        """Shapes for inputs whose free dims --shape filled (the file alone leaves them dynamic)."""
        from ..artifacts.engine_record import ShapeRange

        top = max(batch, DEFAULT_MAX_BATCH)
        shapes = {}
        for spec in self.input_specs:
            rest = spec.shape[1:]
            if not all(isinstance(d, int) and d > 0 for d in rest):
                continue  # still free: profile_for asks for a --profile, naming the dim
            if spec.dynamic_batch:
                shapes[spec.name] = ShapeRange((1, *rest), (batch, *rest), (top, *rest))
            else:
                fixed = (spec.shape[0], *rest)
                shapes[spec.name] = ShapeRange(fixed, fixed, fixed)
        return shapes

    # -- running --------------------------------------------------------------------------------------

    def _dtype(self, engine, name: str) -> np.dtype:
        try:
            return np.dtype(self._trt.nptype(engine.get_tensor_dtype(name)))
        except TypeError:  # bf16, fp8, int4 have no numpy type
            raise BadInputError(f"{self.artifact.label}: tensor '{name}' is {engine.get_tensor_dtype(name)}, which "
                                f"numpy cannot hold; keep graph inputs and outputs float32/float16") from None

    def _bind(self, feeds: dict[str, np.ndarray]):
        """Inputs cast to the engine's types and uploaded, outputs allocated, every address bound:
        (context, host inputs, device inputs, device outputs). TensorRT's setters answer False on a
        shape outside the profile or a bad address: that is an error here, never a silent garbage run."""
        trt = self._trt
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        engine, context, _ = self._for_batch(batch)
        hosts, staged, outputs = {}, {}, {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                hosts[name] = np.ascontiguousarray(feeds[name], dtype=self._dtype(engine, name))
                if not context.set_input_shape(name, hosts[name].shape):
                    raise BadInputError(f"{self.artifact.label}: TensorRT refused input '{name}' of shape "
                                        f"{hosts[name].shape} (outside the engine's profile?)")
                staged[name] = self._device.upload(hosts[name])
                self._address(context, name, staged[name])
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BadInputError(f"{self.artifact.label}: output '{name}' has a data-dependent shape {shape} "
                                        f"(e.g. NonZero/NMS); the trt backend runs outputs whose shape follows "
                                        f"from the inputs")
                outputs[name] = self._device.empty(shape, self._dtype(engine, name))
                self._address(context, name, outputs[name])
        return context, hosts, staged, outputs

    def _address(self, context, name: str, buffer) -> None:
        if not context.set_tensor_address(name, self._device.address(buffer)):
            raise BadInputError(f"{self.artifact.label}: TensorRT refused the device address of '{name}'")

    def _enqueue(self, context) -> None:
        if not context.execute_async_v3(self._device.stream_handle):
            raise BadInputError(f"{self.artifact.label}: TensorRT's execute_async_v3 failed (its log says why)")

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        context, _, _, outputs = self._bind(feeds)
        self._enqueue(context)
        self._device.synchronize()
        return {name: self._device.download(buffer) for name, buffer in outputs.items()}

    def timer(self, feeds: dict[str, np.ndarray], include_copies: bool = False, cuda_graphs: bool = False):
        self.validate(feeds)
        context, hosts, staged, outputs = self._bind(feeds)
        device = self._device
        # pinned host buffers, made once: the copies are then truly asynchronous, and timed alone
        pinned_in = {name: device.pinned_like(array) for name, array in hosts.items()} if include_copies else {}
        pinned_out = {name: device.pinned_for(buffer) for name, buffer in outputs.items()} if include_copies else {}

        def enqueue() -> None:
            for name, host in pinned_in.items():
                device.copy_in(staged[name], host)
            self._enqueue(context)
            for name, buffer in outputs.items() if include_copies else ():
                device.copy_out(buffer, pinned_out[name])

        enqueue()  # TensorRT sets up shape-dependent state on the first run (outside any capture)
        device.synchronize()
        if cuda_graphs and not include_copies:
            enqueue = device.capture(enqueue)

        def once() -> float:
            return device.time(enqueue)

        return once


def _device_memory():
    """Device buffers and a stream: torch's when torch has CUDA, else pycuda's."""
    try:
        import torch

        if torch.cuda.is_available():
            return _TorchDevice(torch)
    except ImportError:
        pass
    try:
        return _PycudaDevice()
    except ImportError:
        raise MissingDependencyError("trt unavailable: neither torch with CUDA nor pycuda is installed "
                                     "(pip install '.[trt]')") from None


class _TorchDevice:
    def __init__(self, torch):
        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.stream_handle = self.stream.cuda_stream

    def _dtype(self, dtype: np.dtype):
        return self.torch.from_numpy(np.empty(0, dtype)).dtype

    def empty(self, shape, dtype: np.dtype):
        return self.torch.empty(shape, dtype=self._dtype(dtype), device="cuda")

    def upload(self, array: np.ndarray):
        with self.torch.cuda.stream(self.stream):
            return self.torch.from_numpy(array).to("cuda", non_blocking=False)

    def address(self, tensor) -> int:
        return tensor.data_ptr()

    def pinned_like(self, array: np.ndarray):
        return self.torch.from_numpy(array).pin_memory()

    def pinned_for(self, tensor):
        return self.torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)

    def copy_in(self, tensor, host) -> None:
        with self.torch.cuda.stream(self.stream):
            tensor.copy_(host, non_blocking=True)

    def copy_out(self, tensor, host) -> None:
        with self.torch.cuda.stream(self.stream):
            host.copy_(tensor, non_blocking=True)

    def download(self, tensor) -> np.ndarray:
        return tensor.cpu().numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def capture(self, enqueue):
        graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.graph(graph, stream=self.stream):
            enqueue()
        return graph.replay

    def time(self, enqueue) -> float:
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        with self.torch.cuda.stream(self.stream):
            start.record()
            enqueue()
            end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


class _PycudaDevice:
    """pycuda buffers: (device allocation, shape, dtype) triples; no CUDA graphs."""

    def __init__(self):
        # the primary context, which TensorRT shares; pycuda.autoinit's own context is destroyed at exit
        # before TensorRT's objects are (TensorRT #1632, #2052)
        import pycuda.autoprimaryctx  # noqa: F401
        import pycuda.driver as cuda

        self.cuda = cuda
        self.stream = cuda.Stream()
        self.stream_handle = self.stream.handle

    def empty(self, shape, dtype: np.dtype):
        return self.cuda.mem_alloc(max(1, int(np.prod(shape)) * dtype.itemsize)), tuple(shape), dtype

    def upload(self, array: np.ndarray):
        buffer = self.empty(array.shape, array.dtype)
        self.cuda.memcpy_htod(buffer[0], array)
        return buffer

    def address(self, buffer) -> int:
        return int(buffer[0])

    def pinned_like(self, array: np.ndarray):
        host = self.cuda.pagelocked_empty(array.shape, array.dtype)
        host[...] = array
        return host

    def pinned_for(self, buffer):
        return self.cuda.pagelocked_empty(buffer[1], buffer[2])

    def copy_in(self, buffer, host) -> None:
        self.cuda.memcpy_htod_async(buffer[0], host, self.stream)

    def copy_out(self, buffer, host) -> None:
        self.cuda.memcpy_dtoh_async(host, buffer[0], self.stream)

    def download(self, buffer) -> np.ndarray:
        host = np.empty(buffer[1], buffer[2])
        self.cuda.memcpy_dtoh(host, buffer[0])
        return host

    def synchronize(self) -> None:
        self.stream.synchronize()

    def capture(self, enqueue):
        raise MissingDependencyError("trt --cuda-graphs needs torch with CUDA (pycuda buffers cannot be captured here)")

    def time(self, enqueue) -> float:
        start, end = self.cuda.Event(), self.cuda.Event()
        start.record(self.stream)
        enqueue()
        end.record(self.stream)
        end.synchronize()
        return start.time_till(end) / 1000.0
