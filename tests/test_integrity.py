"""A damaged store is named and repaired: checksums, `geoalign check`, re-extraction of exactly
the damaged blocks, and one read path that turns decoding failures into clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from conftest import extract_overrides
from geoalign_store.config import compose
from pipelines import extract
from pipelines.cli import app

DRONE = "features/folder/test/drone"


@pytest.fixture(scope="module")
def clean_store(folder_dataset, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("integrity") / "clean.zarr"
    extract.run(compose("extract", extract_overrides(store, folder_dataset)))
    return store


def damaged_copy(clean: Path, tmp_path: Path) -> Path:
    """Block 1 of layer_28/desc truncated (a full disk), block 2 of layer_26/cls deleted."""
    store = tmp_path / "damaged.zarr"
    shutil.copytree(clean, store)
    chunk = store / DRONE / "layer_28/desc/c/1/0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    (store / DRONE / "layer_26/cls/c/2/0").unlink()
    return store


def all_arrays(store: Path) -> dict[str, np.ndarray]:
    """Every array of the store through plain zarr."""
    root = zarr.open_group(str(store), mode="r")
    return {name: node[...] for name, node in root["features"].members(max_depth=None)
            if isinstance(node, zarr.Array)}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_every_array_carries_a_checksum_that_plain_zarr_reads(clean_store):
    root = zarr.open_group(str(clean_store), mode="r")
    for name, node in root["features"].members(max_depth=None):
        if isinstance(node, zarr.Array):
            assert "crc32c" in json.dumps(node.metadata.to_dict()["codecs"]), name


def test_check_passes_a_clean_store_and_names_damaged_blocks(clean_store, tmp_path):
    ok = cli("check", f"store={clean_store}", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"]
    store = damaged_copy(clean_store, tmp_path)
    bad = cli("check", f"store={store}", "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    damaged = report["views"][DRONE]["damaged"]
    assert [(d["block"], d["rows"]) for d in damaged] == [(1, [4, 7]), (2, [8, 11])]
    assert "layer_28/desc: truncated: 100 of" in damaged[0]["reason"]
    assert "layer_26/cls: chunk file missing" in damaged[1]["reason"]
    assert "geoalign extract" in report["views"][DRONE]["repair"]
    assert report["n_damaged"] == 2
    assert all(not v["damaged"] for k, v in report["views"].items() if k != DRONE)


def test_reading_a_damaged_block_names_array_block_and_repair(clean_store, tmp_path):
    store = damaged_copy(clean_store, tmp_path)
    (store / DRONE / "layer_26/cls/c/2/0").write_bytes((clean_store / DRONE / "layer_26/cls/c/2/0").read_bytes())
    out = cli("score", f"store={store}", "heads=none", "pictures=0")
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert "layer_28/desc: block 1 (rows 4-7) is damaged (truncated: 100 of" in text
    assert "geoalign extract" in text and "Traceback" not in out.output


def test_a_missing_chunk_is_never_read_as_zeros(clean_store, tmp_path):
    store = tmp_path / "missing.zarr"
    shutil.copytree(clean_store, store)
    (store / DRONE / "layer_28/desc/c/0/0").unlink()
    out = cli("score", f"store={store}", "heads=none", "pictures=0")
    assert out.exit_code == 2
    assert "block 0 (rows 0-3) is damaged (chunk file missing)" in " ".join(out.output.split())


def test_extract_rewrites_exactly_the_damaged_blocks_bitwise(clean_store, folder_dataset, tmp_path):
    store = damaged_copy(clean_store, tmp_path)
    flipped = store / "features/folder/train/satellite/layer_26/desc/c/0/0"
    data = bytearray(flipped.read_bytes())
    data[7] ^= 0x10                                        # same size: only the checksum sees it
    flipped.write_bytes(bytes(data))
    out = cli("extract", *extract_overrides(store, folder_dataset))
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "re-extracting 2 damaged block(s) of test/drone" in text
    assert "re-extracting 1 damaged block(s) of train/satellite" in text
    assert "12 images extracted" in text                   # 2 blocks of 4 drones + 1 of 4 satellites
    clean, repaired = all_arrays(clean_store), all_arrays(store)
    assert clean.keys() == repaired.keys()
    for name in clean:
        assert np.array_equal(clean[name], repaired[name]), name
    assert cli("check", f"store={store}").exit_code == 0


def test_damaged_metadata_is_named_by_check_and_score(clean_store, tmp_path):
    store = tmp_path / "meta.zarr"
    shutil.copytree(clean_store, store)
    labels = store / DRONE / "labels/c/0"
    labels.write_bytes(labels.read_bytes()[:-3])
    report = json.loads(cli("check", f"store={store}", "--json").stdout)
    assert report["views"][DRONE]["metadata_damaged"] == {"labels": "checksum mismatch"}
    out = cli("score", f"store={store}", "heads=none", "pictures=0")
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert f"{DRONE}/labels is damaged" in " ".join(out.output.split())


def test_a_damaged_metadata_document_is_named(clean_store, tmp_path):
    store = tmp_path / "doc.zarr"
    shutil.copytree(clean_store, store)
    doc = store / DRONE / "layer_28/desc/zarr.json"
    doc.write_text(doc.read_text()[:30])
    for args, code in ((["score", "heads=none", "pictures=0"], 2), (["check"], 1)):
        out = cli(args[0], f"store={store}", *args[1:])
        assert out.exit_code == code and "Traceback" not in out.output
        assert f"{DRONE}/layer_28/desc/zarr.json" in " ".join(out.output.split()).replace(" ", "")


@pytest.mark.parametrize("rows", [slice(None), slice(3, 10), slice(4, 8), slice(11, 12), slice(5, 5), slice(-3, None)])
def test_the_threaded_checked_read_equals_zarr(clean_store, rows):
    from geoalign_store.store import CheckedArray
    from geoalign_store.store.integrity import _raw_reader
    array = zarr.open_group(str(clean_store), mode="r")[f"{DRONE}/layer_28/desc"]
    assert _raw_reader(array) is not None                       # extract's layout takes the fast path
    assert np.array_equal(CheckedArray(array, "")[rows], array[rows])
    lo, hi, _ = rows.indices(array.shape[0])
    wide = np.full((max(0, hi - lo), array.shape[1] + 3), 7.0, np.float32)
    CheckedArray(array, "").read_into(lo, max(lo, hi), wide[:, 2:-1])  # into strided columns
    assert np.array_equal(wide[:, 2:-1], array[rows]) and (wide[:, [0, 1, -1]] == 7.0).all()


def test_the_local_digest_reads_the_same_checksum_tails_as_zarr(clean_store):
    from geoalign_store.store import integrity as si
    root = zarr.open_group(str(clean_store), mode="r")
    for name in ("layer_28/desc", "errors", "ids", "block_done"):
        array = root[f"{DRONE}/{name}"]
        keys, tails = zip(*si._chunk_tails(array))
        assert list(tails) == si._store_tails(array.store_path.store, list(keys))
        assert name != "layer_28/desc" or all(t is not None and len(t) == 4 for t in tails)
