"""The local model registry: add / list / show / resolve with real (tiny) checkpoints, the
refusals (tampered, built-in, traversal, a different checkpoint under a taken version) and the
`geoflow models` commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from geoflow.cli import main
from geoflow.errors import CheckpointError, ModelNotFoundError
from geoflow.model import DEFAULT_CHECKPOINT
from geoflow.model.checkpoint import read_checkpoint, save_checkpoint
from geoflow.model.networks import ArchSpec, build_network
from geoflow.model.registry import BUILTINS, ModelRegistry, default_registry_dir, resolve_model


def _ckpt(path: Path, seed: int) -> Path:
    """A tiny valid student checkpoint (``path.safetensors`` + ``path.json``)."""
    torch.manual_seed(seed)
    spec = ArchSpec("student", n_classes=10, width=4, patch_size=16)
    save_checkpoint(path, build_network(spec), spec, stage="student_irm",
                    metrics={"val_oa": 0.5})
    return path.with_suffix(".safetensors")


@pytest.fixture(autouse=True)
def registry_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Every test gets its own registry: none may touch the user's cache.
    root = tmp_path / "registry"
    monkeypatch.setenv("GEOFLOW_MODELS", str(root))
    return root


@pytest.fixture
def reg(registry_dir: Path) -> ModelRegistry:
    return ModelRegistry()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return _ckpt(tmp_path / "src" / "a", 1), _ckpt(tmp_path / "src" / "b", 2)


def _meta(path: Path) -> dict[str, Any]:
    return json.loads(path.with_suffix(".json").read_text())


def test_builtins_are_listed_and_not_copied(reg: ModelRegistry, registry_dir: Path) -> None:
    entries = reg.list()
    assert [e.name for e in entries] == list(BUILTINS)
    assert all(e.builtin and e.latest and e.path.parent == DEFAULT_CHECKPOINT.parent
               for e in entries)
    assert reg.get("demo").checksum == _meta(DEFAULT_CHECKPOINT)["checksum"]
    assert resolve_model("source") == DEFAULT_CHECKPOINT.parent / "source.safetensors"
    assert not registry_dir.exists()  # listing and resolving write nothing


def test_add_latest_version_and_checksum_prefix(reg: ModelRegistry,
                                                 pair: tuple[Path, Path]) -> None:
    a, b = pair
    ea, new_a = reg.add(a, "mine")
    eb, new_b = reg.add(b, "mine")
    assert new_a and new_b and ea.version == _meta(a)["version"] != eb.version
    assert ea.path == reg.root / "mine" / ea.version / "mine.safetensors"
    # The copy is a complete, verified checkpoint with the source's bytes.
    assert read_checkpoint(ea.path).meta["checksum"] == _meta(a)["checksum"]
    assert ea.path.read_bytes() == a.read_bytes()
    # NAME = the version added last; @VERSION and @checksum prefix pick one.
    assert reg.get("mine").version == eb.version and resolve_model("mine") == eb.path
    assert reg.get(f"mine@{ea.version}").path == ea.path
    assert resolve_model(f"mine@{ea.checksum[7:15]}") == ea.path
    assert reg.get(f"mine@{ea.checksum[:23]}").version == ea.version  # with "sha256:"
    mine = [e for e in reg.list() if e.name == "mine"]
    assert [e.version for e in mine] == [ea.version, eb.version]
    assert [e.latest for e in mine] == [False, True]
    assert reg.names() == [*BUILTINS, "mine"]
    # Too short a prefix is not a version; an unknown version lists the versions there.
    with pytest.raises(ModelNotFoundError, match=rf"not a version.*{ea.version}.*{eb.version}"):
        reg.get(f"mine@{ea.checksum[7:13]}")


def test_adding_the_same_checkpoint_again_is_a_no_op(reg: ModelRegistry,
                                                      pair: tuple[Path, Path]) -> None:
    a, b = pair
    ea, _ = reg.add(a, "mine")
    reg.add(b, "mine")
    stamp = ea.path.stat().st_mtime_ns
    again, new = reg.add(a, "mine")
    assert not new and again.path == ea.path and ea.path.stat().st_mtime_ns == stamp
    assert reg.get("mine").version == _meta(b)["version"]  # latest is unchanged
    # The same checkpoint may be registered under another name too.
    assert reg.add(a, "other")[1]


def test_a_different_checkpoint_never_replaces_a_version(reg: ModelRegistry,
                                                         pair: tuple[Path, Path]) -> None:
    a, _ = pair
    entry, _ = reg.add(a, "mine")
    meta = _meta(a)
    meta["metrics"] = {"val_oa": 0.99}  # same weights and version, other metadata
    a.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"mine@.* already in the registry.*different"):
        reg.add(a, "mine")
    assert read_checkpoint(entry.path).meta["metrics"] == {"val_oa": 0.5}


def test_losing_a_concurrent_add_compares_instead(reg: ModelRegistry, pair: tuple[Path, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    a, _ = pair
    real_rename = os.rename

    def other_process_won(src: str, dst: str) -> None:
        shutil.copytree(src, dst)  # another add lands the same version first
        real_rename(src, dst)  # ... so this rename fails (target not empty)

    monkeypatch.setattr("geoflow.model.registry.os.rename", other_process_won)
    entry, new = reg.add(a, "mine")
    assert not new and entry.version == _meta(a)["version"]
    assert [p.name for p in (reg.root / "mine").iterdir()] == [entry.version]  # no temp left


def test_tampered_checkpoint_is_refused(reg: ModelRegistry, pair: tuple[Path, Path]) -> None:
    a, _ = pair
    data = bytearray(a.read_bytes())
    data[-8] ^= 0xFF  # a weight byte: the size stays, the checksum breaks
    a.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        reg.add(a, "mine")
    assert not (reg.root / "mine").exists() or not any((reg.root / "mine").iterdir())
    with pytest.raises(ModelNotFoundError):
        reg.get("mine")


def test_unknown_names_list_what_is_there(reg: ModelRegistry, pair: tuple[Path, Path]) -> None:
    reg.add(pair[0], "mine")
    for call in (lambda: reg.get("nope"), lambda: resolve_model("nope"),
                 lambda: resolve_model("nope@v1")):
        with pytest.raises(ModelNotFoundError, match=r"no model named 'nope'.*demo.*mine") as err:
            call()
        assert "geoflow models add" in str(err.value)
    with pytest.raises(ModelNotFoundError, match=r"missing\.safetensors does not exist.*mine"):
        resolve_model("missing.safetensors")


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "-x", "", "x y", "a@b",
                                  "é", "x" * 129])
def test_invalid_and_traversal_names_are_refused(reg: ModelRegistry, pair: tuple[Path, Path],
                                                 tmp_path: Path, name: str) -> None:
    with pytest.raises(CheckpointError):
        reg.add(pair[0], name)
    with pytest.raises(CheckpointError):
        reg.get(name)
    assert not reg.root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written beside it


def test_version_text_cannot_escape(reg: ModelRegistry, pair: tuple[Path, Path],
                                    tmp_path: Path) -> None:
    a, _ = pair
    reg.add(a, "mine")
    with pytest.raises(ModelNotFoundError, match="not a version"):
        reg.get("mine@../../src/a")
    meta = _meta(a)
    meta["version"] = "../../escaped"  # the version becomes a folder name: it must be one
    a.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"version '\.\./\.\./escaped' is not valid"):
        reg.add(a, "mine")
    assert not (tmp_path / "escaped").exists()


def test_builtin_names_cannot_be_added(reg: ModelRegistry, pair: tuple[Path, Path]) -> None:
    for name in BUILTINS:
        with pytest.raises(CheckpointError, match="built-in"):
            reg.add(pair[0], name)


def test_paths_win_and_pass_through(pair: tuple[Path, Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = pair
    assert resolve_model(None) == DEFAULT_CHECKPOINT
    assert resolve_model(str(a)) == a and isinstance(resolve_model(str(a)), Path)
    assert resolve_model(a.with_suffix("")) == a.with_suffix("")  # NAME of NAME.json + weights
    assert resolve_model(a.parent) == a.parent  # a folder goes through (load picks its student)
    ModelRegistry().add(a, "a")
    monkeypatch.chdir(a.parent)  # here "a" is a checkpoint path too, and paths win
    assert resolve_model("a") == Path("a")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("a").parent.parent.parent == ModelRegistry().root


def test_train_folder_is_added_as_its_student(reg: ModelRegistry, tmp_path: Path) -> None:
    student = _ckpt(tmp_path / "run" / "student_irm", 3)
    entry, _ = reg.add(tmp_path / "run", "trained")
    assert entry.checksum == _meta(student)["checksum"]
    with pytest.raises(CheckpointError, match="no student_irm, demo or finetuned"):
        reg.add(tmp_path, "trained")


def test_registry_folder_from_environment(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("GEOFLOW_MODELS", str(tmp_path / "elsewhere"))
    assert ModelRegistry().root == default_registry_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("GEOFLOW_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ModelRegistry().root == tmp_path / "home" / ".cache" / "geoflow" / "models"
    assert ModelRegistry(tmp_path / "x").root == tmp_path / "x"


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as err:
        code = int(err.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_models_commands(pair: tuple[Path, Path], registry_dir: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    a, b = pair
    code, out, _ = _cli(["models", "add", str(a), "--name", "mine", "--json"], capsys)
    added = json.loads(out)
    assert code == 0 and added["added_now"] and added["version"] == _meta(a)["version"]
    assert Path(added["path"]).is_relative_to(registry_dir)
    code, out, _ = _cli(["models", "add", str(b), "--name", "mine"], capsys)
    assert code == 0 and out.startswith(f"added mine@{_meta(b)['version']}")
    code, out, _ = _cli(["models", "add", str(b), "--name", "mine"], capsys)
    assert code == 0 and out.startswith("already there: mine@")

    code, out, _ = _cli(["models", "list", "--json"], capsys)
    listed = json.loads(out)
    assert code == 0 and listed["registry"] == str(registry_dir)
    assert [m["spec"] for m in listed["models"] if m["name"] == "mine"] == \
        [f"mine@{_meta(a)['version']}", f"mine@{_meta(b)['version']}"]
    code, out, _ = _cli(["models", "list"], capsys)
    assert code == 0 and "built-in" in out and "mine *" in out

    code, out, _ = _cli(["models", "show", f"mine@{_meta(a)['checksum'][7:17]}", "--json"],
                        capsys)
    shown = json.loads(out)
    assert code == 0 and shown["version"] == _meta(a)["version"] and not shown["latest"]
    assert shown["metadata"]["metrics"] == {"val_oa": 0.5} and len(shown["versions"]) == 2
    code, out, _ = _cli(["models", "show", "demo"], capsys)
    assert code == 0 and "built-in" in out and "student_irm" in out

    code, _, err = _cli(["models", "show", "nope"], capsys)
    assert code == 2 and "no model named 'nope'" in err and "mine" in err and "demo" in err
    code, _, err = _cli(["models", "add", str(a), "--name", "demo"], capsys)
    assert code == 2 and "built-in" in err
    code, _, err = _cli(["models", "add", str(a), "--name", "../up"], capsys)
    assert code == 2 and "not valid" in err
