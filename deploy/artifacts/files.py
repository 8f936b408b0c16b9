"""Files deploy reads and writes: inputs are never outputs, outputs are written whole.

Three promises every verb keeps (README, "Exit codes"):
  * an output path that resolves to one of the verb's inputs, or to another of its outputs — the same
    name, a symlink to it, or a hard link (same device and inode) — is refused before any work;
  * an output's folder must exist and be writable, and that is checked before any work, naming the
    folder the user gave (never one of our temporary names);
  * files appear only complete (a temporary name beside the target, then a rename), with the mode the
    user's umask gives a plain ``open()`` — ``mkstemp`` alone would leave them 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError


def default_cache_dir() -> Path:
    """Where deploy keeps what it makes once and reuses (digits checkpoints, fetched model files, measured
    round-to tables, engines): ``$DEPLOY_CACHE``, else ``~/.cache/deploy``."""
    env = os.environ.get("DEPLOY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deploy"


def umask_mode() -> int:
    """The mode ``open(path, "w")`` would create a file with under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed over ``path`` when the block succeeds,
    removed when it fails. The file gets the umask's mode."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as err:
        raise BadInputError(f"{path}: cannot write in folder {path.parent}: {err.strerror}; choose another "
                            f"folder") from None
    os.close(fd)
    os.chmod(tmp, umask_mode())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class Staged:
    """Where a job writes an output before it is proven: ``folder`` (scratch, beside the output) and ``path``
    (the file, named as the output, inside it). :meth:`commit` moves the file — and its external ``.data``
    beside it, if any — into place with a rename each."""

    def __init__(self, output: Path, folder: Path):
        self.output, self.folder, self.path = output, folder, folder / output.name

    def commit(self) -> Path:
        data = self.path.with_name(self.path.name + ".data")
        if data.exists():
            os.replace(data, self.output.with_name(self.output.name + ".data"))
        weights = self.path.with_suffix(".bin")  # an OpenVINO IR: model.xml reads model.bin beside it
        if self.path.suffix.lower() == ".xml" and weights.exists():
            os.replace(weights, self.output.with_suffix(".bin"))
        os.replace(self.path, self.output)
        return self.output


@contextlib.contextmanager
def staged_output(output: str | os.PathLike) -> Iterator[Staged]:
    """The one way a job writes a model: into a scratch folder beside ``output`` (same file system: the final
    move is a rename), committed only when the job says so; the folder and anything uncommitted are removed
    when the block ends, whether it succeeded, failed its proof or raised."""
    output = Path(output)
    folder = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        yield Staged(output, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PathArg:
    """A path the user gave, and the option that gave it (for the error message)."""

    flag: str  # "-o", "--json", "MODEL", "--weights", …
    path: Path

    @property
    def real(self) -> str:
        return os.path.realpath(self.path)

    def inode(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)


def _same(a: PathArg, b: PathArg) -> bool:
    if a.real == b.real:
        return True
    ia, ib = a.inode(), b.inode()
    return ia is not None and ia == ib


def _writable_folder(arg: PathArg) -> None:
    folder = arg.path.parent
    if arg.path.is_dir():
        raise BadInputError(f"{arg.flag} {arg.path}: is a folder; give a file name")
    if not folder.is_dir():
        raise BadInputError(f"{arg.flag} {arg.path}: folder {folder} does not exist; create it first or choose "
                            f"another path")
    # os.access answers for the real uid and is fooled by read-only mounts; a probe file is not
    try:
        fd, probe = tempfile.mkstemp(prefix=".deploy-probe.", dir=folder)
    except OSError as err:
        raise BadInputError(f"{arg.flag} {arg.path}: cannot write in folder {folder} ({err.strerror}); choose a "
                            f"writable folder") from None
    os.close(fd)
    os.unlink(probe)


def output_path(path: str | os.PathLike, flag: str, suffix: str | None = None) -> Path:
    """The one check of where a file will be written, before any work: the right suffix, not a folder, in an
    existing folder this process can write in. Returns the path; raises :class:`BadInputError` naming ``flag``."""
    path = Path(path)
    if suffix is not None and path.suffix.lower() != suffix:
        raise BadInputError(f"{flag} {path}: the output file must end in {suffix}")
    _writable_folder(PathArg(flag, path))
    return path


def check_paths(inputs: list[tuple[str, str | os.PathLike | None]],
                outputs: list[tuple[str, str | os.PathLike | None]]) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other, or that cannot be written.

    ``inputs``/``outputs`` are (flag, path) pairs; ``None`` paths are skipped, and inputs that are not files
    (a zoo name, ``photos``) never match.
    """
    ins = [PathArg(flag, Path(p)) for flag, p in inputs if p is not None and Path(p).exists()]
    outs = [PathArg(flag, Path(p)) for flag, p in outputs if p is not None]
    for i, out in enumerate(outs):
        for source in ins:
            if source.path.is_dir():
                continue
            if _same(out, source):
                how = "" if str(out.path) == str(source.path) else f" ({out.path} is the same file as {source.path})"
                raise BadInputError(f"{out.flag} {out.path}: that is the input {source.flag} {source.path}{how}; "
                                    f"deploy never overwrites its inputs: write to another path")
        for other in outs[:i]:
            if _same(out, other):
                raise BadInputError(f"{out.flag} {out.path} and {other.flag} {other.path} are the same file; give "
                                    f"each output its own path")
    for out in outs:
        _writable_folder(out)


def describe_file(flag: str, path: str | os.PathLike) -> dict:
    """What a report records of one artifact file: the option, the path and its sha256."""
    path = Path(path)
    entry: dict = {"role": flag, "path": str(path)}
    if path.is_file():
        entry["sha256"] = sha256_file(path)
        entry["bytes"] = path.stat().st_size
    return entry


def jsonable(value: Any) -> Any:
    """The one JSON policy of deploy's reports: a number that is not finite (an exact match's SQNR, a ratio
    with nothing to divide) is written as ``null`` — JSON has no infinity — and the report says why beside it
    where it matters (``"exact": true`` on a comparison); numpy scalars become numbers, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalars
        return jsonable(value.item())
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON (see :func:`jsonable`) via a temporary file and a rename: never a half-written
    report. Values that are still not JSON (NaN cannot survive :func:`jsonable`) raise instead of writing."""
    path = output_path(path, "--json")
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(jsonable(data), handle, indent=2, allow_nan=False)
        handle.write("\n")
    return path
