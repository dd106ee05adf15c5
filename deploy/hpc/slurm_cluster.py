"""Map a region on a SLURM cluster: Dask workers as batch jobs on GPU nodes (dask-jobqueue).

Run it on a login node (or in a small job) with geoflow installed in an environment the compute
nodes can see, plus ``pip install dask-jobqueue``::

    python deploy/hpc/slurm_cluster.py workflows/example-region.yaml --jobs 4 --partition gpu
    python deploy/hpc/slurm_cluster.py workflows/example-region.yaml --print-job   # check first

Each job is one Dask worker holding one GPU (``--gres=gpu:1``) that advertises the Dask
resource ``GPU=1``: geoflow then sends every chunk task with ``resources={"GPU": 1}``, one at a
time per GPU, and runs the model with CUDA. ``--cpu`` asks for CPU-only workers instead.
The scheduler runs in this process: keep it alive until the run ends. Workers write the map
themselves, so ``out`` must be on a shared file system or an object store. An interrupted run
resumes when started again with the same spec. Exit status: 0 done, 1 some chunks failed
(rerun to retry them), 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

from dask_jobqueue import SLURMCluster
from distributed import Client

from geoflow.errors import GeoflowError, RunFailedError
from geoflow.workflow import load_workflow, run_workflow


def make_cluster(args: argparse.Namespace) -> SLURMCluster:
    """The SLURMCluster for these options (no job is submitted until it is scaled)."""
    return SLURMCluster(
        queue=args.partition,
        account=args.account,
        cores=args.cores,
        processes=1,  # one worker process per job: it owns the job's GPU
        memory=args.memory,
        walltime=args.walltime,
        interface=args.interface,
        job_extra_directives=[] if args.cpu else ["--gres=gpu:1"],
        worker_extra_args=[] if args.cpu else ["--resources", "GPU=1"],
        # Site specific: load modules and activate the environment that has geoflow, e.g.
        # "module load cuda", "source $HOME/venvs/geoflow/bin/activate".
        job_script_prologue=list(args.prologue),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workflow", help="YAML run spec (its cluster section is ignored here)")
    p.add_argument("--jobs", type=int, default=4, help="worker jobs to submit")
    p.add_argument("--partition", default=None, help="SLURM partition (queue)")
    p.add_argument("--account", default=None, help="SLURM account to charge")
    p.add_argument("--cores", type=int, default=8, help="CPU cores per job")
    p.add_argument("--memory", default="32GB", help="memory per job")
    p.add_argument("--walltime", default="02:00:00", help="time limit per job")
    p.add_argument("--interface", default=None, help="network interface, e.g. ib0")
    p.add_argument("--cpu", action="store_true", help="CPU-only workers (no GPU request)")
    p.add_argument("--prologue", action="append", default=[],
                   help="shell line run before the worker starts (repeatable)")
    p.add_argument("--print-job", action="store_true",
                   help="print the job script and exit without submitting")
    args = p.parse_args(argv)

    try:
        wf = load_workflow(args.workflow)  # check the spec before anything is queued
    except GeoflowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cluster = make_cluster(args)
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
