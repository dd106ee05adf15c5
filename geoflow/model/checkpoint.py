"""Checkpoints: safetensors weights + a JSON metadata file beside them. Never pickle.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` (tensors only: the safetensors format
cannot hold code) and ``NAME.json`` (everything needed to use it: architecture and size, bands
in order, normalisation statistics, patch size, class names and colours, training summary,
metrics, version id and the sha256 checksum of the tensor bytes). Reading verifies the checksum
and the compatibility of the metadata with what geoflow feeds the model, and raises
:class:`~geoflow.errors.CheckpointError` naming the problem and the fix.

Examples
--------
>>> import tempfile, pathlib
>>> from geoflow.model.networks import ArchSpec, build_network
>>> spec = ArchSpec("sar", n_classes=10, width=4)
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> meta = save_checkpoint(d / "tiny", build_network(spec), spec, stage="aux_sar")
>>> read_checkpoint(d / "tiny").meta["checksum"] == meta["checksum"]
True
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geoflow.errors import CheckpointError, ModelError
from geoflow.model._constants import CLASS_COLORS, CLASSES, S1_POLS, S2_BANDS, fallback_colors
from geoflow.model.networks import ArchSpec, build_network, count_parameters, default_norm

FORMAT = "geoflow-checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("format", "format_version", "architecture", "patch_size", "bands", "sar_bands",
             "norm", "classes", "colors", "version", "checksum")


@dataclass
class Checkpoint:
    """A verified checkpoint: its architecture, metadata and a network with weights loaded."""

    spec: ArchSpec
    meta: dict[str, Any]
    network: nn.Module
    path: Path


#: The checkpoints a training folder stands for, in the order they are looked for: a
#: ``geoflow train --out`` folder (its student), the shipped weights' folder, a fine-tuning's.
TRAIN_DIR_STEMS = ("student_irm", "demo", "finetuned")


def train_dir_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The checkpoint a training folder stands for (``NAME.safetensors`` of the first of
    :data:`TRAIN_DIR_STEMS` whose metadata is there); None if it holds none.

    Examples
    --------
    >>> from geoflow.model import DEFAULT_CHECKPOINT
    >>> train_dir_checkpoint(DEFAULT_CHECKPOINT.parent).name
    'demo.safetensors'
    """
    folder = Path(folder)
    return next((folder / f"{stem}.safetensors" for stem in TRAIN_DIR_STEMS
                 if (folder / f"{stem}.json").is_file()), None)


