"""Evaluate a model on real BigEarthNet patches: ``geoflow evaluate --real bigearthnet[:PATH]``.

Each 120 px patch is cut into centred windows of the model's patch size (3 x 3 of 32 px) and
every window is classified with :meth:`LoadedModel.predict`, as a map would. A window *fits* if
its class is one the patch's CORINE labels allow (:data:`geoflow.model.bigearthnet.LABEL_TABLE`);
a patch fits if the majority class of its windows does. Reported, per set (public samples:
``dev`` = configilm's 54 pairs, ``heldout`` = bigearthnet-common's 6):

- window and patch fit for the student, the student without SAR (S1 set to missing) and the
  one-threshold NDWI rule (window mean NDWI = (B03 - B08) / (B03 + B08) > 0 -> Water, else
  Dense Forest), overall and by condition (clear / cloudy / snowy, the dataset's own flags);
- fit per label family (a patch counts in every family of its labels);
- the mean SAR weight by condition, and the distribution of predicted classes;
- the issue's targets as explicit rows: clear window fit of the student at least 5 points above
  the NDWI rule; at least half of the urban-labelled patches (urban fabric or industrial units)
  built-up (Residential, Sparsely Built or Industrial) by majority; no window of a snowy patch
  Industrial; every sea patch Water by majority.

The figures are a floor for honesty, not a benchmark: few patches from few acquisitions, and
lenient multi-label matching.

Examples
--------
>>> from geoflow.model.evaluate_real import evaluate_real, format_real
>>> report = evaluate_real("bigearthnet")            # doctest: +SKIP
>>> print(format_real(report))                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoflow.model.bigearthnet import (
    BenPatches,
    allowed_mask,
    cut_windows,
    families,
    open_sets,
)

#: Conditions in report order.
CONDITIONS = ("all", "clear", "cloudy", "snowy")
#: Classes counted as built-up for the urban target.
BUILT_UP = ("Residential", "Sparsely Built", "Industrial")


def ndwi_rule(s2: np.ndarray) -> np.ndarray:
    """The one-threshold baseline: (M,) class names, Water where the window's mean NDWI > 0,
    else Dense Forest.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.zeros((2, 10, 4, 4), np.float32); w[0, 1] = 0.1; w[1, 6] = 0.3
    >>> ndwi_rule(w).tolist()
    ['Water', 'Dense Forest']
    >>> ndwi_rule(np.full((1, 10, 4, 4), np.nan, np.float32)).tolist()
    ['Dense Forest']
    """
    from geoflow.sentinel import S2_BANDS

    g, n = s2[:, S2_BANDS.index("B03")], s2[:, S2_BANDS.index("B08")]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window: NaN, not Water
        ndwi = np.nanmean((g - n) / (g + n), axis=(1, 2))
    return np.where(ndwi > 0, "Water", "Dense Forest")


def patch_majority(pred: np.ndarray, patch: np.ndarray, n_patches: int, k: int,
                   probs: np.ndarray | None = None) -> np.ndarray:
    """(n_patches,) majority class index per patch; ties go to the higher summed probability
    (``probs`` (M, K); without it, to the lower class index). Fine-tuning's fit rates use it too.

    Examples
    --------
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.4, 0.6]])
    >>> patch_majority(np.array([0, 1]), np.array([0, 0]), 1, 2, probs).tolist()
    [0]
    """
    counts = np.zeros((n_patches, k))
    np.add.at(counts, (patch, pred), 1.0)
    if probs is not None:
        mass = np.zeros((n_patches, k))
        np.add.at(mass, patch, probs)
        counts += 1e-3 * mass / max(1.0, float(mass.max()))
    return counts.argmax(axis=1)


def _fit_rows(fit_w: np.ndarray, fit_p: np.ndarray, cond_w: np.ndarray, cond_p: np.ndarray
              ) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for c in CONDITIONS:
        mw = np.ones_like(fit_w, bool) if c == "all" else cond_w == c
        mp = np.ones_like(fit_p, bool) if c == "all" else cond_p == c
        rows[c] = {"windows": int(mw.sum()), "patches": int(mp.sum()),
                   "window_fit": round(float(fit_w[mw].mean()), 4) if mw.any() else None,
                   "patch_fit": round(float(fit_p[mp].mean()), 4) if mp.any() else None}
    return rows


def _score(pred: np.ndarray, allowed: np.ndarray, patch: np.ndarray, cond_w: np.ndarray,
           cond_p: np.ndarray, probs: np.ndarray | None = None) -> dict[str, Any]:
    n, k = allowed.shape
    fit_w = allowed[patch, pred]
    major = patch_majority(pred, patch, n, k, probs)
    fit_p = allowed[np.arange(n), major]
    return {"rows": _fit_rows(fit_w, fit_p, cond_w, cond_p), "fit_w": fit_w, "fit_p": fit_p,
            "major": major}


def _predict_windows(model: Any, patches: BenPatches, batch_size: int) -> dict[str, Any]:
    """Every window of ``patches``: its patch, the student's answer with and without SAR, and
    the NDWI rule's class index."""
    from geoflow.model._constants import CLASSES

    w = cut_windows(patches, model.patch_size)
    return {"patch": w["patch"],
            "pred": model.predict(w["s2"], w["s1"], w["cloud"], batch_size=batch_size),
            "no_sar": model.predict(w["s2"], np.full_like(w["s1"], np.nan), w["cloud"],
                                    batch_size=batch_size),
            "rule": np.array([CLASSES.index(c) for c in ndwi_rule(w["s2"])])}


