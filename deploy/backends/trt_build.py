"""ONNX → TensorRT engine (`deploy build`): a build plan made in plain Python, then handed to TensorRT.

Everything that decides *what* TensorRT is handed — the optimization profile from the file's dynamic
dims, the precision and which API path carries it, the calibration cache from our ranges table, what
happens to a timing cache, the sidecar that makes an engine's origin checkable — is computed by
:func:`plan_build` without TensorRT, so it is unit-tested on any machine. Only :func:`build_engine` and
the ``_trt_*``/``_legacy_*`` functions touch the library, imported lazily.

**Two API paths, one flag** (``--precision``). TensorRT 11 builds strongly typed networks only: the
precision is the ONNX file's (fp16 Casts, Q/DQ pairs) and the builder has no precision flags, so
``--precision fp16`` / ``int8`` on a float file first converts the file with deploy's own passes (fp16; Q/DQ
from a ranges table, TensorRT's symmetric int8). TensorRT 10 takes the same strongly typed route for a
file that already carries its precision, and for a float file uses the builder flags FP16/INT8, INT8 scales
coming from our ranges table written as a calibration cache read by a calibrator that has no data of its
own (TensorRT reads every scale from the cache and never asks for a batch).

Convention the API-surface test relies on (tests/test_trt_api.py): TensorRT objects live in variables
named ``builder``, ``network``, ``parser``, ``config``, ``profile``, ``timing_cache``, ``logger``,
``serialized``, ``runtime``, ``engine``, ``context``; functions used only on TensorRT 10 start ``_legacy_``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts.artifact import TensorSpec
from ..artifacts.engine_record import EngineRecord, ShapeRange, spec_dict, write_sidecar
from ..artifacts.files import sha256_file
from ..errors import BadInputError, DeployError
from ..reporting import Report

PRECISIONS = ("auto", "fp32", "fp16", "int8")
CACHE_RECORD_FORMAT = "deploy-timing-cache"
# names TensorRT 11 removed (migration guide "Removed Python APIs"): only ``_legacy_*`` code may use them
REMOVED_IN_11 = ("EXPLICIT_BATCH", "IInt8EntropyCalibrator2", "int8_calibrator", "FP16", "get_batch",
                 "read_calibration_cache", "write_calibration_cache", "get_batch_size",
                 "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "platform_has_fast_fp16",
                 "set_calibration_profile")


# ---------------------------------------------------------------------------------------------- profile

def _dims(text: str, where: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\s*\d+(\s*[x,]\s*\d+)*\s*", text):
        raise BadInputError(f"{where}: '{text}' is not a shape; write dims like 1x3x224x224")
    return tuple(int(d) for d in re.split(r"[x,]", text.replace(" ", "")))


def parse_profile(values: Sequence[str] | None) -> dict[str, ShapeRange]:
    """``--profile NAME=MIN:OPT:MAX`` (each AxBxC…), or ``NAME=SHAPE`` for one fixed shape."""
    out: dict[str, ShapeRange] = {}
    for value in values or ():
        name, sep, rest = value.partition("=")
        if not sep or not name.strip():
            raise BadInputError(f"--profile '{value}': write NAME=MIN:OPT:MAX, e.g. images=1x3x640x640:8x3x640x640"
                                f":16x3x640x640")
        parts = [_dims(p, f"--profile {value}") for p in rest.split(":")]
        if len(parts) == 1:
            parts *= 3
        if len(parts) != 3:
            raise BadInputError(f"--profile '{value}': give one shape or three (MIN:OPT:MAX)")
        lo, opt, hi = parts
        if not len(lo) == len(opt) == len(hi):
            raise BadInputError(f"--profile '{value}': MIN, OPT and MAX have different ranks")
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise BadInputError(f"--profile '{value}': need MIN ≤ OPT ≤ MAX in every dim")
        if any(d < 1 for d in lo):
            raise BadInputError(f"--profile '{value}': dims must be ≥ 1")
        out[name.strip()] = ShapeRange(lo, opt, hi)
    return out


def profile_for(inputs: Sequence[TensorSpec], batch: tuple[int, int, int],
                given: dict[str, ShapeRange] | None = None,
                where: str = "model") -> tuple[dict[str, ShapeRange], list[str]]:
    """The optimization profile for ``inputs``: a dynamic batch (dim 0) gets ``batch`` = (min, opt, max),
    fixed dims are kept, any other dynamic dim needs ``--profile``; ``given`` ranges are checked against
    the file's fixed dims. Returns the profile and notes on what was assumed."""
    lo, opt, hi = batch
    if not 1 <= lo <= opt <= hi:
        raise BadInputError(f"--min-batch {lo} / --opt-batch {opt} / --max-batch {hi}: need 1 ≤ min ≤ opt ≤ max")
    given = dict(given or {})
    names = {s.name for s in inputs}
    unknown = sorted(set(given) - names)
    if unknown:
        raise BadInputError(f"{where}: --profile names {', '.join(map(repr, unknown))}; the inputs are "
                            f"{', '.join(s.name for s in inputs)}")
    shapes: dict[str, ShapeRange] = {}
    notes: list[str] = []
    for spec in inputs:
        fixed = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
        if spec.name in given:
            r = given[spec.name]
            if len(r.min) != len(fixed):
                raise BadInputError(f"{where}: --profile {spec.name} has rank {len(r.min)}; the input is "
                                    f"{_show(spec.shape)}")
            for axis, d in enumerate(fixed):
                if d is not None and not r.min[axis] == r.opt[axis] == r.max[axis] == d:
                    raise BadInputError(f"{where}: --profile {spec.name} dim {axis} must be {d}, fixed in the file "
                                        f"({_show(spec.shape)})")
            shapes[spec.name] = r
            continue
        dims = []
        for axis, d in enumerate(fixed):
            if d is not None:
                dims.append((d, d, d))
            elif axis == 0:
                dims.append((lo, opt, hi))
            else:
                raise BadInputError(f"{where}: input '{spec.name}' dim {axis} is dynamic ({spec.shape[axis]!r}); "
                                    f"give its range with --profile {spec.name}=MIN:OPT:MAX")
        if fixed and fixed[0] is not None and (lo, opt, hi) != (fixed[0],) * 3:
            notes.append(f"input '{spec.name}' has a fixed batch of {fixed[0]}: the batch range does not apply")
        shapes[spec.name] = ShapeRange(*(tuple(d[i] for d in dims) for i in range(3)))
    return shapes, notes