def no_train_checkpoint(folder: Path, hint: str) -> CheckpointError:
    """The error for a folder that holds none of :data:`TRAIN_DIR_STEMS`."""
    names = ", ".join(TRAIN_DIR_STEMS[:-1]) + f" or {TRAIN_DIR_STEMS[-1]}"
    return CheckpointError(f"directory {folder} holds no {names} checkpoint", hint=hint)


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(weights, metadata)`` paths for a checkpoint given as ``NAME``, ``NAME.safetensors``
    or ``NAME.json``.

    Examples
    --------
    >>> [p.name for p in checkpoint_paths("w/demo.json")]
    ['demo.safetensors', 'demo.json']
    """
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def tensor_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], network: nn.Module, spec: ArchSpec, *,
                    stage: str, norm: dict[str, list[float]] | None = None,
                    training: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None,
                    classes: Sequence[str] | None = None,
                    colors: Sequence[str] | None = None) -> dict[str, Any]:
    """Write ``NAME.safetensors`` and ``NAME.json``; return the metadata written.

    Parameters
    ----------
    path
        ``NAME`` (suffixes ``.safetensors``/``.json`` are accepted and replaced).
    network
        The network; its ``state_dict`` is saved (float tensors and BatchNorm counters).
    spec
        Its architecture.
    stage
        Which training stage produced it (``source``, ``aux_optical``, ``aux_sar``,
        ``fused_uniform``, ``student_irm``, ``untrained``).
    norm
        Normalisation statistics (defaults: :func:`~geoflow.model.networks.default_norm`).
    training, metrics
        Summaries stored as they are (must be JSON-serialisable).
    classes, colors
        The class scheme, in class-index order: names and ``#rrggbb`` colours (default
        geoflow's ten scene classes; colours default to a qualitative palette). Maps, exports
        and STAC items made with the checkpoint carry these names and colours.

    Returns
    -------
    dict
        The metadata, including ``version`` and ``checksum``.

    Examples
    --------
    See the module docstring.
    """
    from safetensors.torch import save_file

    from geoflow import __version__

    names, palette = class_scheme(classes, colors, spec.n_classes)
    weights, meta_path = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    checksum = tensor_checksum(state)
    created = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "architecture": {**spec.to_dict(), "n_parameters": count_parameters(network)},
        "patch_size": spec.patch_size,
        "resolution_m": 10.0,
        "bands": list(S2_BANDS),
        "sar_bands": list(S1_POLS),
        "inputs": {
            "s2": "L2A surface reflectance (0..1), bands in `bands` order, NaN = missing",
            "s1": "gamma0 backscatter in dB, `sar_bands` order, all-NaN patch = no SAR",
            "cloud": "1 = cloud, cloud shadow or snow (SCL 3, 8, 9, 10, 11), 0 = clear, "
                     "NaN = no data",
        },
        "norm": norm or default_norm(len(S2_BANDS), len(S1_POLS)),
        "classes": names,
        "colors": palette,
        "training": training or {},
        "metrics": metrics or {},
        "created": created.isoformat(),
        "geoflow_version": __version__,
        "version": f"{stage}-{created:%Y%m%dT%H%M%S}-{checksum[7:15]}",
        "checksum": checksum,
        "weights_file": weights.name,
        "weights_bytes": None,
    }
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "checksum": checksum})
    os.chmod(tmp, 0o644)  # safetensors writes 0600; checkpoints are meant to be shared
    meta["weights_bytes"] = tmp.stat().st_size
    tmp_meta = meta_path.with_name(meta_path.name + ".tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2))
    # Weights first, metadata last: a reader never sees metadata pointing at absent weights.
    os.replace(tmp, weights)
    os.replace(tmp_meta, meta_path)
    return meta


def _fail(msg: str, hint: str) -> CheckpointError:
    return CheckpointError(msg, hint=hint)


#: Most classes a map can hold: class codes are uint8 and 255 means no data.
MAX_CLASSES = 255
_HEX = re.compile(r"#[0-9a-fA-F]{6}")


def class_scheme(classes: Sequence[str] | None, colors: Sequence[str] | None,
                 n_classes: int) -> tuple[list[str], list[str]]:
    """Check a class scheme (names + colours) for an ``n_classes`` network; fill in defaults.

    ``None`` classes: geoflow's ten scene classes (only for a ten-class network). ``None``
    colours: geoflow's own colours for its classes, else matplotlib's ``tab20`` palette.

    Raises
    ------
    ModelError
        Wrong number of names or colours, empty or repeated names, colours not ``#rrggbb``,
        more than 255 classes.

    Examples
    --------
    >>> class_scheme(["sea", "land"], None, 2)
    (['sea', 'land'], ['#1f77b4', '#aec7e8'])
    """
    if classes is None:
        if n_classes != len(CLASSES):
            raise ModelError(f"a {n_classes}-class network needs its class names",
                             hint="pass classes=[...] (one name per output, in index order)")
        classes = CLASSES
        colors = CLASS_COLORS if colors is None else colors
    names = [str(c) for c in classes]
    if len(names) != n_classes or n_classes > MAX_CLASSES:
        raise ModelError(f"{len(names)} class names for a {n_classes}-class network"
                         if len(names) != n_classes else
                         f"{n_classes} classes: maps store class codes as uint8, 255 = no data",
                         hint=f"give one name per network output, at most {MAX_CLASSES}")
    if any(not n.strip() for n in names) or len(set(names)) != len(names):
        raise ModelError("class names must be non-empty and distinct",
                         hint=f"check the class list {names[:5]}...")
    palette = fallback_colors(0, n_classes) if colors is None else [str(c) for c in colors]
    if len(palette) != n_classes or not all(_HEX.fullmatch(c) for c in palette):
        raise ModelError(f"{len(palette)} colours for {n_classes} classes, or not all #rrggbb",
                         hint="give one '#rrggbb' colour per class, in class order")
    return names, palette


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint's JSON metadata (no tensors are read).

    Raises
    ------
    CheckpointError
        If the file is missing, not JSON, or lacks required fields.
    """
    meta_path = checkpoint_paths(path)[1]
    retrain = ("re-create it with `geoflow train --out DIR` or reinstall geoflow for the demo "
               "weights")
    if not meta_path.is_file():
        raise _fail(f"checkpoint metadata {meta_path} does not exist", retrain)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(f"checkpoint metadata {meta_path} is not valid JSON ({err})", retrain) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(f"{meta_path} is not a geoflow checkpoint (format != {FORMAT!r})",
                    "point --model/path at a NAME.safetensors written by geoflow")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise _fail(f"checkpoint metadata {meta_path} lacks {', '.join(missing)}", retrain)
    if meta["format_version"] > FORMAT_VERSION:
        raise _fail(f"checkpoint format {meta['format_version']} is newer than this geoflow "
                    f"understands ({FORMAT_VERSION})", "upgrade geoflow")
    return meta


