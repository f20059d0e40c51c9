"""`geoalign locate` and `Locator`: new drone images against a store's satellite gallery."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from conftest import extract_overrides
from geoalign_store.config import compose, to_plain
from geoalign_store.features import weights_source
from geoalign_store.retrieval import raw_embedding
from pipelines import extract, index, score
from pipelines.cli import app
from geoalign_store.retrieval import Locator


@pytest.fixture(scope="module")
def located_store(folder_dataset, tmp_path_factory):
    """The folder dataset's test split, with coordinates, extracted with weights=W (a copy of
    the tiny random model) so that the weights can be moved."""
    base = tmp_path_factory.mktemp("locate")
    data = base / "data"
    shutil.copytree(folder_dataset / "test", data / "test")
    rows = [f"{loc:04d},{46.5 + 0.001 * (loc % 100)},{7.0 + 0.002 * (loc % 100)}" for loc in range(100, 105)]
    (data / "locations.csv").write_text("location,lat,lon\n" + "\n".join(rows) + "\n")
    weights = base / "weights"
    shutil.copytree(weights_source(to_plain(compose("extract", ["backbone=tiny"]).backbone), None), weights)
    store = base / "s.zarr"
    extract.run(compose("extract", extract_overrides(store, data, f"weights={weights}")))
    return data, store, weights


def drone_images(data):
    return sorted((data / "test/drone").rglob("*.png"))


def test_stored_drone_images_encode_and_rank_as_score_does(located_store):
    data, store, _ = located_store
    loc = Locator(store, heads="none", k=5, batch_size=4)
    paths = drone_images(data)
    group = zarr.open_group(str(store), mode="r")["features/folder/test/drone"]
    ids = [str(i) for i in group["ids"][:]]
    rows = [ids.index(str(p.relative_to(data))) for p in paths]
    stored = raw_embedding({k: group[f"layer_{k}/desc"][:][rows] for k in (26, 28)}, "drone")
    np.testing.assert_allclose(loc.encode(paths), stored, atol=1e-5)
    score.run(compose("score", [f"store={store}", "heads=none", "topk=5", "pictures=0"]))
    scored = zarr.open_group(str(store), mode="r")["scores/folder-none/D2S/all"]
    want = {str(q): [str(t) for t in top] for q, top in zip(scored["query_ids"][:], scored["topk_ids"][:])}
    answers = loc.locate(paths)
    for path, answer in zip(paths, answers):
        assert [t["satellite_id"] for t in answer["top"]] == want[str(path.relative_to(data))]
        assert answer["truth"]["location"] == path.parent.name and "error_m" in answer["truth"]
        assert answer["position"] == {"lat": answer["top"][0]["lat"], "lon": answer["top"][0]["lon"]}
    # the store's index, when built for these embeddings, answers the same
    index.run(compose("index", [f"store={store}", "heads=none"]))
    with_index = Locator(store, heads="none", k=5)
    assert with_index.index is not None
    assert [a["top"] for a in with_index.locate(paths)] == [
        [{**t, "score": pytest.approx(t["score"], abs=1e-5)} for t in a["top"]] for a in answers]


def test_cli_prints_a_table_json_lines_and_writes_pictures(located_store, tmp_path):
    data, store, _ = located_store
    outside = tmp_path / "photo.png"
    Image.open(drone_images(data)[0]).rotate(90).save(outside)  # not in the store
    runner = CliRunner()
    result = runner.invoke(app, ["locate", str(outside), str(data / "test/drone/0101"), f"store={store}",
                                 "k=3", f"out={tmp_path / 'pics'}", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [a["image"] for a in lines] == [str(outside), *map(str, sorted((data / "test/drone/0101").glob("*.png")))]
    assert all(len(a["top"]) == 3 and "lat" in a["top"][0] for a in lines)
    assert "truth" not in lines[0] and lines[1]["truth"]["location"] == "0101"
    assert all(Image.open(a["picture"]).size[0] > 4 * 160 for a in lines)
    table = runner.invoke(app, ["locate", str(outside), f"store={store}", "pictures=false"])
    assert table.exit_code == 0 and "satellite id" in table.output and "position (top-1)" in table.output


def test_truth_found_by_path_relative_to_the_data_root(located_store, tmp_path):
    data, store, _ = located_store
    photo = drone_images(data)[0]
    (tmp_path / "link").symlink_to(data, target_is_directory=True)   # the dataset seen through a link
    shutil.copy(photo, tmp_path / "copy.png")                          # same pixels, not a stored image
    loc = Locator(store, heads="none", k=1)
    via_link, direct, copied = loc.locate([tmp_path / "link" / photo.relative_to(data), photo, tmp_path / "copy.png"])
    assert via_link["truth"] == direct["truth"] and direct["truth"]["location"] == photo.parent.name
    assert "lat" in direct["truth"] and "truth" not in copied


def run_locate(*args):
    result = CliRunner().invoke(app, ["locate", *map(str, args)])
    return result.exit_code, " ".join(result.output.split())


def test_refusals_are_clear_with_exit_code_2(located_store, folder_dataset, tmp_path):
    data, store, weights = located_store
    photo = drone_images(data)[0]
    moved = tmp_path / "moved-weights"
    shutil.move(weights, moved)
    try:
        code, out = run_locate(photo, f"store={store}")
    finally:
        shutil.move(moved, weights)
    assert code == 2 and f"are not at {weights} (moved or deleted?); pass weights=PATH" in out
    other = weights_source({**to_plain(compose("extract", ["backbone=tiny"]).backbone), "seed": 1}, None)
    code, out = run_locate(photo, f"store={store}", f"weights={other}")
    assert code == 2 and "are not the weights the store's features were extracted with" in out
    fake = tmp_path / "notes.png"
    fake.write_bytes(b"this is not a picture")
    code, out = run_locate(fake, f"store={store}")
    assert code == 2 and "notes.png is not an image" in out and "Traceback" not in out
    drones_only = tmp_path / "drones.zarr"
    extract.run(compose("extract", extract_overrides(drones_only, folder_dataset, "split=test",
                                                     "dataset.views=[drone]")))
    code, out = run_locate(photo, f"store={drones_only}")
    assert code == 2 and "has no satellite gallery" in out


def test_a_sharded_ivfpq_index_answers_as_the_exact_scan(located_store, tmp_path):
    """issue 23: Locator searches the store's sharded ivfpq index (memory-mapped), its top R
    re-ranked by the full embeddings: on a gallery smaller than R, the exact scan's answers."""
    data, store, weights = located_store
    copy = tmp_path / "s.zarr"
    shutil.copytree(store, copy, ignore=shutil.ignore_patterns("indices"))
    exact = Locator(copy, heads="none", k=3, weights=weights)
    assert exact.index is None
    index.run(compose("index", [f"store={copy}", "heads=none", "index=ivfpq", "shard_rows=2"]))
    sharded = Locator(copy, heads="none", k=3, weights=weights, rerank=100)
    assert sharded.index_name.endswith("-ivfpq") and type(sharded.index).__name__ == "ShardedIndex"
    paths = drone_images(data)
    assert [a["top"] for a in sharded.locate(paths)] == [
        [{**t, "score": pytest.approx(t["score"], abs=1e-5)} for t in a["top"]] for a in exact.locate(paths)]
