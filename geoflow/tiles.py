"""Split a region into the map's pixels and the chunks that compute them.

A map pixel ``(i, j)`` is ``stride`` input pixels wide, so the map's resolution is
``stride * grid.resolution``. It is classified from the ``patch_size`` px patch *centred* on
it: with ``stride < patch_size`` neighbouring patches overlap and the map is finer than the
patches. Each patch therefore reaches ``halo = (patch_size - stride) / 2`` input pixels past
its map pixel on every side.

Map pixels are grouped into chunks of ``chunk_patches x chunk_patches`` map pixels (or, with
``balance=True``, of at most that many per side, split evenly: a region 17 map pixels wide
becomes chunks of 9 and 8, not 16 and a sliver of 1, so workers get equal shares); a chunk
is the unit of work, retry and resume, and equals one Zarr chunk of the map store (the last
row and column of chunks may be smaller). A chunk's ``read_grid`` is the input-pixel window
its patches need, halo included; it may reach past the region, where the cube fills NaN.

Examples
--------
>>> from geoflow.grid import GridSpec
>>> from geoflow.tiles import plan_chunks
>>> grid = GridSpec(32632, 10.0, 500000.0, 5000000.0, 100, 70)
>>> plan = plan_chunks(grid, patch_size=32, stride=16, chunk_patches=4)
>>> plan.map_grid.resolution, plan.map_grid.shape, len(plan.chunks)
(160.0, (5, 7), 4)
>>> c = plan.chunks[0]
>>> c.id, c.out_slices, c.read_grid.shape, c.read_grid.x0
('r0_c0', (slice(0, 4, None), slice(0, 4, None)), (80, 80), 499920.0)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from geoflow.errors import RequestError
from geoflow.grid import GridSpec


@dataclass(frozen=True)
class Chunk:
    """One unit of work: a block of map pixels and the input window its patches read.

    Attributes
    ----------
    id
        Stable name ``"r{row}_c{col}"`` (chunk row and column in the chunk lattice).
    out_slices
        ``(y slice, x slice)`` of the chunk's map pixels in the map grid.
    read_grid
        Input-resolution grid covering every patch of the chunk's map pixels (halo included).
    """

    id: str
    out_slices: tuple[slice, slice]
    read_grid: GridSpec

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the chunk in map pixels."""
        ys, xs = self.out_slices
        return (ys.stop - ys.start, xs.stop - xs.start)


@dataclass(frozen=True)
class MapPlan:
    """How a region is mapped: the input grid, the map grid and the chunks.

    Build one with :func:`plan_chunks`.

    Attributes
    ----------
    grid
        The input (cube) grid of the region.
    map_grid
        The output grid: same origin, pixels ``stride`` times larger.
    patch_size, stride, halo
        Patch size and stride in input pixels; halo in input pixels.
    chunk_patches
        Chunk shape ``(rows, cols)`` in map pixels.
    chunks
        Every chunk, row-major; together they cover the map exactly once.
    """

    grid: GridSpec
    map_grid: GridSpec
    patch_size: int
    stride: int
    chunk_patches: tuple[int, int]
    halo: int
    chunks: list[Chunk] = field(repr=False)

    @property
    def chunk_shape(self) -> tuple[int, int]:
        """Spatial Zarr chunk shape ``(rows, cols)`` of the map store, in map pixels."""
        return self.chunk_patches

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[Chunk]:
        return iter(self.chunks)

    def chunk(self, chunk_id: str) -> Chunk:
        """The chunk named ``chunk_id``.

        Raises
        ------
        RequestError
            If no chunk has that id.

        Examples
        --------
        >>> from geoflow.grid import GridSpec
        >>> plan = plan_chunks(GridSpec(32632, 10.0, 0.0, 0.0, 64, 64), 32, 32, 1)
        >>> plan.chunk("r1_c0").out_slices
        (slice(1, 2, None), slice(0, 1, None))
        """
        for c in self.chunks:
            if c.id == chunk_id:
                return c
        raise RequestError(f"this plan has no chunk {chunk_id!r} (it has {len(self.chunks)} "
                           f"chunks, r0_c0 .. {self.chunks[-1].id})",
                           hint="use a chunk id from plan.chunks")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name} must be a positive integer, got {value!r}",
                           hint=f"pass {name} as a whole number of pixels, 1 or more")
    return value


