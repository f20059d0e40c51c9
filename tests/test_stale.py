"""Artefacts are refused, with the command that recomputes them, when their inputs changed;
weights and checkpoints that cannot be read are named, never unpickled, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from conftest import write_plain_store, write_train_split
from pipelines.cli import app

FAST = ["select.agra=false", "select.latents=[16]", "select.n_maps=[1]", "select.map_kinds=[ridge]"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture
def fitted(tmp_path) -> Path:
    store = tmp_path / "s.zarr"
    write_plain_store(store, dim=40, n_loc=12, distractors=3)
    write_train_split(store)
    assert cli("fit-heads", f"store={store}", *FAST).exit_code == 0
    assert cli("score", f"store={store}", "pictures=0").exit_code == 0
    return store


def permute_train_drones(store: Path) -> None:
    """Same values, rows and groups permuted together: a sum of floats would not notice."""
    group = zarr.open_group(str(store), mode="a")["features/mine/train/drone"]
    order = np.random.default_rng(0).permutation(group["labels"].shape[0])
    for name in ("ids", "labels", "layer_26/desc", "layer_28/desc"):
        group[name][...] = group[name][...][order]


def test_heads_fitted_on_other_train_content_are_refused_everywhere(fitted):
    permute_train_drones(fitted)
    for stage in (["score", "pictures=0"], ["index"]):
        out = cli(stage[0], f"store={fitted}", *stage[1:])
        assert out.exit_code == 2 and "Traceback" not in out.output
        text = one_line(out)
        assert "heads 'geoalign' are stale: the store's train descriptors changed" in text
        assert f"geoalign fit-heads store={fitted} name=geoalign overwrite=true" in text
    out = cli("fit-heads", f"store={fitted}", *FAST)
    assert out.exit_code == 2 and "overwrite=true" in one_line(out)
    assert cli("score", f"store={fitted}", "heads=none", "pictures=0").exit_code == 0


def test_check_lists_stale_artefacts_with_the_command_that_recomputes_them(fitted):
    assert json.loads(cli("check", f"store={fitted}", "--json").stdout)["stale"] == []
    permute_train_drones(fitted)
    report = json.loads(cli("check", f"store={fitted}", "--json").stdout)
    stale = {s["artefact"]: s for s in report["stale"]}
    assert set(stale) == {"heads/geoalign", "scores/mine-geoalign/D2S"}
    assert stale["scores/mine-geoalign/D2S"]["recompute"].startswith("geoalign score")
    assert cli("fit-heads", f"store={fitted}", *FAST, "overwrite=true").exit_code == 0
    assert cli("score", f"store={fitted}", "pictures=0").exit_code == 0
    assert json.loads(cli("check", f"store={fitted}", "--json").stdout)["stale"] == []


def test_an_index_of_changed_embeddings_is_refused_until_rebuilt(fitted):
    assert cli("index", f"store={fitted}", "heads=none").exit_code == 0
    group = zarr.open_group(str(fitted), mode="a")["features/mine/test/satellite/layer_28/desc"]
    group[0] = -group[0]
    out = cli("index", f"store={fitted}", "heads=none")
    assert out.exit_code == 2
    assert "is stale: the embeddings it holds changed" in one_line(out)
    assert "overwrite=true" in one_line(out)
    assert cli("index", f"store={fitted}", "heads=none", "overwrite=true").exit_code == 0


def test_damaged_heads_weights_are_named_with_the_command(fitted):
    path = next(p for p in (fitted / "artefacts/heads/geoalign").glob("*.safetensors") if p.stem != "agra")
    path.write_bytes(path.read_bytes()[:50])
    out = cli("score", f"store={fitted}", "pictures=0")
    assert out.exit_code == 2 and "Traceback" not in out.output
    text = one_line(out)
    assert path.name in text.replace(" ", "") and "is not a readable safetensors file" in text
    assert "geoalign fit-heads name=geoalign overwrite=true" in text


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n", b"PK\x03\x04 not really a zip"])
def test_import_heads_refuses_foreign_files_without_traceback(fitted, tmp_path, content):
    bad = tmp_path / "agra.t"
    bad.write_bytes(content)
    out = cli("import-heads", f"store={fitted}", f"agra={bad}", f"isms={bad}")
    assert out.exit_code == 2 and "Traceback" not in out.output
    text = one_line(out)
    assert str(bad) in text and "cannot be read safely as a state dict" in text
    assert "weights_only=False" not in text


def test_a_plain_zarr_digest_follows_its_chunk_files_without_decoding_them(tmp_path, monkeypatch):
    """A user's plain-zarr store (no checksums) on a local disk: the digest stands on the chunk
    files' names, sizes and modification times, so a rewritten chunk is noticed and an untouched
    store keeps its digest, without decoding the data (16 s at 1e6 x 768)."""
    from geoalign_store import store as st
    store = write_plain_store(tmp_path / "p.zarr")
    before = st.content_digest(st.open_store(str(store), mode="r"), "mine", "test", [26, 28])
    monkeypatch.setattr(zarr.Array, "__getitem__", lambda *a: pytest.fail("decoded the data"))
    assert st.content_digest(st.open_store(str(store), mode="r"), "mine", "test", [26, 28]) == before
    monkeypatch.undo()
    array = zarr.open_group(str(store), mode="a")["features/mine/test/drone/layer_26/desc"]
    array[3] = array[3] + 1.0
    assert st.content_digest(st.open_store(str(store), mode="r"), "mine", "test", [26, 28]) != before
