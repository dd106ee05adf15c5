"""Run the model over one chunk's cube window: patches in, per-date maps out.

:func:`get_model` loads a checkpoint once per process (so once per Dask worker) and keeps
it; :func:`classify_window` cuts the window into patches centred on the chunk's map pixels
(as planned by :func:`geoflow.tiles.plan_chunks`), runs them through the model in batches and
returns the chunk's map as uint8 layers.

Examples
--------
>>> import numpy as np, xarray as xr
>>> from geoflow.infer import classify_window, get_model
>>> model = get_model(None, device="cpu")                 # the shipped demo weights
>>> p = model.patch_size
>>> cube = xr.Dataset({
...     "reflectance": (("time", "band", "y", "x"), np.full((1, 10, p, 2 * p), 0.1, "f4")),
...     "sar": (("time", "pol", "y", "x"), np.full((1, 2, p, 2 * p), np.nan, "f4")),
...     "cloud": (("time", "y", "x"), np.zeros((1, p, 2 * p), "f4"))},
...     coords={"band": list(model.meta["bands"]), "pol": ["VV", "VH"],
...             "time": np.array(["2024-06-01"], "datetime64[ns]"),
...             "y": 5000000.0 - 10 * np.arange(p) - 5, "x": 10.0 * np.arange(2 * p) + 5})
>>> out = classify_window(cube, model, stride=p)
>>> out["class"].shape, out["class"].dtype.name, int(out["sar_weight"].max())
((1, 1, 2), 'uint8', 0)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from numpy.lib.stride_tricks import sliding_window_view

from geoflow.errors import CubeError, ModelError

NODATA_CLASS = 255

_CACHE: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()


def _resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _model_cache_dir() -> Path:
    """Where a process keeps checkpoints it was sent: its Dask worker's local directory (or
    the system's temporary folder outside a worker)."""
    try:
        from distributed import get_worker

        return Path(get_worker().local_directory) / "geoflow-models"
    except (ImportError, ValueError):
        import tempfile

        return Path(tempfile.gettempdir()) / f"geoflow-models-{os.getuid()}"


def get_model(path: Any = None, device: str | None = "auto") -> Any:
    """The model at ``path``, loaded once per process and device, then reused.

    Call it inside Dask tasks with the checkpoint's bytes (scattered once to every worker) or
    a path every worker can read: each worker loads it on first use. The cache key is the
    checkpoint's path and checksum (from its metadata), so a checkpoint replaced on disk is
    loaded again.

    Parameters
    ----------
    path
        A :class:`geoflow.model.checkpoint.CheckpointBytes` (written to this worker's cache
        folder after its sha256 is checked), a checkpoint (``NAME.safetensors`` or a
        ``geoflow train`` directory), or ``None`` for the shipped demo weights.
    device
        ``"auto"`` (CUDA when this process sees a GPU, else CPU), ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    geoflow.model.LoadedModel

    Raises
    ------
    CheckpointError
        Missing, tampered or incompatible checkpoint.

    Examples
    --------
    >>> from geoflow.infer import get_model
    >>> get_model(None, "cpu") is get_model(None, "cpu")
    True
    """
    import geoflow.model
    from geoflow.model.checkpoint import CheckpointBytes, read_metadata, train_dir_checkpoint

    if isinstance(path, CheckpointBytes):
        # Sent by the client: verified, then written once into this worker's own folder.
        path = path.materialize(_model_cache_dir())
    p = Path(path) if path is not None else geoflow.model.DEFAULT_CHECKPOINT
    if p.is_dir():  # a training directory: let load() pick its checkpoint, key on the dir
        found = train_dir_checkpoint(p)
        checksum = str(read_metadata(found)["checksum"]) if found is not None else ""
    else:
        checksum = str(read_metadata(p)["checksum"])
    dev = _resolve_device(device)
    key = (str(p.absolute()), checksum, dev)
    with _LOCK:  # threads of one worker share one copy, loaded once
        model = _CACHE.get(key)
        if model is None:
            model = geoflow.model.load(p, device=dev)
            _CACHE[key] = model
    return model


