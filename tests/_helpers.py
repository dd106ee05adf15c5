"""Small helpers the tests share (a module of its own: ``conftest`` names are ambiguous
between tests/ and tests/model/ when imported by name)."""

from __future__ import annotations

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

