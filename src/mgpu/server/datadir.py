"""The master's data dir: created private (0700) and checked writable before anything is
opened in it; ``master.json`` (how local clients find the master) written by rename."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from mgpu.core.errors import MgpuError


def prepare_data_dir(path: Path) -> None:
    """Create the data dir (mode 0700) and check that it can be written."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise MgpuError(
            f"cannot write to the data dir {path}: {e.strerror or e}; pass --data-dir with a "
            "writable directory (or set MGPU_DATA_DIR)"
        ) from e


def write_json(path: Path, obj: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(obj))
    os.replace(tmp, path)
