"""What every JSON report records of how it was made, so CI can tell what a number belongs to:
deploy's version, the command, a UTC timestamp, the sha256 of each input and output file, and the
machine (the same environment block bench reports)."""

from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path

from .._version import __version__
from ..environment import environment
from .files import describe_file


def provenance(
    inputs: list[tuple[str, str | os.PathLike | None]],
    outputs: list[tuple[str, str | os.PathLike | None]],
    *,
    command: str | None = None,
    params: dict | None = None,
    threads: int | None = None,
) -> dict:
    """``inputs``/``outputs``: (role, path) pairs; entries that are not files (a zoo name, 'photos') are
    recorded by name without a hash, and outputs that were not written are left out."""
    def files(pairs, keep_missing: bool) -> list[dict]:
        rows = []
        for role, path in pairs:
            if path is None:
                continue
            p = Path(path)
            if p.is_file():
                rows.append(describe_file(role, p))
            elif keep_missing:
                rows.append({"role": role, "spec": str(path)})
        return rows

    return {
        "deploy": __version__,
        "command": command,
        "argv": list(sys.argv),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in (params or {}).items()},
        "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": files(inputs, keep_missing=True),
        "outputs": files(outputs, keep_missing=False),
        "environment": environment(threads),
    }
