"""GPU readiness (geoflow._device_bench, deploy/gpu/check.sh), through their CPU twins.

No GPU can be had on these machines: every test runs the code path a GPU node runs, on the
CPU (same functions, device "cpu"); the one fake is a stand-in for nvidia-smi's output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "deploy" / "gpu" / "check.sh"


@pytest.mark.slow
def test_model_throughput_compiles_and_compares_with_plain_bf16():
    """torch.compile's variant with the eager backend (the code path a GPU runs with
    inductor, without a compiler here) next to plain bf16; "helps" is their ratio. The
    other variants run in the check script's test."""
    from geoflow._device_bench import model_throughput
    from geoflow.model import load

    out = model_throughput(load(device="cpu"), [4], variants=["bf16", "bf16+compile"],
                           compile_backend="eager", min_seconds=0.02)
    assert out["errors"] == {}
    rates = out["patches_per_s"]
    assert set(rates) == {"bf16", "bf16+compile"} and min(rates["bf16+compile"].values()) > 0
    assert out["helps"] == {"bf16+compile": pytest.approx(
        rates["bf16+compile"]["4"] / rates["bf16"]["4"], rel=0.01)}
    best = out["best"]
    assert best["patches_per_s"] == max(r["4"] for r in rates.values())
    assert rates[best["variant"]]["4"] == best["patches_per_s"] and best["batch_size"] == 4


def test_model_throughput_records_a_failing_variant_and_refuses_bad_sizes():
    from geoflow._device_bench import model_throughput
    from geoflow.errors import GeoflowError
    from geoflow.model import load

    model = load(device="cpu")
    out = model_throughput(model, [4], variants=["fp32", "bf16+compile"],
                           compile_backend="no-such-backend", min_seconds=0.01)
    assert set(out["patches_per_s"]) == {"fp32"}
    assert "no-such-backend" in out["errors"]["bf16+compile"]
    with pytest.raises(GeoflowError, match="batch sizes"):
        model_throughput(model, [0, 4])


def test_device_busy_reads_nvidia_smi_samples_of_the_gpu_named_by_uuid(tmp_path):
    """The nvidia-smi fallback of the GPU busy fraction, fed by a stand-in script that prints
    what `nvidia-smi --id=GPU-<uuid> --query-gpu=utilization.gpu --format=csv,noheader,nounits
    --loop-ms=N` prints (the one fake: there is no GPU here). The GPU is named by the UUID
    torch gives (what a GPU node passes, CUDA_VISIBLE_DEVICES or not), not by torch's index.
    torch builds a cuda device object without a GPU; pynvml, if installed, fails to
    initialise here and the fallback runs."""
    import time
    import uuid

    from geoflow._device_bench import DeviceBusy, nvml_uuid

    raw = uuid.UUID("58a9b8e1-3c1e-7a4b-9d2f-0c1b2a3d4e5f")  # as torch's props.uuid prints
    gpu = nvml_uuid(raw)
    assert gpu == f"GPU-{raw}" and nvml_uuid(gpu) == gpu
    fake = tmp_path / "fake-smi"
    fake.write_text(f"#!{sys.executable}\nimport sys, time\n"
                    f"assert sys.argv[1:] == ['--id={gpu}', '--query-gpu=utilization.gpu', "
                    "'--format=csv,noheader,nounits', '--loop-ms=100'], sys.argv\n"
                    "print('40', flush=True)\nprint('[N/A]', flush=True)\n"
                    "print('80', flush=True)\ntime.sleep(60)\n")
    fake.chmod(0o755)
    with DeviceBusy("cuda", smi=[str(fake)], gpu_id=gpu) as busy:
        deadline = time.monotonic() + 20
        while len(busy.samples) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert busy.source == "nvidia-smi"
    assert busy.fraction == pytest.approx(0.6)


def test_device_busy_without_a_gpu_to_name_samples_nothing(tmp_path):
    """Without a GPU torch cannot give a UUID: no sampler starts, the fraction is None."""
    import torch

    from geoflow._device_bench import DeviceBusy

    if torch.cuda.is_available():  # pragma: no cover - a GPU machine
        return
    marker = tmp_path / "ran"
    fake = tmp_path / "fake-smi"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    with DeviceBusy("cuda", smi=[str(fake)]) as busy:
        pass
    assert (busy.source, busy.fraction) == ("none", None) and not marker.exists()


def test_device_info_refuses_cuda_without_a_usable_gpu():
    import torch

    from geoflow._device_bench import device_info
    from geoflow.errors import GeoflowError

    if torch.cuda.is_available():  # pragma: no cover - a GPU machine
        assert device_info("cuda")["gpu"]
        return
    with pytest.raises(GeoflowError, match="cannot use CUDA") as err:
        device_info("cuda")
    assert "CUDA build of torch" in (err.value.hint or "")


