"""The local model registry: named, versioned checkpoints in a folder, and one resolver that
turns a path or a name into a checkpoint path.

The registry is ``$GEOFLOW_MODELS`` (default ``~/.cache/geoflow/models``), laid out as
``<root>/<NAME>/<VERSION>/<NAME>.safetensors`` + ``<NAME>.json`` + ``added.json`` (when and from
where it was added). ``VERSION`` is the checkpoint's recorded ``version``; ``NAME`` alone means
the version added last. The shipped stages (:data:`BUILTINS`) are names too, served from the
package's ``weights/`` folder without being copied. A version may also be given as a prefix of
the checkpoint's checksum (at least 8 hex digits): ``mine@96c94eb2``.

Examples
--------
>>> from geoflow.model import DEFAULT_CHECKPOINT
>>> resolve_model("demo") == resolve_model(None) == DEFAULT_CHECKPOINT
True
>>> resolve_model(DEFAULT_CHECKPOINT) == DEFAULT_CHECKPOINT   # a path that exists wins
True
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geoflow.errors import CheckpointError, ModelNotFoundError
from geoflow.model import DEFAULT_CHECKPOINT

#: The shipped stage checkpoints, listed as names but never copied into the registry.
BUILTINS = ("demo", "source", "aux_optical", "aux_sar", "fused_uniform")
# One path component, never "." or ".." (the first character is alphanumeric): names and
# versions become folder names, so this is what keeps them inside the registry.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_CHECKSUM_PREFIX = re.compile(r"(?:sha256:)?([0-9a-fA-F]{8,64})")
_ADD_HINT = "pass a checkpoint path, or add one with `geoflow models add PATH --name NAME`"


@dataclass(frozen=True)
class ModelEntry:
    """One model version: ``path`` is its ``.safetensors`` file."""

    name: str
    version: str
    checksum: str
    stage: str | None
    path: Path
    builtin: bool = False
    added: str | None = None
    latest: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with ``spec`` (``NAME@VERSION``) and ``path`` as a string."""
        return {"name": self.name, "version": self.version, "spec": f"{self.name}@{self.version}",
                "checksum": self.checksum, "stage": self.stage, "builtin": self.builtin,
                "latest": self.latest, "added": self.added, "path": str(self.path)}


