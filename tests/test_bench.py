"""geoflow.bench: the memory sampler and region sizing the benchmark relies on."""

from __future__ import annotations

import time

import pytest


def test_peak_rss_sees_memory_held_during_the_block():
    from geoflow.bench import PeakRSS

    with PeakRSS() as before:
        pass
    with PeakRSS(interval=0.01) as peak:
        block = bytearray(200 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page so it is resident
        time.sleep(0.2)  # held long enough for the sampler to see it
        del block
    assert peak.mb >= before.mb + 150


def test_peak_rss_counts_a_child_process_started_inside_the_block():
    """The sampler lists descendants once a second, not per sample: a worker that starts
    (or restarts) during a measurement is still counted."""
    import subprocess
    import sys

    from geoflow.bench import PeakRSS

    hold = PeakRSS.REFRESH_S + 1.0
    code = ("import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
            f"time.sleep({hold})")
    with PeakRSS() as before:
        pass
    with PeakRSS(interval=0.01) as peak:
        time.sleep(0.1)  # the first listing is taken before the child exists
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert peak.mb >= before.mb + 150


def test_sub_bbox_is_centred_with_scaled_sides():
    from geoflow.bench import _sub_bbox

    w, s, e, n = _sub_bbox((10.0, 50.0, 11.0, 50.4), 0.5)
    assert (w, s, e, n) == pytest.approx((10.25, 50.1, 10.75, 50.3))
