"""What `geoalign check` and `geoalign index` say about a sharded index=ivfpq build (issue 23):
check reads each file of a build once, names a build record that holds no JSON object as
damaged (exit 1, as any damage), and an index already built is described as it stands."""
from __future__ import annotations

import json
from collections import Counter

import faiss
import pytest
from typer.testing import CliRunner

from conftest import write_plain_store
from geoalign_store.config import compose
from geoalign_store.retrieval import shard_integrity as integrity
from pipelines import check, index
from pipelines.cli import app
from test_sharded_index import FOLDER, _index_cfg

WHERE = FOLDER.removeprefix("artefacts/")


@pytest.fixture
def built(tmp_path):
    """A store and its sharded index of 4 shards (the rule's IVF, 1,200 gallery rows)."""
    store = write_plain_store(tmp_path / "s.zarr", n_loc=1000, drones=1, distractors=200, dim=16, noise=0.3)
    index.run(_index_cfg(store, "shard_rows=300"))
    return store


def _check(store):
    return check.run(compose("check", [f"store={store}"]))


def test_check_reads_each_file_of_a_build_once(built, monkeypatch):
    """Every file a build records a sha256 for is read whole once (its digest), none of them
    again as a FAISS index; a damaged shard is named as before."""
    digests, opened = Counter(), Counter()
    real_digest, real_read = integrity.file_sha256, faiss.read_index
    monkeypatch.setattr(integrity, "file_sha256", lambda p: digests.update([str(p)]) or real_digest(p))
    monkeypatch.setattr(faiss, "read_index", lambda p, *a: opened.update([str(p)]) or real_read(p, *a))
    assert _check(built)["ok"]
    folder = built / FOLDER
    files = [folder / "trained.faiss", folder / "index.faiss", folder / "index.ivfdata",
             *sorted((folder / "shards").glob("*.faiss"))]
    assert len(files) == 7 and {str(f): 1 for f in files} == dict(digests)
    assert not opened, opened
    shard = files[-1]
    shard.write_bytes(shard.read_bytes()[:-7])
    damaged = _check(built)["artefacts_damaged"]
    assert list(damaged) == [f"{WHERE}/shards/{shard.name}"]
    size = shard.stat().st_size
    assert damaged[f"{WHERE}/shards/{shard.name}"].startswith(f"{size} bytes, {size + 7} when written; repair it with: ")


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"build"', "null"])
def test_check_names_a_build_record_that_holds_no_object(built, text):
    """read_record takes such a build.json for absent (the build forgets what it was): check
    names it, with the same exit code as any damage (1), and what rebuilds it."""
    (built / FOLDER / "build.json").write_text(text)
    damaged = _check(built)["artefacts_damaged"]
    why = damaged[f"{WHERE}/build.json"]
    kind = type(json.loads(text)).__name__
    assert why.startswith(f"holds a JSON {kind}, not an object (a record); rebuild it: delete {WHERE} and run"), why
    result = CliRunner().invoke(app, ["check", f"store={built}"])
    assert result.exit_code == 1 and "build.json" in result.output, result.output


def test_check_names_a_mark_or_index_record_that_holds_no_object_and_verify_repairs_it(built):
    folder = built / FOLDER
    mark = sorted((folder / "shards").glob("*.json"))[1]
    mark.write_text("[]")
    (folder / "index.json").write_text('["index"]')
    damaged = _check(built)["artefacts_damaged"]
    assert set(damaged) == {f"{WHERE}/shards/{mark.name}", f"{WHERE}/index.json"}
    assert all("holds a JSON list, not an object" in why and why.endswith("verify=true") for why in damaged.values())
    repaired = index.run(_index_cfg(built, "shard_rows=300", "verify=true"))["indices"][0]
    assert repaired["built"] and repaired["shards"]["built"] == 1
    assert _check(built)["ok"]


def test_an_index_already_built_is_described_as_it_stands(built):
    """Reused as it is: nothing built, every shard reused, nothing timed, the nprobe it
    searches with now (a search parameter: a new value reuses the index)."""
    again = index.run(_index_cfg(built, "shard_rows=300", "index_params={nprobe: 3}"))["indices"][0]
    assert not again["built"] and again["params"]["nprobe"] == 3
    assert again["shards"] == {"n": 4, "built": 0, "reused": 4, "rows": 300}
    assert again["timings"] == {"train_s": 0.0, "add_s": 0.0, "merge_s": 0.0} and again["add_devices"] == {}
    assert again["last_build"]["shards"]["built"] == 4 and again["last_build"]["timings"]["add_s"] > 0
    assert "worker_rss_mb" not in again and again["last_build"]["driver_rss_mb"] > 0   # that build's process
    said = CliRunner().invoke(app, ["index", f"store={built}", "index=ivfpq", "shard_rows=300",
                                    "index_params={nprobe: 3}"]).output.replace("\n", " ")
    assert "(up to date)" in said and "nprobe=3: 4 shard(s) in the index" in said, said
    assert "built," not in said and "train " not in said, said