def _patches(arr: np.ndarray, size: int, stride: int) -> np.ndarray:
    """View ``(..., H, W)`` as ``(..., ny, nx, size, size)`` windows every ``stride`` px."""
    return sliding_window_view(arr, (size, size), axis=(-2, -1))[..., ::stride, ::stride, :, :]


def _select(da: xr.DataArray, dim: str, names: list[str], what: str) -> xr.DataArray:
    have = {str(v).lower(): v for v in da[dim].values} if dim in da.coords else {}
    missing = [n for n in names if n.lower() not in have]
    if missing:
        raise CubeError(f"the cube's {what} lacks {', '.join(missing)} (it has "
                        f"{', '.join(map(str, have.values())) or 'no labels'})",
                        hint="build the cube with geoflow.cube.build_cube")
    return da.sel({dim: [have[n.lower()] for n in names]})


def _centres(coord: np.ndarray, halo: int, stride: int, n: int) -> np.ndarray:
    first = coord[halo + np.arange(n) * stride]
    last = coord[halo + np.arange(n) * stride + stride - 1]
    return (first + last) / 2.0


def _to_u8(frac: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frac * 255.0), 0, 255).astype(np.uint8)


def classify_window(
    cube: xr.Dataset,
    model: Any,
    stride: int,
    *,
    batch_size: int = 256,
    probabilities: bool = False,
) -> xr.Dataset:
    """Classify every map pixel of a chunk from its cube window.

    Parameters
    ----------
    cube
        The chunk's cube on its ``read_grid`` (halo included), computed or lazy (it is
        loaded): ``reflectance`` (time, band, y, x), ``sar`` (time, pol, y, x) in dB,
        ``cloud`` (time, y, x) in {0, 1, NaN}.
    model
        A :class:`geoflow.model.LoadedModel` (from :func:`get_model`).
    stride
        Map pixel size in cube pixels (the plan's stride).
    batch_size
        Patches per forward pass.
    probabilities
        Also return ``probability`` (time, label, y, x) uint8, 255 * class probability.

    Returns
    -------
    xarray.Dataset
        On the chunk's map pixels, dims (time, y, x), all uint8: ``class`` (255 where the
        patch has neither optical nor SAR data), ``confidence`` (255 * max probability),
        ``sar_weight`` (255 * SAR weight), ``cloud_fraction`` (255 * cloudy or snowy share
        of the patch's valid SCL pixels; 255 where it has no optical data). 0 for the last three
        where ``class`` is 255. Coordinates ``time``, ``y``, ``x`` (map pixel centres).

    Raises
    ------
    CubeError
        A variable, band or polarisation is missing, or the window does not fit the patch
        size and stride.

    Examples
    --------
    See the module docstring.
    """
    patch = int(model.patch_size)
    stride = int(stride)
    if not 1 <= stride <= patch or (patch - stride) % 2:
        raise ModelError(f"stride {stride} does not fit the model's {patch} px patches",
                         hint=f"use a stride <= {patch} with {patch} - stride even")
    missing = [v for v in ("reflectance", "sar", "cloud") if v not in cube.data_vars]
    if missing:
        raise CubeError(f"the cube lacks {', '.join(missing)}",
                        hint="build the cube with geoflow.cube.build_cube")
    for var, want in (("reflectance", {"time", "band", "y", "x"}),
                      ("sar", {"time", "pol", "y", "x"}), ("cloud", {"time", "y", "x"})):
        if set(cube[var].dims) != want:
            raise CubeError(f"the cube's {var} has dims {cube[var].dims}, expected "
                            f"{sorted(want)}", hint="build the cube with geoflow.cube.build_cube")
    halo = (patch - stride) // 2
    refl = _select(cube["reflectance"], "band", [str(b) for b in model.meta["bands"]],
                   "band list").transpose("time", "band", "y", "x")
    sar = _select(cube["sar"], "pol", [str(b) for b in model.meta["sar_bands"]],
                  "polarisation list").transpose("time", "pol", "y", "x")
    cloud = cube["cloud"].transpose("time", "y", "x")
    # One compute for all three, so a lazy cube's shared reads run once.
    inputs = xr.Dataset({"r": refl.variable, "s": sar.variable, "c": cloud.variable}).compute()
    n_t, _, height, width = refl.shape
    if (height - patch) % stride or (width - patch) % stride or height < patch or width < patch:
        raise CubeError(f"a {height}x{width} px window does not hold whole {patch} px patches "
                        f"every {stride} px",
                        hint="classify the cube of a chunk's read_grid from plan_chunks")
    ny, nx = (height - patch) // stride + 1, (width - patch) // stride + 1
    refl_v = np.asarray(inputs["r"].values, dtype=np.float32)
    sar_v = np.asarray(inputs["s"].values, dtype=np.float32)
    cloud_v = np.asarray(inputs["c"].values, dtype=np.float32)

    n_cls = len(model.classes)
    cls = np.full((n_t, ny, nx), NODATA_CLASS, np.uint8)
    conf = np.zeros((n_t, ny, nx), np.uint8)
    sar_w = np.zeros((n_t, ny, nx), np.uint8)
    cloud_frac = np.full((n_t, ny, nx), 255, np.uint8)
    probs_out = np.zeros((n_t, n_cls, ny, nx), np.uint8) if probabilities else None
    flat_idx, s2_parts, s1_parts, cl_parts = [], [], [], []
    for t in range(n_t):
        # Per-pixel validity first, then per-patch counts: cheap compared with the model.
        opt_ok = np.isfinite(refl_v[t]).any(axis=0)
        sar_ok = np.isfinite(sar_v[t]).any(axis=0)
        cl_ok = np.isfinite(cloud_v[t])
        opt_any = _patches(opt_ok, patch, stride).any(axis=(-2, -1))
        sar_any = _patches(sar_ok, patch, stride).any(axis=(-2, -1))
        n_valid = _patches(cl_ok, patch, stride).sum(axis=(-2, -1))
        n_cloud = _patches(np.where(cl_ok, cloud_v[t], 0.0), patch, stride).sum(axis=(-2, -1))
        has_cl = n_valid > 0
        cloud_frac[t][has_cl] = _to_u8(n_cloud[has_cl] / n_valid[has_cl])

        idx = np.flatnonzero((opt_any | sar_any).reshape(-1))
        if idx.size == 0:
            continue  # nothing observed: the model is not asked
        flat_idx.append(t * ny * nx + idx)
        # (B, ny, nx, P, P) views -> (N, B, P, P) copies of the patches with data only.
        s2_parts.append(_patches(refl_v[t], patch, stride).transpose(1, 2, 0, 3, 4).reshape(
            ny * nx, -1, patch, patch)[idx])
        s1_parts.append(_patches(sar_v[t], patch, stride).transpose(1, 2, 0, 3, 4).reshape(
            ny * nx, -1, patch, patch)[idx])
        cl_parts.append(_patches(cloud_v[t], patch, stride).reshape(ny * nx, patch, patch)[idx])

    if flat_idx:
        # All dates in one call: full batches keep a GPU busy.
        where = np.concatenate(flat_idx)
        pred = model.predict(np.concatenate(s2_parts), np.concatenate(s1_parts),
                             np.concatenate(cl_parts), batch_size=batch_size)
        del s2_parts, s1_parts, cl_parts
        # The arrays are C-contiguous, so reshape(-1) is a view and this writes through.
        cls.reshape(-1)[where] = pred.probs.argmax(axis=1).astype(np.uint8)
        conf.reshape(-1)[where] = _to_u8(pred.probs.max(axis=1))
        sar_w.reshape(-1)[where] = _to_u8(pred.sar_weight)
        if probs_out is not None:
            t_of, k_of = np.divmod(where, ny * nx)
            probs_out.transpose(0, 2, 3, 1).reshape(n_t, ny * nx, n_cls)[t_of, k_of] = \
                _to_u8(pred.probs)

    coords: dict[str, Any] = {
        "y": _centres(np.asarray(cube["y"].values, dtype="float64"), halo, stride, ny),
        "x": _centres(np.asarray(cube["x"].values, dtype="float64"), halo, stride, nx),
    }
    if "time" in cube.coords:
        coords["time"] = cube["time"].values
    dims = ("time", "y", "x")
    out = xr.Dataset({"class": (dims, cls), "confidence": (dims, conf),
                      "sar_weight": (dims, sar_w), "cloud_fraction": (dims, cloud_frac)},
                     coords=coords)
    if probs_out is not None:
        out["probability"] = (("time", "label", "y", "x"), probs_out)
        out = out.assign_coords(label=list(model.classes))
    out.attrs.update(model_version=model.version, model_checksum=model.checksum,
                     patch_size=patch, stride=stride)
    return out