def _show(shape: Sequence) -> str:
    return "x".join(str(d) if isinstance(d, int) and d > 0 else str(d or "?") for d in shape)


# -------------------------------------------------------------------------------------- graph precision

@dataclass(frozen=True)
class GraphPrecision:
    """What an ONNX file says about its own precision: Q/DQ pairs (explicit int8) and float16 tensors."""

    quantize_nodes: int
    float16: bool

    @property
    def label(self) -> str:
        parts = (["int8 Q/DQ"] if self.quantize_nodes else []) + (["fp16"] if self.float16 else [])
        return " + ".join(parts) or "fp32"

    @property
    def reduced(self) -> bool:
        return bool(self.quantize_nodes) or self.float16


def graph_precision(model) -> GraphPrecision:
    import onnx

    f16 = onnx.TensorProto.FLOAT16
    graph = model.graph
    quantize = sum(1 for n in graph.node if n.op_type == "QuantizeLinear")
    half = any(t.data_type == f16 for t in graph.initializer)
    half = half or any(v.type.tensor_type.elem_type == f16 for v in [*graph.value_info, *graph.input, *graph.output])
    half = half or any(n.op_type == "Cast" and any(a.name == "to" and a.i == f16 for a in n.attribute)
                       for n in graph.node)
    return GraphPrecision(quantize, half)


# ------------------------------------------------------------------------------------------ build plan

