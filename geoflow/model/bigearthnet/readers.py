"""Readers of the three published BigEarthNet layouts (v1 folders, v1 LMDB, reBEN LMDB +
``metadata.parquet``), v1's cloud and snow lists, and the specs ``bigearthnet[:PATH]`` that
name them.
"""


from __future__ import annotations

import bz2
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoflow.errors import ModelError
from geoflow.model.bigearthnet._unpickle import decode_v1_pickle
from geoflow.model.bigearthnet.patches import (
    PATCH_PX,
    BenPatches,
    _assemble,
    _s1_from_bands,
    _s2_from_bands,
)
from geoflow.model.bigearthnet.samples import WHEELS, cache_dir, fetch_samples

# --------------------------------------------------------------------------- v1 flags


@dataclass(frozen=True)
class V1Flags:
    """The v1 patch lists of BigEarthNet's screening (S2 patch names)."""

    cloudy: frozenset[str]
    snowy: frozenset[str]

    @staticmethod
    def read(folder: str | os.PathLike[str]) -> V1Flags:
        """Read ``patches_with_cloud_and_shadow.csv.bz2`` and ``patches_with_seasonal_snow.csv.bz2``
        (as ``bigearthnet-common`` ships them) from ``folder``."""
        sets = []
        for name in ("patches_with_cloud_and_shadow", "patches_with_seasonal_snow"):
            path = Path(folder) / f"{name}.csv.bz2"
            if not path.is_file():
                raise ModelError(f"BigEarthNet v1 patch list {path} is missing",
                                 hint="run geoflow.model.bigearthnet.fetch_samples() (it "
                                      "extracts the lists of bigearthnet-common 2.8.0)")
            with bz2.open(path, "rt", encoding="utf-8") as fh:
                sets.append(frozenset(line.strip().split(",")[0] for line in fh if line.strip()))
        return V1Flags(cloudy=sets[0], snowy=sets[1])


_NO_FLAGS = V1Flags(frozenset(), frozenset())


# --------------------------------------------------------------------------- v1 folders


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        raise ModelError(f"BigEarthNet label file {path} cannot be read ({err})",
                         hint="re-extract the BigEarthNet archive") from None


def read_v1_folders(root: str | os.PathLike[str], *, flags: V1Flags | None = None,
                    snow_as_cloud: bool = True) -> BenPatches:
    """Read a BigEarthNet v1 folder tree: S2 patch folders and, where present, S1 ones.

    Parameters
    ----------
    root
        A folder holding S2 patch folders (``<name>/<name>_B02.tif``,
        ``<name>_labels_metadata.json``) and optionally S1 patch folders (whose JSON names
        ``corresponding_s2_patch``), directly or one level down
        (``BigEarthNet-S2/``, ``BigEarthNet-S1/``).
    flags
        The cloud/snow lists (default: none flagged).
    snow_as_cloud
        Put estimated snow into the cloud mask (default: yes, as geoflow's SCL mask hides
        snow, :data:`geoflow.sentinel.HIDDEN_SCL`).

    Returns
    -------
    BenPatches

    Examples
    --------
    >>> p = read_v1_folders("BigEarthNet-v1.0")  # doctest: +SKIP
    """
    root = Path(root)
    if not root.is_dir():
        raise ModelError(f"BigEarthNet folder {root} does not exist",
                         hint="pass the folder that holds the extracted patch folders")
    known, flags = flags is not None, flags or _NO_FLAGS
    s2_dirs: dict[str, Path] = {}
    s1_dirs: dict[str, Path] = {}
    for meta in sorted(list(root.glob("*/*_labels_metadata.json"))
                       + list(root.glob("*/*/*_labels_metadata.json"))):
        folder = meta.parent
        if any(folder.glob("*_VV.tif")):
            s2_name = _read_json(meta).get("corresponding_s2_patch")
            if s2_name:
                s1_dirs[str(s2_name)] = folder
        elif any(folder.glob("*_B02.tif")):
            s2_dirs[folder.name] = folder
    if not s2_dirs:
        raise ModelError(f"no BigEarthNet v1 S2 patch folders under {root}",
                         hint="the layout is ROOT/<patch>/<patch>_B02.tif + "
                              "<patch>_labels_metadata.json (or one level deeper)")
    # Band-per-file folders are read by the GeoTIFF loaders' own readers (nearest onto the
    # 10 m grid, DN / 10000 with DN 0 as no data, CRS and size checks).
    from geoflow.model.loaders import _read_s1, _read_s2, _Window

    whole = _Window(0, 0, None)
    records = []
    for name, folder in sorted(s2_dirs.items()):
        labels = _read_json(folder / f"{name}_labels_metadata.json").get("labels", [])
        s2, shape, crs = _read_s2(folder, whole, (PATCH_PX, PATCH_PX), offset_dn=0,
                                  what=f"S2 patch {name}")
        s1 = _read_s1(s1_dirs.get(name), whole, shape, crs, units="db", size=shape)
        records.append({
            "id": name, "labels": list(labels), "source": "v1-folders", "s2": s2, "s1": s1,
            "cloudy": name in flags.cloudy, "snowy": name in flags.snowy})
    return _assemble(records, snow_as_cloud, conditions_known=known)


