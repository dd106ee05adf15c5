"""geoflow reprocess resumes after a kill -9, and the workflow spec's ``reprocess:`` runs it.

From the issue "Reprocessing map archives after a model update": "It resumes: kill it midway,
rerun the same command, get the same bytes." and "The workflow spec's `reprocess:` section
runs this." Everything is real: the small archive behind the local STAC API, Dask clusters
(in-process here, a 2-worker LocalCluster in the CLI subprocess), Zarr stores on disk.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from _helpers import centre_quarter, file_hashes, kill_midway

from geoflow.retry import RetryPolicy

pytestmark = pytest.mark.server

DATES = "2025-06-01/2025-06-10"  # two Sentinel-2 dates of the small archive: a fast run
CHUNK_PATCHES = 2  # several chunks in a part of the demo bbox: something to kill midway
LEDGER = "_geoflow_ledger"
FAST = RetryPolicy(attempts=2, backoff_s=0.1)


@pytest.fixture(scope="module")
def previous(tmp_path_factory, small_archive, stac_url, client, models):
    """The first model's map of the region, and the sha256 of each of its files."""
    from geoflow.regional import classify_region

    out = tmp_path_factory.mktemp("resume-prev") / "map.zarr"
    classify_region(centre_quarter(Path(small_archive))[0], DATES, out=str(out), catalog=stac_url,
                    client=client, model=models[0], chunk_patches=CHUNK_PATCHES,
                    progress=False, retry=FAST)
    return out, file_hashes(out)


def _done(store: Path) -> list[Path]:
    done = store / LEDGER / "done"
    return list(done.glob("*.json")) if done.exists() else []


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_the_same_bytes_and_report(previous, models, client,
                                                                   tmp_path):
    from geoflow.reprocess import reprocess
    from geoflow.store import MapStore

    prev, prev_hashes = previous
    new = tmp_path / "new.zarr"
    # The uninterrupted reference is made at the very path the killed command writes to and
    # then moved aside (the map's bytes do not depend on its path either: the report kept in
    # it leaves out where the store and its PNG are).
    ref_ds = reprocess(str(prev), model=models[1], out=str(new), client=client,
                       progress=False, retry=FAST)
    ref_report = dict(ref_ds.attrs["change_report"])
    ref_digest = MapStore.open(str(new)).digest()
    total = ref_ds.attrs["run"]["chunks_total"]
    assert total >= 3, "too few chunks to be killed midway"
    shutil.move(new, tmp_path / "reference.zarr")

    cmd = [sys.executable, "-m", "geoflow.cli", "reprocess", str(prev), "--model", models[1],
           "--out", str(new), "--workers", "2", "--json"]
    k = 2
    status = kill_midway(cmd, lambda: len(_done(new)), k=k, timeout=90)
    assert status == -signal.SIGKILL, "the run ended before it could be killed"
    done_at_kill = {p.stem for p in _done(new)}
    assert k <= len(done_at_kill) < total, "kill came too late to test a resume"

    # The same command again, to the end.
    rerun = subprocess.run(cmd, capture_output=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    report = json.loads(rerun.stdout)
    store = MapStore.open(str(new))
    run = store.attrs["run"]
    # Resumed, not redone: every chunk in the ledger at the kill is skipped.
    assert run["chunks_skipped"] == len(done_at_kill)
    assert run["chunks_computed"] == total - len(done_at_kill)
    assert store.verify()["complete"]
    assert store.digest() == ref_digest
    assert report == ref_report
    assert store.attrs["change_report"] == {k: v for k, v in ref_report.items()
                                            if k not in ("store", "png")}
    # The previous map is only read, by both runs and the killed one.
    assert file_hashes(prev) == prev_hashes


def test_workflow_reprocess_section_writes_report_and_supersedes(previous, models, client,
                                                                 small_archive, stac_url,
                                                                 tmp_path):
    from geoflow.store import MapStore
    from geoflow.workflow import run_workflow

    prev, prev_hashes = previous
    out, report_path = tmp_path / "maps" / "new.zarr", tmp_path / "maps" / "changes.json"
    spec = {"bbox": list(centre_quarter(Path(small_archive))[0]), "dates": DATES,
            "catalog": {"url": stac_url}, "model": models[1], "out": str(out),
            "reprocess": {"previous": str(prev), "report": str(report_path)}}
    spec_path = tmp_path / "reprocess.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    ds = run_workflow(spec_path, client=client, retry=FAST)

    assert report_path.is_file()
    report = json.loads(report_path.read_text())
    assert report == ds.attrs["change_report"]
    # Recounted here from the two stores' summaries, not from the report code.
    a = xr.open_zarr(prev, mask_and_scale=False)["summary_class"].values
    b = xr.open_zarr(out, mask_and_scale=False)["summary_class"].values
    both = (a != 255) & (b != 255)
    assert both.sum() > 0
    assert report["compared_pixels"] == int(both.sum())
    assert report["changed_pixels"] == int((both & (a != b)).sum())
    assert report["changed_fraction"] == pytest.approx((both & (a != b)).sum() / both.sum())
    # The other seed changes something (untrained models: often every pixel), so the counts
    # above could not pass for a copy of the previous map.
    assert report["changed_pixels"] > 0
    changed = xr.open_zarr(out, mask_and_scale=False)["changed"].values
    np.testing.assert_array_equal(changed == 1, both & (a != b))
    # The workflow's map is the reprocess of the previous one, not a fresh classification.
    new = MapStore.open(str(out))
    assert new.attrs["supersedes"]["store"] == MapStore.open(str(prev)).url
    assert new.attrs["supersedes"]["model_checksum"] == MapStore.open(str(prev)).attrs[
        "model_checksum"]
    assert new.attrs["stac_items"] == MapStore.open(str(prev)).attrs["stac_items"]
    assert new.attrs["model_checksum"] != new.attrs["supersedes"]["model_checksum"]
    assert file_hashes(prev) == prev_hashes
