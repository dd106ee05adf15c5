"""The public samples: two pinned wheels fetched from PyPI (``pip download --no-deps``),
sha256-checked, their data extracted into a locked cache; never part of this repository.
"""


from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from geoflow.errors import ModelError

#: The public wheels holding real BigEarthNet pairs: name, version, sha256 of the wheel.
WHEELS: dict[str, tuple[str, str]] = {
    "configilm": ("0.7.1", "54e8c2424c55bb4e68dfda07593e155e9ecfa6c60b50585c4b378076934cf5e3"),
    "bigearthnet_common": ("2.8.0",
                           "6c2bcf2b1d39a3f48925b0d941557152f9e523576fbb9d2b881a842ed92fd6af"),
}
# What is kept of each wheel (prefixes of member names); tarballs are unpacked.
_KEEP = {
    "configilm": ("configilm/extra/mock_data/BENv1/", "configilm/extra/mock_data/BENv2/"),
    "bigearthnet_common": ("bigearthnet_common/BigEarthNet-S1-Example.tar.bz2",
                           "bigearthnet_common/BigEarthNet-S2-Example.tar.bz2",
                           "bigearthnet_common/patches_with_cloud_and_shadow.csv.bz2",
                           "bigearthnet_common/patches_with_seasonal_snow.csv.bz2"),
}


def cache_dir() -> Path:
    """Where fetched samples live: ``$GEOFLOW_CACHE/bigearthnet``, else
    ``~/.cache/geoflow/bigearthnet``."""
    base = os.environ.get("GEOFLOW_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "geoflow") / "bigearthnet"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheel(name: str, version: str, into: Path, offline_dir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(into), f"{name}=={version}"]
    offline = f"or put {name}-{version}-py3-none-any.whl in {offline_dir} to work offline"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ModelError(f"pip download of {name}=={version} failed ({err})",
                         hint=f"check the connection to PyPI, {offline}") from None
    wheels = sorted(into.glob(f"{name}-{version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise ModelError(f"pip download of {name}=={version} failed: {tail[0]}",
                         hint="check the connection to PyPI (or a pip index set in "
                              f"PIP_INDEX_URL), {offline}")
    return wheels[0]


@contextlib.contextmanager
def _cache_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on the cache folder, so that two processes filling a fresh cache do not
    delete each other's wheels or half-extracted folders (released when the holder exits, even
    if it is killed)."""
    import fcntl  # POSIX only, as the rest of geoflow's cluster tooling

    try:
        fh = (root / ".lock").open("a")
    except OSError as err:
        raise ModelError(f"cannot lock the BigEarthNet cache {root} ({err.strerror})",
                         hint="set GEOFLOW_CACHE to a writable folder") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch_samples(cache: str | os.PathLike[str] | None = None) -> Path:
    """Download (once) the public BigEarthNet samples and return the folder holding them.

    Each pinned wheel (:data:`WHEELS`) is fetched with ``pip download --no-deps`` into a private
    temporary folder (a wheel already in ``CACHE/wheels`` is used instead: a way to work
    offline), its sha256 checked, only the data extracted into ``CACHE/<name>-<version>/`` and
    the wheel removed; a ``.complete`` marker makes a later call free. The work is done under
    an exclusive lock on ``CACHE/.lock``: concurrent calls wait, then find the data ready.
    Nothing from the wheels is imported or installed.

    Parameters
    ----------
    cache
        Default :func:`cache_dir`.

    Returns
    -------
    pathlib.Path
        The cache folder: ``configilm-0.7.1/BENv1``, ``configilm-0.7.1/BENv2``,
        ``bigearthnet_common-2.8.0/BigEarthNet-S2-Example`` (and ``-S1-``) and the v1 lists.

    Raises
    ------
    ModelError
        Download failed, the cache is not writable, or a wheel's checksum differs from the
        pinned one.

    Examples
    --------
    >>> root = fetch_samples()  # doctest: +SKIP
    """
    root = Path(cache) if cache is not None else cache_dir()

    def complete(name: str, version: str) -> bool:
        return (root / f"{name}-{version}" / ".complete").is_file()

    if all(complete(n, v) for n, (v, _) in WHEELS.items()):
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelError(f"cannot create the BigEarthNet cache {root} ({err.strerror})",
                         hint="set GEOFLOW_CACHE to a writable folder") from None
    with _cache_lock(root):
        for name, (version, sha) in WHEELS.items():
            if complete(name, version):  # another process finished it while we waited
                continue
            _fetch_one(root, name, version, sha)
    return root


def _fetch_one(root: Path, name: str, version: str, sha: str) -> None:
    """Fetch, check and extract one wheel (the caller holds the cache lock)."""
    dest = root / f"{name}-{version}"
    offline_dir = root / "wheels"
    found = sorted(offline_dir.glob(f"{name}-{version}-*.whl")) if offline_dir.is_dir() else []
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as tmp_name:
        tmp = Path(tmp_name)
        if found:
            wheel = found[0]
        else:
            (tmp / "download").mkdir()
            wheel = _download_wheel(name, version, tmp / "download", offline_dir)
        got = _sha256(wheel)
        if got != sha:
            wheel.unlink()
            raise ModelError(f"{wheel.name} has sha256 {got[:16]}..., expected {sha[:16]}...",
                             hint="the download was damaged or replaced; run again to refetch")
        data = tmp / "data"
        _extract(wheel, _KEEP[name], data)
        (data / ".complete").write_text(sha + "\n")
        if dest.exists():
            shutil.rmtree(dest)  # a stale, incomplete folder (no marker)
        data.rename(dest)  # atomic: a half-extracted cache is never seen as complete
        if found:
            wheel.unlink()  # the extracted data is all that is used (configilm's is 55 MB)


def _extract(wheel: Path, keep: Sequence[str], dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.endswith("/") or not member.startswith(tuple(keep)):
                continue
            prefix = next(k for k in keep if member.startswith(k))
            # BENv1/... and BENv2/... keep their folder; single files land flat.
            rel = (member[len(prefix.rsplit("/", 2)[0]) + 1:] if prefix.endswith("/")
                   else Path(member).name)
            target = dest / rel
            if ".." in Path(rel).parts:
                raise ModelError(f"{wheel.name} holds an unsafe path {member}",
                                 hint="the wheel is not the published one")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
            if target.name.endswith(".tar.bz2"):
                _extract_tar(target, dest, wheel.name)
                target.unlink()


def _extract_tar(tarball: Path, dest: Path, what: str) -> None:
    """Extract a tarball of plain files and folders only: no links, devices, absolute paths or
    ``..``. Python's ``filter="data"`` (3.11.4+) does this; on older 3.11 the members are checked
    here and extracted with the ``fully_trusted`` behaviour only after that check."""
    with tarfile.open(tarball) as tf:
        members = tf.getmembers()
        for m in members:
            path = Path(m.name)
            if (path.is_absolute() or ".." in path.parts or not (m.isfile() or m.isdir())):
                raise ModelError(f"{what} holds an unsafe tar member {m.name!r}",
                                 hint="the wheel is not the published one")
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4: members were checked above
            tf.extractall(dest, members=members)
