"""deploy/local/cluster.sh: a scheduler and workers in one command, and all of it stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from distributed import Client

from geoflow._cluster import WORKER_ENV, gdal_settings

SCRIPT = str(Path(__file__).resolve().parents[2] / "deploy" / "local" / "cluster.sh")


def _wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stop", "ctrl-c"])
def test_cluster_script_starts_workers_and_stops_everything(tmp_path: Path, how: str) -> None:
    state = tmp_path / "cluster"
    log = tmp_path / "cluster.err"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [SCRIPT, "--workers", "1", "--gpu-workers", "1", "--port", "0", "--dir", str(state),
             "--timeout", "60"],
            stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    try:
        # The first line comes once every worker joined; the script's own --timeout bounds it.
        address = proc.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:"), log.read_text()
        port = int(address.rsplit(":", 1)[1])
        assert json.loads((state / "scheduler.json").read_text())["address"] == address
        started = psutil.Process(proc.pid).children(recursive=True)

        with Client(address, timeout=10) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert {w["name"]: w["resources"] for w in workers.values()} == {
                "cpu-0": {}, "gpu-0": {"GPU": 1}}
            assert {w["nthreads"] for w in workers.values()} == {1}
            cwds = client.run(os.getcwd)
            env = {workers[a]["name"]: e for a, e in client.run(lambda: dict(os.environ)).items()}
        assert len(set(cwds.values())) == 2
        for cwd in cwds.values():
            assert cwd != os.getcwd()
            assert Path(cwd).parent == state
        expected = {**WORKER_ENV, **gdal_settings()}
        for worker_env in env.values():
            assert {k: worker_env.get(k) for k in expected} == expected
            assert worker_env.get("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED") == "False"
        assert env["gpu-0"].get("CUDA_VISIBLE_DEVICES") == "0"
        assert env["cpu-0"].get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")

        if how == "stop":
            subprocess.run([SCRIPT, "stop", "--dir", str(state)], check=True, timeout=60,
                           capture_output=True)
        else:  # a terminal's Ctrl-C: SIGINT to the foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=40) == 0, log.read_text()
        _wait_until(lambda: not _running(started), 20, "every process of the cluster exits")
        _wait_until(lambda: _port_closed(port), 10, "the scheduler's port closes")
        assert not (state / "scheduler.json").exists()
        assert not (state / "cluster.pid").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_cluster_script_says_why_a_scheduler_does_not_start(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    run = subprocess.run([SCRIPT, "--workers", "1", "--dir", str(state), "--timeout", "10"],
                         env={**os.environ, "DASK": "/bin/false"}, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    assert "scheduler exited" in run.stderr and "scheduler.log" in run.stderr
    assert run.stdout == ""
    assert not (state / "cluster.pid").exists()


@pytest.mark.parametrize("args", [["--workers", "two"], ["--workers", "0"], ["--port"],
                                  ["--bogus", "1"]])
def test_cluster_script_refuses_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    run = subprocess.run([SCRIPT, *args, "--dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 2
    assert run.stderr.startswith("cluster.sh: ")


def test_cluster_script_stop_without_a_cluster_is_fine(tmp_path: Path) -> None:
    run = subprocess.run([SCRIPT, "stop", "--dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "stopped" in run.stderr