@dataclass
class BuildOptions:
    """What the user asked of ``deploy build`` (defaults are the CLI's)."""

    precision: str = "auto"
    ranges: Path | None = None  # our ranges table (OUT.ranges.json from `deploy quantize`) for int8 of a float file
    batch: tuple[int, int, int] = (1, 8, 8)  # min, opt, max of a dynamic batch
    profile: dict[str, ShapeRange] = field(default_factory=dict)
    timing_cache: Path | None = None
    workspace_mib: int = 4096
    opt_level: int = 3  # TensorRT's builder_optimization_level, 0–5 (its default is 3)
    tf32: bool = False  # TensorRT allows TF32 for fp32 layers by default; deploy keeps fp32 exact unless asked

    def to_dict(self) -> dict:
        return {"precision": self.precision, "ranges": str(self.ranges) if self.ranges else None,
                "batch": list(self.batch), "profile": {k: v.to_dict() for k, v in self.profile.items()},
                "timing_cache": str(self.timing_cache) if self.timing_cache else None,
                "workspace_mib": self.workspace_mib, "opt_level": self.opt_level, "tf32": self.tf32}


@dataclass
class TimingCachePlan:
    path: str | None
    action: str  # "none" | "create" | "reuse" | "rebuild"
    reason: str = ""


@dataclass
class BuildPlan:
    """Everything TensorRT is handed, decided without it."""

    api: int  # TensorRT major: 11 strongly typed only, 10 also weakly typed
    onnx: str
    onnx_sha256: str
    graph: str  # the file's own precision (GraphPrecision.label)
    precision: str  # what the engine computes in
    strongly_typed: bool
    builder_flags: list[str]  # set on the builder config (TensorRT 10 only: FP16, INT8)
    tf32: bool
    convert: str | None  # deploy pass applied to the file before parsing: "fp16" or "int8-qdq"
    calibration_tensors: int  # scales in the calibration cache (TensorRT 10, int8 of a float file)
    profile: dict[str, ShapeRange]
    workspace_mib: int
    opt_level: int
    timing_cache: TimingCachePlan
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("profile", "inputs", "outputs")}
        d["profile"] = {k: v.to_dict() for k, v in self.profile.items()}
        d["inputs"] = [spec_dict(s) for s in self.inputs]
        d["outputs"] = [spec_dict(s) for s in self.outputs]
        return d


def _onnx_outputs(model) -> list[TensorSpec]:
    import onnx

    specs = []
    for value in model.graph.output:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        specs.append(TensorSpec(value.name, tuple(dims), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))))
    return specs


