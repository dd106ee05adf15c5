"""geoflow in a real Jupyter kernel (nbclient + ipykernel): two calls in one session share one
LocalCluster, each shows a live progress line (chunks, km², ETA, the dashboard link), and the
session's cluster and servers close when the kernel ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def _region(archive: Path) -> tuple[list[float], str]:
    info = json.loads((archive / "archive.json").read_text())
    w, s, e, n = info["demo_bbox"]
    cx, cy, hx, hy = (w + e) / 2, (s + n) / 2, (e - w) / 6, (n - s) / 6
    return [cx - hx, cy - hy, cx + hx, cy + hy], info["datetime"]


@pytest.mark.slow
def test_two_calls_in_a_notebook_share_one_cluster_and_show_progress(small_archive, stac_url,
                                                                     tmp_path):
    bbox, dates = _region(Path(small_archive))
    call = (f"m = geoflow.classify_region({bbox!r}, {dates!r}, out=str(out / 'm{{}}.zarr'), "
            "n_workers=1)\n")
    cells = [
        f"import os, pathlib\nos.environ['GEOFLOW_STAC_URL'] = {stac_url!r}\n"
        f"out = pathlib.Path({str(tmp_path)!r})\nimport geoflow\nfrom geoflow import session",
        call.format(1) + "first = session._STATE['client']\nprint(m.attrs['run']['failures'])",
        call.format(2) + "print(session._STATE['client'] is first, "
                         "m.summary_class.dtype, int(m.summary_class.max()))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [nb.cells[i].outputs for i in (1, 2)]
    for cell in outputs:
        html = [o["data"]["text/html"] for o in cell
                if o["output_type"] in ("display_data", "update_display_data")
                and "text/html" in o.get("data", {})]
        assert html, cell
        # The line as last updated: every chunk done, the area, the ETA and the dashboard.
        assert "chunks" in html[-1] and "km²" in html[-1] and "ETA" in html[-1]
        assert 'href="http://127.0.0.1:' in html[-1]
        assert not [o for o in cell if o["output_type"] == "error"]
    printed = "".join(o.get("text", "") for o in outputs[1] if o["output_type"] == "stream")
    assert printed.split()[:2] == ["True", "uint8"]  # the same cluster; raw class codes
