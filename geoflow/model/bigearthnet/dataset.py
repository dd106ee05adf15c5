"""BigEarthNet patches as a torch ``Dataset`` for training loops."""


from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from geoflow.model.bigearthnet.labels import allowed_mask
from geoflow.model.bigearthnet.patches import PATCH_PX, BenPatches, window_origins


class BigEarthNetDataset(Dataset):
    """BigEarthNet patches as a :class:`torch.utils.data.Dataset` in the conventions of
    :mod:`geoflow.model.loaders`: items are dicts of ``s2`` (10, P, P), ``s1`` (2, P, P),
    ``cloud`` (P, P), ``label`` (the class index when the patch's labels allow exactly one
    class, else -1), ``allowed`` (K,) bool (every class the labels allow) and ``id``
    (``<patch>_r<row>_c<col>`` for a window).

    Parameters
    ----------
    patches
        :class:`BenPatches` (from :func:`open_sets`, :func:`read_path`, ...).
    patch_size
        Cut each patch into its centred windows of this size (3 x 3 for 32); ``None``: whole
        120 px patches.
    classes
        Class scheme of ``label`` / ``allowed`` (default geoflow's ten classes; BEN19 works).

    Examples
    --------
    >>> ds = BigEarthNetDataset(open_sets()["dev"], patch_size=32)  # doctest: +SKIP
    >>> len(ds), ds[0]["s2"].shape                                    # doctest: +SKIP
    (486, (10, 32, 32))
    """

    def __init__(self, patches: BenPatches, *, patch_size: int | None = None,
                 classes: Sequence[str] | None = None) -> None:
        from geoflow.model._constants import CLASSES

        self.patches = patches
        self.classes: tuple[str, ...] = tuple(classes) if classes is not None else CLASSES
        self.allowed = allowed_mask(patches.labels, self.classes)
        self.patch_size = patch_size
        self._origins = (window_origins(patch_size) if patch_size is not None
                         else [(0, 0)])
        self._size = patch_size or PATCH_PX

    def __len__(self) -> int:
        return len(self.patches) * len(self._origins)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} items")
        index %= n
        i, (r, c) = index // len(self._origins), self._origins[index % len(self._origins)]
        sl = (slice(r, r + self._size), slice(c, c + self._size))
        allowed = self.allowed[i]
        pid = self.patches.ids[i]
        return {"s2": self.patches.s2[i, :, sl[0], sl[1]],
                "s1": self.patches.s1[i, :, sl[0], sl[1]],
                "cloud": self.patches.cloud[i, sl[0], sl[1]],
                "label": int(np.flatnonzero(allowed)[0]) if allowed.sum() == 1 else -1,
                "allowed": allowed.copy(),
                "id": pid if self.patch_size is None else f"{pid}_r{r}_c{c}"}
