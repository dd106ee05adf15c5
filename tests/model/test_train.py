"""Training: each stage learns, checkpoints are written, an interrupted run resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geoflow.errors import ModelError
from geoflow.model.checkpoint import read_checkpoint
from geoflow.model.data import PatchSet, norm_stats
from geoflow.model.train import (
    STAGES,
    TrainConfig,
    _Progress,
    forward_all,
    pseudo_label_filter,
    train,
    train_source,
)


def test_source_stage_learns_in_seconds(tiny_source: PatchSet, tiny_target: PatchSet) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(size="tiny", width=8, epochs=6, batch_size=32)
    norm = norm_stats(tiny_source, tiny_target)
    net, info = train_source(tiny_source, norm, cfg, rng=np.random.default_rng(0),
                             progress=_Progress(False))
    loss = info["loss"]
    assert loss[-1] < 0.7 * loss[0]
    acc = (forward_all(net, tiny_source, norm)["probs"].argmax(1).numpy()
           == tiny_source.label).mean()
    assert acc > 0.3  # 10 classes: chance is 0.1


def test_filter_needs_confidence_and_visibility() -> None:
    p = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.99, 0.01]])
    keep = pseudo_label_filter(p, np.array([0.0, 0.5, 0.0, 0.29]), conf_threshold=0.9,
                               max_cloud=0.3)
    assert keep.tolist() == [0, 3]


@pytest.mark.slow
def test_all_stages_learn_and_write_checkpoints(tiny_run: tuple[Path, dict]) -> None:
    out, summary = tiny_run
    assert set(summary["stages"]) == set(STAGES)
    state = json.loads((out / "train_state.json").read_text())
    assert state["done"] == list(STAGES)
    for stage in STAGES:
        ck = read_checkpoint(out / stage)
        assert ck.meta["stage"] == stage
        losses = ck.meta["training"]["stage"]
        hist = losses.get("loss") or losses.get(f"loss_{stage}")
        assert hist[-1] < hist[0], stage  # the loss falls
        assert ck.meta["metrics"]["val_oa"] > 0.15, stage  # above chance (0.1)
    irm = read_checkpoint(out / "student_irm").meta
    assert irm["training"]["stage"]["weighting"] == "irm"
    assert irm["training"]["data"]["target"]["n"] == 400


@pytest.mark.slow
def test_resume_skips_finished_stages(tiny_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = tiny_run
    run = tmp_path / "resume"
    run.mkdir()
    cfg = TrainConfig(size="tiny", seed=1, width=8)
    # Pretend the run was killed after F1: copy the first three stages and their state.
    state = json.loads((out / "train_state.json").read_text())
    for stage in STAGES[:3]:
        for suffix in (".safetensors", ".json"):
            (run / f"{stage}{suffix}").write_bytes((out / f"{stage}{suffix}").read_bytes())
    state["done"] = list(STAGES[:3])
    (run / "train_state.json").write_text(json.dumps(state))
    summary = train(run, cfg, progress=False)
    assert summary["resumed"] == list(STAGES[:3])
    assert json.loads((run / "train_state.json").read_text())["done"] == list(STAGES)
    src = read_checkpoint(run / "source").meta["checksum"]
    assert src == read_checkpoint(out / "source").meta["checksum"]  # untouched
    with pytest.raises(ModelError, match="other settings"):
        train(run, TrainConfig(size="tiny", seed=2, width=8), progress=False)


def test_bad_settings() -> None:
    with pytest.raises(ModelError, match="unknown training size"):
        TrainConfig(size="huge")
    with pytest.raises(ModelError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ModelError, match="multiple of 8"):
        TrainConfig(patch_size=30)
