"""Decoding BigEarthNet v1 LMDB pickles without running them: :class:`_InertUnpickler`
imports nothing; numpy arrays are rebuilt from their raw bytes, any other object becomes an
inert record. ``pickle.load`` is never used.
"""


from __future__ import annotations

import io
import pickle
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from geoflow.errors import ModelError
from geoflow.model.loaders import _band_key


class _Inert:
    """Stand-in for any class a pickle names: it keeps its arguments and state, runs nothing."""

    _pickled_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ArrayStub:
    """What numpy's ``_reconstruct`` returns while unpickling; BUILD fills in the array."""

    def __init__(self, *args: Any) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # numpy's ndarray.__reduce__ state: (version, shape, dtype, is_fortran, raw bytes).
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("unexpected ndarray state")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DtypeStub) or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("ndarray data is not plain bytes")
        arr = np.frombuffer(bytes(raw), dtype=dtype.dtype())
        self.array = arr.reshape(tuple(int(s) for s in shape), order="F" if fortran else "C")


class _FrombufferStub(_ArrayStub):
    """numpy's protocol-5 reduction ``_frombuffer(buffer, dtype, shape, order)`` with the
    buffer in band: the array is rebuilt from the raw bytes, nothing is called."""

    def __init__(self, buf: Any = None, dtype: Any = None, shape: Any = None,
                 order: Any = "C", *args: Any) -> None:
        if not isinstance(dtype, _DtypeStub) or not isinstance(buf, (bytes, bytearray)) or \
                not isinstance(shape, tuple) or order not in ("C", "F"):
            raise pickle.UnpicklingError("protocol-5 ndarray data is not plain bytes")
        arr = np.frombuffer(bytes(buf), dtype=dtype.dtype())
        self.array = arr.reshape(tuple(int(x) for x in shape), order=order)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("unexpected state for a protocol-5 ndarray")


class _DtypeStub:
    """numpy.dtype(code, align, copy) + its BUILD state, for plain numeric codes only."""

    def __init__(self, code: Any, *args: Any) -> None:
        if not (isinstance(code, str) and re.fullmatch(r"[biuf]\d{1,2}", code)):
            raise pickle.UnpicklingError(f"dtype {code!r} is not a plain number type")
        self.code = code
        self.order = "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]

    def dtype(self) -> np.dtype[Any]:
        return np.dtype(("" if self.order in ("|", "=") else self.order) + self.code)


class _InertUnpickler(pickle.Unpickler):
    """Unpickle BigEarthNet v1 LMDB values without importing or calling anything.

    numpy's array reconstruction is rebuilt from raw bytes (:class:`_ArrayStub`); every other
    global becomes a fresh :class:`_Inert` subclass that only records its state. Persistent ids
    are refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray",
                                                 "numpy._core.multiarray"):
            return _ArrayStub
        if name == "_frombuffer" and module in ("numpy.core.numeric", "numpy._core.numeric"):
            return _FrombufferStub
        if module == "numpy" and name == "ndarray":
            return _Inert
        if module == "numpy" and name == "dtype":
            return _DtypeStub
        return type(name, (_Inert,), {"_pickled_name": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _walk(obj: Any) -> Iterable[Any]:
    """Every object reachable from ``obj`` through inert states, dicts, lists and tuples
    (iteratively: a hostile, deeply nested pickle cannot exhaust the recursion limit)."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, _Inert):
            stack.append(item.state)
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(reversed(list(item)))


def decode_v1_pickle(data: bytes) -> dict[str, Any]:
    """Decode one v1 LMDB value into ``{"bands": {name: array}, "labels": [...]}`` safely.

    Raises
    ------
    ModelError
        The value is not a BigEarthNet v1 patch pickle (or uses anything beyond plain arrays).

    Examples
    --------
    >>> decode_v1_pickle(b"not a pickle")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    geoflow.errors.ModelError: ...
    """
    hint = ("geoflow reads only pickles of plain numpy arrays (pickle protocols 3-5, buffers "
            "in band); convert the LMDB to GeoTIFF folders or reBEN")
    try:
        top = _InertUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # any malformed or hostile stream (too deep too): one clear error
        raise ModelError(f"a BigEarthNet v1 LMDB value cannot be decoded safely "
                         f"({type(err).__name__}: {str(err)[:120]})", hint=hint) from None
    bands: dict[str, np.ndarray] = {}
    labels: list[str] | None = None
    for obj in _walk(top):
        if isinstance(obj, dict):
            state = obj.get("__dict__", obj)
            if isinstance(state, dict) and isinstance(state.get("data"), _ArrayStub) and \
                    isinstance(state.get("name"), str):
                arr = state["data"].array
                if arr is not None:
                    bands[_band_key(state["name"])] = arr
            if labels is None and isinstance(obj.get("labels"), list) and \
                    all(isinstance(x, str) for x in obj["labels"]):
                labels = list(obj["labels"])
    if labels is None or not bands:
        raise ModelError("a BigEarthNet v1 LMDB value holds no bands or no labels",
                         hint="pass a BigEarthNet v1 (BigEarthNetEncoded) LMDB")
    return {"bands": bands, "labels": labels}
