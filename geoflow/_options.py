"""Checks of run options, shared by the CLI, workflow specs and the Python keywords (private).

Each check takes what a user typed (a string from the command line, a YAML value, a Python
number) and gives back the checked value or a :class:`~geoflow.errors.RequestError` whose
message is the same whichever way the value came in: ``--workers -1`` and ``n_workers=-1``
both say "workers must be a whole number >= 1, got -1".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from geoflow.errors import RequestError

#: Devices a run may ask for; ``cuda:N`` picks one GPU.
DEVICES = ("auto", "cpu", "cuda")
_CUDA_N = re.compile(r"^cuda:\d{1,2}$")


def number(value: Any, name: str, *, integer: bool = False, low: float | None = None,
           high: float | None = None, low_open: bool = False, allow_none: bool = False,
           example: str, unit: str = "") -> Any:
    """``value`` as a checked int or float.

    Examples
    --------
    >>> number("3", "workers", integer=True, low=1, example="--workers 2")
    3
    >>> number("-1", "workers", integer=True, low=1, example="--workers 2")
    Traceback (most recent call last):
    ...
    geoflow.errors.RequestError: workers must be a whole number >= 1, got '-1'. Fix: ...
    """
    if value is None:
        if allow_none:
            return None
        raise RequestError(f"{name} is missing", hint=f"e.g. {example}")
    kind = "a whole number" if integer else f"a number{f' of {unit}' if unit else ''}"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    wanted = f"{name} must be {kind}{' ' if bounds else ''}{' and '.join(bounds)}"
    try:
        if isinstance(value, bool):
            raise TypeError
        num = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, AttributeError, OverflowError):
        raise RequestError(f"{wanted}, got {value!r}", hint=f"e.g. {example}") from None
    bad = (not math.isfinite(num) or (integer and not num.is_integer())
           or (low is not None and (num <= low if low_open else num < low))
           or (high is not None and num > high))
    if bad:
        raise RequestError(f"{wanted}, got {value!r}", hint=f"e.g. {example}")
    return int(num) if integer else num


def choice(value: Any, name: str, choices: Sequence[str], *, example: str) -> str:
    """``value`` if it is one of ``choices`` (case-insensitive), lower-cased.

    Examples
    --------
    >>> choice("CPU", "device", ("auto", "cpu"), example="--device cpu")
    'cpu'
    """
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text is None or text not in choices:
        raise RequestError(f"{name} must be one of {', '.join(choices)}, got {value!r}",
                           hint=f"e.g. {example}")
    return text


def device(value: Any) -> str:
    """A device name: ``auto`` (None), ``cpu``, ``cuda`` or ``cuda:N``.

    Examples
    --------
    >>> device(None), device("cuda:1")
    ('auto', 'cuda:1')
    """
    if value is None:
        return "auto"
    if isinstance(value, str) and _CUDA_N.match(value.strip().lower()):
        return value.strip().lower()
    return choice(value, "device", DEVICES, example="--device cpu (or auto, cuda, cuda:0)")


@dataclass(frozen=True)
class RunOptions:
    """The checked "how" of a regional run (the "what" is a :class:`geoflow.request.Request`).

    Build it with :meth:`from_user`, which accepts numbers or their text.

    Examples
    --------
    >>> RunOptions.from_user(n_workers="2", stride=None).n_workers
    2
    """

    n_workers: int | None = None
    stride: int | None = None
    chunk_patches: int | None = None
    batch_size: int | None = None
    resolution: float = 10.0
    crs: int | None = None
    device: str = "auto"

    @classmethod
    def from_user(cls, *, n_workers: Any = None, stride: Any = None, chunk_patches: Any = None,
                  batch_size: Any = None, resolution: Any = 10.0, crs: Any = None,
                  device: Any = None) -> RunOptions:
        """Check every option; the first bad one raises a RequestError naming it."""
        return cls(
            n_workers=number(n_workers, "workers", integer=True, low=1, high=1024,
                             allow_none=True, example="--workers 2 / n_workers=2"),
            stride=number(stride, "stride", integer=True, low=1, high=4096, allow_none=True,
                          example="--stride 16 (pixels, at most the model's patch size)"),
            chunk_patches=number(chunk_patches, "chunk patches", integer=True, low=1, high=256,
                                 allow_none=True,
                                 example="--chunk-patches 16 / chunk_patches=16"),
            batch_size=number(batch_size, "batch size", integer=True, low=1, high=65536,
                              allow_none=True, example="batch_size=256"),
            resolution=number(resolution, "resolution", low=0, low_open=True, high=1000,
                              example="resolution=10 (metres)"),
            crs=number(crs, "crs", integer=True, low=1024, high=999999, allow_none=True,
                       example="crs=32632 (an EPSG code of a projected CRS)"),
            device=_device(device),
        )


_device = device

__all__ = ["DEVICES", "RunOptions", "choice", "device", "number"]
