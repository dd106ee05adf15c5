"""``geoflow bench --device cuda``: is a GPU node ready, and what does it deliver?

No GPU has been lent to this project's machines so far, so the check is one short command a
GPU node runs when it has one (``deploy/gpu/check.sh`` wraps it):

1. :func:`device_info`: torch sees the device (CUDA build, GPU name, bf16 support).
2. :func:`model_throughput`: the student's forward pass on the device, in patches per
   second, for batch sizes 256..8192, as ``fp32``, ``bf16`` (autocast), ``bf16`` with
   ``channels_last`` and ``bf16`` with ``torch.compile``; every variant is measured and
   reported, ``helps`` gives each one's speed-up over plain bf16 and ``best`` names the
   fastest; one that fails records its error instead. Nothing is switched on from this
   table: the region run (3.) uses geoflow's predict path, plain bf16 autocast on CUDA.
3. :func:`region_on_device`: the demo region end to end on one worker that owns the device
   and runs ``read_threads`` chunks at once (their reads on CPU threads, their batches on
   the device), in km^2/s, with the GPU's busy fraction (NVML, or ``nvidia-smi`` sampling)
   and where the chunks' time went (read, infer, write).

``device="cpu"`` runs the same code on the CPU (bf16 autocast on the CPU, the compile
variant with the backend given, CPU timers): it is what the tests run, since a GPU cannot
be had here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from geoflow.errors import GeoflowError

#: Batch sizes of the model throughput table on a GPU.
DEFAULT_BATCH_SIZES = (256, 512, 1024, 2048, 4096, 8192)
#: Forward-pass variants, in the order they are tried.
VARIANTS = ("fp32", "bf16", "bf16+channels_last", "bf16+compile")


def device_info(device: str) -> dict[str, Any]:
    """What torch sees of ``device``: versions, GPU name and memory, bf16 support.

    Raises
    ------
    GeoflowError
        ``device`` is a CUDA device and torch has no usable CUDA (a CPU build, no driver).

    Examples
    --------
    >>> device_info("cpu")["device"]
    'cpu'
    """
    import torch

    dev = torch.device(device)
    info: dict[str, Any] = {"device": str(dev), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda,
                            "cuda_available": bool(torch.cuda.is_available())}
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = ("a CPU-only build" if torch.version.cuda is None
                     else f"built for CUDA {torch.version.cuda}, but no GPU or driver answers")
            raise GeoflowError(f"torch {torch.__version__} cannot use CUDA ({build})",
                               hint="install a CUDA build of torch (pip install torch picks "
                                    "one on Linux x86_64) and check nvidia-smi")
        props = torch.cuda.get_device_properties(dev)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}",
                    bf16=bool(torch.cuda.is_bf16_supported()))
    else:
        info.update(gpu=None, bf16=True, threads=torch.get_num_threads())
    return info


def _patches(model: Any, n: int, seed: int = 0, clouds: bool = True
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` plausible patches: land reflectance, SAR in dB, a few clouds (or none)."""
    rng = np.random.default_rng(seed)
    p = model.patch_size
    s2 = rng.uniform(0.02, 0.4, (n, len(model.meta["bands"]), p, p)).astype(np.float32)
    s1 = rng.uniform(-20.0, -5.0, (n, len(model.meta["sar_bands"]), p, p)).astype(np.float32)
    cloud = ((rng.uniform(0, 1, (n, p, p)) > 0.8).astype(np.float32) if clouds
             else np.zeros((n, p, p), np.float32))
    return s2, s1, cloud


def _inputs(model: Any, n: int, device: Any) -> dict[str, Any]:
    """:func:`_patches` as the network's input tensors on ``device``."""
    from geoflow.model.networks import prepare_inputs

    return prepare_inputs(*_patches(model, n), model.meta["norm"], device=device)


