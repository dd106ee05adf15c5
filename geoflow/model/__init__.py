"""The geoflow model: a fused optical + SAR student distilled with the information regulation
mechanism (IRM), its checkpoints, training and evaluation.

Public API: :func:`load` -> :class:`LoadedModel` (``.predict(s2, s1, cloud)`` ->
:class:`Prediction`), :data:`DEFAULT_CHECKPOINT`. Training lives in
:mod:`geoflow.model.train`, evaluation in :mod:`geoflow.model.evaluate`. torch is imported on
first use, so ``import geoflow.model`` stays cheap.

Examples
--------
>>> import geoflow.model
>>> geoflow.model.DEFAULT_CHECKPOINT.name
'demo.safetensors'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The shipped demo checkpoint (student trained with the IRM on the synthetic world).
DEFAULT_CHECKPOINT = Path(__file__).parent / "weights" / "demo.safetensors"

_LAZY = {"load": "geoflow.model.predict", "LoadedModel": "geoflow.model.predict",
         "Prediction": "geoflow.model.predict"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geoflow.model' has no attribute {name!r}")


__all__ = ["DEFAULT_CHECKPOINT", "LoadedModel", "Prediction", "load"]