def _subset_windows(windows: dict[str, Any], ix: Sequence[int]) -> dict[str, Any]:
    """The windows of patches ``ix`` (patch indices renumbered as in ``patches.subset(ix)``)."""
    from geoflow.model.predict import Prediction

    renumber = {int(p): k for k, p in enumerate(ix)}
    m = np.isin(windows["patch"], list(ix))
    return {"patch": np.array([renumber[int(p)] for p in windows["patch"][m]], dtype=int),
            "pred": Prediction(windows["pred"].probs[m], windows["pred"].sar_weight[m]),
            "no_sar": Prediction(windows["no_sar"].probs[m], windows["no_sar"].sar_weight[m]),
            "rule": windows["rule"][m]}


def _evaluate_set(model: Any, patches: BenPatches, windows: dict[str, Any]) -> dict[str, Any]:
    from geoflow.model._constants import CLASSES

    classes = tuple(model.classes)
    patch, pred, no_sar = windows["patch"], windows["pred"], windows["no_sar"]
    cond_p = patches.condition()
    cond_w = cond_p[patch]
    n = len(patches)

    allowed = allowed_mask(patches.labels, classes)
    allowed10 = allowed_mask(patches.labels, CLASSES)
    student = _score(pred.labels.astype(int), allowed, patch, cond_w, cond_p, pred.probs)
    student_ns = _score(no_sar.labels.astype(int), allowed, patch, cond_w, cond_p, no_sar.probs)
    rule = _score(windows["rule"], allowed10, patch, cond_w, cond_p)

    fams: dict[str, dict[str, Any]] = {}
    pfams = [families(labels) for labels in patches.labels]
    for fam in sorted({f for fs in pfams for f in fs}):
        mp = np.array([fam in fs for fs in pfams])
        mw = mp[patch]
        fams[fam] = {"patches": int(mp.sum()),
                     "student_window_fit": round(float(student["fit_w"][mw].mean()), 4),
                     "student_patch_fit": round(float(student["fit_p"][mp].mean()), 4),
                     "ndwi_rule_window_fit": round(float(rule["fit_w"][mw].mean()), 4)}

    sar_w = {c: (round(float(pred.sar_weight[m].mean()), 4) if m.any() else None)
             for c in CONDITIONS for m in [np.ones(len(patch), bool) if c == "all"
                                           else cond_w == c]}
    counts = Counter(classes[i] for i in pred.labels)
    dist = {c: round(counts.get(c, 0) / len(patch), 4) for c in classes}

    # The targets, as explicit rows.
    targets: dict[str, Any] = {}
    s_clear, r_clear = student["rows"]["clear"]["window_fit"], rule["rows"]["clear"]["window_fit"]
    if s_clear is not None and r_clear is not None:
        margin = round(100 * (s_clear - r_clear), 1)
        targets["clear_fit_vs_ndwi"] = {"student": s_clear, "ndwi_rule": r_clear,
                                        "margin_points": margin, "target": ">= 5 points",
                                        "met": margin >= 5}
    urban = np.array([bool({"urban", "industrial"} & fs) for fs in pfams])
    built = [classes.index(c) for c in BUILT_UP if c in classes]
    if urban.any() and built:
        hit = np.isin(student["major"][urban], built)
        targets["urban_built_up"] = {"patches": int(urban.sum()), "built_up": int(hit.sum()),
                                     "target": ">= half", "met": bool(2 * hit.sum() >= urban.sum())}
    snow_w = cond_w == "snowy"
    if snow_w.any() and "Industrial" in classes:
        ind = int((pred.labels[snow_w] == classes.index("Industrial")).sum())
        targets["snow_not_industrial"] = {"windows": int(snow_w.sum()), "industrial": ind,
                                          "target": "0", "met": ind == 0}
    sea = np.array(["sea" in fs for fs in pfams])
    if sea.any() and "Water" in classes:
        water = int((student["major"][sea] == classes.index("Water")).sum())
        targets["sea_water"] = {"patches": int(sea.sum()), "water": water, "target": "all",
                                "met": water == int(sea.sum())}

    per_patch = []
    for i in range(n):
        m = patch == i
        per_patch.append({
            "id": patches.ids[i], "labels": list(patches.labels[i]), "condition": str(cond_p[i]),
            "allowed": [c for c, a in zip(classes, allowed[i], strict=True) if a],
            "majority": classes[student["major"][i]], "fit": bool(student["fit_p"][i]),
            "windows": [classes[j] for j in pred.labels[m]],
            "confidence": round(float(pred.confidence[m].mean()), 3),
            "sar_weight": round(float(pred.sar_weight[m].mean()), 3),
            "majority_no_sar": classes[student_ns["major"][i]],
            "ndwi_rule": CLASSES[rule["major"][i]]})
    return {
        "patches": n, "windows": len(patch),
        "conditions": {c: int((cond_p == c).sum()) for c in CONDITIONS[1:]},
        "conditions_known": bool(patches.conditions_known),
        "groups": len(set(patches.groups)),
        "fit": {"student": student["rows"], "student_no_sar": student_ns["rows"],
                "ndwi_rule": rule["rows"]},
        "no_class_patches": int((~allowed.any(axis=1)).sum()),
        "families": fams, "sar_weight": sar_w, "predictions": dist, "targets": targets,
        "per_patch": per_patch,
    }