def plan_build(onnx_path: str | os.PathLike, options: BuildOptions, api: int, here: dict | None = None,
               tensorrt_version: str | None = None) -> BuildPlan:
    """Decide the build for TensorRT major ``api`` (10 or 11) on the machine described by ``here``
    (:func:`deploy.gpu.device_facts`); raises BadInputError naming the option to change."""
    import onnx

    from ..artifacts.spec import load_onnx_artifact

    if api not in (10, 11):
        raise BadInputError(f"TensorRT {api}: deploy builds with TensorRT 10 or 11")
    if options.precision not in PRECISIONS:
        raise BadInputError(f"--precision {options.precision}: choose from {', '.join(PRECISIONS)}")
    if not 0 <= options.opt_level <= 5:
        raise BadInputError(f"--opt-level {options.opt_level}: TensorRT's builder optimization level is 0–5")
    if options.workspace_mib < 1:
        raise BadInputError(f"--workspace {options.workspace_mib}: give MiB ≥ 1")
    path = Path(onnx_path)
    artifact = load_onnx_artifact(path)
    model = onnx.load(str(path), load_external_data=False)
    graph = graph_precision(model)
    shapes, notes = profile_for(artifact.inputs, options.batch, options.profile, where=str(path))
    want = options.precision
    strongly_typed, flags, convert, calib = False, [], None, 0
    if want == "auto":
        want = "int8" if graph.quantize_nodes else "fp16" if graph.float16 else "fp32"
    if want == "fp32" and graph.reduced:
        raise BadInputError(f"{path}: the file carries {graph.label} and --precision fp32 asks for float32; build "
                            f"the fp32 ONNX instead, or drop --precision (auto builds what the file says)")
    if want in ("fp16", "int8") and graph.reduced:
        if want == "fp16" and graph.quantize_nodes:
            raise BadInputError(f"{path}: the file carries int8 Q/DQ; --precision fp16 cannot remove it: build the "
                                f"fp32 or fp16 ONNX instead")
        if want == "int8" and not graph.quantize_nodes:
            raise BadInputError(f"{path}: an fp16 file has no int8 scales; quantize the fp32 file "
                                f"(`deploy quantize X.onnx -o X.int8.onnx --target trt`) and build that")
        strongly_typed = True  # the file says it all, on either path
    elif want == "fp16":
        if api >= 11:
            strongly_typed, convert = True, "fp16"
            notes.append("TensorRT 11 has no FP16 builder flag: the file is converted with deploy's fp16 pass "
                         "(as `deploy quantize --precision fp16` writes it) and built strongly typed")
        else:
            flags = ["FP16"]
    elif want == "int8":
        if options.ranges is None:
            raise BadInputError(f"{path}: --precision int8 on a float file needs int8 scales: give --ranges "
                                f"OUT.ranges.json (written by `deploy quantize --target trt`), or build the Q/DQ "
                                f"file `deploy quantize` wrote")
        table = _read_ranges(options.ranges)
        _check_ranges(table, options.ranges, model, path, api, notes)
        if api >= 11:
            strongly_typed, convert = True, "int8-qdq"
            notes.append(f"TensorRT 11 has no INT8 builder flag or calibrator: Q/DQ pairs (symmetric int8, "
                         f"TensorRT placement) are inserted from {options.ranges} and the file built strongly typed")
        else:
            flags, calib = ["FP16", "INT8"], len(table.ranges)
            notes.append(f"TensorRT 10: INT8 and FP16 builder flags, {calib} scales from {options.ranges} as a "
                         f"calibration cache; tensors without a scale run in fp16/fp32")
    elif want == "fp32" and not options.tf32:
        notes.append("TF32 off: fp32 layers compute in full float32 (--tf32 allows TensorRT's TF32 default)")
    if options.ranges is not None and convert != "int8-qdq" and not calib:
        notes.append(f"--ranges {options.ranges} not used: the build needs no scales")
    return BuildPlan(
        api=api, onnx=str(path), onnx_sha256=sha256_file(path), graph=graph.label, precision=want,
        strongly_typed=strongly_typed or api >= 11, builder_flags=flags, tf32=options.tf32, convert=convert,
        calibration_tensors=calib, profile=shapes, workspace_mib=options.workspace_mib, opt_level=options.opt_level,
        timing_cache=plan_timing_cache(options.timing_cache, here or {}, tensorrt_version),
        inputs=list(artifact.inputs), outputs=_onnx_outputs(model), notes=notes)


def _check_ranges(table, where: Path, model, path: Path, api: int, notes: list[str]) -> None:
    """The table must belong to this model; on TensorRT 11 it must cover every tensor the Q/DQ pass needs."""
    import onnx

    tensors = {t for n in model.graph.node for t in n.output} | {i.name for i in model.graph.input}
    if not any(t in tensors for t in table.ranges):
        raise BadInputError(f"--ranges {where}: none of its {len(table.ranges)} tensors is in {path} (calibrated "
                            f"on another model?)")
    if api >= 11:
        from ..passes.qdq import QuantizeError, plan_qdq

        try:
            needed = plan_qdq(onnx.ModelProto.FromString(model.SerializeToString()), "trt").calibrated
        except QuantizeError as err:
            raise BadInputError(f"{path}: {err}") from None
        missing = [t for t in needed if t not in table.ranges]
        if missing:
            raise BadInputError(f"--ranges {where}: lacks {len(missing)} of the {len(needed)} tensors TensorRT's "
                                f"Q/DQ placement needs, e.g. {missing[0]}: calibrate with `deploy quantize {path} "
                                f"--target trt`")
    if table.target != "trt":
        notes.append(f"{where} was calibrated for {table.target}; TensorRT takes symmetric scales "
                     f"max(|lo|, |hi|) / 127 from its ranges")


