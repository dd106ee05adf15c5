"""Chunk planning: the map is tiled exactly once and every patch lies in its chunk's window."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoflow.errors import RequestError
from geoflow.grid import GridSpec
from geoflow.tiles import plan_chunks


@st.composite
def plans(draw):
    width = draw(st.integers(1, 160))
    height = draw(st.integers(1, 160))
    patch = draw(st.integers(1, 40))
    stride = draw(st.integers(1, patch).filter(lambda s: (patch - s) % 2 == 0))
    chunk = draw(st.integers(2, 12))
    x0 = draw(st.integers(-1000, 1000)) * 10.0 + 500000.0
    y0 = draw(st.integers(-1000, 1000)) * 10.0 + 5000000.0
    grid = GridSpec(32632, 10.0, x0, y0, width, height)
    return grid, plan_chunks(grid, patch, stride, chunk, balance=draw(st.booleans()))


@settings(max_examples=50, deadline=None)
@given(plans())
def test_chunks_tile_the_map_exactly_once(case):
    grid, plan = case
    covered = np.zeros(plan.map_grid.shape, np.int32)
    for chunk in plan.chunks:
        covered[chunk.out_slices] += 1
    assert (covered == 1).all()
    # The map covers the region and is at most one map pixel larger on each far edge.
    mg = plan.map_grid
    assert mg.resolution == grid.resolution * plan.stride
    assert (mg.x0, mg.y0) == (grid.x0, grid.y0)
    assert 0 <= mg.width * plan.stride - grid.width < plan.stride
    assert 0 <= mg.height * plan.stride - grid.height < plan.stride
    assert len({c.id for c in plan.chunks}) == len(plan.chunks)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 20))
def test_balanced_chunks_are_as_few_and_as_even_as_possible(height, width, most):
    grid = GridSpec(32632, 10.0, 500000.0, 5000000.0, width, height)
    plain = plan_chunks(grid, 1, 1, most)
    plan = plan_chunks(grid, 1, 1, most, balance=True)
    assert len(plan.chunks) == len(plain.chunks)  # no more chunks than full ones need
    for axis, n in enumerate((height, width)):
        edge = plan.chunk_shape[axis]
        k = -(-n // most)  # the fewest chunks along this axis
        assert edge <= most and -(-n // edge) == k
        # Regular (Zarr) chunks: all but the last are `edge`; the last is no sliver.
        assert n - (k - 1) * edge >= edge - (k - 1)
    assert plan_chunks(GridSpec(32632, 10.0, 0.0, 0.0, 17, 17), 1, 1, 16,
                       balance=True).chunk_shape == (9, 9)


@settings(max_examples=50, deadline=None)
@given(plans())
def test_read_windows_contain_every_centred_patch(case):
    grid, plan = case
    res, s, p = grid.resolution, plan.stride, plan.patch_size
    mg = plan.map_grid
    for chunk in plan.chunks:
        rg = chunk.read_grid
        assert rg.resolution == grid.resolution and rg.epsg == grid.epsg
        # read grid on the input lattice
        assert ((rg.x0 - grid.x0) / res).is_integer() and ((grid.y0 - rg.y0) / res).is_integer()
        ys, xs = chunk.out_slices
        for i in (ys.start, ys.stop - 1):
            for j in (xs.start, xs.stop - 1):
                # centre of map pixel (i, j) in CRS units, and its patch's bounds
                cx = mg.x0 + (j + 0.5) * mg.resolution
                cy = mg.y0 - (i + 0.5) * mg.resolution
                left, right = cx - p * res / 2, cx + p * res / 2
                top, bottom = cy + p * res / 2, cy - p * res / 2
                rl, rb, rr, rt = rg.bounds
                assert rl <= left and right <= rr and rb <= bottom and top <= rt
        # and no more than that: the window is exactly the union of the patches
        assert rg.width == (xs.stop - xs.start) * s + 2 * plan.halo
        assert rg.height == (ys.stop - ys.start) * s + 2 * plan.halo


def test_chunk_ids_are_stable_and_row_major():
    grid = GridSpec(32632, 10.0, 0.0, 0.0, 100, 50)
    a = plan_chunks(grid, 32, 16, 2)
    b = plan_chunks(grid, 32, 16, 2)
    assert [c.id for c in a] == [c.id for c in b]
    assert [c.id for c in a.chunks[:5]] == ["r0_c0", "r0_c1", "r0_c2", "r0_c3", "r1_c0"]
    assert a.chunk("r1_c3").out_slices == (slice(2, 4), slice(6, 7))
    assert a.chunk_shape == (2, 2)
    with pytest.raises(RequestError, match="no chunk 'r9_c9'"):
        a.chunk("r9_c9")


@pytest.mark.parametrize(
    ("patch", "stride", "chunk", "message"),
    [(32, 33, 4, "larger than the patch"), (32, 15, 4, "is odd"), (0, 1, 4, "patch_size"),
     (32, 32, 0, "chunk_patches"), (32, 16.0, 4, "stride")],
)
def test_bad_sizes_are_refused_with_a_fix(patch, stride, chunk, message):
    grid = GridSpec(32632, 10.0, 0.0, 0.0, 100, 50)
    with pytest.raises(RequestError, match=message) as info:
        plan_chunks(grid, patch, stride, chunk)
    assert info.value.hint