def test_check_script_is_valid_bash_and_stops_without_cuda():
    import shutil

    import torch

    subprocess.run(["bash", "-n", str(CHECK)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(CHECK)], check=True)
    if torch.cuda.is_available():  # pragma: no cover - a GPU machine
        return
    proc = subprocess.run([str(CHECK), "--device", "cuda"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no usable CUDA" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_check_script_cpu_twin_runs_the_whole_check(small_archive, stac_server, tmp_path):
    """deploy/gpu/check.sh --device cpu: the model table and the region end to end on one
    worker with two reader threads, on the small archive (served by the session's server)."""
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable, "GEOFLOW_ARCHIVE": str(small_archive)}
    proc = subprocess.run([str(CHECK), "--device", "cpu", "--batch-sizes", "16",
                           "--read-threads", "2", "--no-compile", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert json.loads(proc.stdout) == figures
    assert figures["device"] == "cpu" and figures["cuda_available"] is False
    assert figures["stage"] == "region"
    assert set(figures["model"]["patches_per_s"]) == {"fp32", "bf16", "bf16+channels_last"}
    assert all(set(r) == {"16"} for r in figures["model"]["patches_per_s"].values())
    assert figures["model"]["best"]["batch_size"] == 16
    assert figures["predict_patches_per_s"] > 0
    region = figures["region"]
    assert region["read_threads"] == 2 and region["batch_size"] == 16
    assert region["gpu_busy_fraction"] is None and region["gpu_busy_source"] == "cpu"
    assert region["e2e_km2_per_s"] == pytest.approx(region["km2"] / region["e2e_seconds"],
                                                    rel=0.01)
    split = region["time_split"]
    assert split["chunks"] >= 1
    # write_s is what is left of the chunks' time: each part must be there on its own.
    assert split["read_s"] > 0 and split["infer_s"] > 0 and split["write_s"] > 0
    assert split["chunk_s"] > max(split["read_s"], split["infer_s"], split["write_s"])


def test_check_script_says_it_timed_out_and_keeps_the_archive_out_of_the_clock(
        small_archive, stac_server):
    """A limit too short for the bench: the archive part (before the clock) still runs, the
    script says it timed out and exits 124."""
    env = {**os.environ, "PYTHON": sys.executable, "GEOFLOW_ARCHIVE": str(small_archive)}
    proc = subprocess.run([str(CHECK), "--device", "cpu", "--limit", "1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 124, proc.stderr[-2000:]
    assert "serving the sample archive" in proc.stderr
    assert "timed out after 1 s" in proc.stderr
    # Only stages that finished within the second are printed (the device check may): never
    # the demo region's.
    if proc.stdout.strip():
        assert json.loads(proc.stdout)["stage"] != "region"


def _executing(dask_worker) -> int:
    return int(dask_worker.state.executing_count)


@pytest.mark.slow
def test_the_gpu_worker_cluster_runs_as_many_chunks_as_reader_threads(small_archive,
                                                                       stac_url, tmp_path):
    """What --device cuda starts (one worker, N threads, N GPU slots), started here on the
    CPU: a regional run's chunk tasks (resources={"GPU": 1}) then run N at a time, not the
    two that a window counted in workers would allow."""
    import threading
    import time

    from geoflow._cluster import (
        close_local_cluster,
        gdal_settings,
        has_gpu_workers,
        new_local_cluster,
    )
    from geoflow._device_bench import _device_cluster
    from geoflow.regional import classify_region

    info = json.loads((small_archive / "archive.json").read_text())
    with _device_cluster("cuda", 3) as client:
        [worker] = client.scheduler_info()["workers"].values()
        assert worker["nthreads"] == 3 and worker["resources"] == {"GPU": 3.0}
        assert has_gpu_workers(client)
        most, stop = [0], threading.Event()

        def watch() -> None:  # the chunk tasks executing at once on the worker
            while not stop.is_set():
                most[0] = max(most[0], *client.run(_executing).values())
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            ds = classify_region(info["demo_bbox"], info["datetime"],
                                 out=str(tmp_path / "map.zarr"), catalog=stac_url,
                                 client=client, device="cpu", chunk_patches=2, progress=False)
        finally:
            stop.set()
            watcher.join(timeout=30)
        assert dict(ds.attrs["run"])["chunks_computed"] >= 4
        assert most[0] == 3
    cluster, client = new_local_cluster(1, gdal_settings())
    try:  # the default stays one thread and no resources
        [worker] = client.scheduler_info()["workers"].values()
        assert worker["nthreads"] == 1 and not worker.get("resources")
    finally:
        close_local_cluster(cluster, client)
