"""A first run on your own weights and folder, without friction (issue 10): the backbone is read
from the weights, a folder takes the splits it has, a scored store reads with plain zarr quietly."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from transformers import DINOv3ViTConfig, DINOv3ViTModel
from typer.testing import CliRunner

from conftest import make_folder_dataset
from geoalign_store.config import ConfigError, compose
from geoalign_store.datasets import DatasetLayoutError, list_dataset
from geoalign_store.features import load_image
from pipelines import extract
from pipelines.cli import app
from test_extract import reference_descriptor

WIDTH = 96  # not the default backbone's width (80): the weights must say it themselves


@pytest.fixture(scope="module")
def own_weights(tmp_path_factory) -> Path:
    """A Hugging Face DINOv3 folder of another width, as a user would bring."""
    torch.manual_seed(3)
    config = DINOv3ViTConfig(hidden_size=WIDTH, num_hidden_layers=32, num_attention_heads=4,
                             intermediate_size=2 * WIDTH, num_register_tokens=4, use_gated_mlp=True,
                             hidden_act="silu", layer_norm_eps=1e-5, rope_theta=100.0)
    folder = tmp_path_factory.mktemp("weights") / "my-dinov3"
    DINOv3ViTModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def test_only(folder_dataset, tmp_path_factory) -> Path:
    """A folder holding only test/: D/test/drone/..., D/test/satellite/..."""
    root = tmp_path_factory.mktemp("test_only")
    shutil.copytree(folder_dataset / "test", root / "test")
    return root


def test_extract_reads_the_backbone_from_the_weights(tmp_path, own_weights, test_only):
    """`extract dataset=folder data_root=D weights=W` with no backbone=, on a folder holding
    only test/, equals the independent float64 re-typing of the descriptor."""
    store = tmp_path / "own.zarr"
    args = ["extract", "dataset=folder", f"data_root={test_only}", f"weights={own_weights}",
            f"store={store}", "num_workers=0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    root = zarr.open_group(str(store), mode="r")
    assert sorted(root["features/folder"].group_keys()) == ["test"]
    spec = root["features/folder"].attrs["fingerprint"]["spec"]
    assert spec["arch"]["hidden_size"] == WIDTH and spec["backbone"] == "custom"
    model = DINOv3ViTModel.from_pretrained(own_weights).eval()
    for view in ("drone", "satellite"):
        group = root[f"features/folder/test/{view}"]
        ids = [str(i) for i in group["ids"][:]]
        for row in (0, len(ids) - 1):
            pixels = load_image(test_only / ids[row])
            for layer in (26, 28):
                desc, _ = reference_descriptor(model, pixels, layer, 4)
                assert group[f"layer_{layer}/desc"].shape[1] == WIDTH
                np.testing.assert_allclose(group[f"layer_{layer}/desc"][row], desc, atol=1e-4)


def test_named_backbone_is_an_explicit_check(tmp_path, own_weights, test_only):
    cfg = compose("extract", ["dataset=folder", f"data_root={test_only}", f"weights={own_weights}",
                              f"store={tmp_path / 's.zarr'}", "backbone=tiny"])
    with pytest.raises(ConfigError, match=f"hidden_size={WIDTH} but backbone 'tiny' expects 80"):
        extract.run(cfg)


def test_default_backbone_without_weights_is_the_random_tiny_model(tmp_path, test_only):
    """backbone=auto with no weights builds the seeded `tiny` model and records it as such, so
    stores written before `auto` existed keep their fingerprint."""
    common = ["dataset=folder", f"data_root={test_only}", "num_workers=0", "split=test"]
    auto = extract.run(compose("extract", [*common, f"store={tmp_path / 'a.zarr'}"]))
    named = extract.run(compose("extract", [*common, f"store={tmp_path / 'b.zarr'}", "backbone=tiny"]))
    assert auto["images_extracted"] == named["images_extracted"] == 17
    a, b = (zarr.open_group(str(tmp_path / n), mode="r")["features/folder"] for n in ("a.zarr", "b.zarr"))
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
    assert a.attrs["fingerprint"]["spec"]["backbone"] == "tiny"
    assert np.array_equal(a["test/drone/layer_28/desc"][:], b["test/drone/layer_28/desc"][:])


def test_folder_takes_the_splits_it_has(tmp_path):
    root = make_folder_dataset(tmp_path / "data")
    shutil.rmtree(root / "train")
    dcfg = compose("extract", ["dataset=folder"]).dataset
    listings = list_dataset(dcfg, root)
    assert {(v.split, v.view) for v in listings} == {("test", "drone"), ("test", "satellite")}
    assert all(i.startswith("test/") for v in listings for i in v.ids)
    with pytest.raises(DatasetLayoutError, match="missing folder .*train/drone"):
        list_dataset(dcfg, root, ["train", "test"])  # asked for by name: must exist


def _walk(group) -> list[str]:
    paths = []
    for name, sub in group.groups():
        paths += [sub.path, *_walk(sub)]
    paths += [a.path for _, a in group.arrays()]
    return paths


def test_scored_store_reads_with_plain_zarr_without_warnings(tmp_path):
    """heads/, indices/, scores/ (metrics.json, report.md, PNGs) never trip plain zarr."""
    from conftest import write_plain_store, write_train_split
    from pipelines import fit_heads, index, score
    store = write_train_split(write_plain_store(tmp_path / "s.zarr", dim=40))
    fit_heads.run(compose("fit-heads", [f"store={store}", "preset=paper", "agra.epochs=2",
                                        "isms.epochs=2", "agra.checkpoint_every=1"]))
    index.run(compose("index", [f"store={store}"]))
    score.run(compose("score", [f"store={store}", "index=hnsw"]))
    score.run(compose("score", [f"store={store}", "heads=none", "mode=S2D"]))
    files = {p.name for p in (store / "artefacts").rglob("*") if p.is_file()}
    assert {"metrics.json", "report.md", "heads.json", "index.faiss"} <= files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = _walk(zarr.open_group(str(store), mode="r"))
    assert "scores/mine-geoalign-hnsw/D2S/all/topk_ids" in found and "artefacts" in found


def test_legacy_artefact_folders_are_moved_on_first_use(tmp_path):
    from conftest import write_plain_store
    from geoalign_store import store as st
    store = write_plain_store(tmp_path / "old.zarr")
    (store / "heads/old").mkdir(parents=True)
    (store / "heads/old/heads.json").write_text("{}")
    folder = st.artefact_dir(store, "heads")
    assert (folder / "old/heads.json").read_text() == "{}" and not (store / "heads").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _walk(zarr.open_group(str(store), mode="r"))
