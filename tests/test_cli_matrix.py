"""Every stage against every damaged or foreign input, through the CLI as a user meets it:
the exit code, a message naming the thing, and never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import extract_overrides
from geoalign_store.features import cache_dir
from pipelines.cli import app

VIEW = "features/folder/{split}/drone"


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def clean(folder_dataset, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("matrix") / "clean.zarr"
    assert cli("extract", *extract_overrides(store, folder_dataset)).exit_code == 0
    return store


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def damaged(clean: Path, tmp_path: Path, split: str, how: str) -> Path:
    store = tmp_path / "store.zarr"
    shutil.copytree(clean, store)
    chunk = store / VIEW.format(split=split) / "layer_28/desc/c/1/0"
    truncate(chunk) if how == "truncated" else chunk.unlink()
    return store


def tiny_weights(tmp_path: Path) -> Path:
    """The tiny backbone's own weights folder (made by any earlier extract in this session)."""
    folder = next((cache_dir() / "backbones").glob("tiny-seed0-*"))
    copy = tmp_path / "weights"
    shutil.copytree(folder, copy)
    return copy


STORE_CASES = [  # stage, split damaged, extra args, exit code, what the message must contain
    ("score", "test", ["heads=none", "pictures=0"], 2, "block 1 (rows 4-7) is damaged"),
    ("index", "test", ["--mode", "S2D", "heads=none"], 2, "block 1 (rows 4-7) is damaged"),
    ("score", "test", ["--mode", "S2D", "heads=none", "pictures=0"], 2, "block 1 (rows 4-7) is damaged"),
    ("fit-heads", "train", ["select.agra=false"], 2, "block 1 (rows 4-7) is damaged"),
    ("check", "test", [], 1, "damaged: features/folder/test/drone block 1 rows [4, 7]"),
]


@pytest.mark.parametrize("how", ["truncated", "missing"])
@pytest.mark.parametrize("stage, split, extra, code, says", STORE_CASES)
def test_stages_name_damaged_chunks(clean, tmp_path, how, stage, split, extra, code, says):
    store = damaged(clean, tmp_path, split, how)
    out = cli(stage, f"store={store}", *extra)
    text = " ".join(out.output.split())
    assert out.exit_code == code, out.output
    assert "Traceback" not in out.output and says in text
    if code == 2:
        assert "layer_28/desc" in text and "geoalign extract" in text


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_extract_repairs_damaged_chunks(clean, folder_dataset, tmp_path, how):
    store = damaged(clean, tmp_path, "test", how)
    out = cli("extract", *extract_overrides(store, folder_dataset))
    assert out.exit_code == 0 and "re-extracting 1 damaged block(s) of test/drone" in " ".join(out.output.split())


def weights_case(tmp_path: Path, kind: str) -> Path:
    if kind == "truncated safetensors":
        folder = tiny_weights(tmp_path)
        truncate(folder / "model.safetensors")
        return folder
    path = tmp_path / ("text.pth" if kind == "text file as .pth" else "empty.pth")
    path.write_text("hello\n" if kind == "text file as .pth" else "")
    return path


@pytest.mark.parametrize("kind", ["truncated safetensors", "text file as .pth", "empty .pth"])
def test_extract_names_unreadable_weights(clean, folder_dataset, tmp_path, kind):
    weights = weights_case(tmp_path, kind)
    out = cli("extract", *extract_overrides(tmp_path / "s.zarr", folder_dataset), f"weights={weights}")
    text = " ".join(out.output.split())
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output and "weights_only=False" not in text
    assert ("model.safetensors" if kind.startswith("truncated") else weights.name) in text.replace(" ", "")
    assert "truncated" in text or "not a torch checkpoint" in text


@pytest.mark.parametrize("kind", ["truncated safetensors", "text file as .pth", "empty .pth"])
def test_import_heads_names_foreign_checkpoints(clean, tmp_path, kind):
    path = weights_case(tmp_path, kind)
    path = path / "model.safetensors" if path.is_dir() else path
    out = cli("import-heads", f"store={clean}", f"agra={path}")
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert path.name in " ".join(out.output.split()).replace(" ", "")


@pytest.mark.parametrize("kind", ["empty image", "image that is a directory"])
def test_extract_records_unusable_images_and_exits_2(folder_dataset, tmp_path, kind):
    data = tmp_path / "data"
    shutil.copytree(folder_dataset, data)
    bad = data / "test/drone/0101/zz-bad.png"
    bad.mkdir() if kind == "image that is a directory" else bad.write_bytes(b"")
    out = cli("extract", *extract_overrides(tmp_path / "s.zarr", data, "split=test"))
    text = " ".join(out.output.split())
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "unreadable: test/drone/0101/zz-bad.png" in text and "skip_bad=true" in text


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_locate_names_a_damaged_gallery_chunk(clean, folder_dataset, tmp_path, how):
    store = tmp_path / "store.zarr"
    shutil.copytree(clean, store)
    chunk = store / "features/folder/test/satellite/layer_28/desc/c/1/0"
    truncate(chunk) if how == "truncated" else chunk.unlink()
    photo = folder_dataset / "test/drone/0100/view-00.png"
    out = cli("locate", photo, f"store={store}", "pictures=false")
    text = " ".join(out.output.split())
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    assert "test/satellite/layer_28/desc: block 1 (rows 4-4) is damaged" in text and "geoalign extract" in text
