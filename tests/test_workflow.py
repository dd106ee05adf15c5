"""Run specs: loading, checking and turning them into classify_region arguments."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from geoflow.errors import RequestError, StoreError
from geoflow.workflow import Workflow, load_workflow, run_workflow

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
BASE = {"bbox": [11.0, 45.0, 11.1, 45.1], "dates": "2024-06-01/2024-06-30"}


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["demo.yaml", "example-region.yaml", "reprocess-example.yaml",
                                  "earth-search-region.yaml"])
def test_shipped_workflows_load(name):
    wf = load_workflow(WORKFLOWS / name)
    assert wf.source == str(WORKFLOWS / name) and wf.name
    w, s, e, n = wf.bbox
    assert w < e and s < n
    req = wf.request()
    assert req.bbox == wf.bbox and req.area_km2 > 0


def test_example_region_maps_to_classify_region_arguments():
    wf = load_workflow(WORKFLOWS / "example-region.yaml")
    assert wf.catalog.url == "https://planetarycomputer.microsoft.com/api/stac/v1"
    assert wf.catalog.signer == "planetary-computer"
    kwargs = wf.classify_kwargs()
    assert kwargs["out"] == "maps/example-region-2024-06-01-2024-06-30.zarr"
    assert kwargs["client"] is None and kwargs["n_workers"] == 4
    assert kwargs["max_cloud"] == 80 and kwargs["resolution"] == 10.0
    settings = kwargs["catalog"]
    assert settings.url == wf.catalog.url and settings.s1_collection == "sentinel-1-rtc"
    assert wf.reprocess is None
    again = Workflow.from_dict(wf.to_dict(), default_name="other")
    assert again.to_dict() == wf.to_dict() and again.name == "example-region"


def test_reprocess_spec_names_previous_store_and_new_model():
    wf = load_workflow(WORKFLOWS / "reprocess-example.yaml")
    assert wf.reprocess is not None
    assert wf.reprocess.previous.endswith(".zarr") and wf.model.endswith(".safetensors")
    assert wf.out_path() != wf.reprocess.previous
    # The section runs geoflow.reprocess, which reads the previous store first (none here).
    with pytest.raises(StoreError, match=r"example-region-2024-06-01-2024-06-30\.zarr is "
                                         r"not a geoflow map store"):
        run_workflow(wf)


def test_minimal_spec_gets_defaults_and_file_name(tmp_path):
    path = _write(tmp_path, "bbox: 11,45,11.1,45.1\ndates: 2024-06-01\n", "my-run.yaml")
    wf = load_workflow(path)
    assert wf.name == "my-run" and wf.bbox == (11.0, 45.0, 11.1, 45.1)
    assert wf.out is None and wf.model is None and wf.stride is None
    assert wf.catalog_settings() is None  # classify_region's default catalog
    assert wf.request().datetime == "2024-06-01T00:00:00Z/2024-06-01T23:59:59.999999Z"


def test_yaml_dates_as_list_of_dates(tmp_path):
    wf = load_workflow(_write(tmp_path, "bbox: [11, 45, 11.1, 45.1]\n"
                                        "dates: [2024-06-01, 2024-06-10]\n"))
    assert wf.dates == "2024-06-01/2024-06-10"


def test_relative_dates_roll_with_the_run_day():
    wf = Workflow.from_dict({**BASE, "name": "roll", "dates": "today-30d/today",
                             "out": "s3://b/{name}/{start}_{end}.zarr"})
    assert wf.region(date(2025, 3, 31))[1] == "2025-03-01/2025-03-31"
    assert wf.out_path(date(2025, 3, 31)) == "s3://b/roll/2025-03-01_2025-03-31.zarr"
    with pytest.raises(RequestError, match=r"relative date 'today\+3d' is not understood"):
        Workflow.from_dict({**BASE, "dates": "today+3d/today"})


def test_environment_variables_are_expanded(monkeypatch):
    monkeypatch.setenv("GEOFLOW_TEST_BUCKET", "maps-bucket")
    wf = Workflow.from_dict({**BASE, "out": "s3://${GEOFLOW_TEST_BUCKET}/x.zarr"})
    assert wf.out == "s3://maps-bucket/x.zarr"
    monkeypatch.delenv("GEOFLOW_TEST_BUCKET")
    with pytest.raises(RequestError, match="environment variable GEOFLOW_TEST_BUCKET is not set"):
        Workflow.from_dict({**BASE, "out": "s3://${GEOFLOW_TEST_BUCKET}/x.zarr"})


@pytest.mark.parametrize(
    ("spec", "message", "hint"),
    [
        ({"dates": "2024-06-01"}, "'bbox' is missing", "bbox: [11.0, 45.0"),
        ({"bbox": [11, 45, 11.1, 45.1]}, "'dates' is missing", "2024-06-01/2024-06-30"),
        ({**BASE, "max_clouds": 50}, "unknown key 'max_clouds'", "did you mean 'max_cloud'?"),
        ({**BASE, "catalog": {"uri": "http://x"}}, "unknown key 'catalog.uri'",
         "did you mean 'url'?"),
        ({**BASE, "cluster": {"worker": 2}}, "unknown key 'cluster.worker'",
         "did you mean 'workers'?"),
        ({**BASE, "catalog": "http://x"}, "'catalog' must be a mapping", "url, s2_collection"),
        ({**BASE, "bbox": [12, 45, 11, 46]}, "bbox: ", ""),
        ({**BASE, "dates": "2024-06-30/2024-06-01"}, "dates: start", "swap"),
        ({**BASE, "dates": "June"}, "dates: ", "ISO 8601"),
        ({**BASE, "max_cloud": 150}, "'max_cloud' is 150, it must be from 0 to 100", ""),
        ({**BASE, "max_cloud": "low"}, "'max_cloud' must be a number", ""),
        ({**BASE, "stride": 2.5}, "'stride' must be a whole number", ""),
        ({**BASE, "resolution": 0}, "'resolution' is 0, it must be above 0", ""),
        ({**BASE, "cluster": {"workers": 0}}, "'workers' is 0, it must be at least 1", ""),
        ({**BASE, "cluster": {"scheduler": "my laptop"}}, "is not an address", "tcp://HOST:8786"),
        ({**BASE, "catalog": {"url": "http://x", "signer": "aws"}}, "signer 'aws' is not known",
         "planetary-computer"),
        ({**BASE, "catalog": {"signer": "planetary-computer"}}, "catalog has signer but no url",
         "add 'url: "),
        ({**BASE, "reprocess": {"report": "r.json"}}, "reprocess needs 'previous'", ""),
        ({**BASE, "reprocess": {"previous": "a.zarr"}}, "reprocessing needs the new 'model'", ""),
        ({**BASE, "name": "my run"}, "name 'my run' may hold only", ""),
        ({**BASE, "model": 3}, "'model' must be text", ""),
    ],
)
def test_bad_specs_are_explained(spec, message, hint):
    with pytest.raises(RequestError) as err:
        Workflow.from_dict(spec, source="spec.yaml")
    text = str(err.value)
    assert text.startswith("spec.yaml: ")
    assert message in text and hint in text


def test_request_checks_the_area_limit():
    wf = Workflow.from_dict({**BASE, "bbox": [0, 40, 10, 50]}, source="big.yaml")
    with pytest.raises(RequestError, match=r"big\.yaml: region: .*km"):
        wf.request()
    assert wf.request(max_area_km2=1e7).area_km2 > 25_000


def test_bad_files_are_explained(tmp_path):
    with pytest.raises(RequestError, match="does not exist"):
        load_workflow(tmp_path / "missing.yaml")
    with pytest.raises(RequestError, match="is empty"):
        load_workflow(_write(tmp_path, ""))
    with pytest.raises(RequestError, match=r"not valid YAML at line 2"):
        load_workflow(_write(tmp_path, "bbox: [1, 2\ndates: x: y\n"))
    with pytest.raises(RequestError, match="must be a mapping of keys"):
        load_workflow(_write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(RequestError, match="unknown placeholder"):
        Workflow.from_dict({**BASE, "out": "{region}.zarr"}).out_path()


def test_demo_workflow_is_the_sample_archives_region_and_month():
    from geoflow.archive.create import ARCHIVE_DATETIME
    from geoflow.request import parse_dates

    wf = load_workflow(WORKFLOWS / "demo.yaml")
    start, end = parse_dates(wf.dates)
    a_start, a_end = parse_dates(ARCHIVE_DATETIME)
    assert start == a_start and end.date() == a_end.date()
    assert wf.catalog_settings() is None  # the bundled archive, served locally
    assert wf.request().area_km2 >= 100  # the demo maps at least 100 km²


def test_a_null_collection_skips_that_sensor():
    wf = Workflow.from_dict({**BASE, "catalog": {"url": "https://stac.example.org",
                                                 "s1_collection": None}})
    assert wf.catalog.s1_collection is None and wf.catalog.s2_collection == "sentinel-2-l2a"
    settings = wf.catalog_settings()
    assert settings.s1_collection is None and settings.url == "https://stac.example.org"
    with pytest.raises(RequestError, match="s2_collection is null"):
        Workflow.from_dict({**BASE, "catalog": {"url": "https://s", "s2_collection": None}})


@pytest.mark.slow
def test_run_workflow_maps_the_spec_region_into_the_named_store(small_archive, stac_url,
                                                                 tmp_path):
    import json

    import xarray as xr

    from geoflow.model.checkpoint import save_checkpoint
    from geoflow.model.networks import ArchSpec, build_network

    # An untrained student: this test is about the spec reaching classify_region, not accuracy.
    spec = ArchSpec("student", n_classes=10, width=8, depth=1, patch_size=32)
    save_checkpoint(tmp_path / "model", build_network(spec), spec, stage="untrained",
                    training={"note": "workflow wiring test"})
    info = json.loads((small_archive / "archive.json").read_text())
    wf = Workflow.from_dict({"name": "wiring", "bbox": info["demo_bbox"],
                             "dates": "2025-06-01/2025-06-30",
                             "out": str(tmp_path / "{name}-{start}.zarr"),
                             "model": str(tmp_path / "model.safetensors"),
                             "catalog": {"url": stac_url}, "cluster": {"workers": 1}},
                            source="wiring.yaml")
    ds = run_workflow(wf)
    store = tmp_path / "wiring-2025-06-01.zarr"
    assert store.is_dir()
    assert {"class", "confidence", "sar_weight", "cloud_fraction"} <= set(ds.data_vars)
    assert ds.sizes["time"] == len(info["s2_dates"])
    written = xr.open_zarr(store, decode_coords="all", consolidated=False)
    assert (written["class"].values == ds["class"].values).all()


ES_URL = "https://earth-search.aws.element84.com/v1"
PC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"


def test_catalog_profile_and_one_catalog_per_sensor_in_specs():
    shipped = load_workflow(WORKFLOWS / "earth-search-region.yaml").catalog_settings()
    wf = Workflow.from_dict({**BASE, "catalog": {"url": ES_URL, "s1_url": PC_URL}})
    cats = wf.catalog_settings()
    assert repr(shipped) == repr(cats)
    assert cats["s2"].profile_name == "earth-search" and cats["s2"].s1_collection is None
    assert cats["s1"].profile_name == "planetary-computer"
    assert cats["s1"].s1_collection == "sentinel-1-rtc" and cats["s1"].s2_collection is None
    # Earth Search alone: Sentinel-2 only (its Sentinel-1 is GRD).
    only = Workflow.from_dict({**BASE, "catalog": {"url": ES_URL}}).catalog_settings()
    assert only.s1_collection is None
    # profile: overrides the guess from the host.
    forced = Workflow.from_dict({**BASE, "catalog": {"url": "http://127.0.0.1:9",
                                                     "profile": "earth-search",
                                                     "s1_collection": None}})
    assert forced.catalog_settings().profile.s2_assets["B02"] == "blue"


@pytest.mark.parametrize(("catalog", "match"), [
    ({"url": ES_URL, "s1_collection": "sentinel-1-grd"}, "not terrain-corrected RTC"),
    ({"url": "http://x", "profile": "aws"}, "profile 'aws' is not known"),
])
def test_bad_catalog_profiles_in_specs_are_clear(catalog, match):
    with pytest.raises(RequestError, match=match):
        Workflow.from_dict({**BASE, "catalog": catalog})
