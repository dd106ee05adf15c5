"""Training patches from the synthetic world."""

from __future__ import annotations

import numpy as np
import pytest

from geoflow.errors import ModelError
from geoflow.model.data import PatchSet, make_patches, norm_stats, split_seed


def test_source_patches_are_clear_and_labelled(tiny_source: PatchSet) -> None:
    assert tiny_source.s2.shape == (96, 10, 32, 32)
    assert (tiny_source.cloud_frac == 0).all()
    assert np.isfinite(tiny_source.s2.astype("f4")).all()
    assert tiny_source.label.min() >= 0 and tiny_source.label.max() < 10
    assert len(np.unique(tiny_source.label)) >= 4


def test_target_patches_span_cloud_cover_and_miss_some_sar(tiny_target: PatchSet) -> None:
    frac = tiny_target.cloud_frac
    assert (frac < 0.1).any() and (frac > 0.9).any() and ((frac > 0.1) & (frac < 0.9)).any()
    s2 = tiny_target.s2.astype("f4")
    clouded = frac > 0.9
    # Clouds are bright in the blue band, so clouded patches are brighter than clear ones.
    assert s2[clouded, 0].mean() > s2[frac < 0.1, 0].mean() + 0.1
    summary = tiny_target.summary()
    assert summary["n"] == 160 and sum(summary["per_cloud_bin"].values()) == 160
    assert 0 < summary["sar_missing"] < 60


def test_20m_bands_are_2x2_blocks(tiny_source: PatchSet) -> None:
    b05 = tiny_source.s2[:, 3].astype("f4")
    assert np.array_equal(b05[:, 0::2, 0::2], b05[:, 1::2, 1::2])
    b02 = tiny_source.s2[:, 0].astype("f4")
    assert not np.array_equal(b02[:, 0::2, 0::2], b02[:, 1::2, 1::2])


def test_deterministic_and_seeds_differ() -> None:
    a = make_patches(5, "source", 8, 32)
    b = make_patches(5, "source", 8, 32)
    c = make_patches(6, "source", 8, 32)
    assert np.array_equal(a.s2, b.s2) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.s2, c.s2)
    assert len({split_seed(0, s) for s in ("source", "target", "val")} | {123}) == 4


def test_norm_stats_and_bad_domain(tiny_source: PatchSet, tiny_target: PatchSet) -> None:
    norm = norm_stats(tiny_source, tiny_target)
    assert len(norm["s2_mean"]) == 10 and len(norm["s1_mean"]) == 2
    assert all(s > 0 for s in norm["s2_std"] + norm["s1_std"])
    assert -25 < norm["s1_mean"][0] < 0
    with pytest.raises(ModelError, match="unknown domain"):
        make_patches(1, "sky", 4)