# --------------------------------------------------------------------------- LMDB


def _open_lmdb(path: Path) -> Any:
    try:
        import lmdb
    except ImportError:
        raise ModelError("reading BigEarthNet LMDB files needs the 'lmdb' package",
                         hint="pip install 'geoflow[real]'") from None
    if not (path / "data.mdb").is_file():
        raise ModelError(f"{path} holds no LMDB (no data.mdb)",
                         hint="pass the LMDB folder (with data.mdb and lock.mdb)")
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True)




def read_v1_lmdb(path: str | os.PathLike[str], *, flags: V1Flags | None = None,
                 snow_as_cloud: bool = True) -> BenPatches:
    """Read a BigEarthNet v1 LMDB (pickled patches; decoded by :func:`decode_v1_pickle`).

    Examples
    --------
    >>> p = read_v1_lmdb("BENv1/BigEarthNetEncoded.lmdb")  # doctest: +SKIP
    """
    path = Path(path)
    known, flags = flags is not None, flags or _NO_FLAGS
    env = _open_lmdb(path)
    records = []
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                name = key.decode("utf-8", "replace")
                patch = decode_v1_pickle(bytes(value))
                bands = patch["bands"]
                s1 = ({k: bands[k] for k in ("VV", "VH") if k in bands}
                      if "VV" in bands or "VH" in bands else None)
                records.append({"id": name, "labels": patch["labels"], "source": "v1-lmdb",
                                "s2": _s2_from_bands(bands, f"v1 LMDB patch {name}"),
                                "s1": _s1_from_bands(s1, f"v1 LMDB patch {name}"),
                                "cloudy": name in flags.cloudy,
                                "snowy": name in flags.snowy})
    finally:
        env.close()
    return _assemble(records, snow_as_cloud, conditions_known=known)


def read_reben(lmdb_path: str | os.PathLike[str],
               metadata: Sequence[str | os.PathLike[str]] | None = None, *,
               snow_as_cloud: bool = True) -> BenPatches:
    """Read reBEN (BigEarthNet v2): an LMDB of safetensors and its metadata parquet file(s).

    Parameters
    ----------
    lmdb_path
        The LMDB folder (``BigEarthNet-V2-LMDB``).
    metadata
        Parquet files with ``patch_id``, ``labels``, ``s1_name``, ``contains_seasonal_snow``,
        ``contains_cloud_or_shadow``; default: every ``*.parquet`` beside the LMDB folder.
        Patches listed in none of them are skipped (they have no labels).

    Examples
    --------
    >>> p = read_reben("BENv2/BigEarthNet-V2-LMDB")  # doctest: +SKIP
    """
    import pandas as pd
    from safetensors.numpy import load as st_load

    lmdb_path = Path(lmdb_path)
    files = ([Path(m) for m in metadata] if metadata is not None
             else sorted(lmdb_path.parent.glob("*.parquet")))
    if not files:
        raise ModelError(f"no reBEN metadata parquet file beside {lmdb_path}",
                         hint="put metadata.parquet next to the LMDB folder or pass it")
    try:
        meta = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    except ImportError:
        raise ModelError("reading reBEN metadata (parquet) needs pyarrow",
                         hint="pip install 'geoflow[real]'") from None
    need = {"patch_id", "labels", "s1_name", "contains_seasonal_snow", "contains_cloud_or_shadow"}
    if not need <= set(meta.columns):
        raise ModelError(f"reBEN metadata lacks column(s) {sorted(need - set(meta.columns))}",
                         hint="pass reBEN's metadata.parquet")
    meta = meta.drop_duplicates("patch_id")
    env = _open_lmdb(lmdb_path)
    records = []
    try:
        with env.begin() as txn:
            for row in meta.itertuples(index=False):
                raw = txn.get(str(row.patch_id).encode())
                if raw is None:
                    continue  # a metadata row for a patch this LMDB does not hold
                s1raw = txn.get(str(row.s1_name).encode()) if row.s1_name else None
                try:
                    s2 = st_load(bytes(raw))
                    s1 = st_load(bytes(s1raw)) if s1raw is not None else None
                except Exception as err:
                    raise ModelError(f"reBEN patch {row.patch_id} is not a safetensors "
                                     f"record ({err})", hint="re-create the LMDB") from None
                name = str(row.patch_id)
                records.append({"id": name, "labels": list(row.labels), "source": "reben",
                                "s2": _s2_from_bands(s2, f"reBEN patch {name}"),
                                "s1": _s1_from_bands(s1, f"reBEN S1 patch {row.s1_name}"),
                                "cloudy": bool(row.contains_cloud_or_shadow),
                                "snowy": bool(row.contains_seasonal_snow)})
    finally:
        env.close()
    if not records:
        raise ModelError(f"no patch of the metadata is in {lmdb_path}",
                         hint="pass the LMDB and metadata of the same reBEN release")
    return _assemble(records, snow_as_cloud)