def default_registry_dir() -> Path:
    """``$GEOFLOW_MODELS`` if set, else ``~/.cache/geoflow/models`` (beside the archive)."""
    env = os.environ.get("GEOFLOW_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "geoflow" / "models"


def _check_name(text: str, what: str = "model name") -> str:
    if not _NAME.fullmatch(text):
        raise CheckpointError(f"{what} {text!r} is not valid (letters, digits, '_', '.', '-'; "
                              "starting with a letter or digit; at most 128 characters)",
                              hint="pick a name like 'student-2025' (a path must exist)")
    return text


def _train_dir_file(path: Path) -> Path:
    # A `geoflow train --out` folder stands for its student, as geoflow.model.load reads it.
    from geoflow.model.checkpoint import no_train_checkpoint, train_dir_checkpoint

    found = train_dir_checkpoint(path)
    if found is None:
        raise no_train_checkpoint(path, hint="pass a NAME.safetensors file, or a finished "
                                             "`geoflow train` folder")
    return found


def _added(folder: Path) -> dict[str, Any]:
    """A version's ``added.json`` (when, from where), or ``{}`` if it is missing or broken."""
    try:
        info = json.loads((folder / "added.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


class ModelRegistry:
    """The models in a registry folder plus the built-in ones.

    Parameters
    ----------
    root
        Registry folder (default :func:`default_registry_dir`); created on the first ``add``.

    Examples
    --------
    >>> import tempfile
    >>> reg = ModelRegistry(tempfile.mkdtemp())
    >>> [e.name for e in reg.list()]
    ['demo', 'source', 'aux_optical', 'aux_sar', 'fused_uniform']
    >>> reg.get("demo").stage
    'student_irm'
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_registry_dir()

    def _entry(self, name: str, weights: Path, builtin: bool = False) -> ModelEntry | None:
        from geoflow.model.checkpoint import read_metadata

        try:
            meta = read_metadata(weights)
        except CheckpointError:
            return None  # half-copied or hand-edited folders are not models; `add` never makes them
        added = None if builtin else _added(weights.parent).get("added")
        return ModelEntry(name, str(meta["version"]), str(meta["checksum"]), meta.get("stage"),
                          weights, builtin=builtin, added=added, latest=builtin)

    def _versions(self, name: str) -> list[ModelEntry]:
        """The versions of ``name``, oldest first (the last one is the latest)."""
        if name in BUILTINS:
            entry = self._entry(name, DEFAULT_CHECKPOINT.parent / f"{name}.safetensors", True)
            return [entry] if entry else []
        folder = self.root / name
        if not _NAME.fullmatch(name) or not folder.is_dir():
            return []
        found: list[tuple[int, ModelEntry]] = []
        for sub in folder.iterdir():
            entry = self._entry(name, sub / f"{name}.safetensors") \
                if _NAME.fullmatch(sub.name) and sub.is_dir() else None
            if entry is not None:
                # The order of `add`; a hand-copied version falls back to its file time.
                ns = _added(sub).get("added_ns")
                if not isinstance(ns, int):
                    ns = (sub / f"{name}.json").stat().st_mtime_ns
                found.append((ns, entry))
        found.sort(key=lambda t: (t[0], t[1].version))
        entries = [e for _, e in found]
        if entries:
            entries[-1] = replace(entries[-1], latest=True)
        return entries

    def names(self) -> list[str]:
        """Built-in names first, then registered ones in alphabetical order."""
        own = sorted(p.name for p in self.root.iterdir() if p.name not in BUILTINS
                     and _NAME.fullmatch(p.name) and p.is_dir()) if self.root.is_dir() else []
        return [n for n in (*BUILTINS, *own) if self._versions(n)]

    def list(self) -> list[ModelEntry]:
        """Every version of every model, built-ins first."""
        return [e for n in self.names() for e in self._versions(n)]

    def _available(self) -> str:
        return ", ".join(self.names()) or "none"

    def get(self, spec: str) -> ModelEntry:
        """The entry of ``NAME`` (latest), ``NAME@VERSION`` or ``NAME@CHECKSUM-PREFIX``.

        Raises
        ------
        ModelNotFoundError
            Unknown name or version; the message lists what is there.
        CheckpointError
            ``spec`` is not a valid name.

        Examples
        --------
        >>> reg = ModelRegistry("/nonexistent")
        >>> demo = reg.get("demo")
        >>> reg.get("demo@" + demo.checksum[7:15]) == reg.get(f"demo@{demo.version}") == demo
        True
        """
        name, _, version = str(spec).partition("@")
        _check_name(name)
        entries = self._versions(name)
        if not entries:
            raise ModelNotFoundError(f"no model named {name!r} (registry {self.root}); models: "
                                     f"{self._available()}", hint=_ADD_HINT)
        if not version:
            return entries[-1]
        exact = [e for e in entries if e.version == version]
        prefix = _CHECKSUM_PREFIX.fullmatch(version)
        hits = exact or ([e for e in entries if e.checksum.removeprefix("sha256:").startswith(
            prefix.group(1).lower())] if prefix else [])
        if len(hits) == 1:
            return hits[0]
        versions = ", ".join(f"{e.version} ({e.checksum[7:19]})" for e in entries)
        what = "matches several versions" if hits else "is not a version"
        fix = "give more of the checksum" if hits else f"use one of them, or {name} for the latest"
        raise ModelNotFoundError(f"{version!r} {what} of model {name!r}; its versions: "
                                 f"{versions}", hint=fix)

    def add(self, path: str | os.PathLike[str], name: str) -> tuple[ModelEntry, bool]:
        """Verify the checkpoint at ``path`` and copy it in as ``name@<its version>``.

        Returns
        -------
        (ModelEntry, bool)
            The entry, and ``False`` if this very checkpoint was already there (nothing done).

        Raises
        ------
        CheckpointError
            Invalid or built-in name, unreadable or tampered checkpoint, or another
            checkpoint already registered under the same ``NAME@VERSION``.

        Examples
        --------
        >>> import tempfile
        >>> from geoflow.model import DEFAULT_CHECKPOINT
        >>> reg = ModelRegistry(tempfile.mkdtemp())
        >>> entry, new = reg.add(DEFAULT_CHECKPOINT, "mine")
        >>> new, reg.get("mine").checksum == reg.get("demo").checksum
        (True, True)
        >>> reg.add(DEFAULT_CHECKPOINT, "mine")[1]
        False
        """
        from geoflow.model.checkpoint import CheckpointBytes, read_checkpoint

        _check_name(name)
        if name in BUILTINS:
            raise CheckpointError(f"{name!r} is a built-in model name",
                                  hint="add it under another --name")
        src = Path(path)
        src = _train_dir_file(src) if src.is_dir() else src
        meta = read_checkpoint(src).meta  # checksum, architecture, bands: never unpickles
        version = _check_name(str(meta["version"]), "checkpoint version")
        payload = CheckpointBytes.from_path(src)
        target = self.root / name / version
        if target.is_dir():
            return self._same(target, name, payload), False
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copy into a hidden temporary folder beside the target and rename it: a reader sees the
        # whole version or none of it, and of two concurrent adds exactly one rename wins.
        tmp = Path(tempfile.mkdtemp(prefix=".adding-", dir=target.parent))
        try:
            (tmp / f"{name}.safetensors").write_bytes(payload.weights)
            (tmp / f"{name}.json").write_bytes(payload.metadata)
            copied = read_checkpoint(tmp / f"{name}.safetensors").meta
            if copied["checksum"] != meta["checksum"] or copied["version"] != version:
                raise CheckpointError(f"{src} changed while it was being added",
                                      hint="add it again once nothing writes to it")
            (tmp / "added.json").write_text(json.dumps({
                "added": datetime.now(UTC).replace(microsecond=0).isoformat(),
                "added_ns": time.time_ns(),
                "source": str(src.resolve()), "checksum": meta["checksum"]}))
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; registries may be shared like checkpoints
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():
                    raise
                return self._same(target, name, payload), False  # lost the race: compare
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.get(f"{name}@{version}"), True

    def _same(self, target: Path, name: str, payload: Any) -> ModelEntry:
        from geoflow.model.checkpoint import CheckpointBytes

        try:
            there = CheckpointBytes.from_path(target / f"{name}.safetensors").sha256
        except CheckpointError:
            there = None
        if there != payload.sha256:
            raise CheckpointError(f"{name}@{target.name} is already in the registry ({target}) "
                                  "and holds a different checkpoint",
                                  hint="re-create the checkpoint (a new version) or add it "
                                  "under another --name; registered versions are never replaced")
        return self.get(f"{name}@{target.name}")


def resolve_model(spec: str | os.PathLike[str] | None, *,
                  registry: ModelRegistry | None = None) -> Path:
    """The checkpoint a ``model=`` / ``--model`` / workflow ``model:`` value stands for.

    Parameters
    ----------
    spec
        ``None`` (the shipped demo weights), a path that exists (``NAME.safetensors``,
        ``NAME.json``, ``NAME`` or a ``geoflow train`` folder: returned unchanged, as a
        :class:`~pathlib.Path`), or a registry name: ``NAME``, ``NAME@VERSION``,
        ``NAME@CHECKSUM-PREFIX``.
    registry
        Where to look names up (default: ``ModelRegistry()``, ``$GEOFLOW_MODELS``).

    Returns
    -------
    Path
        For a name, the registered ``.safetensors`` file (it is verified when it is loaded).

    Raises
    ------
    ModelNotFoundError
        A path that does not exist, or an unknown name or version; the message lists the models.
    CheckpointError
        Neither an existing path nor a valid name.

    Examples
    --------
    >>> resolve_model("aux_sar").name
    'aux_sar.safetensors'
    >>> resolve_model("no-such-model")
    Traceback (most recent call last):
    ...
    geoflow.errors.ModelNotFoundError: no model named 'no-such-model' ...
    """
    if spec is None:
        return DEFAULT_CHECKPOINT
    p = Path(spec)
    # Paths win: whatever load() would open (NAME also means NAME.json + NAME.safetensors).
    if p.exists() or p.with_name(p.name + ".json").is_file():
        return p
    reg = registry or ModelRegistry()
    text = os.fspath(spec)
    if "/" in text or os.sep in text or p.suffix in (".safetensors", ".json") \
            or not _NAME.fullmatch(text.partition("@")[0]):
        raise ModelNotFoundError(f"checkpoint {text} does not exist, and it is not a model name "
                                 f"(models: {reg._available()})", hint=_ADD_HINT)
    return reg.get(text).path


__all__ = ["BUILTINS", "ModelEntry", "ModelRegistry", "default_registry_dir", "resolve_model"]