def _read_ranges(path: Path):
    from ..calib.table import RangesTable

    try:
        return RangesTable.load(path)
    except FileNotFoundError:
        raise BadInputError(f"--ranges {path}: no such file") from None
    except (ValueError, OSError) as err:
        raise BadInputError(f"--ranges {path}: {err}") from None


# ------------------------------------------------------------------------------------ calibration cache

def tensorrt_version_number(version: str) -> int:
    """NV_TENSORRT_VERSION of a version string: major·10000 + minor·100 + patch from TensorRT 10 on
    (8.x used major·1000 + minor·100 + patch: "8.6.1" → 8601)."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0, 0]
    major, minor, patch = parts[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def calibration_cache_text(ranges: dict[str, tuple[float, float]], tensorrt_version: str) -> str:
    """A TensorRT calibration cache for ``ranges``: the header names the TensorRT version and the
    EntropyCalibration2 algorithm; each line is ``tensor: <big-endian float32 scale in hex>``,
    scale = max(|lo|, |hi|) / 127 (symmetric int8, zero point 0)."""
    import struct

    from ..calib.table import trt_scale

    lines = [f"TRT-{tensorrt_version_number(tensorrt_version)}-EntropyCalibration2"]
    lines += [f"{name}: {struct.pack('>f', trt_scale(lo, hi)).hex()}" for name, (lo, hi) in ranges.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- timing cache

def cache_record_path(cache: str | os.PathLike) -> Path:
    return Path(f"{cache}.json")


def plan_timing_cache(path: Path | None, here: dict, tensorrt_version: str | None) -> TimingCachePlan:
    """What to do with ``--timing-cache``: a cache is specific to the GPU and the TensorRT version
    (TRT "Optimizing Builder Performance"), and TensorRT treats a foreign one as a hard error (#2144).
    The record deploy writes beside it (FILE.json) lets a mismatch be seen before TensorRT is handed it:
    such a cache is rebuilt with a warning. A cache without a record (trtexec's) is tried, and rebuilt if
    TensorRT refuses it."""
    if path is None:
        return TimingCachePlan(None, "none")
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"--timing-cache {path}: a folder; give a file")
    if not path.exists():
        if not path.parent.is_dir():
            raise BadInputError(f"--timing-cache {path}: folder {path.parent} does not exist")
        return TimingCachePlan(str(path), "create", "new cache")
    record_path = cache_record_path(path)
    if not record_path.exists():
        return TimingCachePlan(str(path), "reuse", "no record of where it was made: TensorRT checks it")
    try:
        record = json.loads(record_path.read_text())
        if record.get("format") != CACHE_RECORD_FORMAT:
            raise ValueError
    except (ValueError, OSError):
        return TimingCachePlan(str(path), "reuse", f"{record_path} unreadable: TensorRT checks the cache")
    if record.get("sha256") != sha256_file(path):
        return TimingCachePlan(str(path), "reuse", "changed since deploy wrote it: TensorRT checks it")
    made = (record.get("tensorrt"), record.get("gpu"), record.get("compute_capability"))
    now = (tensorrt_version, here.get("gpu"), here.get("compute_capability"))
    differs = [f"{what} {a} here {b}" for what, a, b in zip(("TensorRT", "GPU", "compute capability"), made, now)
               if a and b and a != b]
    if differs:
        return TimingCachePlan(str(path), "rebuild", "made with " + ", ".join(differs) + ": starting a fresh cache")
    return TimingCachePlan(str(path), "reuse", f"made here (TensorRT {made[0]}, {made[1]})")


def timing_cache_record(cache_bytes: bytes, tensorrt_version: str, here: dict) -> dict:
    return {"format": CACHE_RECORD_FORMAT, "sha256": hashlib.sha256(cache_bytes).hexdigest(),
            "tensorrt": tensorrt_version, "gpu": here.get("gpu"), "compute_capability": here.get("compute_capability"),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ----------------------------------------------------------------------------------------------- build

@dataclass(repr=False)
class BuildResult(Report):
    engine: str
    sidecar: str
    plan: BuildPlan
    record: EngineRecord
    warnings: list[str]

    def summary(self) -> str:
        """The last line `deploy build` prints."""
        return (f"BUILT {self.engine}: {self.plan.precision}, TensorRT {self.record.tensorrt}, "
                f"{self.record.build_seconds:.1f} s")

    def to_dict(self) -> dict:
        return {"engine": self.engine, "sidecar": self.sidecar, "plan": self.plan.to_dict(),
                "record": self.record.to_dict(), "warnings": self.warnings}


def prepare_source(plan: BuildPlan, options: BuildOptions, folder: Path) -> Path:
    """The file TensorRT parses: the ONNX itself, or its conversion by deploy's fp16 / Q/DQ passes."""
    if plan.convert is None:
        return Path(plan.onnx)
    import onnx

    model = onnx.load(plan.onnx)
    if plan.convert == "fp16":
        from ..passes.fp16 import convert_fp16

        model = convert_fp16(model).model
    else:
        from ..passes.qdq import QuantizeError, insert_qdq, plan_qdq

        table = _read_ranges(options.ranges)
        try:
            qdq_plan = plan_qdq(model, "trt")
            model = insert_qdq(model, qdq_plan, table.ranges).model
        except QuantizeError as err:
            raise BadInputError(f"--ranges {options.ranges}: {err}") from None
    path = folder / f"{Path(plan.onnx).stem}.{plan.convert}.onnx"
    onnx.save(model, str(path))
    return path


def build_engine(onnx_path: str | os.PathLike, output: str | os.PathLike, options: BuildOptions,
                 log: Callable[[str], None] = lambda _: None) -> BuildResult:
    """Build and write ``output`` (atomically) with its sidecar and the timing cache. Needs TensorRT."""
    from .._version import __version__
    from ..artifacts.files import atomic_path
    from ..gpu import device_facts, require_tensorrt, tensorrt_major

    trt = require_tensorrt()
    here = device_facts()
    plan = plan_build(onnx_path, options, tensorrt_major(trt), here, trt.__version__)
    warnings: list[str] = []
    if plan.timing_cache.action == "rebuild":
        warnings.append(f"--timing-cache {plan.timing_cache.path}: {plan.timing_cache.reason}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deploy-build-") as tmp:
        source = prepare_source(plan, options, Path(tmp))
        calibration = None
        if plan.calibration_tensors:
            table = _read_ranges(options.ranges)
            calibration = calibration_cache_text(table.ranges, trt.__version__).encode()
        log(f"building with TensorRT {trt.__version__} ({plan.precision}, "
            f"{'strongly typed' if plan.strongly_typed else 'flags ' + ','.join(plan.builder_flags)})")
        engine_bytes, cache_bytes = _trt_build(trt, plan, source, calibration, warnings)
    seconds = time.perf_counter() - start
    output = Path(output)
    with atomic_path(output) as tmp_engine:
        tmp_engine.write_bytes(engine_bytes)
    cache_sha = None
    if cache_bytes is not None and plan.timing_cache.path:
        cache_path = Path(plan.timing_cache.path)
        with atomic_path(cache_path) as tmp_cache:
            tmp_cache.write_bytes(cache_bytes)
        with atomic_path(cache_record_path(cache_path)) as tmp_record:
            tmp_record.write_text(json.dumps(timing_cache_record(cache_bytes, trt.__version__, here), indent=2))
        cache_sha = hashlib.sha256(cache_bytes).hexdigest()
    record = EngineRecord(
        tensorrt=trt.__version__, api=plan.api, gpu=here.get("gpu"), compute_capability=here.get("compute_capability"),
        driver=here.get("driver"), cuda=here.get("cuda"), onnx=plan.onnx, onnx_sha256=plan.onnx_sha256,
        engine_sha256=hashlib.sha256(engine_bytes).hexdigest(), timing_cache_sha256=cache_sha,
        build_seconds=round(seconds, 2), plan=plan.to_dict(), inputs=plan.inputs, outputs=plan.outputs,
        built=time.strftime("%Y-%m-%dT%H:%M:%S%z"), deploy=__version__)
    sidecar = write_sidecar(record, output)
    return BuildResult(str(output), str(sidecar), plan, record, warnings)


# The functions below touch TensorRT (untested without it: see the README's TensorRT section).

def _trt_build(trt, plan: BuildPlan, source: Path, calibration: bytes | None,
               warnings: list[str]) -> tuple[bytes, bytes | None]:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = errors[0] if errors else "no reason given"
        raise BadInputError(f"{plan.onnx}: TensorRT's ONNX parser refused it: {first}"
                            + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
    config.builder_optimization_level = plan.opt_level
    if not plan.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name, shapes in plan.profile.items():
        try:
            profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
        except RuntimeError as err:  # TensorRT asserts min ≤ opt ≤ max and the rank
            raise BadInputError(f"{plan.onnx}: TensorRT refused the profile of '{name}' ({shapes.describe()}): "
                                f"{str(err).strip()[:160]}") from None
    if config.add_optimization_profile(profile) < 0:
        raise BadInputError(f"{plan.onnx}: TensorRT refused the optimization profile "
                            f"({'; '.join(f'{k} {v.describe()}' for k, v in plan.profile.items())})")
    if plan.builder_flags:
        _legacy_precision(trt, config, plan, calibration, profile)
    timing_cache = _trt_timing_cache(trt, config, plan, warnings)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeployError(f"{plan.onnx}: TensorRT could not build an engine (its log above says why)")
    cache_bytes = bytes(timing_cache.serialize()) if timing_cache is not None else None
    return bytes(serialized), cache_bytes


def _trt_timing_cache(trt, config, plan: BuildPlan, warnings: list[str]):
    """Attach the timing cache; a cache TensorRT refuses is replaced by a fresh one, with a warning."""
    if plan.timing_cache.action == "none":
        return None
    data = b""
    if plan.timing_cache.action == "reuse":
        data = Path(plan.timing_cache.path).read_bytes()
    try:  # a foreign cache: TensorRT logs "will not be used" and set_timing_cache answers False, or it raises
        timing_cache = config.create_timing_cache(data)
        accepted = timing_cache is not None and bool(config.set_timing_cache(timing_cache, False))
    except Exception:
        accepted = False
    if not accepted:
        if data:
            warnings.append(f"--timing-cache {plan.timing_cache.path}: TensorRT refused it (another GPU or "
                            f"TensorRT version?): starting a fresh cache")
        timing_cache = config.create_timing_cache(b"")
        config.set_timing_cache(timing_cache, False)
    return config.get_timing_cache()


def _legacy_precision(trt, config, plan: BuildPlan, calibration: bytes | None, profile) -> None:
    """TensorRT 10's weakly typed precision: builder flags, and int8 scales from a calibration cache
    (with a calibration profile, which TensorRT wants for a network with runtime dimensions)."""
    if "FP16" in plan.builder_flags:
        config.set_flag(trt.BuilderFlag.FP16)
    if "INT8" in plan.builder_flags:
        config.set_flag(trt.BuilderFlag.INT8)
        if calibration is not None:
            config.int8_calibrator = _legacy_calibrator(trt, calibration)
            config.set_calibration_profile(profile)


def _legacy_calibrator(trt, cache: bytes):
    """A calibrator with no data: TensorRT finds every scale in ``cache`` and never asks for a batch."""

    class CachedScales(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return None  # no calibration data: a cache TensorRT refused ends the build with its error

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data):
            return None

    return CachedScales()
