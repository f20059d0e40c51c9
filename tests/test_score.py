"""Index and score stages on stores written by extract and by plain zarr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from conftest import extract_overrides, write_plain_store
from geoalign_store.config import ConfigError, compose
from geoalign_store.method import l2n
from geoalign_store.retrieval import retrieval_metrics
from geoalign_store.store import StoreError
from pipelines import extract, index, score
from pipelines.cli import app


def score_cfg(store, *extra):
    return compose("score", [f"store={store}", "pictures=0", *extra])


def raw(group, rows=slice(None)):
    return l2n(np.concatenate([l2n(group[f"layer_{k}/desc"][:][rows]) for k in (26, 28)], axis=1))


def test_plain_zarr_store_scores_like_direct_metrics(tmp_path):
    store = write_plain_store(tmp_path / "plain.zarr")
    group = zarr.open_group(str(store), mode="r")["features/mine/test"]
    for mode, (q, g) in {"D2S": ("drone", "satellite"), "S2D": ("satellite", "drone")}.items():
        got = score.run(score_cfg(store, f"mode={mode}"))  # dataset= omitted: the only one
        want = retrieval_metrics(raw(group[q]), raw(group[g]), group[q]["labels"][:], group[g]["labels"][:])
        assert got["recall"] == pytest.approx(want["recall"], abs=1e-12)
        assert got["ap"] == pytest.approx(want["ap"], abs=1e-12)
        assert got["n_queries"] == want["n_queries"] and got["heads"] == "none"
    s2d = json.loads((store / "artefacts/scores/mine-none/S2D/metrics.json").read_text())
    assert s2d["n_queries_without_match"] == 5  # the distractor satellites (no drone images)
    top = zarr.open_group(str(store), mode="r")["scores/mine-none/D2S/all"]
    assert top["topk_ids"].shape == (120, 10) and str(top["topk_ids"][0, 0]).startswith("satellite/")


def test_score_json_matches_metrics_file_schema(tmp_path):
    store = write_plain_store(tmp_path / "plain.zarr")
    out = CliRunner().invoke(app, ["score", f"store={store}", "pictures=0", "--mode", "S2D", "--json"])
    assert out.exit_code == 0, out.output
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    assert printed == json.loads((store / "artefacts/scores/mine-none/S2D/metrics.json").read_text())
    assert {"schema_version", "dataset", "mode", "heads", "fusion", "layers", "n_queries",
            "n_gallery", "n_queries_without_match", "recall", "ap", "ap_noninterp"} <= printed.keys()
    assert set(printed["recall"]) == {"1", "5", "10", "1%"} and printed["schema_version"] == 1


def test_per_altitude_subsets(tmp_path):
    store = write_plain_store(tmp_path / "sues.zarr", altitudes=(150, 200))
    result = score.run(score_cfg(store, "mode=S2D"))
    assert set(result["subsets"]) == {"altitude=150", "altitude=200"}
    assert all(m["n_gallery"] == 30 * 4 for m in result["subsets"].values())
    report = (store / "artefacts/scores/mine-none/S2D/report.md").read_text()
    assert "altitude=150" in report and "Gallery protocol `official`" in report


def test_query_locations_protocol_makes_distractors_junk(tmp_path):
    store = write_plain_store(tmp_path / "p.zarr", noise=1.5)
    official = score.run(score_cfg(store))
    relaxed = score.run(score_cfg(store, "gallery_protocol=query_locations"))
    assert relaxed["n_gallery"] == official["n_gallery"] == 35
    assert relaxed["recall"]["1"] >= official["recall"]["1"]
    assert relaxed["ap"] > official["ap"]


def test_ann_index_reused_and_close_to_flat(tmp_path):
    store = write_plain_store(tmp_path / "ann.zarr", noise=0.3)
    first = index.run(compose("index", [f"store={store}", "index=hnsw"]))
    again = index.run(compose("index", [f"store={store}", "index=hnsw"]))
    assert first["indices"][0]["built"] and not again["indices"][0]["built"]
    flat = score.run(score_cfg(store))
    hnsw = score.run(score_cfg(store, "index=hnsw"))
    assert hnsw["approximate"] and not flat["approximate"]
    assert hnsw["recall"]["1"] == pytest.approx(flat["recall"]["1"], abs=0.02)


@pytest.mark.parametrize("override, message", [
    ("layers=[5]", "layers \\[5\\] are not in the store"),
    ("mode=X2Y", "mode='X2Y' is not valid: mode takes 'D2S' or 'S2D'"),     # refused when composed
    ("dataset=nope", "dataset=nope is not in the store"),
    ("gallery_protocol=loose", "gallery_protocol takes 'official' or 'query_locations'"),
])
def test_bad_requests_are_clear_errors(tmp_path, override, message):
    store = write_plain_store(tmp_path / "bad.zarr")
    with pytest.raises((StoreError, ConfigError), match=message):
        score.run(score_cfg(store, override))


def test_empty_gallery_and_mismatched_lengths(tmp_path):
    store = write_plain_store(tmp_path / "bad.zarr")
    group = zarr.open_group(str(store), mode="a")["features/mine/test/satellite"]
    group.create_array("in_gallery", shape=(35,), dtype=bool)[:] = False
    with pytest.raises(StoreError, match="0 gallery items"):
        score.run(score_cfg(store))
    group["in_gallery"][:] = True
    desc = group["layer_28/desc"][:]
    del group["layer_28/desc"]
    group.create_array("layer_28/desc", shape=(30, desc.shape[1]), dtype="float32")[:] = desc[:30]
    with pytest.raises(StoreError, match="one row per image"):
        score.run(score_cfg(store))


def test_score_on_extracted_store_writes_report_and_picture(tmp_path, folder_dataset):
    store = tmp_path / "x.zarr"
    extract.run(compose("extract", extract_overrides(store, folder_dataset, "split=test")))
    result = score.run(compose("score", [f"store={store}", "pictures=3"]))
    (picture,) = result["_outputs"]["pictures"]
    from PIL import Image
    assert Image.open(picture).size[1] > 3 * 96
    assert "retrievals-all.png" in (store / "artefacts/scores/folder-none/D2S/report.md").read_text()


def test_write_topk_names_gallery_rows_and_blanks_missing(tmp_path):
    from geoalign_store import store as st
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    positions = np.array([[2, 0, -1], [1, -1, -1]])  # -1: an approximate index found nothing
    st.write_topk(root, "scores/x", ["q0", "q1"], np.array(["g0", "g1", "gallery/long-name-2"]),
                  positions, np.zeros((2, 3), np.float32))
    got = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["scores/x"]
    assert [[str(v) for v in row] for row in got["topk_ids"][:]] == [["gallery/long-name-2", "g0", ""], ["g1", "", ""]]
    assert [str(v) for v in got["query_ids"][:]] == ["q0", "q1"]
