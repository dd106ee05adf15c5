"""Small helpers the tests share (a module of its own: ``conftest`` names are ambiguous
between tests/ and tests/model/ when imported by name)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def file_hashes(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path``, by relative path: "nothing changed" checks."""
    import hashlib

    return {f.relative_to(path).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def untrained_model(folder: Path, seed: int) -> str:
    """A small untrained student checkpoint in ``folder``: maps need a model, not a good one;
    two seeds are two model versions."""
    import torch

    from geoflow.model.checkpoint import save_checkpoint
    from geoflow.model.networks import ArchSpec, build_network

    torch.manual_seed(seed)
    spec = ArchSpec("student", n_classes=10)
    path = folder / f"student-{seed}"
    save_checkpoint(path, build_network(spec), spec, stage="untrained")
    return str(path.with_suffix(".safetensors"))



def kill_midway(cmd: list[str], done_count: Callable[[], int], *, k: int = 2,
                timeout: float = 120.0, env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` in a session of its own and SIGKILL the whole process group (client,
    scheduler, workers at once, mid-write or not) as soon as ``done_count()`` reaches ``k``.

    Returns the process's exit status (``-SIGKILL`` when the kill came in time); fails the
    test if the command ends by itself first.
    """
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and done_count() < k:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    return proc.returncode


def centre_quarter(archive: Path) -> tuple[tuple[float, float, float, float], str]:
    """A part of an archive's demo region (the centre of its bbox, ~1/4 of it) and its dates."""
    import json

    info = json.loads((archive / "archive.json").read_text())
    w, s, e, n = info["demo_bbox"]
    cx, cy = (w + e) / 2, (s + n) / 2
    hx, hy = (e - w) / 4, (n - s) / 4
    return (cx - hx, cy - hy, cx + hx, cy + hy), info["datetime"]


def archive_items(archive: Path, base: str) -> list[dict]:
    """An archive's S2 and S1 items as a user would hold them, hrefs made absolute under
    ``base`` (a ``file://`` URI of the archive, or its server's URL)."""
    import json

    out = []
    for name in ("sentinel-2-l2a", "sentinel-1-rtc"):
        for line in (archive / "items" / f"{name}.ndjson").read_text().splitlines():
            item = json.loads(line)
            for asset in item["assets"].values():
                asset["href"] = f"{base}/{asset['href']}"
            out.append(item)
    return out
