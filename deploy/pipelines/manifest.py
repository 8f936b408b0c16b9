"""`DIR/manifest.json`: what a pipeline proved, in a form CI can check again (`deploy verify`).

File hashes of every artifact, the versions it was made with (torch, onnx, onnxruntime, TensorRT, GPU), the
held-out data and budget, each candidate's certificate with the drift tolerance verify allows, and each
backend's interleaved timings as ratios to the fp32 export. Validated against
``deploy/pipelines/manifest.schema.json`` before it is written, and again when verify reads it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
from functools import cache
from pathlib import Path

from .._version import __version__
from ..artifacts.files import sha256_file, write_text_atomic
from ..environment import cpu_info, default_threads, gpu_info, library_versions
from ..errors import BadInputError

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
FORMAT = "deploy.manifest/1"


@cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(manifest: dict, where: str = "manifest") -> None:
    """Raise BadInputError naming the first place ``manifest`` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        at = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise BadInputError(f"{where}: not a deploy manifest at {at}: {first.message} "
                            f"(schema {SCHEMA_PATH.name}; {len(errors)} problem(s))")


def drift_tolerance(samples: int) -> dict:
    """How far verify lets a certificate move before it calls it drift: one held-out sample's decision
    (100/n points, at least 0.5) and 1 dB of centred SQNR (another CPU's kernels round differently)."""
    return {"points": round(max(0.5, 100.0 / max(samples, 1)) + 1e-6, 6), "centred_sqnr_db": 1.0}


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _data_record(source: str, base: Path) -> dict:
    path = Path(source)
    if source == "photos" or not path.exists():
        return {"source": source}
    record = {"source": source, "absolute": str(path.resolve())}
    if path.is_file():
        record["sha256"] = sha256_file(path)
    return record


def _model_record(artifact) -> dict:
    record = {"spec": artifact.label, "kind": artifact.kind, "input": artifact.inputs[0].name,
              "shape": [d if isinstance(d, int) else str(d) for d in artifact.input_shape]}
    files = [{"role": role, "path": str(Path(p).resolve()), "sha256": sha256_file(p)}
             for role, p in getattr(artifact, "files", []) if p and Path(p).is_file()]
    if files:
        record["files"] = files
    return record


def versions() -> dict:
    libs = library_versions()
    return {"deploy": __version__, "python": libs.get("python"), "torch": libs.get("torch"),
            "onnx": libs.get("onnx"), "onnxruntime": libs.get("onnxruntime") or libs.get("onnxruntime-gpu"),
            "openvino": libs.get("openvino"), "tensorrt": libs.get("tensorrt"),
            "gpus": [g.get("name") for g in gpu_info()]}


def build_manifest(report, artifact) -> dict:
    o = report.options
    folder = Path(report.folder)
    held = report.held_out
    labels = held.labels is not None
    candidates = []
    for c in report.candidates:
        entry = c.to_dict()
        if c.certificate is not None:
            entry["certificate"] = {k: _finite(v) for k, v in entry["certificate"].items()}
            entry["tolerance"] = drift_tolerance(c.certificate.samples)
        candidates.append(entry)
    latency = {}
    for backend, timings in report.timings.items():
        latency[backend] = {"batch": o.batch, "threads": o.threads or default_threads(), "baseline": "fp32",
                            "results": {name: t.to_dict() for name, t in timings.items()}}
    return {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": o.command or list(sys.argv),
        "model": _model_record(artifact),
        "versions": versions(),
        "machine": {"cpu": cpu_info().get("model"), "platform": sys.platform,
                    "threads": o.threads or default_threads()},
        "data": {"tuning": {**_data_record(o.data, folder), "samples": report.tuning_samples},
                 "held_out": {**_data_record(held.source, folder), "offset": held.offset,
                              "samples": int(len(held.array)), "labels": labels, "description": held.description}},
        "budget": {"max_drop": o.budget.max_drop, "min_sqnr": o.budget.min_sqnr,
                   "text": o.budget.describe(labels), "metric": "accuracy" if labels else "agreement"},
        "reference": "fp32",
        "backends": list(o.backends),
        "candidates": candidates,
        "latency": latency,
        "choices": {b: c.to_dict() for b, c in report.choices.items()},
        "notes": report.notes,
        "seconds": round(report.seconds, 1),
    }


def finite(value):
    """The manifest's JSON has no NaN or ∞: a non-finite float is null (an exact match's SQNR, say)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_manifest(manifest: dict, path: str | os.PathLike) -> Path:
    manifest.update(finite(manifest))
    validate(manifest, str(path))
    return write_text_atomic(path, json.dumps(manifest, indent=2, allow_nan=False) + "\n")


def read_manifest(path: str | os.PathLike) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    if not p.is_file():
        raise BadInputError(f"{path}: no such manifest; give DIR/manifest.json written by deploy pipeline")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"{p}: not JSON ({err}); give DIR/manifest.json written by deploy pipeline") from None
    validate(data, str(p))
    return data