def evaluate_real(spec: str = "bigearthnet", model: str | os.PathLike[str] | None = None, *,
                  device: str = "auto", batch_size: int = 256,
                  cache: str | os.PathLike[str] | None = None,
                  sets: dict[str, BenPatches] | None = None) -> dict[str, Any]:
    """Evaluate a model on real BigEarthNet patches (see the module docstring).

    Parameters
    ----------
    spec
        ``bigearthnet`` (the public samples: sets ``dev`` and ``heldout``, fetched once) or
        ``bigearthnet:PATH`` (a user's v1 folders, reBEN LMDB + parquet or v1 LMDB: set
        ``data``).
    model
        A checkpoint (``NAME.safetensors``), a ``geoflow train --out`` directory or a registry
        name (``NAME[@VERSION]``); ``None``: the shipped weights.
    device
        ``auto``, ``cpu`` or ``cuda``.
    batch_size
        Windows per forward pass.
    cache
        Where public samples are cached (default ``$GEOFLOW_CACHE/bigearthnet``).
    sets
        Ready sets (skips reading ``spec``).

    Returns
    -------
    dict
        ``model`` (path, version, stage, classes, patch size), ``spec``, ``sets``: per set
        ``fit`` (model -> condition -> window/patch fit), ``families``, ``sar_weight``,
        ``predictions``, ``targets``, ``per_patch``.

    Examples
    --------
    See the module docstring.
    """
    from geoflow.model.predict import load
    from geoflow.model.registry import resolve_model

    loaded = load(resolve_model(model), device=device)
    data = sets if sets is not None else open_sets(spec, cache=cache)
    windows = {name: _predict_windows(loaded, p, batch_size) for name, p in data.items()}
    out = {name: _evaluate_set(loaded, p, windows[name]) for name, p in data.items()}
    if "dev" in data and "heldout" in data:
        out["heldout"]["by_acquisition"] = _split_by_acquisition(
            loaded, data["dev"], data["heldout"], windows["heldout"])
    return {
        "spec": spec,
        "model": {"checkpoint": str(loaded.path), "version": loaded.version,
                  "stage": loaded.stage, "classes": list(loaded.classes),
                  "patch_size": loaded.patch_size},
        "sets": out,
    }


