"""geoflow.bench: the memory sampler and region sizing the benchmark relies on."""

from __future__ import annotations

import time

import pytest


def test_peak_rss_sees_memory_held_during_the_block():
    from geoflow.bench import PeakRSS

    with PeakRSS() as before:
        pass
    with PeakRSS(interval=0.01) as peak:
        block = bytearray(200 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page so it is resident
        time.sleep(0.2)  # held long enough for the sampler to see it
        del block
    assert peak.mb >= before.mb + 150


def test_peak_rss_counts_a_child_process_started_inside_the_block():
    """The sampler lists descendants once a second, not per sample: a worker that starts
    (or restarts) during a measurement is still counted."""
    import subprocess
    import sys

    from geoflow.bench import PeakRSS

    hold = PeakRSS.REFRESH_S + 1.0
    code = ("import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
            f"time.sleep({hold})")
    with PeakRSS() as before:
        pass
    with PeakRSS(interval=0.01) as peak:
        time.sleep(0.1)  # the first listing is taken before the child exists
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert peak.mb >= before.mb + 150


def test_sub_bbox_is_centred_with_scaled_sides():
    from geoflow.bench import _sub_bbox

    w, s, e, n = _sub_bbox((10.0, 50.0, 11.0, 50.4), 0.5)
    assert (w, s, e, n) == pytest.approx((10.25, 50.1, 10.75, 50.3))


def test_cpu_meter_counts_cpu_work_of_the_processes_not_waiting():
    import psutil

    from geoflow.bench import CpuMeter

    me = [psutil.Process()]
    with CpuMeter(me) as idle:
        time.sleep(0.3)
    with CpuMeter(me) as busy:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:
            pass
    assert idle.seconds < 0.1
    assert busy.seconds >= 0.25


def test_cpu_meter_counts_a_listed_child_process():
    """CPU of worker processes counts too: a run's CPU is its client's and its workers'."""
    import subprocess
    import sys

    import psutil

    from geoflow.bench import CpuMeter

    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                               "while time.process_time() - t < 0.4: pass\ntime.sleep(30)"])
    try:
        proc = psutil.Process(child.pid)
        with CpuMeter([proc]) as cpu:
            while proc.cpu_times().user + proc.cpu_times().system < 0.4:
                time.sleep(0.05)
        assert cpu.seconds >= 0.3
    finally:
        child.kill()
        child.wait()


def test_cpu_meter_skips_a_process_that_ends_during_the_block():
    """A worker that ends (restarts) mid-run counts for nothing, not for minus its CPU."""
    import subprocess
    import sys

    import psutil

    from geoflow.bench import CpuMeter

    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                               "while time.process_time() - t < 0.3: pass\ntime.sleep(30)"])
    try:
        proc = psutil.Process(child.pid)
        while proc.cpu_times().user + proc.cpu_times().system < 0.3:
            time.sleep(0.05)
        with CpuMeter([psutil.Process(), proc]) as cpu:
            child.kill()
            child.wait()
    finally:
        child.kill()
        child.wait()
    assert 0 <= cpu.seconds < 0.2


def test_cluster_processes_of_an_in_process_cluster_is_this_process(client):
    """processes=False: the worker is this process and has no nanny; this process's parent
    (the shell) is not the run's."""
    import os

    from geoflow.bench import cluster_processes

    assert [p.pid for p in cluster_processes(client)] == [os.getpid()]


