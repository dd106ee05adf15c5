"""Checkpoints: round trip, and a clear CheckpointError for every way a file can be wrong."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from geoflow.errors import CheckpointError
from geoflow.model.checkpoint import read_checkpoint, save_checkpoint, tensor_checksum
from geoflow.model.networks import ArchSpec, build_network


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    spec = ArchSpec("student", n_classes=10, width=4, patch_size=16)
    save_checkpoint(tmp_path / "m", build_network(spec), spec, stage="student_irm",
                    training={"epochs": 1}, metrics={"val_oa": 0.5})
    return tmp_path / "m"


def test_round_trip_keeps_weights_and_metadata(ckpt: Path) -> None:
    ck = read_checkpoint(ckpt.with_suffix(".safetensors"))
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    assert ck.meta == meta
    assert tensor_checksum(ck.network.state_dict()) == meta["checksum"]
    for key in ("architecture", "bands", "sar_bands", "norm", "patch_size", "classes", "colors",
                "training", "metrics", "version", "checksum"):
        assert key in meta
    assert meta["bands"][0] == "B02" and len(meta["bands"]) == 10
    assert meta["architecture"]["name"] == "student" and meta["patch_size"] == 16
    assert meta["metrics"] == {"val_oa": 0.5}


def test_missing_files(ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist.*Fix:"):
        read_checkpoint(ckpt.parent / "nothing")
    ckpt.with_suffix(".safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"weights .* do not exist"):
        read_checkpoint(ckpt)


def test_truncated_weights(ckpt: Path) -> None:
    w = ckpt.with_suffix(".safetensors")
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(ckpt)
    # Even if the recorded size is dropped from the metadata, the reader refuses it cleanly.
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    meta["weights_bytes"] = None
    ckpt.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(ckpt)


def test_tampered_weights_fail_the_checksum(ckpt: Path) -> None:
    w = ckpt.with_suffix(".safetensors")
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor's bytes, same size
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(ckpt)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("bands", ["B04", "B03", "B02", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
     "S2 bands"),
    ("bands", ["B02", "B03", "B04", "B08"], "S2 bands"),
    ("sar_bands", ["HH", "HV"], "polarisations"),
    ("patch_size", 64, "patch size"),
    ("format", "something-else", "not a geoflow checkpoint"),
])
def test_incompatible_metadata(ckpt: Path, field: str, value: object, match: str) -> None:
    meta_path = ckpt.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta[field] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(ckpt)


def test_patch_size_the_caller_needs_is_checked(ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match=r"works on 16 px patches, not 32 px.*Fix:"):
        read_checkpoint(ckpt, patch_size=32)


def test_weights_of_another_architecture(ckpt: Path, tmp_path: Path) -> None:
    spec = ArchSpec("student", n_classes=10, width=8, patch_size=16)
    save_checkpoint(tmp_path / "other", build_network(spec), spec, stage="x")
    meta = json.loads((tmp_path / "other.json").read_text())
    meta["architecture"]["width"] = 4  # metadata says one size, tensors are another
    (tmp_path / "other.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit its declared architecture"):
        read_checkpoint(tmp_path / "other")


class _Boom:
    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(_Boom.marker),))


def test_a_pickle_in_disguise_is_never_unpickled(ckpt: Path, tmp_path: Path) -> None:
    _Boom.marker = str(tmp_path / "pwned")
    ckpt.with_suffix(".safetensors").write_bytes(pickle.dumps({"w": _Boom()}))
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    meta["weights_bytes"] = None
    ckpt.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError):
        read_checkpoint(ckpt)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_bytes_materialise_once_from_many_threads(tmp_path: Path) -> None:
    """A worker's threads write the same checkpoint at once (chunks run concurrently): every
    thread gets the same files, whole, and no temporary file is left behind."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from geoflow.model import DEFAULT_CHECKPOINT
    from geoflow.model.checkpoint import CheckpointBytes

    sent = CheckpointBytes.from_path(DEFAULT_CHECKPOINT)
    for attempt in range(5):  # a fresh folder each time: the threads race to create it
        start = threading.Barrier(8)

        def write(_: int, folder: Path = tmp_path / str(attempt),
                  start: threading.Barrier = start) -> Path:
            start.wait()
            return sent.materialize(folder)

        with ThreadPoolExecutor(8) as pool:
            paths = list(pool.map(write, range(8)))
        assert len(set(paths)) == 1
        assert paths[0].read_bytes() == sent.weights
        assert paths[0].with_suffix(".json").read_bytes() == sent.metadata
        assert not list(paths[0].parent.glob("*.tmp"))
    read_checkpoint(paths[0])  # loads and verifies its checksum
