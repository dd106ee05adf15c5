"""Fine-tuning on real labelled patches: the group split, the multi-label loss, the run on the
public development set (never the held-out pairs), another class scheme, the CSV layout."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoflow.errors import ModelError
from geoflow.model.bigearthnet import BEN19
from geoflow.model.finetune import (
    FinetuneConfig,
    _coverage_nll,
    _mass_nll,
    finetune,
    fold_groups,
    split_groups,
)

DATA = Path(__file__).parent / "data"


def test_split_keeps_groups_whole_and_apart() -> None:
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"]
    tr, te, test_groups = split_groups(groups, 0.25, seed=3)
    assert sorted([*tr, *te]) == list(range(len(groups)))
    assert {groups[i] for i in te} == set(test_groups)
    assert not {groups[i] for i in tr} & set(test_groups) and len(test_groups) == 1
    assert split_groups(groups, 0.99, seed=0)[2] != sorted(set(groups))  # one group trains
    with pytest.raises(ModelError, match="one group"):
        split_groups(["x", "x"], 0.5, seed=0)


def test_folds_keep_groups_whole_and_balance_the_patches() -> None:
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] * 2 + ["e"]
    fold = fold_groups(groups, 3)
    for g in set(groups):  # a group never straddles two folds
        assert len({int(f) for f, h in zip(fold, groups, strict=True) if h == g}) == 1
    assert sorted(np.bincount(fold, minlength=3).tolist()) == [4, 4, 5]
    with pytest.raises(ModelError, match="3 folds need at least 3 groups") as err:
        fold_groups(["x", "x", "y"], 3)
    assert "--folds 2" in err.value.hint
    with pytest.raises(ModelError, match="folds 0"):
        FinetuneConfig(folds=1).validate()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=60), st.integers(2, 6))
def test_any_folds_are_whole_groups_none_empty_and_balanced(groups: list[str],
                                                            k: int) -> None:
    if len(set(groups)) < k:
        with pytest.raises(ModelError):
            fold_groups(groups, k)
        return
    fold = fold_groups(groups, k)
    assert len({(g, int(f)) for g, f in zip(groups, fold, strict=True)}) == len(set(groups))
    sizes = np.bincount(fold, minlength=k)
    assert len(sizes) == k and sizes.min() >= 1
    # each group goes to the lightest fold: no fold outweighs another by more than a group
    assert sizes.max() - sizes.min() <= max(groups.count(g) for g in set(groups))


def test_losses_reward_mass_on_allowed_classes_and_label_coverage() -> None:
    allowed = torch.tensor([[1.0, 1.0, 0.0]])
    assert float(_mass_nll(torch.tensor([[0.5, 0.5, 0.0]]), allowed)) == pytest.approx(0.0,
                                                                                      abs=1e-6)
    assert float(_mass_nll(torch.tensor([[0.1, 0.1, 0.8]]), allowed)) == pytest.approx(
        -np.log(0.2), abs=1e-5)
    # one patch, two windows, labels {class 0} and {class 1}
    sets = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    both = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]])
    one = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0]])
    assert float(_coverage_nll(both, sets, 2)) < float(_coverage_nll(one, sets, 2))
    assert float(_coverage_nll(both, sets, 2)) == pytest.approx(-np.log(0.9), abs=1e-5)


@pytest.mark.slow
def test_finetune_on_the_development_set_writes_a_registrable_checkpoint(
        ben_root: Path, tmp_path: Path) -> None:
    from geoflow.model.predict import load
    from geoflow.model.registry import ModelRegistry

    rep = finetune("bigearthnet", tmp_path / "ft", FinetuneConfig(epochs=1), cache=ben_root)
    assert rep["train"]["patches"] + rep["test"]["patches"] == 54  # dev only, never held-out
    meta = json.loads((tmp_path / "ft" / "finetuned.json").read_text())
    assert not set(meta["training"]["train_groups"]) & set(meta["training"]["test_groups"])
    before, after = rep["test"]["before"], rep["test"]["after"]
    assert before["windows"] == after["windows"] == 9 * rep["test"]["patches"]
    assert 0 <= after["window_fit"] <= 1 and meta["metrics"]["real_test"]["after"] == after
    model = load(tmp_path / "ft", device="cpu")  # the folder stands for its checkpoint
    assert model.stage == "finetuned" and model.classes == load(device="cpu").classes
    entry, added = ModelRegistry(tmp_path / "reg").add(tmp_path / "ft", "alpine")
    assert added and entry.version == rep["version"]


@pytest.mark.slow
def test_finetune_into_bigearthnets_19_classes(ben_root: Path, tmp_path: Path) -> None:
    from geoflow.model.predict import load

    reben = ben_root / "configilm-0.7.1" / "BENv2"  # a user's reBEN: LMDB + parquet
    rep = finetune(f"bigearthnet:{reben}", tmp_path / "ft19",
                   FinetuneConfig(epochs=1, classes="ben19"))
    assert rep["classes"] == list(BEN19) and rep["test"]["before"] is None
    model = load(rep["checkpoint"], device="cpu")
    assert model.classes == BEN19 and len(model.colors) == 19
    pred = model.predict(np.full((2, 10, 32, 32), 0.1, np.float32),
                         np.full((2, 2, 32, 32), -12.0, np.float32),
                         np.zeros((2, 32, 32), np.float32))
    assert pred.probs.shape == (2, 19)


def _folder_csv(tmp_path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("_gf_make_folder_csv",
                                                  DATA / "make_folder_csv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made = module.make(tmp_path / "folder", size=64)
    src = Path(made["csv"])
    with src.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        row["label"] = ""
        row["labels"] = "Water;Barren" if i % 2 else "Dense Forest"
        row["group"] = f"tile{i % 3}"
    out = src.with_name("ft.csv")
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_finetune_reads_the_patch_folder_csv_layout(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from geoflow.cli import main
    from geoflow.model._constants import CLASSES
    from geoflow.model.finetune import load_labelled

    path = _folder_csv(tmp_path)
    lp = load_labelled(str(path), CLASSES)
    assert lp.s2.shape[2:] == (64, 64) and set(lp.groups) == {"tile0", "tile1", "tile2"}
    assert [sorted(CLASSES[k] for k in np.flatnonzero(a)) for a in lp.allowed[:2]] == [
        ["Dense Forest"], ["Barren", "Water"]]
    assert np.isfinite(lp.cloud).all()  # unknown cloud counts as clear for training
    main(["train", "--finetune", str(path), "--out", str(tmp_path / "ft"), "--epochs", "1",
          "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert Path(rep["checkpoint"]).is_file() and len(rep["test"]["groups"]) == 1
    assert rep["test"]["after"]["windows"] == 4 * rep["test"]["patches"]  # 2 x 2 windows
    bad = path.with_name("bad.csv")
    bad.write_text(path.read_text().replace("Dense Forest", "Moon Dust", 1))
    with pytest.raises(ModelError, match="not a class of the model"):
        load_labelled(str(bad), CLASSES)


def test_cross_validation_tests_every_patch_once_then_trains_on_all(
        tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from geoflow.cli import main

    path = _folder_csv(tmp_path)
    main(["train", "--finetune", str(path), "--out", str(tmp_path / "cv"), "--epochs", "1",
          "--folds", "3", "--json"])
    rep = json.loads(capsys.readouterr().out)
    cv, n = rep["cv"], rep["train"]["patches"]
    assert rep["test"] is None and cv["folds"] == 3 and rep["train"]["groups"] == 3
    # each patch predicted exactly once, by the fold that left its group out
    assert cv["after"]["patches"] == cv["before"]["patches"] == n
    assert cv["after"]["windows"] == 4 * n == sum(4 * f["patches"] for f in cv["per_fold"])
    assert sorted(g for f in cv["per_fold"] for g in f["groups"]) == ["tile0", "tile1",
                                                                      "tile2"]
    meta = json.loads((tmp_path / "cv" / "finetuned.json").read_text())
    assert meta["training"]["train_patches"] == n and meta["training"]["test_groups"] == []
    assert meta["metrics"]["real_cv"]["after"] == cv["after"]
    main(["train", "--finetune", str(path), "--out", str(tmp_path / "cv2"), "--epochs", "1",
          "--folds", "2"])
    out = capsys.readouterr().out
    assert "cross-validated over 2 folds" in out and "after (out of fold) window fit" in out


def test_finetuning_moves_predictions_toward_the_allowed_classes(tmp_path: Path) -> None:
    """A few deterministic steps on patches all labelled Barren (a class the shipped student
    rarely gives these synthetic patches) raise the share of Barren windows on them."""
    from geoflow.model._constants import CLASSES
    from geoflow.model.checkpoint import read_checkpoint
    from geoflow.model.finetune import (
        _as_checkpoint,
        _start_network,
        _train,
        fit_rates,
        load_labelled,
    )
    from geoflow.model.predict import LoadedModel, load, resolve_device

    lp = load_labelled(str(_folder_csv(tmp_path)), CLASSES)
    lp.label_sets[:] = False
    lp.label_sets[:, 0, CLASSES.index("Barren")] = True
    start = load(device="cpu")
    before = fit_rates(start, lp)
    ckpt = read_checkpoint(start.path)
    net, spec = _start_network(ckpt, CLASSES)
    cfg = FinetuneConfig(epochs=4, lr=3e-3, sar_dropout=0.0, threads=1)
    loss = _train(net, lp, ckpt.meta["norm"], start.patch_size, cfg, progress=False)
    tuned = LoadedModel(_as_checkpoint(net, spec, ckpt, CLASSES, tuple(start.colors),
                                       ckpt.meta["norm"]), resolve_device("cpu"))
    after = fit_rates(tuned, lp)
    assert before["window_fit"] < 0.5
    assert after["window_fit"] > before["window_fit"] + 0.3
    assert loss[-1] < loss[0]


def test_patches_without_a_class_in_the_scheme_are_dropped(ben_root: Path) -> None:
    from geoflow.model.finetune import load_labelled

    common = f"bigearthnet:{ben_root}/bigearthnet_common-2.8.0"
    lp = load_labelled(common, ("Water", "Dense Forest"))
    assert len(lp) + len(lp.dropped) == 6 and lp.dropped  # farmland-only patches are left out
    assert lp.allowed.any(axis=1).all()
    with pytest.raises(ModelError, match="none of the 6 patches"):
        load_labelled(common, ("Road",))


def test_cli_rejects_options_that_would_be_ignored(capsys) -> None:  # type: ignore[no-untyped-def]
    from geoflow.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--finetune", "bigearthnet", "--out", "x", "--width", "8"])
    assert exc.value.code == 2 and "--width cannot be used with --finetune" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", "x", "--folds", "3"])
    assert exc.value.code == 2 and "--folds only apply with --finetune" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--real", "bigearthnet", "--seed", "5", "--n", "10"])
    assert exc.value.code == 2 and "--seed, --n cannot be used with --real" in \
        capsys.readouterr().err