def _variant(model: Any, name: str, compile_backend: str) -> tuple[Any, bool, bool]:
    """(network, bf16 autocast, channels_last inputs) of a variant."""
    import copy

    import torch

    net = model.network
    if name == "fp32":
        return net, False, False
    if name == "bf16":
        return net, True, False
    if name == "bf16+channels_last":
        return copy.deepcopy(net).to(memory_format=torch.channels_last), True, True
    if name == "bf16+compile":
        # Dynamic batch dimension: one compilation serves every batch size.
        return torch.compile(net, backend=compile_backend, dynamic=True), True, False
    raise GeoflowError(f"unknown variant {name!r}", hint=f"use one of {', '.join(VARIANTS)}")


def _time_forward(net: Any, batch: dict[str, Any], device: Any, bf16: bool,
                  min_seconds: float) -> float:
    """Patches per second of ``net`` on ``batch`` (after a warm-up pass): device events on
    CUDA (the GPU's own clock), the wall clock on the CPU."""
    import torch

    n = int(batch["opt"].shape[0])
    cuda = device.type == "cuda"

    def forward() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            net(batch)

    with torch.inference_mode():
        forward()  # warm-up: kernels chosen, memory pooled, graph compiled
        if cuda:
            torch.cuda.synchronize(device)
        reps, elapsed = 1, 0.0
        while True:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                for _ in range(reps):
                    forward()
                end.record()
                end.synchronize()
                elapsed = start.elapsed_time(end) / 1000.0
            else:
                t0 = time.perf_counter()
                for _ in range(reps):
                    forward()
                elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds or reps >= 1024:
                return reps * n / elapsed
            reps = min(1024, max(reps * 2, int(reps * min_seconds / max(elapsed, 1e-6)) + 1))


def model_throughput(model: Any, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, *,
                     variants: Sequence[str] = VARIANTS, compile_backend: str = "inductor",
                     min_seconds: float = 0.5) -> dict[str, Any]:
    """The student's forward pass on its device, in patches per second.

    Parameters
    ----------
    model
        A :class:`geoflow.model.LoadedModel` on the device to measure.
    batch_sizes
        Patches per forward pass.
    variants
        Among :data:`VARIANTS`.
    compile_backend
        ``torch.compile`` backend of the ``bf16+compile`` variant (``"inductor"`` on a GPU;
        ``"eager"`` runs the same code path without a compiler).
    min_seconds
        Each figure times repeated passes for at least this long.

    Returns
    -------
    dict
        ``patches_per_s`` ({variant: {batch size: patches/s}}), ``errors`` ({variant:
        message} for variants that failed), ``best`` (variant, batch_size, patches_per_s)
        and ``helps`` ({variant: speed-up over plain bf16 at its best batch size}).

    Examples
    --------
    >>> from geoflow.model import load
    >>> out = model_throughput(load(device="cpu"), [8], variants=["fp32"], min_seconds=0.01)
    >>> out["best"]["variant"], out["best"]["batch_size"]
    ('fp32', 8)
    """
    import torch

    device = model.device
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise GeoflowError(f"batch sizes {list(batch_sizes)} must be positive integers",
                           hint="pass e.g. 256,512,1024")
    full = _inputs(model, sizes[-1], device)
    table: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for name in variants:
        try:
            net, bf16, channels_last = _variant(model, name, compile_backend)
            rates: dict[str, float] = {}
            for bs in sizes:
                batch = {k: v[:bs] for k, v in full.items()}
                if channels_last:
                    batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4
                             else v for k, v in batch.items()}
                rates[str(bs)] = round(_time_forward(net, batch, device, bf16, min_seconds), 1)
            table[name] = rates
        except Exception as err:  # a variant this torch or device cannot run: say which
            errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if not table:
        raise GeoflowError(f"no variant of the model ran on {device}: {errors}",
                           hint="check the torch installation (device_info)")
    variant, best_bs, rate = max(((v, b, r) for v, rates in table.items()
                                  for b, r in rates.items()), key=lambda t: t[2])
    base = max(table["bf16"].values()) if "bf16" in table else None
    helps = {v: round(max(r.values()) / base, 3) for v, r in table.items()
             if base and v.startswith("bf16+")}
    return {"patches_per_s": table, "errors": errors, "helps": helps,
            "best": {"variant": variant, "batch_size": int(best_bs), "patches_per_s": rate}}


