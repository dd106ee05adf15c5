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