@pytest.mark.slow
def test_read_then_model_meters_the_worker_and_its_nanny(small_archive, stac_url, tmp_path):
    """The bench's parts on a LocalCluster of one worker process: the worker's and its
    nanny's pids (and this process's) are metered; the chunk tasks' read-only and
    model-only CPU is there; a real run's meter includes the worker's CPU."""
    import json
    import os

    import psutil

    from geoflow._cluster import close_local_cluster, gdal_settings, new_local_cluster
    from geoflow.bench import CpuMeter, _overhead_fraction, _read_then_model, cluster_processes
    from geoflow.model import DEFAULT_CHECKPOINT
    from geoflow.regional import classify_region

    info = json.loads((small_archive / "archive.json").read_text())
    bbox, dates, model = info["demo_bbox"], info["datetime"], str(DEFAULT_CHECKPOINT)
    cluster, client = new_local_cluster(1, gdal_settings())
    try:
        [worker] = client.run(os.getpid).values()
        procs = {p.pid for p in cluster_processes(client)}
        # The worker's nanny: in this process on a LocalCluster, its own process under
        # `dask worker`; either way it is metered.
        nanny = psutil.Process(worker).ppid()
        assert worker != os.getpid() and procs == {os.getpid(), worker, nanny}
        parts = _read_then_model(client, bbox, dates, stac_url, model)
        assert parts["read_cpu_s"] > 0 and parts["model_cpu_s"] > 0
        assert parts["read_s"] > 0 and parts["model_s"] > 0
        # The end-to-end meter counts the worker's CPU, not only this process's. (The overhead
        # of one cold run this small is not a figure: its parts were measured cold, the run
        # warm, and CPU times swing; the bench takes medians over rounds of a larger region.)
        with CpuMeter(cluster_processes(client)) as cpu, CpuMeter([psutil.Process()]) as own:
            classify_region(bbox, dates, out=str(tmp_path / "map.zarr"), catalog=stac_url,
                            client=client, model=model, progress=False)
        assert cpu.seconds > own.seconds > 0
        assert _overhead_fraction(4.0, 1.0, 2.0) == pytest.approx(0.25)
    finally:
        close_local_cluster(cluster, client)


@pytest.mark.slow
def test_compare_readers_reads_the_same_region_with_each_reader(stac_url, small_archive):
    """geoflow, stackstac (and odc-stac where installed) read the small archive's demo
    region on this thread. stackstac reads one layer per item and asset over the grid;
    geoflow reads per solar day its bands and SCL, and SAR where the day has a pass (the
    cloud mask is derived, not read): the pixel counts say so."""
    import importlib.util
    import json

    from geoflow.bench import _plan, compare_readers
    from geoflow.cube import build_cube
    from geoflow.model import DEFAULT_CHECKPOINT
    from geoflow.sentinel import S1_BANDS, S2_BANDS

    info = json.loads((small_archive / "archive.json").read_text())
    bbox, dates, model = info["demo_bbox"], info["datetime"], str(DEFAULT_CHECKPOINT)
    out = compare_readers(bbox, dates, stac_url, model, rounds=1)
    scenes, plan, _ = _plan(bbox, dates, stac_url, model)
    pixels = plan.grid.height * plan.grid.width
    item_assets = (len(scenes.s2) * (len(S2_BANDS) + 1) + len(scenes.s1) * len(S1_BANDS))
    assert out["stackstac_read_mpix"] == pytest.approx(item_assets * pixels / 1e6, abs=0.01)
    cube = build_cube(scenes, plan.grid)  # lazy: only its shape and coordinates are used
    days, with_sar = cube.sizes["time"], int(cube["s1_available"].sum())
    layers = days * (len(S2_BANDS) + 1) + with_sar * len(S1_BANDS)
    assert with_sar > 0 and layers < item_assets
    assert out["geoflow_read_mpix"] == pytest.approx(layers * pixels / 1e6, abs=0.01)
    g, s = out["geoflow_cpu_s"], out["stackstac_cpu_s"]
    assert g > 0 and s > 0 and out["stackstac_mosaic_cpu_s"] > 0
    assert out["stackstac_cpu_ratio"] == pytest.approx(g / s, rel=0.02)
    assert out["stackstac_cpu_per_mpix_ratio"] == pytest.approx(
        (g / out["geoflow_read_mpix"]) / (s / out["stackstac_read_mpix"]), rel=0.05)
    assert out["read_mpix_per_cpu_s"] == pytest.approx(out["geoflow_read_mpix"] / g, rel=0.05)
    if importlib.util.find_spec("odc") and importlib.util.find_spec("odc.stac"):
        assert out["odc_stac_cpu_ratio"] == pytest.approx(g / out["odc_stac_cpu_s"], rel=0.02)
    else:
        assert out["odc_stac_cpu_ratio"] is None