def parse_smi_utilization(lines: Sequence[str]) -> list[float]:
    """GPU utilisation samples (0..1) from ``nvidia-smi --query-gpu=utilization.gpu
    --format=csv,noheader,nounits`` lines; lines that are not a number are skipped.

    Examples
    --------
    >>> parse_smi_utilization(["87", " 100 ", "[N/A]", ""])
    [0.87, 1.0]
    """
    out = []
    for line in lines:
        text = line.strip().rstrip("%").strip()
        with contextlib.suppress(ValueError):
            out.append(min(1.0, max(0.0, float(text) / 100.0)))
    return out


def nvml_uuid(raw: object) -> str:
    """A GPU's UUID as NVML and ``nvidia-smi --id`` take it (``GPU-`` and the hex digits)
    from what torch gives (``get_device_properties(i).uuid``: a UUID object or its text).

    Examples
    --------
    >>> nvml_uuid("58a9b8e1-3c1e-7a4b-9d2f-0c1b2a3d4e5f")
    'GPU-58a9b8e1-3c1e-7a4b-9d2f-0c1b2a3d4e5f'
    >>> nvml_uuid("MIG-58a9b8e1-3c1e-7a4b-9d2f-0c1b2a3d4e5f")
    'MIG-58a9b8e1-3c1e-7a4b-9d2f-0c1b2a3d4e5f'
    """
    text = str(raw).strip()
    if text.startswith(("GPU-", "MIG-")):
        return text
    if not text:
        raise GeoflowError("torch gave an empty GPU UUID",
                           hint="check the driver with nvidia-smi -L")
    return f"GPU-{text}"


def gpu_uuid(index: int) -> str:
    """The NVML UUID of torch's CUDA device ``index`` (which counts only the GPUs that
    ``CUDA_VISIBLE_DEVICES`` leaves, where NVML counts all of the node's).

    Examples
    --------
    >>> gpu_uuid(0)  # doctest: +SKIP
    'GPU-58a9b8e1-3c1e-7a4b-9d2f-0c1b2a3d4e5f'
    """
    import torch

    return nvml_uuid(torch.cuda.get_device_properties(index).uuid)