def _split_by_acquisition(model: Any, dev: BenPatches, held: BenPatches,
                          windows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The held-out figures split by whether a patch shares an acquisition (satellite and date,
    :attr:`BenPatches.groups`) with a dev patch: such a pair is another area of the same
    overpass (same atmosphere, season and sensor state), so it is less independent of dev than
    one from another date. No pixel is shared either way."""
    dev_groups = set(dev.groups)
    shared = [i for i, g in enumerate(held.groups) if g in dev_groups]
    parts = {"shares_acquisition_with_dev": shared,
             "no_shared_acquisition": [i for i in range(len(held)) if i not in shared]}
    out: dict[str, dict[str, Any]] = {}
    for key, ix in parts.items():
        sub = held.subset(ix)
        entry: dict[str, Any] = {"patches": len(ix), "ids": list(sub.ids),
                                 "acquisitions": sorted(set(sub.groups))}
        if ix:
            r = _evaluate_set(model, sub, _subset_windows(windows, ix))
            entry.update(windows=r["windows"], fit=r["fit"], targets=r["targets"])
        out[key] = entry
    return out


def _pct(v: float | None, width: int = 6) -> str:
    return f"{100 * v:{width}.1f}" if v is not None else f"{'-':>{width}}"



def _target_lines(targets: dict[str, Any], indent: str) -> list[str]:
    """The issue's targets that apply to a set, one line each, met or not."""
    lines = []
    for key, text in (
            ("clear_fit_vs_ndwi", lambda r: f"clear window fit, student vs NDWI: "
             f"{_pct(r['student'], 0)} vs {_pct(r['ndwi_rule'], 0)} "
             f"({r['margin_points']:+.1f} points; target >= +5)"),
            ("urban_built_up", lambda r: f"urban patches built-up by majority: "
             f"{r['built_up']}/{r['patches']} (target >= half)"),
            ("snow_not_industrial", lambda r: f"snowy windows Industrial: "
             f"{r['industrial']}/{r['windows']} (target 0)"),
            ("sea_water", lambda r: f"sea patches Water by majority: "
             f"{r['water']}/{r['patches']} (target all)")):
        if key in targets:
            r = targets[key]
            lines.append(f"{indent}{text(r)}  {'met' if r['met'] else 'NOT MET'}")
    return lines

def format_real(report: dict[str, Any], sets: Sequence[str] | None = None) -> str:
    """A plain-text table of :func:`evaluate_real`'s report.

    Examples
    --------
    >>> print(format_real(report).splitlines()[0])  # doctest: +SKIP
    """
    lines = [f"model {Path(report['model']['checkpoint']).name} "
             f"(version {report['model']['version']}), {report['spec']}"]
    for name in sets or list(report["sets"]):
        s = report["sets"][name]
        cond = s["conditions"]
        lines += ["", f"[{name}] {s['patches']} patches ({cond['clear']} clear, "
                  f"{cond['cloudy']} cloudy, {cond['snowy']} snowy) from {s['groups']} "
                  f"acquisitions, {s['windows']} windows"
                  + ("" if s.get("conditions_known", True) else
                     "; conditions UNKNOWN (no v1 cloud/snow lists): all counted clear"),
                  f"{'fit %':<16}" + " ".join(f"{'win ' + c:>11}" for c in CONDITIONS)
                  + "  " + " ".join(f"{'patch ' + c:>12}" for c in CONDITIONS)]
        for model, label in (("student", "student"), ("student_no_sar", "student no SAR"),
                             ("ndwi_rule", "NDWI rule")):
            rows = s["fit"][model]
            lines.append(f"{label:<16}" + " ".join(_pct(rows[c]["window_fit"], 11)
                                                   for c in CONDITIONS)
                         + "  " + " ".join(_pct(rows[c]["patch_fit"], 12) for c in CONDITIONS))
        lines.append(f"{'SAR weight':<16}" + " ".join(
            f"{s['sar_weight'][c]:11.2f}" if s["sar_weight"][c] is not None else f"{'-':>11}"
            for c in CONDITIONS))
        lines.append(f"{'family':<16}{'patches':>8} {'student win':>12} {'patch':>7} "
                     f"{'NDWI win':>9}")
        for fam, r in s["families"].items():
            lines.append(f"{fam:<16}{r['patches']:8d} {_pct(r['student_window_fit'], 12)} "
                         f"{_pct(r['student_patch_fit'], 7)} {_pct(r['ndwi_rule_window_fit'], 9)}")
        lines.append("targets:")
        lines.extend(_target_lines(s["targets"], "  "))
        for key, label in (("shares_acquisition_with_dev", "shares an acquisition with dev"),
                           ("no_shared_acquisition", "no acquisition shared with dev")):
            part = s.get("by_acquisition", {}).get(key)
            if part is None:
                continue
            if not part["patches"]:
                lines.append(f"  {label}: no patch")
                continue
            fit = part["fit"]["student"]
            lines.append(
                f"  {label} ({part['patches']} patches, {', '.join(part['acquisitions'])}): "
                f"student windows {_pct(fit['all']['window_fit'], 0)}, clear windows "
                f"{_pct(fit['clear']['window_fit'], 0)} (NDWI rule "
                f"{_pct(part['fit']['ndwi_rule']['clear']['window_fit'], 0)}), patches "
                f"{_pct(fit['all']['patch_fit'], 0)}")
            lines.extend(_target_lines(part["targets"], "    "))
        shown = sorted(s["predictions"].items(), key=lambda kv: -kv[1])
        lines.append("predictions: " + ", ".join(f"{c} {100 * v:.0f} %" for c, v in shown
                                                 if v > 0))
    return "\n".join(lines)


__all__ = ["BUILT_UP", "CONDITIONS", "evaluate_real", "format_real", "ndwi_rule",
           "patch_majority"]
