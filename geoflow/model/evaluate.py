"""Evaluate every stage of a training run on a held-out synthetic area.

``evaluate(path, seed=123)`` builds a target-domain test set (cloudy optical + SAR, cloud cover
0-100 %) from a world seed never used in training, runs the five models through the same
:meth:`LoadedModel.predict` a map uses, and reports per model: ``oa``, ``kappa``, ``macro_f1``,
``f1`` per class, ``oa_by_cloud`` over the bins 0-10, 10-30, 30-60, 60-90, 90-100 % and, for
every model, ``sar_weight_by_cloud`` (the mean predicted SAR weight per bin).

Examples
--------
>>> from geoflow.model.evaluate import evaluate
>>> report = evaluate(None, seed=123, n=300)  # the shipped weights  # doctest: +SKIP
>>> sorted(report["models"])  # doctest: +SKIP
['aux_optical', 'aux_sar', 'fused_uniform', 'source_only', 'student_irm']
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from geoflow.errors import CheckpointError
from geoflow.model.data import CLOUD_BINS, PatchSet, make_patches

#: Report name -> checkpoint (stage) name, in report order.
MODELS = {"source_only": "source", "aux_optical": "aux_optical", "aux_sar": "aux_sar",
          "fused_uniform": "fused_uniform", "student_irm": "student_irm"}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) confusion matrix, rows = truth."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def scores(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """Overall accuracy, Cohen's kappa, macro F1 and per-class F1.

    Classes absent from both truth and prediction get ``None`` and do not enter the macro mean.

    Examples
    --------
    >>> import numpy as np
    >>> s = scores(np.array([0, 1, 1]), np.array([0, 1, 0]), ("a", "b", "c"))
    >>> round(s["oa"], 3), s["f1"]["c"]
    (0.667, None)
    """
    k = len(classes)
    cm = confusion(np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64), k).astype(float)
    n = cm.sum()
    if n == 0:
        return {"n": 0, "oa": None, "kappa": None, "macro_f1": None, "f1": {}}
    oa = np.trace(cm) / n
    pe = (cm.sum(0) * cm.sum(1)).sum() / n**2
    kappa = (oa - pe) / (1 - pe) if pe < 1 else 1.0
    f1: dict[str, float | None] = {}
    for i, name in enumerate(classes):
        tp, fp, fn = cm[i, i], cm[:, i].sum() - cm[i, i], cm[i, :].sum() - cm[i, i]
        f1[name] = None if tp + fp + fn == 0 else round(float(2 * tp / (2 * tp + fp + fn)), 4)
    vals = [v for v in f1.values() if v is not None]
    return {"n": int(n), "oa": round(float(oa), 4), "kappa": round(float(kappa), 4),
            "macro_f1": round(float(np.mean(vals)), 4) if vals else None, "f1": f1}


def _bins(frac: np.ndarray) -> dict[str, np.ndarray]:
    return {name: (frac >= lo) & (frac < hi) for name, lo, hi in CLOUD_BINS}


def locate_models(path: str | os.PathLike[str] | None) -> dict[str, Path]:
    """Find the five stage checkpoints from a student checkpoint or a training directory.

    A file is the ``student_irm`` and its siblings are looked up beside it by stage name (so the
    shipped ``demo.safetensors`` finds ``source.safetensors`` etc. in the weights directory).
    """
    from geoflow.model import DEFAULT_CHECKPOINT
    from geoflow.model.checkpoint import train_dir_checkpoint

    p = Path(path) if path is not None else DEFAULT_CHECKPOINT
    found: dict[str, Path] = {}
    if p.is_dir():
        folder = p
        student = train_dir_checkpoint(folder)  # as predict.load and the registry read it
    else:
        if p.suffix not in (".safetensors", ".json"):
            p = p.with_name(p.name + ".safetensors")
        folder = p.parent
        student = p.with_suffix(".safetensors")
        if not p.with_suffix(".json").is_file():
            raise CheckpointError(f"checkpoint {p} does not exist",
                                  hint="pass a NAME.safetensors written by `geoflow train` or the "
                                  "directory given to `geoflow train --out`")
    for report, stage in MODELS.items():
        if report == "student_irm":
            if student is not None:
                found[report] = student
        elif (folder / f"{stage}.json").is_file():
            found[report] = folder / f"{stage}.safetensors"
    if not found:
        raise CheckpointError(f"no checkpoints found in {folder}",
                              hint="run `geoflow train --out DIR` first")
    return found


def evaluate(path: str | os.PathLike[str] | None = None, *, seed: int = 123, n: int = 4000,
             device: str = "auto", test: PatchSet | None = None,
             batch_size: int = 512) -> dict[str, Any]:
    """Evaluate every stage checkpoint found at ``path`` on a test area of world ``seed``.

    Parameters
    ----------
    path
        A student checkpoint (siblings are found beside it) or a ``geoflow train --out``
        directory; ``None``: the shipped demo weights.
    seed
        World seed of the test area (training used seeds above 1,000,000).
    n
        Number of test patches.
    device
        Inference device (``auto``, ``cpu``, ``cuda``).
    test
        A ready test set (skips generation; for tests).
    batch_size
        Patches per forward pass.

    Returns
    -------
    dict
        ``seed``, ``n``, ``bins`` (patch counts per cloud bin), ``models`` (per model: ``oa``,
        ``kappa``, ``macro_f1``, ``f1``, ``oa_by_cloud``, ``sar_weight_by_cloud``,
        ``checkpoint``, ``version``, ``patches_per_s``), ``missing`` (stages not found).

    Examples
    --------
    See the module docstring.
    """
    from geoflow.model._constants import CLASSES
    from geoflow.model.predict import load

    paths = locate_models(path)
    models = {name: load(p, device=device) for name, p in paths.items()}
    for name, model in models.items():
        if tuple(model.classes) != tuple(CLASSES):  # scores would compare unrelated indices
            raise CheckpointError(
                f"{model.path.name} ({name}) has {len(model.classes)} classes "
                f"({', '.join(list(model.classes)[:3])}, ...), not the synthetic world's ten",
                hint="the synthetic evaluation needs geoflow's ten classes; evaluate another "
                     "class scheme on real labels with `geoflow evaluate --real "
                     "bigearthnet[:PATH] --model ...`")
    patch = next(iter(models.values())).patch_size
    if test is None:
        test = make_patches(int(seed), "target", int(n), patch)
    classes = next(iter(models.values())).classes
    s2 = test.s2.astype(np.float32)
    s1 = test.s1.astype(np.float32)
    cl = test.cloud.astype(np.float32)
    bins = _bins(test.cloud_frac)
    report: dict[str, Any] = {
        "seed": int(seed), "n": len(test),
        "bins": {b: int(m.sum()) for b, m in bins.items()},
        "models": {}, "missing": [m for m in MODELS if m not in models],
    }
    for name, model in models.items():
        t = time.perf_counter()
        pred = model.predict(s2, s1, cl, batch_size=batch_size)
        dt = time.perf_counter() - t
        y = pred.labels.astype(np.int64)
        res = scores(test.label, y, classes)
        res["oa_by_cloud"] = {b: (round(float((y[m] == test.label[m]).mean()), 4)
                                  if m.any() else None) for b, m in bins.items()}
        res["sar_weight_by_cloud"] = {b: (round(float(pred.sar_weight[m].mean()), 4)
                                          if m.any() else None) for b, m in bins.items()}
        res["checkpoint"] = str(model.path)
        res["version"] = model.version
        res["patches_per_s"] = round(len(test) / max(dt, 1e-9), 1)
        report["models"][name] = res
    return report


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of a report (OA overall and per cloud bin, kappa, macro F1).

    Examples
    --------
    >>> r = {"bins": {"0-10": 1}, "models": {"m": {"oa": 0.5, "kappa": 0.1, "macro_f1": 0.2,
    ...      "oa_by_cloud": {"0-10": 0.5}, "sar_weight_by_cloud": {"0-10": 0.0}}}}
    >>> print(format_table(r).splitlines()[0].split()[:3])
    ['model', 'OA', 'kappa']
    """
    bins = list(report["bins"])
    head = f"{'model':<14} {'OA':>6} {'kappa':>6} {'mF1':>6} " + " ".join(
        f"{b:>7}" for b in bins)
    lines = [head]
    for name, r in report["models"].items():
        cells = " ".join(f"{100 * r['oa_by_cloud'][b]:7.1f}" if r["oa_by_cloud"].get(b) is not None
                         else f"{'-':>7}" for b in bins)
        lines.append(f"{name:<14} {100 * r['oa']:6.1f} {r['kappa']:6.3f} {r['macro_f1']:6.3f} "
                     f"{cells}")
    if "student_irm" in report["models"]:
        w = report["models"]["student_irm"]["sar_weight_by_cloud"]
        lines.append(f"{'SAR weight':<14} {'':>6} {'':>6} {'':>6} " + " ".join(
            f"{w[b]:7.2f}" if w.get(b) is not None else f"{'-':>7}" for b in bins))
    return "\n".join(lines)