class DeviceBusy:
    """The GPU's busy fraction while the block runs, sampled every ``interval`` seconds.

    From NVML (``pynvml``, as ``torch.cuda.utilization`` uses) when installed, else from an
    ``nvidia-smi`` process sampling at the same rate; on the CPU, or with neither, the
    fraction is None and ``source`` says why. ``gpu_id`` names the GPU as NVML does
    (``GPU-<uuid>``); by default the UUID torch gives for ``device`` (:func:`gpu_uuid`).

    Examples
    --------
    >>> with DeviceBusy("cpu") as busy:
    ...     pass
    >>> busy.fraction, busy.source
    (None, 'cpu')
    """

    def __init__(self, device: str, interval: float = 0.1,
                 smi: Sequence[str] = ("nvidia-smi",), gpu_id: str | None = None) -> None:
        import torch

        self.device = torch.device(device)
        self.interval = interval
        self.smi = list(smi)
        self.gpu_id = gpu_id
        self.samples: list[float] = []
        self.source = "cpu" if self.device.type != "cuda" else "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None

    @property
    def fraction(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 3) if self.samples else None

    def _nvml_loop(self, handle: Any, nvml: Any) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append(nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
            self._stop.wait(self.interval)

    def _smi_loop(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.samples.extend(parse_smi_utilization([line]))

    def __enter__(self) -> DeviceBusy:
        if self.device.type != "cuda":
            return self
        # NVML and nvidia-smi number the GPUs of the node; torch numbers those that
        # CUDA_VISIBLE_DEVICES leaves: the UUID names the same GPU to both.
        try:
            gpu = self.gpu_id or gpu_uuid(self.device.index or 0)
        except Exception:  # torch cannot name the GPU (no driver): nothing to sample
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByUUID(gpu)
            self.source = "nvml"
            self._thread = threading.Thread(target=self._nvml_loop, args=(handle, pynvml),
                                            daemon=True)
        except Exception:  # no pynvml, or NVML refuses: nvidia-smi, if it is there
            if shutil.which(self.smi[0]) is None:
                return self
            self._proc = subprocess.Popen(
                [*self.smi, f"--id={gpu}", "--query-gpu=utilization.gpu",
                 "--format=csv,noheader,nounits",
                 f"--loop-ms={max(1, int(self.interval * 1000))}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.source = "nvidia-smi"
            self._thread = threading.Thread(target=self._smi_loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)


def _time_split(summaries: list[dict[str, Any]], wall: float) -> dict[str, float]:
    """Where the chunks' time went: summed read, infer (patching + model) and write seconds
    of the chunk tasks, the wall time, and how many chunks ran at once on average."""
    done = [s for s in summaries if s.get("status") == "done" and "read_s" in s]
    read = sum(float(s["read_s"]) for s in done)
    infer = sum(float(s["infer_s"]) for s in done)
    total = sum(float(s["seconds"]) for s in done)
    return {"chunks": len(done), "read_s": round(read, 2), "infer_s": round(infer, 2),
            "write_s": round(max(0.0, total - read - infer), 2), "chunk_s": round(total, 2),
            "wall_s": round(wall, 2),
            "chunks_at_once": round(total / wall, 2) if wall > 0 else 0.0}


@contextlib.contextmanager
def _device_cluster(device: str, read_threads: int) -> Iterator[Any]:
    """One worker process with ``read_threads`` threads that owns the device: it advertises
    that many ``GPU`` slots on CUDA, so as many chunks run at once (reading on CPU threads,
    sharing the GPU), where a GPU worker otherwise runs one chunk at a time."""
    from geoflow._cluster import close_local_cluster, gdal_settings, new_local_cluster

    resources = {"GPU": float(read_threads)} if device.startswith("cuda") else None
    cluster, client = new_local_cluster(1, gdal_settings(), threads_per_worker=read_threads,
                                        resources=resources)
    try:
        yield client
    finally:
        close_local_cluster(cluster, client)


def region_on_device(device: str, *, read_threads: int | None = None, batch_size: int = 1024,
                     model: str | os.PathLike[str] | None = None,
                     log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """The sample archive's demo region end to end on one worker that owns ``device``.

    Returns
    -------
    dict
        ``e2e_km2_per_s``, ``km2``, ``e2e_seconds``, ``e2e_cpu_s`` (client, worker, nanny),
        ``read_threads``, ``batch_size``, ``gpu_busy_fraction`` and ``gpu_busy_source``,
        ``time_split`` (see :func:`_time_split`).

    Examples
    --------
    >>> region_on_device("cpu", read_threads=2)["e2e_km2_per_s"] > 0  # doctest: +SKIP
    True
    """
    from geoflow._cluster import prepare_cluster
    from geoflow.bench import CpuMeter, _warm, cluster_processes
    from geoflow.demo import served_archive
    from geoflow.model import DEFAULT_CHECKPOINT
    from geoflow.regional import classify_region

    say = log or (lambda _msg: None)
    threads = int(read_threads or max(1, (os.cpu_count() or 2) - 1))
    model_path = str(model) if model is not None else str(DEFAULT_CHECKPOINT)
    summaries: list[dict[str, Any]] = []

    def collect(event: dict[str, Any]) -> None:
        if event.get("event") == "chunk":
            summaries.append(event)

    with served_archive(log) as (_directory, info, url), _device_cluster(device,
                                                                          threads) as client:
        dates, bbox = info["datetime"], info["demo_bbox"]
        tmp = tempfile.mkdtemp(prefix="geoflow-device-")
        try:
            prepare_cluster(client)
            procs = cluster_processes(client)
            say(f"warming up one {device} worker with {threads} reader threads")
            _warm(client, url, dates, bbox, model_path, [os.path.join(tmp, "warm.zarr")],
                  device=device, batch_size=batch_size, progress=False)
            say(f"demo region end to end on {device}")
            with DeviceBusy(device) as busy, CpuMeter(procs) as cpu:
                t0 = time.perf_counter()
                ds = classify_region(bbox, dates, out=os.path.join(tmp, "map.zarr"),
                                     catalog=url, client=client, model=model_path,
                                     device=device, batch_size=batch_size, progress=collect)
                wall = time.perf_counter() - t0
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    km2 = float(dict(ds.attrs["run"])["km2"])
    return {"e2e_km2_per_s": round(km2 / wall, 3), "km2": round(km2, 2),
            "e2e_seconds": round(wall, 2), "e2e_cpu_s": round(cpu.seconds, 2),
            "read_threads": threads, "batch_size": int(batch_size),
            "gpu_busy_fraction": busy.fraction, "gpu_busy_source": busy.source,
            "time_split": _time_split(summaries, wall)}


def run_device_bench(
    device: str = "cuda", *, batch_sizes: Sequence[int] | None = None,
    read_threads: int | None = None, compile: bool | None = None,
    compile_backend: str = "inductor", model: str | os.PathLike[str] | None = None,
    log: Callable[[str], Any] | None = None,
    on_stage: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Check a device and measure the student and the demo region on it (see module doc).

    Parameters
    ----------
    device
        ``"cuda"`` (``"cuda:1"``, ...) or ``"cpu"`` (the CPU twin the tests run).
    batch_sizes
        Default :data:`DEFAULT_BATCH_SIZES` on a GPU, (64, 256) on the CPU.
    read_threads
        Chunks (reader threads) at once on the device worker; default the cores but one.
    compile
        Try ``torch.compile``; default on a GPU only (compiling on the CPU takes minutes).
    compile_backend
        Its backend.
    model
        Checkpoint (default: the shipped demo weights).
    log
        Called with one-line status messages.
    on_stage
        Called with a copy of the figures so far after each stage (device, model table,
        predict, region), ``stage`` naming the last one finished: a caller that may be
        stopped (``deploy/gpu/check.sh``'s time limit) keeps what finished.

    Returns
    -------
    dict
        :func:`device_info`'s keys, ``stage`` (``"region"`` when complete), ``model``
        (:func:`model_throughput`), ``predict_patches_per_s`` (the whole predict call with
        host arrays at the best batch size), ``region`` (:func:`region_on_device`) and
        ``seconds``.

    Raises
    ------
    GeoflowError
        CUDA asked for but not usable.

    Examples
    --------
    >>> figures = run_device_bench("cuda")  # doctest: +SKIP
    >>> figures["region"]["gpu_busy_fraction"]  # doctest: +SKIP
    0.41
    """
    import torch

    from geoflow.model import load

    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    figures = device_info(device)

    def done(stage: str) -> None:
        figures["stage"] = stage
        figures["seconds"] = round(time.perf_counter() - t0, 1)
        if on_stage is not None:
            on_stage(dict(figures))

    done("device")
    say(f"torch {figures['torch']} on {figures.get('gpu') or 'the CPU'}")
    loaded = load(model, device=device)
    sizes = list(batch_sizes or (DEFAULT_BATCH_SIZES if cuda else (64, 256)))
    variants = [v for v in VARIANTS if v != "bf16+compile" or (cuda if compile is None
                                                               else compile)]
    say(f"the student at batch sizes {sizes}: {', '.join(variants)}")
    figures["model"] = model_throughput(loaded, sizes, variants=variants,
                                        compile_backend=compile_backend)
    done("model")
    best = figures["model"]["best"]["batch_size"]
    n = 2 * best if cuda else best
    s2, s1, cloud = _patches(loaded, n, seed=1, clouds=False)
    loaded.predict(s2[:best], s1[:best], cloud[:best], batch_size=best)  # warm
    t1 = time.perf_counter()
    loaded.predict(s2, s1, cloud, batch_size=best)
    figures["predict_patches_per_s"] = round(n / (time.perf_counter() - t1), 1)
    done("predict")
    figures["region"] = region_on_device(device, read_threads=read_threads, batch_size=best,
                                         model=model, log=log)
    done("region")
    return figures


__all__ = ["DEFAULT_BATCH_SIZES", "VARIANTS", "DeviceBusy", "device_info", "gpu_uuid",
           "model_throughput", "nvml_uuid", "parse_smi_utilization", "region_on_device",
           "run_device_bench"]