def _same_parity_half(patch_size: int) -> int:
    half = max(patch_size // 2, 1)
    return half if (patch_size - half) % 2 == 0 else half + 1


def _balanced(n: int, most: int) -> int:
    """The chunk edge that splits ``n`` pixels into as few chunks of <= ``most`` as possible,
    as evenly as possible."""
    return -(-n // -(-n // most))


def plan_chunks(grid: GridSpec, patch_size: int, stride: int, chunk_patches: int, *,
                balance: bool = False) -> MapPlan:
    """Plan the map grid and the chunks that compute it.

    Parameters
    ----------
    grid
        The region's input grid (usually 10 m).
    patch_size
        Model input size in input pixels (``model.patch_size``).
    stride
        Step between patch centres in input pixels; the map's pixel size. ``stride ==
        patch_size`` gives one map pixel per non-overlapping patch; smaller gives overlapping
        patches and a finer map. ``patch_size - stride`` must be even so patches centre on
        map pixels.
    chunk_patches
        Chunk edge in map pixels (the map store's Zarr chunk edge).
    balance
        Treat ``chunk_patches`` as the largest edge and split each axis into equal chunks
        (the fewest that fit), instead of full chunks and a remainder.

    Returns
    -------
    MapPlan

    Raises
    ------
    RequestError
        If a size is not a positive integer, ``stride > patch_size``, or
        ``patch_size - stride`` is odd.

    Examples
    --------
    >>> from geoflow.grid import GridSpec
    >>> plan = plan_chunks(GridSpec(32632, 10.0, 0.0, 3200.0, 320, 320), 32, 32, 8)
    >>> plan.map_grid.shape, [c.id for c in plan.chunks]
    ((10, 10), ['r0_c0', 'r0_c1', 'r1_c0', 'r1_c1'])
    >>> plan.chunks[3].out_slices, plan.chunks[3].read_grid.shape
    ((slice(8, 10, None), slice(8, 10, None)), (64, 64))
    >>> plan_chunks(GridSpec(32632, 10.0, 0.0, 5440.0, 320, 544), 32, 32, 16,
    ...             balance=True).chunk_shape   # 17 x 10 map pixels: 2 x 1 equal chunks
    (9, 10)
    """
    patch_size = _positive_int("patch_size", patch_size)
    stride = _positive_int("stride", stride)
    chunk_patches = _positive_int("chunk_patches", chunk_patches)
    if stride > patch_size:
        raise RequestError(f"stride ({stride} px) is larger than the patch ({patch_size} px): "
                           "the map would have gaps",
                           hint=f"use a stride of at most {patch_size} px")
    if (patch_size - stride) % 2:
        raise RequestError(f"patch_size - stride = {patch_size - stride} px is odd, so patches "
                           "cannot be centred on map pixels",
                           hint=f"use a stride with the parity of the patch size, e.g. "
                                f"{patch_size} or {_same_parity_half(patch_size)}")
    halo = (patch_size - stride) // 2
    # Same origin, pixels `stride` times larger, rounded up so the map covers the region.
    map_grid = grid.coarsen(stride)
    cy = _balanced(map_grid.height, chunk_patches) if balance else chunk_patches
    cx = _balanced(map_grid.width, chunk_patches) if balance else chunk_patches
    n_rows = -(-map_grid.height // cy)
    n_cols = -(-map_grid.width // cx)
    chunks = []
    for r in range(n_rows):
        y0, y1 = r * cy, min((r + 1) * cy, map_grid.height)
        for c in range(n_cols):
            x0, x1 = c * cx, min((c + 1) * cx, map_grid.width)
            read = grid.window(y0 * stride - halo, x0 * stride - halo,
                               (y1 - y0) * stride + 2 * halo, (x1 - x0) * stride + 2 * halo)
            chunks.append(Chunk(f"r{r}_c{c}", (slice(y0, y1), slice(x0, x1)), read))
    return MapPlan(grid, map_grid, patch_size, stride, (cy, cx), halo, chunks)


__all__ = ["Chunk", "MapPlan", "plan_chunks"]
