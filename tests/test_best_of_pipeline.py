"""Heads with the best-of-maps rule through every stage after fit-heads (issue 24): saved, scored
exactly and through an index, located, each answer the max-over-maps score's. The choice is
bypassed (the selection is replaced by one returning such heads): what is tested is what a user
gets once they are chosen."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from conftest import extract_overrides
from geoalign_store import method
from geoalign_store.config import compose
from geoalign_store.retrieval import Locator
from pipelines import extract, fit_heads, score
from pipelines.cli import app

LAYERS = (26, 28)
NAME = "orth(3, best of maps)"


def best_of_selection(views, cfg, seed, train_agra=None, log=print):
    centre = method.centring(views)
    basis = method.principal_basis(centre, views)
    pairs = method.map_pairs(centre, basis, views, centre, seed, "orth", 512)
    heads = method.maps(centre, views, pairs, 3, seed)["best"]
    heads.name = NAME
    return method.Selection(heads, NAME, {"centre": 0.1, NAME: 0.9}, {}, "centre", 1, "forced by the test", 4)


@pytest.fixture(scope="module")
def best_of_store(folder_dataset, tmp_path_factory):
    store = tmp_path_factory.mktemp("best_of") / "s.zarr"
    extract.run(compose("extract", extract_overrides(store, folder_dataset)))
    patch = pytest.MonkeyPatch()
    patch.setattr(fit_heads, "select", best_of_selection)
    try:
        fit_heads.run(compose("fit-heads", [f"store={store}", "select.agra=false"]))
    finally:
        patch.undo()
    return store


def stored(store, view):
    group = zarr.open_group(str(store), mode="r")[f"features/folder/test/{view}"]
    keep = group["in_gallery"][:] if view == "satellite" else np.ones(group["labels"].shape[0], bool)
    return {k: group[f"layer_{k}/desc"][:][keep] for k in LAYERS}, group["labels"][:][keep], group["ids"][:][keep]


def max_over_maps(store):
    """The slow reference: the saved heads loaded, every map's cosine, the best per pair."""
    folder = store.parent / "s.zarr" / "artefacts" / "heads" / "geoalign"
    meta = json.loads((folder / "heads.json").read_text())
    heads = method.Heads.load(folder, meta["recipe"])
    drone, d_labels, d_ids = stored(store, "drone")
    sat, s_labels, s_ids = stored(store, "satellite")
    q, g = heads.embed(drone, "drone"), heads.embed(sat, "satellite")
    assert q.shape[1] == 3
    return np.einsum("nkd,md->nkm", q, g).max(1), d_labels, s_labels, d_ids, s_ids


def test_exact_and_indexed_scores_rank_by_the_best_map(best_of_store):
    scores, d_labels, s_labels, d_ids, s_ids = max_over_maps(best_of_store)
    r1 = float(np.mean(s_labels[scores.argmax(1)] == d_labels))
    exact = score.run(compose("score", [f"store={best_of_store}", "pictures=2", "topk=3"]))
    assert exact["heads_recipe"] == NAME and exact["recall"]["1"] == pytest.approx(r1)
    top = zarr.open_group(str(best_of_store), mode="r")["scores/folder-geoalign/D2S/all"]
    want = {str(i): [str(s_ids[j]) for j in np.argsort(-row)[:3]] for i, row in zip(d_ids, scores)}
    assert {str(q): [str(t) for t in row] for q, row in zip(top["query_ids"][:], top["topk_ids"][:])} == want
    hnsw = score.run(compose("score", [f"store={best_of_store}", "pictures=0", "index=hnsw"]))
    assert hnsw["recall"] == exact["recall"] and hnsw["exact"]["recall"] == exact["recall"]
    s2d = score.run(compose("score", [f"store={best_of_store}", "pictures=0", "mode=S2D"]))
    queried = np.isin(s_labels, d_labels)      # S2D's queries: the satellites with drone images
    hits = d_labels[scores.T[queried].argmax(1)] == s_labels[queried]
    assert s2d["recall"]["1"] == pytest.approx(float(np.mean(hits)))


def test_an_index_of_drones_under_best_of_heads_is_refused_by_name(best_of_store):
    result = CliRunner().invoke(app, ["index", f"store={best_of_store}", "mode=S2D"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "3 vectors an image" in text and "index=flat" in text
    assert CliRunner().invoke(app, ["index", f"store={best_of_store}", "mode=D2S"]).exit_code == 0


def test_locate_answers_with_the_best_map(best_of_store, folder_dataset):
    scores, _, _, d_ids, s_ids = max_over_maps(best_of_store)
    loc = Locator(best_of_store, k=3, batch_size=4)
    paths = [folder_dataset / str(i) for i in d_ids]
    for answer, row in zip(loc.locate(paths), scores):
        assert [t["satellite_id"] for t in answer["top"]] == [str(s_ids[j]) for j in np.argsort(-row)[:3]]
        assert answer["top"][0]["score"] == pytest.approx(float(row.max()), abs=1e-4)
