"""Adapt a trained student to a region with a few real labelled patches:
``geoflow train --finetune bigearthnet[:PATH] --out DIR`` (or ``--finetune labels.csv``).

Start: a student checkpoint (default the shipped one). Data: BigEarthNet patches (the public
development set, never the held-out pairs; or a user's BigEarthNet data) or a
:class:`~geoflow.model.loaders.PatchFolderDataset` CSV. Labels are *sets* of allowed classes per
patch (BigEarthNet's multi-label CORINE labels through
:data:`~geoflow.model.bigearthnet.LABEL_TABLE`; a CSV's ``label`` column, or a ``labels`` column
of ``;``-separated class names), so the loss is multi-label aware. Each patch is cut into its
grid of windows (3 x 3 of 32 px for BigEarthNet, at a random offset), and the loss has two parts:

- *fit*: every window should be one of the patch's allowed classes, so it maximises the mass
  ``m_w = sum_{k allowed} p_w(k)``: ``-log m_w`` for the fused answer, plus
  ``0.5 * (v * -log m_w(opt) + a * -log m_w(sar))`` for the branches (``v`` visible fraction,
  ``a`` SAR present), which keep each branch a classifier of its own as in the student's
  training;
- *coverage*: every label is somewhere in its patch (CORINE maps units of 25 ha or more, a
  sixth of a 1.2 km patch), so for each label ``l`` at least one window should take one of its
  classes: ``-coverage * log max_w p_w(l)`` (multiple-instance learning). Without
  it the fit term alone lets the model answer the most common allowed class everywhere (in our
  runs: Dense Forest for every mixed patch, never a built-up class).

Windows are rotated and flipped; SAR is dropped from a share of the patches (``sar_dropout``)
so the model keeps working without it.

Patches are split by *group* (the S2 acquisition for BigEarthNet, a CSV ``group`` column
otherwise): the test groups are never seen in training, and the report gives the window and
patch fit on them before and after. With ``folds=K`` the split is grouped K-fold
cross-validation instead: each patch is scored once, by a run that never saw its group, and the
checkpoint then trains on all patches (the README gives the figures on the public samples).

Another class scheme (``classes="ben19"``: BigEarthNet's 19 classes) keeps the encoders and the
gate's feature weights and starts new heads.

Examples
--------
>>> from geoflow.model.finetune import FinetuneConfig, finetune
>>> report = finetune("bigearthnet", "runs/ft", FinetuneConfig(epochs=20))  # doctest: +SKIP
>>> after, before = report["test"]["after"], report["test"]["before"]  # doctest: +SKIP
>>> after["window_fit"] >= before["window_fit"]                        # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from geoflow.errors import ModelError

#: Name of the checkpoint a fine-tuning run writes in its output folder.
FINETUNED = "finetuned"


@dataclass
class FinetuneConfig:
    """Settings of a fine-tuning run (recorded in the checkpoint's ``training``).

    Parameters
    ----------
    epochs
        Passes over the training patches.
    crops
        Passes over each patch per epoch (each at a new random window-grid offset).
    batch_size
        Patches per step (each brings its whole grid of windows).
    coverage
        Weight of the coverage term (0: fit term only).
    lr
        AdamW learning rate (one-cycle schedule).
    sar_dropout
        Share of windows trained without SAR.
    test_fraction
        Share of the groups held out for the before/after test (at least one group).
    folds
        0: one split (``test_fraction``). K >= 2: grouped K-fold cross-validation instead: K
        runs, each tested on one fold of whole groups it never saw, give an out-of-fold fit
        for *every* patch before and after (less noisy than one small test split); then the
        checkpoint is trained on all the patches.
    classes
        ``"model"`` (the start checkpoint's classes) or ``"ben19"`` (BigEarthNet's 19 classes,
        BigEarthNet data only).
    seed
        Split, crops and initialisation.
    threads
        torch CPU threads (None: up to 2).
    """

    epochs: int = 30
    crops: int = 1
    batch_size: int = 8
    coverage: float = 0.5
    lr: float = 1e-3
    sar_dropout: float = 0.25
    test_fraction: float = 0.25
    folds: int = 0
    classes: str = "model"
    seed: int = 0
    threads: int | None = None

    def validate(self) -> None:
        """Raise :class:`ModelError` on a setting that cannot work."""
        bad = []
        if self.epochs < 1 or self.crops < 1 or self.batch_size < 1 or self.coverage < 0:
            bad.append("epochs >= 1, crops >= 1, batch_size >= 1, coverage >= 0")
        if self.folds == 1 or self.folds < 0:
            bad.append("folds 0 (one split) or >= 2")
        if not 0 < self.lr < 1:
            bad.append("0 < lr < 1")
        if not 0 <= self.sar_dropout <= 1 or not 0 < self.test_fraction < 1:
            bad.append("0 <= sar_dropout <= 1, 0 < test_fraction < 1")
        if self.classes not in ("model", "ben19"):
            bad.append("classes 'model' or 'ben19'")
        if bad:
            raise ModelError(f"fine-tuning settings out of range: need {'; '.join(bad)}",
                             hint="see `geoflow train --help`")


@dataclass
class LabelledPatches:
    """Real patches with the set of classes each may be: what fine-tuning trains on.

    Attributes
    ----------
    s2, s1, cloud
        (N, 10, H, W), (N, 2, H, W), (N, H, W) in geoflow's conventions (cloud 0/1).
    label_sets
        (N, L, K) bool: per label of each patch, the classes that fit it (rows of padding and
        of labels without a class in the scheme are all False).
    groups, ids
        Split key (acquisition or tile) and name of each patch.
    clear
        (N,) bool: patch flagged neither cloudy nor snowy.
    dropped
        Patches left out because none of their labels has a class in the scheme (e.g. only
        labels BigEarthNet's 19 classes drop): they would only add a constant to the loss.
    """

    s2: np.ndarray
    s1: np.ndarray
    cloud: np.ndarray
    label_sets: np.ndarray
    groups: list[str]
    ids: list[str]
    clear: np.ndarray
    dropped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def allowed(self) -> np.ndarray:
        """(N, K) bool: the classes that fit each patch (any of its labels)."""
        return np.asarray(self.label_sets.any(axis=1), bool)

    def subset(self, index: np.ndarray) -> LabelledPatches:
        """The patches at ``index``."""
        return LabelledPatches(self.s2[index], self.s1[index], self.cloud[index],
                               self.label_sets[index], [self.groups[i] for i in index],
                               [self.ids[i] for i in index], self.clear[index], self.dropped)


def _from_bigearthnet(spec: str, classes: tuple[str, ...],
                      cache: str | os.PathLike[str] | None) -> LabelledPatches:
    from geoflow.model.bigearthnet import allowed_mask, open_sets

    sets = open_sets(spec, cache=cache)
    # The public samples: only the development set trains; the held-out pairs stay out.
    p = sets["dev"] if "dev" in sets else sets["data"]
    most = max(len(labels) for labels in p.labels)
    label_sets = np.zeros((len(p), most, len(classes)), bool)
    for i, labels in enumerate(p.labels):
        label_sets[i, :len(labels)] = allowed_mask([[label] for label in labels], classes)
    keep = label_sets.any(axis=(1, 2))
    if not keep.any():
        raise ModelError(f"none of the {len(p)} patches has a label with a class in the scheme "
                         f"({', '.join(classes[:4])}, ...)",
                         hint="fine-tune with classes that the labels map to (the model's own, "
                              "or 'ben19' for BigEarthNet's 19 classes)")
    ix = np.flatnonzero(keep)
    return LabelledPatches(p.s2[ix], p.s1[ix], p.cloud[ix], label_sets[ix],
                           [p.groups[i] for i in ix], [p.ids[i] for i in ix],
                           (p.condition() == "clear")[ix],
                           [p.ids[i] for i in np.flatnonzero(~keep)])


def _from_csv(path: Path, classes: tuple[str, ...]) -> LabelledPatches:
    from geoflow.model.loaders import PatchFolderDataset, load_arrays

    ds = PatchFolderDataset(path, classes=classes)
    arrays = load_arrays(ds)
    n, k = len(ds.samples), len(classes)
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    per_patch: list[list[int]] = []
    for s in ds.samples:
        names = [x.strip() for x in s.extra.get("labels", "").split(";") if x.strip()]
        idx = [s.label] if s.label >= 0 else []
        for name in names:
            if name.lower() not in lookup:
                raise ModelError(f"{path}: patch {s.id} has label {name!r}, not a class of the "
                                 f"model ({', '.join(classes)})",
                                 hint="list class names of the start checkpoint, ';'-separated")
            if lookup[name.lower()] not in idx:
                idx.append(lookup[name.lower()])
        per_patch.append(idx)
    label_sets = np.zeros((n, max(1, max(len(x) for x in per_patch)), k), bool)
    for i, idx in enumerate(per_patch):
        for j, c in enumerate(idx):
            label_sets[i, j, c] = True
    if not all(per_patch):
        missing = [s.id for s, x in zip(ds.samples, per_patch, strict=True) if not x]
        raise ModelError(f"{path}: {len(missing)} patches have no label, e.g. {missing[:3]}",
                         hint="fill the 'label' (or 'labels') column of every row")
    cloud = arrays.get("cloud")
    s2 = arrays["s2"]
    if cloud is None:
        cloud = np.zeros((n, *s2.shape[2:]), np.float32)
    # A CSV without cloud masks says nothing about cloud: count those pixels as clear (the
    # model would otherwise see every pixel as "not visible").
    cloud = np.where(np.isnan(cloud), 0.0, cloud).astype(np.float32)
    groups = [s.extra.get("group") or s.id for s in ds.samples]
    return LabelledPatches(s2, arrays["s1"], cloud, label_sets, groups,
                           [s.id for s in ds.samples],
                           cloud.reshape(n, -1).mean(axis=1) < 0.05)


def load_labelled(data: str, classes: tuple[str, ...], *,
                  cache: str | os.PathLike[str] | None = None) -> LabelledPatches:
    """Read fine-tuning data: ``bigearthnet[:PATH]`` or a PatchFolderDataset CSV file.

    Examples
    --------
    >>> lp = load_labelled("patches/labels.csv", CLASSES)  # doctest: +SKIP
    """
    if data.split(":", 1)[0].strip().lower() == "bigearthnet":
        return _from_bigearthnet(data, classes, cache)
    path = Path(data).expanduser()
    if path.suffix.lower() == ".csv":
        return _from_csv(path, classes)
    raise ModelError(f"fine-tuning data {data!r} is not known",
                     hint="pass 'bigearthnet', 'bigearthnet:PATH' or a PatchFolderDataset CSV "
                          "file (columns s2, s1, label or labels, cloud/scl, group)")


def split_groups(groups: list[str], test_fraction: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Indices of training and test patches, test = whole groups; and the test groups.

    Examples
    --------
    >>> tr, te, g = split_groups(["a", "a", "b", "c"], 0.3, 0)
    >>> sorted(set(tr) | set(te)) == [0, 1, 2, 3] and len(g) == 1
    True
    """
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ModelError(f"all {len(groups)} patches are in one group ({unique[0]!r}): nothing "
                         "to test on that training has not seen",
                         hint="add patches from another tile or acquisition (a CSV 'group' "
                              "column says which patches belong together)")
    rng = np.random.default_rng(seed)
    n_test = min(len(unique) - 1, max(1, math.ceil(test_fraction * len(unique))))
    test = sorted(rng.permutation(unique)[:n_test].tolist())
    is_test = np.array([g in test for g in groups])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test), test


def fold_groups(groups: list[str], folds: int) -> np.ndarray:
    """(N,) fold of each patch for grouped K-fold cross-validation: whole groups per fold,
    the largest groups first, each to the fold with the fewest patches so far.

    Examples
    --------
    >>> fold_groups(["a", "a", "b", "c", "c", "c"], 2).tolist()
    [1, 1, 1, 0, 0, 0]
    """
    unique = sorted(set(groups))
    if len(unique) < folds:
        raise ModelError(f"{folds} folds need at least {folds} groups; the patches are in "
                         f"{len(unique)}",
                         hint=f"use --folds {len(unique)} or fewer (or 0: one test split), or "
                              "add patches from other tiles or acquisitions")
    counts = {g: groups.count(g) for g in unique}
    load = [0] * folds
    fold_of: dict[str, int] = {}
    for g in sorted(unique, key=lambda g: (-counts[g], g)):
        fold_of[g] = int(np.argmin(load))
        load[fold_of[g]] += counts[g]
    return np.array([fold_of[g] for g in groups])


def _start_network(ckpt: Any, classes: tuple[str, ...]) -> tuple[nn.Module, Any]:
    """The start student, with new heads (and gate inputs) when the class scheme changes."""
    from geoflow.model.networks import ArchSpec, StudentNet, build_network

    if ckpt.spec.name != "student":
        raise ModelError(f"fine-tuning starts from a fused student, not a {ckpt.spec.name!r} "
                         "stage", hint="pass a student checkpoint (the default is the shipped "
                                       "one)")
    if tuple(ckpt.meta["classes"]) == classes:
        return ckpt.network, ckpt.spec
    old = cast(StudentNet, ckpt.network)
    spec = ArchSpec("student", len(classes), ckpt.spec.width, ckpt.spec.depth,
                    ckpt.spec.patch_size)
    torch.manual_seed(0)
    net = cast(StudentNet, build_network(spec))
    net.enc_opt.load_state_dict(old.enc_opt.state_dict())
    net.enc_sar.load_state_dict(old.enc_sar.state_dict())
    with torch.no_grad():  # the gate keeps its weights on features, cloud and SAR availability
        d = old.enc_opt.out_dim + old.enc_sar.out_dim + 2
        first_old, first_new = old.gate[0], net.gate[0]
        assert isinstance(first_old, nn.Linear) and isinstance(first_new, nn.Linear)
        first_new.weight[:, :d] = first_old.weight[:, :d]
        first_new.weight[:, d:] = 0.0
        first_new.bias.copy_(first_old.bias)
        net.gate[2].load_state_dict(old.gate[2].state_dict())
    return net, spec


def _grids(data: LabelledPatches, idx: np.ndarray, size: int, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Each patch's grid of windows at a random offset: (B * G, ...) arrays and G."""
    h, w = data.s2.shape[2:]
    gr, gc = h // size, w // size
    s2, s1, cl = [], [], []
    for i in idx:
        r0 = int(rng.integers(0, h - gr * size + 1))
        c0 = int(rng.integers(0, w - gc * size + 1))
        for r in range(gr):
            for c in range(gc):
                sl = (slice(r0 + r * size, r0 + (r + 1) * size),
                      slice(c0 + c * size, c0 + (c + 1) * size))
                s2.append(data.s2[i, :, sl[0], sl[1]])
                s1.append(data.s1[i, :, sl[0], sl[1]])
                cl.append(data.cloud[i, sl[0], sl[1]])
    return np.stack(s2), np.stack(s1), np.stack(cl), gr * gc


def _mass_nll(probs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """-log of the probability mass on the allowed classes, per sample."""
    return -(probs * allowed).sum(-1).clamp_min(1e-6).log()


def _coverage_nll(probs: torch.Tensor, label_sets: torch.Tensor, g: int) -> torch.Tensor:
    """-log of the best window's mass on each label (multiple-instance learning: some window of
    the patch shows the label), mean over the patches' labels. ``probs`` (B * g, K),
    ``label_sets`` (B, L, K)."""
    b = label_sets.shape[0]
    p = torch.einsum("bwk,blk->bwl", probs.reshape(b, g, -1), label_sets)  # (B, g, L)
    nll = -p.amax(dim=1).clamp_min(1e-6).log()                             # (B, L)
    valid = label_sets.any(-1).float()
    return (nll * valid).sum() / valid.sum().clamp_min(1.0)


def _train(net: nn.Module, data: LabelledPatches, norm: dict[str, list[float]], size: int,
           cfg: FinetuneConfig, progress: bool) -> list[float]:
    from geoflow.model.networks import prepare_inputs

    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    n = len(data)
    steps_per_epoch = max(1, math.ceil(n * cfg.crops / cfg.batch_size))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr,
                                                # at least 10: OneCycleLR divides by
                                                # its warm-up steps (0 on a tiny run)
                                                total_steps=max(10, cfg.epochs
                                                                * steps_per_epoch + 1),
                                                pct_start=0.2)
    sets_all = torch.as_tensor(data.label_sets, dtype=torch.float32)
    allowed_all = sets_all.amax(dim=1)
    history = []
    net.train()
    for epoch in range(cfg.epochs):
        order = rng.permutation(np.repeat(np.arange(n), cfg.crops))
        total, count = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            s2, s1, cl, g = _grids(data, idx, size, rng)
            if len(s2) < 2:
                continue  # BatchNorm needs two samples
            drop = np.repeat(rng.random(len(idx)) < cfg.sar_dropout, g)
            s1[drop] = np.nan
            b = prepare_inputs(s2, s1, cl, norm)
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            for key in ("opt", "sar"):
                x = torch.rot90(b[key], k, dims=(2, 3))
                b[key] = torch.flip(x, dims=(3,)) if flip else x
            out = net(b)
            allowed = allowed_all[idx].repeat_interleave(g, dim=0)
            vis = 1.0 - b["cloud_frac"].float()
            avail = b["sar_avail"].float()
            loss = (_mass_nll(out["probs"], allowed)
                    + 0.5 * (vis * _mass_nll(out["p_opt"], allowed)
                             + avail * _mass_nll(out["p_sar"], allowed))).mean()
            if cfg.coverage > 0:
                loss = loss + cfg.coverage * _coverage_nll(out["probs"], sets_all[idx], g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        history.append(round(total / max(count, 1), 4))
        if progress:
            print(f"  epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]:.3f}", flush=True)
    net.eval()
    return history


def fit_rates(model: Any, data: LabelledPatches) -> dict[str, Any]:
    """Window and patch fit of a loaded model on patches (centred windows of its patch size).

    Returns
    -------
    dict
        ``window_fit``, ``patch_fit``, ``clear_window_fit`` (None without clear patches),
        ``patches``, ``windows``, ``sar_weight``.

    Examples
    --------
    >>> fit_rates(geoflow.model.load(), test)["window_fit"]  # doctest: +SKIP
    0.84
    """
    return _rates(data, *_window_predictions(model, data))


def _window_predictions(model: Any, data: LabelledPatches
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Patch index, class, probabilities and SAR weight of every window of ``data``."""
    from geoflow.model.bigearthnet import cut_windows

    w = cut_windows(data, model.patch_size)  # the same windows as `geoflow evaluate --real`
    pred = model.predict(w["s2"], w["s1"], w["cloud"])
    return w["patch"], pred.labels.astype(int), pred.probs, pred.sar_weight


def _rates(data: LabelledPatches, patch: np.ndarray, labels: np.ndarray, probs: np.ndarray,
           sar_weight: np.ndarray) -> dict[str, Any]:
    from geoflow.model.evaluate_real import _score  # the fit rules of `geoflow evaluate --real`

    cond_p = np.where(data.clear, "clear", "other")
    rows = _score(labels, data.allowed, patch, cond_p[patch], cond_p, probs)["rows"]
    return {"patches": len(data), "windows": len(labels),
            "window_fit": rows["all"]["window_fit"], "patch_fit": rows["all"]["patch_fit"],
            "clear_window_fit": rows["clear"]["window_fit"],
            "sar_weight": round(float(sar_weight.mean()), 4)}


def _cross_validate(patches: LabelledPatches, start: Path, classes: tuple[str, ...],
                    colors: tuple[str, ...], cfg: FinetuneConfig, progress: bool
                    ) -> dict[str, Any]:
    """Grouped K-fold: fine-tune K times from the start, each tested on the fold it left
    out; the fit rates of the out-of-fold predictions of all patches."""
    from geoflow.model.checkpoint import read_checkpoint
    from geoflow.model.predict import LoadedModel, resolve_device

    fold = fold_groups(patches.groups, cfg.folds)
    parts: list[tuple[np.ndarray, ...]] = []
    per_fold = []
    for f in range(cfg.folds):
        train_idx, test_idx = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        ckpt = read_checkpoint(start)  # every fold starts from the same weights
        net, spec = _start_network(ckpt, classes)
        norm = ckpt.meta["norm"]
        if progress:
            print(f"fold {f + 1}/{cfg.folds}: {len(train_idx)} patches train, "
                  f"{len(test_idx)} test", flush=True)
        _train(net, patches.subset(train_idx), norm, int(ckpt.meta["patch_size"]), cfg, progress)
        model = LoadedModel(_as_checkpoint(net, spec, ckpt, classes, colors, norm),
                            resolve_device("cpu"))
        test = patches.subset(test_idx)
        patch, labels, probs, sar_weight = _window_predictions(model, test)
        parts.append((test_idx[patch], labels, probs, sar_weight))
        per_fold.append({"groups": sorted(set(test.groups)), "patches": len(test_idx),
                         "after": _rates(test, patch, labels, probs, sar_weight)})
    patch, labels, probs, sar_weight = (np.concatenate(a) for a in zip(*parts, strict=True))
    return {"folds": cfg.folds, "after": _rates(patches, patch, labels, probs, sar_weight),
            "per_fold": per_fold}


def finetune(data: str, out_dir: str | os.PathLike[str], config: FinetuneConfig | None = None,
             *, start: str | os.PathLike[str] | None = None,
             cache: str | os.PathLike[str] | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Fine-tune a student on real labelled patches; write ``OUT/finetuned.safetensors``.

    Parameters
    ----------
    data
        ``bigearthnet`` (the public development set; the held-out pairs are never used),
        ``bigearthnet:PATH`` or a :class:`~geoflow.model.loaders.PatchFolderDataset` CSV.
    out_dir
        Output folder (created): the checkpoint and ``finetune_report.json``.
    config
        :class:`FinetuneConfig`.
    start
        The student to start from: a checkpoint, a training folder or a registry name
        (default: the shipped weights).
    cache
        Cache of the public samples (default ``$GEOFLOW_CACHE/bigearthnet``).
    progress
        Print one line per epoch.

    Returns
    -------
    dict
        ``checkpoint``, ``version``, ``classes``, ``train`` (patches, groups), ``test``
        (groups, ``before`` and ``after`` fit rates; None with ``folds``), ``cv`` (with
        ``folds``: ``before`` and out-of-fold ``after`` fit rates over all patches,
        ``per_fold``; else None), ``loss``, ``seconds``.

    Examples
    --------
    See the module docstring.
    """
    from geoflow.model.bigearthnet import BEN19, BEN19_COLORS
    from geoflow.model.checkpoint import read_checkpoint, save_checkpoint
    from geoflow.model.predict import LoadedModel, load, resolve_device
    from geoflow.model.registry import resolve_model

    cfg = config or FinetuneConfig()
    cfg.validate()
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads or min(2, os.cpu_count() or 1))
    start_path = resolve_model(start)  # None: the shipped weights
    start_model = load(start_path, device="cpu")  # a folder stands for its checkpoint
    ckpt = read_checkpoint(start_model.path)  # the copy that trains
    if cfg.classes == "ben19":
        if data.split(":", 1)[0].strip().lower() != "bigearthnet":
            raise ModelError("classes='ben19' needs BigEarthNet data",
                             hint="fine-tune on 'bigearthnet[:PATH]', or keep the model's classes")
        classes, colors = tuple(BEN19), tuple(BEN19_COLORS)
    else:
        classes, colors = tuple(ckpt.meta["classes"]), tuple(ckpt.meta["colors"])
    patches = load_labelled(data, classes, cache=cache)
    size = int(ckpt.meta["patch_size"])
    if min(patches.s2.shape[2:]) < size:
        raise ModelError(f"the patches are {patches.s2.shape[2]} px, smaller than the model's "
                         f"{size} px windows", hint=f"use patches of at least {size} px")
    same_scheme = classes == tuple(ckpt.meta["classes"])
    cv: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    if cfg.folds:
        cv = {"before": fit_rates(start_model, patches) if same_scheme else None,
              **_cross_validate(patches, ckpt.path, classes, colors, cfg, progress)}
        # The folds measured the recipe; the checkpoint learns from every patch.
        train_set, test_set = patches, None
        test_groups: list[str] = []
    else:
        train_idx, test_idx, test_groups = split_groups(patches.groups, cfg.test_fraction,
                                                        cfg.seed)
        train_set, test_set = patches.subset(train_idx), patches.subset(test_idx)
        before = fit_rates(start_model, test_set) if same_scheme else None

    net, spec = _start_network(ckpt, classes)
    norm = ckpt.meta["norm"]
    loss = _train(net, train_set, norm, size, cfg, progress)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    training = {"finetune": asdict(cfg), "data": data, "start": str(start_path),
                "start_version": ckpt.meta["version"],
                "train_patches": len(train_set), "train_groups": sorted(set(train_set.groups)),
                "dropped_no_class": patches.dropped,
                "test_groups": test_groups, "loss": loss}
    net.eval()
    model = LoadedModel(_as_checkpoint(net, spec, ckpt, classes, colors, norm),
                        resolve_device("cpu"))
    if test_set is not None:
        test = {"patches": len(test_set), "groups": test_groups, "before": before,
                "after": fit_rates(model, test_set)}
        metrics = {"real_test": {"before": before, "after": test["after"]}}
    else:
        test, metrics = None, {"real_cv": {k: v for k, v in (cv or {}).items()
                                           if k != "per_fold"}}
    meta = save_checkpoint(out / FINETUNED, net, spec, stage="finetuned", norm=norm,
                           training=training, metrics=metrics, classes=classes, colors=colors)
    report = {"checkpoint": str(out / f"{FINETUNED}.safetensors"), "version": meta["version"],
              "classes": list(classes),
              "train": {"patches": len(train_set), "groups": len(set(train_set.groups))},
              "dropped": {"patches": len(patches.dropped), "ids": patches.dropped,
                          "why": "no label with a class in the scheme"},
              "test": test, "cv": cv, "loss": loss, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "finetune_report.json").write_text(json.dumps(report, indent=2))
    return report


def _as_checkpoint(net: nn.Module, spec: Any, ckpt: Any, classes: tuple[str, ...],
                   colors: tuple[str, ...], norm: dict[str, list[float]]) -> Any:
    """An in-memory :class:`Checkpoint` of ``net`` (for evaluating before saving)."""
    from geoflow.model.checkpoint import Checkpoint

    meta = {**ckpt.meta, "classes": list(classes), "colors": list(colors), "norm": norm,
            "architecture": {**ckpt.meta["architecture"], "n_classes": len(classes)},
            "stage": "finetuned", "version": "unsaved", "checksum": "unsaved"}
    return Checkpoint(spec=spec, meta=meta, network=net, path=Path("unsaved"))


__all__ = ["FINETUNED", "FinetuneConfig", "LabelledPatches", "finetune", "fit_rates",
           "fold_groups", "load_labelled", "split_groups"]