# --------------------------------------------------------------------------- summary
def period_summary(
    cls: np.ndarray, confidence: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Confidence-weighted vote across time.

    Each valid observation (class != 255) votes for its class with weight ``confidence + 1``
    (so a valid observation always counts). The winner is the class with the largest total
    weight (ties go to the lower class index, so results are deterministic).
    ``summary_confidence`` is the mean, over the pixel's valid observations, of the confidence
    of those that voted for the winner (0 for the others): high only where dates agree *and*
    were confident. Integer arithmetic throughout, so every run gives the same bytes.

    Parameters
    ----------
    cls
        (time, y, x) uint8 class indices, 255 = no data.
    confidence
        (time, y, x) uint8 confidence 0-255.
    n_classes
        Number of classes K.

    Returns
    -------
    summary_class, summary_confidence
        (y, x) uint8 each; 255 / 0 where no date had data.

    Examples
    --------
    >>> c = np.array([[[1]], [[2]], [[1]]], dtype=np.uint8)
    >>> p = np.array([[[200]], [[250]], [[100]]], dtype=np.uint8)
    >>> s, q = period_summary(c, p, 10)
    >>> int(s[0, 0]), int(q[0, 0])
    (1, 100)
    """
    cls = np.asarray(cls)
    conf = np.asarray(confidence).astype(np.int64)
    valid = cls != 255
    n_valid = valid.sum(axis=0)
    votes = np.zeros((n_classes, *cls.shape[1:]), dtype=np.int64)
    for k in range(n_classes):
        votes[k] = np.where(cls == k, conf + 1, 0).sum(axis=0)
    winner = votes.argmax(axis=0)
    win_conf = np.where(cls == winner[None], conf, 0).sum(axis=0)
    mean_conf = np.where(n_valid > 0, (win_conf + n_valid // 2) // np.maximum(n_valid, 1), 0)
    summary_class = np.where(n_valid > 0, winner, 255).astype(np.uint8)
    return summary_class, mean_conf.astype(np.uint8)


def add_summary(ds: xr.Dataset, n_classes: int) -> xr.Dataset:
    """Return ``ds`` with ``summary_class`` and ``summary_confidence`` (y, x) added.

    Examples
    --------
    >>> m = add_summary(chunk_map, 10)  # doctest: +SKIP
    """
    s_cls, s_conf = period_summary(ds["class"].values, ds["confidence"].values, n_classes)
    dims = ("y", "x")
    out = ds.copy()
    out["summary_class"] = xr.DataArray(s_cls, dims=dims)
    out["summary_confidence"] = xr.DataArray(s_conf, dims=dims)
    return out


__all__ = ["NODATA_CLASS", "add_summary", "classify_window", "get_model", "period_summary"]
