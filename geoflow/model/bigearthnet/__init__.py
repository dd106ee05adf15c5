"""BigEarthNet patches (real Sentinel-1 + Sentinel-2 pairs with CORINE labels) for evaluation and
fine-tuning: readers for the three published layouts, the fetch of the public samples, and the
table that maps CORINE labels to the classes of a geoflow model.

Layouts read (every patch is 120 x 120 px at 10 m; 20 m bands are brought onto the 10 m grid by
nearest neighbour, as the cube and :mod:`geoflow.model.loaders` do):

BigEarthNet v1 folders (``BigEarthNet-S2/<name>/<name>_B02.tif`` ... ``_labels_metadata.json``,
``BigEarthNet-S1/<s1name>/<s1name>_VV.tif`` with ``corresponding_s2_patch`` in its JSON)
    S2 L2A uint16 DN (reflectance = DN / 10000, processing baseline before 04.00), S1 sigma0 dB.
reBEN / BigEarthNet v2 (an LMDB of safetensors keyed by patch id, ``metadata.parquet``)
    The same units; labels are the 19-class nomenclature; ``contains_seasonal_snow`` and
    ``contains_cloud_or_shadow`` come from the metadata (and from
    ``metadata_for_patches_with_snow_cloud_or_shadow.parquet``).
BigEarthNet v1 LMDB (values are pickles of ``bigearthnet_patch_interface`` objects)
    Decoded by :class:`_InertUnpickler`, which imports nothing: numpy arrays are rebuilt from
    their raw bytes, every other object becomes an inert record. ``pickle.load`` is never used.

Cloud and snow are flagged per patch (BigEarthNet's visual screening: the v1 lists
``patches_with_cloud_and_shadow`` and ``patches_with_seasonal_snow`` of ``bigearthnet-common``,
reBEN's metadata columns), not per pixel. For a flagged patch geoflow estimates the pixels with
simple spectral tests (:func:`estimate_masks`), standing in for the SCL mask the cube would use.

Public samples: :func:`fetch_samples` downloads two pinned wheels from PyPI (``pip download
--no-deps``), checks their sha256 and extracts only the data. configilm 0.7.1 ships 30 v1 LMDB
pairs and 24 reBEN pairs: the development set (``dev``); bigearthnet-common 2.8.0 ships 6 v1
folder pairs: the held-out set (``heldout``), kept out of any calibration or fine-tuning.

Modules: :mod:`.labels` (the label table), :mod:`.patches` (patches in memory, masks,
windows), :mod:`.readers` (the three layouts, specs), :mod:`._unpickle` (v1 pickles, inert),
:mod:`.samples` (the public wheels), :mod:`.dataset` (a torch ``Dataset``).

Examples
--------
>>> from geoflow.model.bigearthnet import allowed_classes
>>> sorted(allowed_classes(["Coniferous forest", "Sea and ocean"]))
['Dense Forest', 'Water']
>>> sets = open_sets("bigearthnet")            # fetches the public samples  # doctest: +SKIP
>>> {k: len(v) for k, v in sets.items()}                                      # doctest: +SKIP
{'dev': 54, 'heldout': 6}
"""

from geoflow.model.bigearthnet._unpickle import decode_v1_pickle
from geoflow.model.bigearthnet.dataset import BigEarthNetDataset
from geoflow.model.bigearthnet.labels import (
    BEN19,
    BEN19_COLORS,
    LABEL_TABLE,
    V1_TO_19,
    allowed_classes,
    allowed_mask,
    families,
    to_ben19,
)
from geoflow.model.bigearthnet.patches import (
    PATCH_PX,
    BenPatches,
    cut_windows,
    estimate_masks,
    window_origins,
)
from geoflow.model.bigearthnet.readers import (
    V1Flags,
    open_sets,
    read_path,
    read_reben,
    read_v1_folders,
    read_v1_lmdb,
)
from geoflow.model.bigearthnet.samples import WHEELS, cache_dir, fetch_samples

__all__ = [
    "BEN19",
    "BEN19_COLORS",
    "LABEL_TABLE",
    "PATCH_PX",
    "V1_TO_19",
    "WHEELS",
    "BenPatches",
    "BigEarthNetDataset",
    "V1Flags",
    "allowed_classes",
    "allowed_mask",
    "cache_dir",
    "cut_windows",
    "decode_v1_pickle",
    "estimate_masks",
    "families",
    "fetch_samples",
    "open_sets",
    "read_path",
    "read_reben",
    "read_v1_folders",
    "read_v1_lmdb",
    "to_ben19",
    "window_origins",
]
