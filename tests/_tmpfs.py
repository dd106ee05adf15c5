"""A real, small file system for disk-full tests: a tmpfs mount (root only; else the test is
skipped), filled to the brim on request."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(path: Path, size_kib: int, *, fill: bool = False) -> Path:
    """Mount a ``size_kib`` KiB tmpfs at ``path`` (created); with ``fill``, write a filler file
    until the disk is full. Unmount with :func:`unmount`."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs",
                           str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    if fill:
        with contextlib.suppress(OSError), open(path / "filler", "wb") as fh:
            while True:  # ENOSPC ends it
                fh.write(b"\0" * 4096)
                fh.flush()
    return path


def unmount(path: Path) -> None:
    if path.is_mount():
        subprocess.run(["umount", "-l", str(path)], check=False)