# --------------------------------------------------------------------------- specs


def open_sets(spec: str = "bigearthnet", *, cache: str | os.PathLike[str] | None = None,
              snow_as_cloud: bool = True) -> dict[str, BenPatches]:
    """Open BigEarthNet patches named by a spec, as named sets.

    Parameters
    ----------
    spec
        ``bigearthnet``: the public samples, ``{"dev": 54 configilm pairs, "heldout": 6
        bigearthnet-common pairs}`` (fetched by :func:`fetch_samples`).
        ``bigearthnet:PATH``: a user's data as ``{"data": ...}``: a v1 folder tree, a reBEN
        LMDB folder (with its parquet beside it, or a folder holding both) or a v1 LMDB.

    Returns
    -------
    dict
        Set name -> :class:`BenPatches`.

    Examples
    --------
    >>> {k: len(v) for k, v in open_sets("bigearthnet").items()}  # doctest: +SKIP
    {'dev': 54, 'heldout': 6}
    """
    kind, _, path = spec.partition(":")
    if kind.strip().lower() != "bigearthnet":
        raise ModelError(f"unknown real dataset {spec!r}",
                         hint="use 'bigearthnet' (public samples) or 'bigearthnet:PATH'")
    if not path:
        root = fetch_samples(cache)
        ben = root / f"configilm-{WHEELS['configilm'][0]}"
        common = root / f"bigearthnet_common-{WHEELS['bigearthnet_common'][0]}"
        flags = V1Flags.read(common)
        dev = BenPatches.concat([
            read_v1_lmdb(ben / "BENv1" / "BigEarthNetEncoded.lmdb", flags=flags,
                         snow_as_cloud=snow_as_cloud),
            read_reben(ben / "BENv2" / "BigEarthNet-V2-LMDB", snow_as_cloud=snow_as_cloud)])
        held = read_v1_folders(common, flags=flags, snow_as_cloud=snow_as_cloud)
        return {"dev": dev, "heldout": held}
    return {"data": read_path(path, snow_as_cloud=snow_as_cloud, cache=cache)}


def _user_flags(cache: str | os.PathLike[str] | None = None) -> V1Flags | None:
    """The v1 cloud/snow lists if they were fetched already into ``cache`` (default
    :func:`cache_dir`; never downloads for a user path); ``None`` with a warning if not."""
    root = Path(cache) if cache is not None else cache_dir()
    common = root / f"bigearthnet_common-{WHEELS['bigearthnet_common'][0]}"
    if (common / ".complete").is_file():
        return V1Flags.read(common)
    warnings.warn(f"BigEarthNet v1 cloud/snow lists are not in {root}: the conditions of these "
                  "v1 patches are unknown (reported as such, counted with the clear ones); run "
                  "`geoflow evaluate --real bigearthnet` once (it fetches them) to know them",
                  UserWarning, stacklevel=3)
    return None


def read_path(path: str | os.PathLike[str], *, snow_as_cloud: bool = True,
              cache: str | os.PathLike[str] | None = None) -> BenPatches:
    """Read a BigEarthNet dataset at ``path``, whichever of the three layouts it is (v1 layouts
    take their cloud/snow lists from the samples cache ``cache``, if fetched there).

    Examples
    --------
    >>> p = read_path("/data/reBEN")  # doctest: +SKIP
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"BigEarthNet path {p} does not exist",
                         hint="pass a v1 folder tree, a reBEN LMDB (+ metadata.parquet) or a "
                              "v1 LMDB")
    if p.is_dir() and not (p / "data.mdb").is_file():
        lmdbs = sorted(d for d in p.glob("*") if (d / "data.mdb").is_file())
        if lmdbs and any(p.glob("*.parquet")):
            return read_reben(lmdbs[0], snow_as_cloud=snow_as_cloud)
        if lmdbs:
            return read_v1_lmdb(lmdbs[0], flags=_user_flags(cache), snow_as_cloud=snow_as_cloud)
        return read_v1_folders(p, flags=_user_flags(cache), snow_as_cloud=snow_as_cloud)
    if (p / "data.mdb").is_file():
        if any(p.parent.glob("*.parquet")):
            return read_reben(p, snow_as_cloud=snow_as_cloud)
        return read_v1_lmdb(p, flags=_user_flags(cache), snow_as_cloud=snow_as_cloud)
    raise ModelError(f"{p} is not a BigEarthNet dataset folder",
                     hint="pass a v1 folder tree, a reBEN LMDB folder or a v1 LMDB folder")
