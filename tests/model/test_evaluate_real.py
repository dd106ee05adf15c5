"""Real-patch evaluation: the report's figures follow from its own per-patch windows, the
targets are explicit rows, and the CLI prints the table or JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geoflow.model._constants import CLASSES
from geoflow.model.bigearthnet import allowed_classes, families
from geoflow.model.evaluate_real import evaluate_real, format_real, ndwi_rule


@pytest.fixture(scope="module")
def report(ben_sets: dict) -> dict:
    return evaluate_real("bigearthnet", "demo", device="cpu", sets=ben_sets)  # a model name


def test_fit_rates_follow_from_the_windows(report: dict) -> None:
    assert report["model"]["checkpoint"].endswith("demo.safetensors")
    for name, n in (("dev", 54), ("heldout", 6)):
        s = report["sets"][name]
        assert s["patches"] == n and s["windows"] == 9 * n
        pp = s["per_patch"]
        fit_w = [w in allowed_classes(p["labels"]) for p in pp for w in p["windows"]]
        assert s["fit"]["student"]["all"]["window_fit"] == pytest.approx(np.mean(fit_w), abs=1e-4)
        clear = [w in allowed_classes(p["labels"]) for p in pp if p["condition"] == "clear"
                 for w in p["windows"]]
        assert s["fit"]["student"]["clear"]["window_fit"] == pytest.approx(np.mean(clear),
                                                                           abs=1e-4)
        for p in pp:  # the majority is the most frequent window class
            counts = {c: p["windows"].count(c) for c in p["windows"]}
            assert counts[p["majority"]] == max(counts.values())
            assert p["fit"] == (p["majority"] in allowed_classes(p["labels"]))
        assert sum(s["predictions"].values()) == pytest.approx(1.0, abs=1e-3)
        assert set(s["predictions"]) == set(CLASSES)
        for cond in ("all", "clear"):
            assert 0 <= s["sar_weight"][cond] <= 1


def test_targets_are_explicit_rows(report: dict) -> None:
    dev = report["sets"]["dev"]
    t = dev["targets"]
    assert set(t) == {"clear_fit_vs_ndwi", "urban_built_up", "snow_not_industrial", "sea_water"}
    urban = [p for p in dev["per_patch"] if {"urban", "industrial"} & families(p["labels"])]
    assert t["urban_built_up"]["patches"] == len(urban) == 10
    built = sum(p["majority"] in ("Residential", "Sparsely Built", "Industrial") for p in urban)
    assert t["urban_built_up"]["built_up"] == built
    assert t["urban_built_up"]["met"] == (2 * built >= len(urban))
    snowy = [w for p in dev["per_patch"] if p["condition"] == "snowy" for w in p["windows"]]
    assert t["snow_not_industrial"]["windows"] == len(snowy) == 27
    assert t["snow_not_industrial"]["industrial"] == snowy.count("Industrial")
    sea = [p for p in dev["per_patch"] if "sea" in families(p["labels"])]
    assert t["sea_water"]["patches"] == len(sea) == 9
    assert t["sea_water"]["water"] == sum(p["majority"] == "Water" for p in sea)
    margin = t["clear_fit_vs_ndwi"]
    assert margin["margin_points"] == pytest.approx(
        100 * (margin["student"] - margin["ndwi_rule"]), abs=0.06)
    text = format_real(report)
    for row in ("student no SAR", "NDWI rule", "SAR weight", "urban patches built-up",
                "snowy windows Industrial", "sea patches Water", "[heldout]"):
        assert row in text


def test_heldout_split_by_shared_acquisition(report: dict, ben_sets: dict) -> None:
    split = report["sets"]["heldout"]["by_acquisition"]
    dev_groups = set(ben_sets["dev"].groups)
    held = ben_sets["heldout"]
    shared = split["shares_acquisition_with_dev"]
    other = split["no_shared_acquisition"]
    # the split is exactly by satellite + date shared with a dev patch, and covers all six
    assert sorted(shared["ids"] + other["ids"]) == sorted(held.ids)
    for i, g in zip(held.ids, held.groups, strict=True):
        assert (i in shared["ids"]) == (g in dev_groups)
    assert shared["patches"] == 3 and set(shared["acquisitions"]) <= dev_groups
    assert not set(other["acquisitions"]) & dev_groups
    # each part's figures follow from the held-out set's own per-patch windows
    pp = {p["id"]: p for p in report["sets"]["heldout"]["per_patch"]}
    for part in (shared, other):
        fit = [w in allowed_classes(pp[i]["labels"]) for i in part["ids"]
               for w in pp[i]["windows"]]
        assert part["fit"]["student"]["all"]["window_fit"] == pytest.approx(np.mean(fit),
                                                                           abs=1e-4)
        assert "clear_fit_vs_ndwi" in part["targets"]
    assert "shares an acquisition with dev" in format_real(report)


def test_ndwi_rule_and_no_sar_variant(report: dict, ben_sets: dict) -> None:
    # water windows by NDWI: a bright-green, dark-NIR window is Water, vegetation is not
    w = np.zeros((2, 10, 4, 4), np.float32)
    w[0, 1], w[0, 6] = 0.08, 0.02
    w[1, 1], w[1, 6] = 0.06, 0.35
    assert ndwi_rule(w).tolist() == ["Water", "Dense Forest"]
    dev = report["sets"]["dev"]
    # without SAR the student's answers change somewhere (the fusion is used at all)
    changed = [p for p in dev["per_patch"] if p["majority"] != p["majority_no_sar"]]
    assert changed


def test_cli_evaluate_real_json_and_errors(ben_root, capsys) -> None:  # type: ignore[no-untyped-def]
    from geoflow.cli import main

    main(["evaluate", "--real", f"bigearthnet:{ben_root}/bigearthnet_common-2.8.0",
          "--device", "cpu", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert list(rep["sets"]) == ["data"] and rep["sets"]["data"]["patches"] == 6
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--real", "bigearthnet:/no/such/folder"])
    assert exc.value.code == 2
    assert "does not exist" in capsys.readouterr().err
