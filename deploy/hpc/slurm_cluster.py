"""Map a region on a SLURM cluster: Dask workers as batch jobs on GPU nodes (dask-jobqueue).

Run it on a login node (or in a small job) with geoflow installed in an environment the compute
nodes can see, plus ``pip install dask-jobqueue``::

    python deploy/hpc/slurm_cluster.py workflows/example-region.yaml --jobs 4 --partition gpu
    python deploy/hpc/slurm_cluster.py workflows/example-region.yaml --print-job   # check first

Each job is one Dask worker holding one GPU (``--gres=gpu:1``) that advertises the Dask
resource ``GPU=1``: geoflow then sends every chunk task with ``resources={"GPU": 1}``, one at a
time per GPU, and runs the model with CUDA. ``--cpu`` asks for CPU-only workers instead.
Each job script exports the worker environment geoflow's own LocalCluster gives its workers
(GDAL's block cache and remote-read options, from the spec's retry policy); geoflow registers
its worker plugin (torch threads, GDAL, imports) itself when the run starts. The scheduler runs
in this process: keep it alive until the run ends. Workers write the map
themselves, so ``out`` must be on a shared file system or an object store. An interrupted run
resumes when started again with the same spec. Exit status: 0 done, 1 some chunks failed
(rerun to retry them), 2 bad input.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from dask_jobqueue import SLURMCluster
from distributed import Client

from geoflow._cluster import WORKER_ENV, gdal_settings
from geoflow.errors import GeoflowError, RunFailedError
from geoflow.retry import RetryPolicy
from geoflow.workflow import load_workflow, run_workflow


@dataclass(frozen=True)
class SlurmSettings:
    """What one worker job asks SLURM for (the command-line options, as data)."""

    partition: str | None = None
    account: str | None = None
    cores: int = 8
    memory: str = "32GB"
    walltime: str = "02:00:00"
    interface: str | None = None
    gpu: bool = True
    #: Site specific shell lines run before the worker starts, e.g. "module load cuda",
    #: "source $HOME/venvs/geoflow/bin/activate".
    prologue: tuple[str, ...] = field(default_factory=tuple)


def worker_environment(retry: RetryPolicy | None = None) -> dict[str, str]:
    """The environment geoflow's LocalCluster starts its workers with: GDAL's block cache
    bound, and the remote-read options of ``retry`` (set before GDAL's first read)."""
    return {**WORKER_ENV, **gdal_settings(retry)}


def cluster_kwargs(settings: SlurmSettings, retry: RetryPolicy | None = None) -> dict[str, Any]:
    """Keyword arguments of :class:`SLURMCluster` for ``settings`` (tested: the job script)."""
    exports = [f"export {k}={shlex.quote(v)}" for k, v in worker_environment(retry).items()]
    return {
        "queue": settings.partition,
        "account": settings.account,
        "cores": settings.cores,
        "processes": 1,  # one worker process per job: it owns the job's GPU
        "memory": settings.memory,
        "walltime": settings.walltime,
        "interface": settings.interface,
        "job_extra_directives": ["--gres=gpu:1"] if settings.gpu else [],
        # The Dask resource geoflow looks for: chunk tasks then ask for GPU=1, one per GPU.
        "worker_extra_args": ["--resources", "GPU=1"] if settings.gpu else [],
        # The site's lines first (they may activate the environment), then geoflow's.
        "job_script_prologue": [*settings.prologue, *exports],
    }


def make_cluster(settings: SlurmSettings, retry: RetryPolicy | None = None,
                 **overrides: Any) -> SLURMCluster:
    """The SLURMCluster for these settings (no job is submitted until it is scaled)."""
    return SLURMCluster(**{**cluster_kwargs(settings, retry), **overrides})


def settings_from_args(args: argparse.Namespace) -> SlurmSettings:
    return SlurmSettings(partition=args.partition, account=args.account, cores=args.cores,
                         memory=args.memory, walltime=args.walltime, interface=args.interface,
                         gpu=not args.cpu, prologue=tuple(args.prologue))


def parser() -> argparse.ArgumentParser:
    d = SlurmSettings()
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("workflow", help="YAML run spec (its cluster section is ignored here)")
    p.add_argument("--jobs", type=int, default=4, help="worker jobs to submit")
    p.add_argument("--partition", default=d.partition, help="SLURM partition (queue)")
    p.add_argument("--account", default=d.account, help="SLURM account to charge")
    p.add_argument("--cores", type=int, default=d.cores, help="CPU cores per job")
    p.add_argument("--memory", default=d.memory, help="memory per job")
    p.add_argument("--walltime", default=d.walltime, help="time limit per job")
    p.add_argument("--interface", default=d.interface, help="network interface, e.g. ib0")
    p.add_argument("--cpu", action="store_true", help="CPU-only workers (no GPU request)")
    p.add_argument("--prologue", action="append", default=[],
                   help="shell line run before the worker starts (repeatable)")
    p.add_argument("--print-job", action="store_true",
                   help="print the job script and exit without submitting")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        wf = load_workflow(args.workflow)  # check the spec before anything is queued
    except GeoflowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cluster = make_cluster(settings_from_args(args), wf.retry)
    if args.print_job:
        print(cluster.job_script())
        cluster.close()
        return 0
    cluster.scale(jobs=args.jobs)
    try:
        with Client(cluster) as client:
            print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
            client.wait_for_workers(1, timeout=3600)  # the queue decides when jobs start
            ds = run_workflow(wf, client=client)
            print(f"map written to {wf.out_path()}: {ds.attrs.get('geoflow_run', '')}")
    except RunFailedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except GeoflowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
