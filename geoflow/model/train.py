"""Collaborative transfer training: source model, step F1 (auxiliaries), step F2 (students).

Stages, each written as a checkpoint in the output directory (``NAME.safetensors`` +
``NAME.json``) and recorded in ``train_state.json`` so an interrupted run resumes after the last
finished stage:

1. ``source`` — f_S, optical, supervised on labelled clear source patches.
2. ``aux_optical`` and ``aux_sar`` — step F1. f_S labels the target domain's cloudy optical
   patches; a pseudo-label is kept only if f_S is confident (``conf_threshold``) *and* the patch
   is mostly visible (cloud fraction < ``max_cloud``): FACTS.md's trial showed that confidence
   alone keeps mostly wrong labels under cloud. Hard pseudo-labels plus temperature-scaled soft
   targets train f_Opt (initialised from f_S) and f_SAR.
3. ``fused_uniform`` and ``student_irm`` — step F2. The fused student is distilled from the
   three teachers on *all* target patches (no filtering) with per-sample teacher weights from
   :func:`geoflow.model.irm.irm_weights` (``irm``) or equal weights (``uniform``, the
   ablation). Its gate learns the SAR teacher's weight, which becomes ``sar_weight`` at
   inference time.

The networks are in :mod:`geoflow.model.networks`; this module only holds the loops.

Examples
--------
>>> from geoflow.model.train import TrainConfig, train
>>> summary = train("/tmp/geoflow-tiny", TrainConfig(size="tiny"), progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoflow._jsonfile import write_json
from geoflow.errors import ModelError
from geoflow.model.checkpoint import checkpoint_paths, read_checkpoint, save_checkpoint
from geoflow.model.data import CLOUD_BINS, PatchSet, make_patches, norm_stats, split_seed
from geoflow.model.irm import irm_weights
from geoflow.model.networks import (
    ArchSpec,
    OpticalNet,
    SarNet,
    StudentNet,
    build_network,
    prepare_inputs,
)

STAGES = ("source", "aux_optical", "aux_sar", "fused_uniform", "student_irm")
STATE_FILE = "train_state.json"

#: Dataset sizes and epochs per preset. "demo" is the shipped model; "tiny" is for tests.
SIZES: dict[str, dict[str, int]] = {
    "demo": {"n_source": 3000, "n_target": 4000, "n_val": 1000, "epochs_source": 6,
             "epochs_aux": 8, "epochs_student": 6},
    "small": {"n_source": 1500, "n_target": 2000, "n_val": 600, "epochs_source": 6,
              "epochs_aux": 8, "epochs_student": 6},
    "tiny": {"n_source": 256, "n_target": 400, "n_val": 128, "epochs_source": 4,
             "epochs_aux": 12, "epochs_student": 3},
}


@dataclass
class TrainConfig:
    """Settings of a training run (all recorded in every checkpoint's ``training``).

    Parameters
    ----------
    size
        Preset of :data:`SIZES` (``demo``, ``small``, ``tiny``).
    seed
        Base seed: world areas and initialisation.
    epochs
        Override every stage's epochs (None: the preset's).
    patch_size, width, depth
        Architecture.
    batch_size, lr
        Optimiser settings.
    temperature
        Softening of teacher targets (F1 soft targets, F2 distillation).
    conf_threshold, max_cloud
        F1 pseudo-label filter: f_S confidence above, cloud fraction below.
    gamma, beta, k0
        IRM settings (see :mod:`geoflow.model.irm`).
    opt_branch_lr
        Learning-rate factor of the student's optical branch (warm-started from f_Opt).
    opt_branch_target
        What the student's optical branch learns from: ``"mixture"`` (the IRM-weighted mixture
        of all teachers) or ``"optical"`` (the optical teachers only).
    freeze_opt_bn
        Keep the BatchNorm statistics of the student's optical branch from f_Opt.
    threads
        torch CPU threads (None: up to 2).
    """

    size: str = "demo"
    seed: int = 0
    epochs: int | None = None
    patch_size: int = 32
    width: int = 16
    depth: int = 1
    batch_size: int = 128
    lr: float = 3e-3
    temperature: float = 2.0
    conf_threshold: float = 0.9
    max_cloud: float = 0.3
    gamma: float = 1.0
    beta: float = 4.0
    k0: float = 2.0
    opt_branch_lr: float = 0.3
    opt_branch_target: str = "mixture"
    freeze_opt_bn: bool = True
    threads: int | None = None
    sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ModelError(f"unknown training size {self.size!r}",
                             hint=f"use one of {', '.join(SIZES)}")
        self.sizes = {**SIZES[self.size], **self.sizes}
        ArchSpec("student", 10, self.width, self.depth, self.patch_size).validate()  # fail early
        if self.opt_branch_target not in ("mixture", "optical"):
            raise ModelError(f"opt_branch_target must be 'mixture' or 'optical', not "
                             f"{self.opt_branch_target!r}", hint="use 'mixture'")
        if self.epochs is not None:
            if self.epochs < 1:
                raise ModelError(f"epochs must be >= 1, not {self.epochs}", hint="--epochs 8")
            for k in ("epochs_source", "epochs_aux", "epochs_student"):
                self.sizes[k] = int(self.epochs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("threads")  # does not change the result's meaning
        return d


# --------------------------------------------------------------------------- loops


class _Progress:
    """rich progress bars on stderr, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._p: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import TextColumn

            from geoflow._progress import progress_bar

            self._p = progress_bar(TextColumn("{task.fields[info]}"))
            self._p.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def task(self, desc: str, total: int) -> Any:
        return None if self._p is None else self._p.add_task(desc, total=total, info="")

    def advance(self, task: Any, info: str = "") -> None:
        if self._p is not None and task is not None:
            self._p.update(task, advance=1, info=info)

    def log(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.print(msg)


def _batches(n: int, bs: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for i in range(0, n, bs):
        idx = order[i:i + bs]
        if len(idx) >= 2:  # BatchNorm needs two samples
            yield np.sort(idx)


def _inputs(ds: PatchSet, idx: np.ndarray, norm: dict[str, list[float]],
            rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    b = prepare_inputs(ds.s2[idx], ds.s1[idx], ds.cloud[idx], norm)
    if rng is not None:  # the same random rot90 / flip for the whole batch: labels are invariant
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        for key in ("opt", "sar"):
            x = torch.rot90(b[key], k, dims=(2, 3))
            b[key] = torch.flip(x, dims=(3,)) if flip else x
    return b


def _fit(net: nn.Module, ds: PatchSet, subset: np.ndarray, norm: dict[str, list[float]],
         loss_fn: Callable[[dict[str, torch.Tensor], np.ndarray], torch.Tensor], *,
         epochs: int, cfg: TrainConfig, rng: np.random.Generator, progress: _Progress,
         desc: str, param_groups: Callable[[nn.Module, float], list[dict]] | None = None,
         train_mode: Callable[[nn.Module], None] | None = None) -> list[float]:
    """Train ``net`` on ``ds[subset]`` with ``loss_fn(output, dataset_indices)``."""
    if len(subset) < 2:
        raise ModelError(f"stage {desc}: only {len(subset)} training samples",
                         hint="use a larger --size or lower the pseudo-label thresholds")
    groups: list[dict[str, Any]] = (param_groups(net, cfg.lr) if param_groups else
                                    [{"params": net.parameters(), "lr": cfg.lr}])
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=1e-4)
    steps = epochs * max(1, len(subset) // cfg.batch_size + 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[float(g["lr"]) for g in groups],
                                                total_steps=steps + 1, pct_start=0.15)
    task = progress.task(desc, epochs)
    history: list[float] = []
    net.train()
    if train_mode is not None:
        train_mode(net)
    for _ in range(epochs):
        total, count = 0.0, 0
        for bidx in _batches(len(subset), cfg.batch_size, rng):
            idx = subset[bidx]
            out = net(_inputs(ds, idx, norm, rng))
            loss = loss_fn(out, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        history.append(total / max(count, 1))
        progress.advance(task, f"loss {history[-1]:.3f}")
    net.eval()
    return history


@torch.no_grad()
def forward_all(net: nn.Module, ds: PatchSet, norm: dict[str, list[float]],
                bs: int = 512) -> dict[str, torch.Tensor]:
    """Run a network over a whole patch set (eval mode); concatenated outputs."""
    net.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(ds), bs):
        idx = np.arange(i, min(i + bs, len(ds)))
        for k, v in net(_inputs(ds, idx, norm)).items():
            outs.setdefault(k, []).append(v.float())
    return {k: torch.cat(v) for k, v in outs.items()}


def _soft(logits: torch.Tensor, t: float) -> torch.Tensor:
    return (logits / t).softmax(-1)


def _kd(logits: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
    """Per-sample temperature-scaled distillation loss (cross-entropy to soft targets) * T^2."""
    return -(target * F.log_softmax(logits / t, dim=-1)).sum(-1) * t * t


def _accuracy(probs: torch.Tensor, label: np.ndarray) -> float:
    return float((probs.argmax(1).numpy() == label).mean()) if len(label) else float("nan")


def _acc_by_cloud(probs: torch.Tensor, ds: PatchSet) -> dict[str, float | None]:
    pred = probs.argmax(1).numpy()
    res: dict[str, float | None] = {}
    for name, lo, hi in CLOUD_BINS:
        m = (ds.cloud_frac >= lo) & (ds.cloud_frac < hi)
        res[name] = round(float((pred[m] == ds.label[m]).mean()), 4) if m.any() else None
    return res


# --------------------------------------------------------------------------- stages


def train_source(src: PatchSet, norm: dict[str, list[float]], cfg: TrainConfig, *,
                 rng: np.random.Generator, progress: _Progress) -> tuple[nn.Module, dict]:
    """f_S: optical classifier, supervised on labelled clear source patches."""
    spec = ArchSpec("optical", 10, cfg.width, cfg.depth, cfg.patch_size)
    net = build_network(spec)
    lab = torch.as_tensor(src.label)
    hist = _fit(net, src, np.arange(len(src)), norm,
                lambda out, idx: F.cross_entropy(out["logits"], lab[idx], label_smoothing=0.05),
                epochs=cfg.sizes["epochs_source"], cfg=cfg, rng=rng, progress=progress,
                desc="source f_S")
    return net, {"loss": hist}


def pseudo_label_filter(probs: torch.Tensor, cloud_frac: np.ndarray, *, conf_threshold: float,
                        max_cloud: float) -> np.ndarray:
    """Indices kept by the F1 filter: confident *and* mostly visible.

    Examples
    --------
    >>> import torch, numpy as np
    >>> p = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4]])
    >>> pseudo_label_filter(p, np.array([0.1, 0.8, 0.0]), conf_threshold=0.9,
    ...                     max_cloud=0.3).tolist()
    [0]
    """
    conf = probs.max(1).values.numpy()
    return np.flatnonzero((conf > conf_threshold) & (np.asarray(cloud_frac) < max_cloud))


def train_auxiliaries(f_s: nn.Module, tgt: PatchSet, norm: dict[str, list[float]],
                      cfg: TrainConfig, *, rng: np.random.Generator,
                      progress: _Progress) -> tuple[nn.Module, nn.Module, dict]:
    """Step F1: pseudo-label the target domain with f_S and train f_Opt and f_SAR."""
    out = forward_all(f_s, tgt, norm)
    keep = pseudo_label_filter(out["probs"], tgt.cloud_frac, conf_threshold=cfg.conf_threshold,
                               max_cloud=cfg.max_cloud)
    if len(keep) < 32:  # too strict for this model: keep the most confident visible quarter
        conf = out["probs"].max(1).values.numpy()
        vis = np.flatnonzero(tgt.cloud_frac < cfg.max_cloud)
        keep = np.sort(vis[np.argsort(-conf[vis])][: max(32, len(vis) // 4)])
    hard = out["probs"].argmax(1)
    soft = _soft(out["logits"], cfg.temperature)
    t = cfg.temperature

    def loss(o: dict[str, torch.Tensor], idx: np.ndarray) -> torch.Tensor:
        return (F.cross_entropy(o["logits"], hard[idx]) + _kd(o["logits"], soft[idx], t).mean())

    spec_o = ArchSpec("optical", 10, cfg.width, cfg.depth, cfg.patch_size)
    f_opt = build_network(spec_o)
    f_opt.load_state_dict(f_s.state_dict())  # adapt f_S to the target domain
    h_opt = _fit(f_opt, tgt, keep, norm, loss, epochs=cfg.sizes["epochs_aux"], cfg=cfg, rng=rng,
                 progress=progress, desc="F1 aux optical f_Opt")
    has_sar = np.isfinite(tgt.s1[keep, 0, 0, 0].astype(np.float32))
    spec_s = ArchSpec("sar", 10, cfg.width, cfg.depth, cfg.patch_size)
    f_sar = build_network(spec_s)
    h_sar = _fit(f_sar, tgt, keep[has_sar], norm, loss, epochs=cfg.sizes["epochs_aux"], cfg=cfg,
                 rng=rng, progress=progress, desc="F1 aux SAR f_SAR")
    pl_acc = float((hard[keep].numpy() == tgt.label[keep]).mean())
    info = {"pseudo_labels_kept": len(keep), "pseudo_labels_fraction": len(keep) / len(tgt),
            "pseudo_label_accuracy": round(pl_acc, 4), "loss_aux_optical": h_opt,
            "loss_aux_sar": h_sar}
    return f_opt, f_sar, info


def teacher_targets(teachers: dict[str, nn.Module], tgt: PatchSet, norm: dict[str, list[float]],
                    cfg: TrainConfig, mode: str) -> dict[str, torch.Tensor]:
    """Soft targets and IRM (or uniform) weights for every target patch."""
    outs = {name: forward_all(net, tgt, norm) for name, net in teachers.items()}
    cf = torch.as_tensor(tgt.cloud_frac, dtype=torch.float32)
    avail = torch.as_tensor(np.isfinite(tgt.s1[:, 0].astype(np.float32)).any(axis=(1, 2)),
                            dtype=torch.float32)
    w = irm_weights(outs["source"]["probs"], outs["aux_optical"]["probs"],
                    outs["aux_sar"]["probs"], cloud_frac=cf, sar_avail=avail, gamma=cfg.gamma,
                    beta=cfg.beta, k0=cfg.k0, mode=mode)
    soft = torch.stack([_soft(outs[n]["logits"], cfg.temperature)
                        for n in ("source", "aux_optical", "aux_sar")], dim=1)  # (N, 3, K)
    target = (w[:, :, None] * soft).sum(1)
    w_opt = w[:, :2] + 1e-6
    target_opt = ((w_opt / w_opt.sum(1, keepdim=True))[:, :, None] * soft[:, :2]).sum(1)
    return {"weights": w, "target": target, "target_opt": target_opt, "avail": avail,
            "visible": 1.0 - cf}


def train_student(teachers: dict[str, nn.Module], tgt: PatchSet, norm: dict[str, list[float]],
                  cfg: TrainConfig, mode: str, *, rng: np.random.Generator,
                  progress: _Progress) -> tuple[nn.Module, dict]:
    """Step F2: distil the fused student from the three teachers with IRM or uniform weights.

    Loss per sample, with ``y`` the IRM-weighted (or uniform) mixture of the teachers' soft
    targets and ``v`` the visible fraction:
    ``CE(y, fused) + 0.5 * (CE(y, p_sar_branch) + v * CE(y_o, p_opt_branch)) + BCE(gate, w_SAR)``
    where ``y_o = y`` by default (``opt_branch_target="optical"``: the optical teachers' mixture
    alone; it made no measurable difference in our runs). The branch terms make each branch a
    classifier on its own, so the gated mixture can switch between them; the SAR branch learns
    from ``y`` everywhere, i.e. from the optical teachers where the patch is clear; the optical
    branch learns less where less is visible. The gate learns the SAR teacher's weight. What
    kept the clear-sky accuracy of the source model: the optical branch is warm-started from
    f_Opt, fine-tuned at ``opt_branch_lr`` x the learning rate, with its BatchNorm statistics
    frozen (``freeze_opt_bn``).
    """
    spec = ArchSpec("student", 10, cfg.width, cfg.depth, cfg.patch_size)
    net = cast(StudentNet, build_network(spec))
    # Warm start from the auxiliaries: the student's branches begin as f_Opt and f_SAR.
    f_opt, f_sar = cast(OpticalNet, teachers["aux_optical"]), cast(SarNet, teachers["aux_sar"])
    net.enc_opt.load_state_dict(f_opt.enc.state_dict())
    net.head_opt.load_state_dict(f_opt.head.state_dict())
    net.enc_sar.load_state_dict(f_sar.enc.state_dict())
    net.head_sar.load_state_dict(f_sar.head.state_dict())
    tt = teacher_targets(teachers, tgt, norm, cfg, mode)
    y, w_sar, avail, vis = tt["target"], tt["weights"][:, 2], tt["avail"], tt["visible"]
    y_opt = tt["target_opt"] if cfg.opt_branch_target == "optical" else y

    def loss(o: dict[str, torch.Tensor], idx: np.ndarray) -> torch.Tensor:
        yi = y[idx]
        fused = -(yi * o["probs"].clamp_min(1e-8).log()).sum(-1)
        b_sar = -(yi * F.log_softmax(o["logits_sar"], -1)).sum(-1) * avail[idx]
        b_opt = -(y_opt[idx] * F.log_softmax(o["logits_opt"], -1)).sum(-1) * vis[idx]
        gate = F.binary_cross_entropy_with_logits(o["gate_logit"], w_sar[idx],
                                                  reduction="none") * avail[idx]
        return (fused + 0.5 * (b_sar + b_opt) + gate).mean()

    def groups(n: nn.Module, lr: float) -> list[dict]:
        # The optical branch starts as f_Opt, already right on clear patches: fine-tune it
        # gently so the student keeps the source model's clear-sky accuracy.
        opt_branch = [*net.enc_opt.parameters(), *net.head_opt.parameters()]
        ids = {id(p) for p in opt_branch}
        rest = [p for p in n.parameters() if id(p) not in ids]
        return [{"params": opt_branch, "lr": lr * cfg.opt_branch_lr},
                {"params": rest, "lr": lr}]

    def freeze_opt_bn(n: nn.Module) -> None:
        # Keep the optical branch's BatchNorm statistics those of f_Opt (mostly visible
        # patches): updating them on the whole target domain, half of it under thick cloud,
        # shifted clear-patch features and cost the student ~0.8 points on clear patches.
        if cfg.freeze_opt_bn:
            for m in net.enc_opt.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()

    hist = _fit(net, tgt, np.arange(len(tgt)), norm, loss, epochs=cfg.sizes["epochs_student"],
                cfg=cfg, rng=rng, progress=progress, desc=f"F2 student ({mode})",
                param_groups=groups, train_mode=freeze_opt_bn)
    mean_w = {name: round(float(tt["weights"][:, i].mean()), 4)
              for i, name in enumerate(("source", "aux_optical", "aux_sar"))}
    return net, {"loss": hist, "teacher_weight_mean": mean_w}


# --------------------------------------------------------------------------- driver


def _load_state(out: Path, cfg: TrainConfig) -> dict[str, Any]:
    f = out / STATE_FILE
    if not f.is_file():
        return {"config": cfg.to_dict(), "done": [], "stages": {}}
    try:
        state = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        raise ModelError(f"{f} is not readable JSON",
                         hint="delete it to start the run from scratch") from None
    new = cfg.to_dict()
    old = state.get("config") or {}
    if old != new:
        diff = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
                         for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        raise ModelError(f"{out} holds a training run with other settings ({diff})",
                         hint="use another --out directory, or repeat the same options to "
                         "resume that run")
    return state


def _save_state(out: Path, state: dict[str, Any]) -> None:
    write_json(out / STATE_FILE, state, indent=2)


def train(out_dir: str | os.PathLike[str], config: TrainConfig | None = None, *,
          progress: bool = True) -> dict[str, Any]:
    """Run all stages, writing each stage's checkpoint into ``out_dir``; resume if interrupted.

    Parameters
    ----------
    out_dir
        Directory for the stage checkpoints and ``train_state.json``.
    config
        Settings (default :class:`TrainConfig`).
    progress
        Show rich progress bars on stderr.

    Returns
    -------
    dict
        ``out`` (directory), ``stages`` (per stage: seconds, validation accuracy, ...),
        ``seconds`` (this call), ``resumed`` (stages loaded instead of trained).

    Examples
    --------
    >>> from geoflow.model.train import TrainConfig, train
    >>> cfg = TrainConfig(size="tiny", epochs=1)
    >>> s = train("/tmp/gf-tiny", cfg, progress=False)  # doctest: +SKIP
    >>> sorted(s["stages"])  # doctest: +SKIP
    ['aux_optical', 'aux_sar', 'fused_uniform', 'source', 'student_irm']
    """
    cfg = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out, cfg)
    threads = cfg.threads or min(2, os.cpu_count() or 1)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    t_call = time.perf_counter()
    try:
        return _train(out, cfg, state, progress, t_call)
    finally:
        torch.set_num_threads(old_threads)


def _train(out: Path, cfg: TrainConfig, state: dict[str, Any], show: bool,
           t_call: float) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sz = cfg.sizes
    t0 = time.perf_counter()
    src = make_patches(split_seed(cfg.seed, "source"), "source", sz["n_source"], cfg.patch_size)
    tgt = make_patches(split_seed(cfg.seed, "target"), "target", sz["n_target"], cfg.patch_size)
    val = make_patches(split_seed(cfg.seed, "val"), "target", sz["n_val"], cfg.patch_size)
    t_data = time.perf_counter() - t0
    norm = norm_stats(src, tgt)
    data_summary = {"source": src.summary(), "target": tgt.summary(), "val": val.summary(),
                    "world_seeds": {k: split_seed(cfg.seed, k) for k in ("source", "target",
                                                                          "val")},
                    "generation_seconds": round(t_data, 1)}
    training = {"config": cfg.to_dict(), "data": data_summary}
    nets: dict[str, nn.Module] = {}
    resumed: list[str] = []

    def finished(name: str) -> bool:
        return name in state["done"] and checkpoint_paths(out / name)[1].is_file()

    def spec_of(name: str) -> ArchSpec:
        arch = {"source": "optical", "aux_optical": "optical", "aux_sar": "sar"}.get(name,
                                                                                   "student")
        return ArchSpec(arch, 10, cfg.width, cfg.depth, cfg.patch_size)

    def record(name: str, net: nn.Module, t_stage: float, extra: dict[str, Any]) -> None:
        vo = forward_all(net, val, norm)
        metrics = {"val_oa": round(_accuracy(vo["probs"], val.label), 4),
                   "val_oa_by_cloud": _acc_by_cloud(vo["probs"], val)}
        info = {**extra, "seconds": round(t_stage, 1)}
        save_checkpoint(out / name, net, spec_of(name), stage=name, norm=norm,
                        training={**training, "stage": info}, metrics=metrics)
        state["done"] = [s for s in state["done"] if s != name] + [name]
        state["stages"][name] = {**metrics, "seconds": info["seconds"]}
        _save_state(out, state)
        prog.log(f"[green]{name}[/green]: val OA {metrics['val_oa']:.3f} "
                 f"{metrics['val_oa_by_cloud']} ({t_stage:.0f} s)")

    def restore(name: str) -> nn.Module:
        ck = read_checkpoint(out / name)
        resumed.append(name)
        return ck.network

    with _Progress(show) as prog:
        prog.log(f"data: {len(src)} source, {len(tgt)} target, {len(val)} val patches "
                 f"({t_data:.0f} s)")
        # source
        if finished("source"):
            nets["source"] = restore("source")
        else:
            t = time.perf_counter()
            net, info = train_source(src, norm, cfg, rng=rng, progress=prog)
            nets["source"] = net
            record("source", net, time.perf_counter() - t, info)
        # F1
        if finished("aux_optical") and finished("aux_sar"):
            nets["aux_optical"] = restore("aux_optical")
            nets["aux_sar"] = restore("aux_sar")
        else:
            t = time.perf_counter()
            f_opt, f_sar, info = train_auxiliaries(nets["source"], tgt, norm, cfg, rng=rng,
                                                   progress=prog)
            dt = time.perf_counter() - t
            nets["aux_optical"], nets["aux_sar"] = f_opt, f_sar
            prog.log(f"F1 pseudo-labels kept: {info['pseudo_labels_kept']} "
                     f"({info['pseudo_labels_fraction']:.0%}), "
                     f"{info['pseudo_label_accuracy']:.0%} right")
            record("aux_optical", f_opt, dt / 2, info)
            record("aux_sar", f_sar, dt / 2, info)
        # F2
        teachers = {k: nets[k] for k in ("source", "aux_optical", "aux_sar")}
        for name, mode in (("fused_uniform", "uniform"), ("student_irm", "irm")):
            if finished(name):
                nets[name] = restore(name)
                continue
            t = time.perf_counter()
            torch.manual_seed(cfg.seed + 17)  # both students start alike: a fair ablation
            net, info = train_student(teachers, tgt, norm, cfg, mode, rng=rng, progress=prog)
            nets[name] = net
            record(name, net, time.perf_counter() - t, {**info, "weighting": mode})
    return {"out": str(out), "stages": state["stages"], "resumed": resumed,
            "seconds": round(time.perf_counter() - t_call, 1),
            "data_seconds": round(t_data, 1)}