def check_compatible(meta: dict[str, Any], *, bands: tuple[str, ...] | None = None,
                     sar_bands: tuple[str, ...] | None = None,
                     patch_size: int | None = None, where: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless the checkpoint fits the inputs geoflow will feed.

    Parameters
    ----------
    meta
        Checkpoint metadata.
    bands, sar_bands
        Band order the caller supplies (default: geoflow's S2 bands and VV, VH).
    patch_size
        Patch size the caller uses (default: no constraint beyond the architecture's).
    """
    bands = tuple(bands or S2_BANDS)
    sar_bands = tuple(s.upper() for s in (sar_bands or S1_POLS))
    if tuple(meta["bands"]) != bands:
        raise _fail(f"{where} was trained on S2 bands {list(meta['bands'])} but geoflow supplies "
                    f"{list(bands)} (order matters)",
                    "train a checkpoint for these bands with `geoflow train`, or use one that "
                    "lists exactly these bands in this order")
    if tuple(s.upper() for s in meta["sar_bands"]) != sar_bands:
        raise _fail(f"{where} was trained on SAR polarisations {meta['sar_bands']} but geoflow "
                    f"supplies {list(sar_bands)}", "use a VV+VH checkpoint")
    arch_ps = meta["architecture"].get("patch_size")
    if meta["patch_size"] != arch_ps:
        raise _fail(f"{where} metadata says patch size {meta['patch_size']} but its "
                    f"architecture was built for {arch_ps}",
                    "the metadata was edited: restore the original JSON file")
    if patch_size is not None and int(patch_size) != int(meta["patch_size"]):
        raise _fail(f"{where} works on {meta['patch_size']} px patches, not {patch_size} px",
                    f"cut {meta['patch_size']} px patches, or train a checkpoint with "
                    f"`geoflow train --patch-size {patch_size}`")
    if len(meta["classes"]) != meta["architecture"].get("n_classes") or \
            len(meta["colors"]) != len(meta["classes"]):
        raise _fail(f"{where} lists {len(meta['classes'])} classes and {len(meta['colors'])} "
                    f"colours for a {meta['architecture'].get('n_classes')}-class network",
                    "the metadata was edited: restore the original JSON file")
    try:
        class_scheme(meta["classes"], meta["colors"], len(meta["classes"]))
    except ModelError as err:
        raise _fail(f"{where} has an unusable class scheme ({err.message})",
                    "the metadata was edited: restore the original JSON file") from None


def read_checkpoint(path: str | os.PathLike[str], *, bands: tuple[str, ...] | None = None,
                    sar_bands: tuple[str, ...] | None = None,
                    patch_size: int | None = None) -> Checkpoint:
    """Read, verify and instantiate a checkpoint. Executes no code from the files.

    Parameters
    ----------
    path
        ``NAME``, ``NAME.safetensors`` or ``NAME.json``.
    bands, sar_bands, patch_size
        What the caller will feed (see :func:`check_compatible`).

    Returns
    -------
    Checkpoint
        With the network in eval mode on the CPU.

    Raises
    ------
    CheckpointError
        Missing, truncated, tampered (checksum mismatch) or incompatible checkpoint.

    Examples
    --------
    See the module docstring.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta_path = checkpoint_paths(path)
    meta = read_metadata(path)
    check_compatible(meta, bands=bands, sar_bands=sar_bands, patch_size=patch_size,
                     where=f"checkpoint {weights.name}")
    if not weights.is_file():
        raise _fail(f"checkpoint weights {weights} do not exist (metadata {meta_path.name} does)",
                    "copy the .safetensors file next to its .json, or re-run `geoflow train`")
    size = weights.stat().st_size
    expected = meta.get("weights_bytes")
    if expected is not None and size != expected:
        raise _fail(f"checkpoint weights {weights} are {size} bytes, expected {expected} "
                    "(truncated or replaced)", "re-copy or re-create the checkpoint")
    try:
        # safetensors parses a JSON header and raw buffers: no unpickling, no code execution.
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _fail(f"checkpoint weights {weights} cannot be read ({err})",
                    "the file is truncated or corrupt: re-copy or re-create it") from None
    checksum = tensor_checksum(state)
    if checksum != meta["checksum"]:
        raise _fail(f"checkpoint weights {weights} do not match their metadata checksum "
                    f"({checksum[:19]}... != {str(meta['checksum'])[:19]}...): the file was "
                    "modified or belongs to another checkpoint",
                    "restore the original pair of files or re-create them with `geoflow train`")
    try:
        spec = ArchSpec.from_dict(meta["architecture"])
        spec.validate()
        net = build_network(spec)
        net.load_state_dict(state, strict=True)
    except (KeyError, TypeError, RuntimeError, ValueError, ModelError) as err:
        msg = " ".join(str(err).split())[:300]
        raise _fail(f"checkpoint {weights.name} does not fit its declared architecture "
                    f"{meta['architecture']} ({msg})",
                    "restore the original JSON metadata or re-create the checkpoint") from None
    net.eval()
    return Checkpoint(spec=spec, meta=meta, network=net, path=weights)


@dataclass(frozen=True)
class CheckpointBytes:
    """A checkpoint's two files as bytes: how the model reaches Dask workers that cannot read
    the client's disk. Sent once per worker, checked against its sha256 there, written to the
    worker's own cache folder and loaded (and verified) from there like any checkpoint.

    Examples
    --------
    >>> import tempfile
    >>> from geoflow.model import DEFAULT_CHECKPOINT
    >>> payload = CheckpointBytes.from_path(DEFAULT_CHECKPOINT)
    >>> path = payload.materialize(tempfile.mkdtemp())
    >>> read_checkpoint(path).meta["checksum"] == json.loads(payload.metadata)["checksum"]
    True
    """

    name: str
    weights: bytes
    metadata: bytes
    sha256: str

    @staticmethod
    def _digest(weights: bytes, metadata: bytes) -> str:
        return hashlib.sha256(weights + b"\0" + metadata).hexdigest()

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> CheckpointBytes:
        """Read a checkpoint's files (``NAME``, ``NAME.safetensors`` or ``NAME.json``)."""
        weights_path, meta_path = checkpoint_paths(path)
        try:
            weights, metadata = weights_path.read_bytes(), meta_path.read_bytes()
        except OSError as err:
            raise _fail(f"cannot read checkpoint {weights_path.stem} ({err.strerror}: "
                        f"{err.filename})", "pass the path of a NAME.safetensors with its "
                        "NAME.json beside it") from None
        return cls(weights_path.stem, weights, metadata, cls._digest(weights, metadata))

    def verify(self) -> None:
        """Raise :class:`CheckpointError` if the bytes are not the ones that were sent."""
        if self._digest(self.weights, self.metadata) != self.sha256:
            raise _fail(f"checkpoint {self.name} arrived damaged (sha256 mismatch)",
                        "rerun; if it persists, check the network between client and workers")

    def materialize(self, directory: str | os.PathLike[str]) -> Path:
        """Write the files under ``directory/<sha256>/`` (once; atomic) and return the
        ``.safetensors`` path."""
        self.verify()
        folder = Path(directory) / self.sha256[:32]
        target = folder / f"{self.name}.safetensors"
        if target.is_file() and target.with_suffix(".json").is_file():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, data in ((".json", self.metadata), (".safetensors", self.weights)):
            # One temporary name per process and thread: a worker's threads may materialise
            # the same checkpoint at once (chunks run concurrently on a multi-thread worker).
            tmp = folder / f".{self.name}{suffix}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, folder / f"{self.name}{suffix}")
        return target
