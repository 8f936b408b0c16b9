"""The ranges table: calibrated (lo, hi) per tensor, with where they came from, as JSON or a TensorRT cache.

JSON holds plain Python floats: ``json`` cannot write np.float32 (ONNX Runtime's calibration tool trips
on exactly that), so every number is converted on the way in and out. Files are written atomically:
a temporary file in the same folder, then ``os.replace``, so a reader never sees half a table.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "deploy-ranges"
VERSION = 1
TRT_HEADER = "TRT-8601-EntropyCalibration2"


@dataclass
class RangesTable:
    """Ranges per tensor name, the method and target they were calibrated for, and their data's provenance.

    ``fingerprint`` identifies the calibration data (``fingerprint_arrays``), ``samples`` how many were
    used, ``source`` describes them in words; ``scores`` is free-form (e.g. a tournament of methods).
    """

    ranges: dict[str, tuple[float, float]]
    method: str
    target: str
    fingerprint: str
    samples: int
    source: str
    scores: dict | None = None

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "target": self.target,
            "fingerprint": self.fingerprint,
            "samples": int(self.samples),
            "source": self.source,
            "ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in self.ranges.items()},
            "scores": _plain(self.scores) if self.scores is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> RangesTable:
        """Inverse of ``to_dict``; ``ValueError`` (one line) saying what is wrong."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f'not a ranges table (no "format": "{FORMAT}")')
        if d.get("version") != VERSION:
            raise ValueError(f"ranges table version {d.get('version')!r}, this reader knows {VERSION}")
        for key in ("method", "target", "fingerprint", "source", "samples"):
            kind, noun = (int, "an integer") if key == "samples" else (str, "a string")
            if not isinstance(d.get(key), kind) or isinstance(d.get(key), bool):
                raise ValueError(f"field {key!r} must be {noun}, got {d.get(key)!r}")
        raw = d.get("ranges")
        if not isinstance(raw, dict):
            raise ValueError("field 'ranges' must map tensor names to [lo, hi]")
        ranges = {}
        for name, pair in raw.items():
            ok = isinstance(pair, list) and len(pair) == 2 and all(_is_number(v) for v in pair)
            if not ok or not (math.isfinite(pair[0]) and math.isfinite(pair[1]) and pair[0] <= pair[1]):
                raise ValueError(f"range of {name!r} must be finite [lo, hi] with lo ≤ hi, got {pair!r}")
            ranges[name] = (float(pair[0]), float(pair[1]))
        scores = d.get("scores")
        if scores is not None and not isinstance(scores, dict):
            raise ValueError(f"field 'scores' must be an object or null, got {type(scores).__name__}")
        return cls(ranges, d["method"], d["target"], d["fingerprint"], d["samples"], d["source"], scores)

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RangesTable:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read ranges table ({e.__class__.__name__}: {e})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a ranges table: invalid JSON at line {e.lineno}: {e.msg}") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain(value: object) -> object:
    """numpy scalars and arrays (at any depth) → Python numbers and lists, for ``json``.

    NaN and ±inf (an SQNR of identical outputs is inf) become None: standard JSON has no such numbers.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would ignore the umask (calib imports nothing of deploy)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """sha256 over each array's shape, dtype and bytes (C order): 16 hex digits."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.shape}|{a.dtype.str}|".encode())
        digest.update(a.data if a.size else b"")
    return digest.hexdigest()[:16]


def trt_scale(lo: float, hi: float) -> float:
    """TensorRT's symmetric int8 scale: max(|lo|, |hi|) / 127, as a float32."""
    return float(np.float32(max(abs(lo), abs(hi)) / 127.0))


def write_trt_cache(table: RangesTable, path: str | Path, header: str = TRT_HEADER) -> None:
    """TensorRT (≤ 10) calibration cache: the header line, then ``name: <hex>`` per tensor, hex being the
    8 digits of the scale's big-endian IEEE float32 bits."""
    lines = [header]
    lines += [f"{name}: {struct.pack('>f', trt_scale(lo, hi)).hex()}" for name, (lo, hi) in table.ranges.items()]
    write_atomic(path, "\n".join(lines) + "\n")


def read_trt_cache(path: str | Path) -> dict[str, float]:
    """name → scale from a TensorRT calibration cache (the header line is skipped)."""
    lines = Path(path).read_text().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty TensorRT calibration cache")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, digits = line.rpartition(":")
        try:
            if not sep or len(digits.strip()) != 8:
                raise ValueError
            scales[name.strip()] = struct.unpack(">f", bytes.fromhex(digits.strip()))[0]
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'name: <8 hex digits>', got {line!r}") from None
    return scales
