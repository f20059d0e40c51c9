"""Bad input gets a named error, proven by generated cases (issue 22): every file of a store that
went through every stage damaged in turn, random overrides, and the four cases found by reading.
Seeded and few here (benchmarks/badinput.py runs many more)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from conftest import extract_overrides, write_plain_store, write_train_split
from damage_cases import KINDS, build_scene, cli, run_case, snapshot
from geoalign_store.config import ConfigError, compose, valid_keys

CI = settings(max_examples=12, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    scene = build_scene(tmp_path_factory.mktemp("scene"))
    for _, args in scene.stages():  # a second pass: the baseline is what reruns leave
        cli(*args)
    return scene, snapshot(scene.store)


def test_every_damaged_file_is_named_or_repaired(scene, tmp_path):
    scene, baseline = scene
    files = sorted(baseline)
    seen = []

    @CI
    @given(hs.sampled_from(files), hs.sampled_from(KINDS), hs.integers(0, 2 ** 16))
    def case(relative, kind, seed):
        outcome = run_case(scene, baseline, tmp_path, relative, kind, seed)
        seen.append(outcome)
        assert not outcome.problems, outcome.problems
        assert not outcome.changed, f"intact files changed: {outcome.changed}"

    case()
    assert len(seen) >= 12


STAGES = ["extract", "fit-heads", "import-heads", "index", "score", "locate", "check", "simulate", "demo"]
GARBAGE = ["", "abc", "-1", "0", "1e400", "nan", ".inf", "[", "{a:", "!!python/object:os.system",
           "[1, [2]]", "{m:4}", "~", "true", "é☃\x00", "x" * 300, "99999999999999999999", "3.5",
           "[26, 'a']", "{}", "auto"]


def overrides_of(stage: str):
    keys = valid_keys(compose(stage, []))
    key = hs.sampled_from(keys + ["nope", "agra.nope", "index_params.m", "a.b.c"]) | hs.text(max_size=8)
    value = hs.sampled_from(GARBAGE) | hs.text(max_size=12) | hs.integers().map(str) | \
        hs.floats(allow_nan=True).map(str)
    return hs.lists(hs.tuples(key, value).map("=".join), min_size=1, max_size=4)


@pytest.mark.parametrize("stage", STAGES)
def test_random_overrides_compose_or_are_refused(stage):
    """Any key=value list: a typed config, or a ConfigError naming the key; nothing else."""
    @settings(max_examples=60, derandomize=True, deadline=None, database=None)
    @given(overrides_of(stage))
    def case(overrides):
        try:
            compose(stage, overrides)
        except ConfigError as e:
            assert str(e)

    case()


def test_random_overrides_through_the_cli_exit_0_or_2_and_refusals_write_nothing(scene):
    scene, _ = scene
    before = snapshot(scene.store)

    @settings(max_examples=10, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(hs.sampled_from(["score", "index", "check"]), overrides_of("score"))
    def case(stage, overrides):
        code, out = cli(stage, f"store={scene.store}", *overrides)
        assert "Traceback" not in out and "unexpected error" not in out, out
        assert code in ((0, 1, 2) if stage == "check" else (0, 2)), out
        if code == 2 and "not valid" in out or "unknown config key" in out:
            assert snapshot(scene.store) == before, "a refused override wrote to the store"

    case()


# ----- the four cases of the "Why"

def test_a_library_value_error_is_a_named_refusal_not_a_traceback(tmp_path):
    """Was: `geoalign index index=ivfpq` on a 35-satellite store ended in FAISS's ValueError."""
    store = write_plain_store(tmp_path / "s.zarr")
    code, out = cli("index", f"store={store}", "index=ivfpq")
    assert code == 2 and "Traceback" not in out
    assert "m must divide 32: index_params.m=32" in " ".join(out.split())
    code, out = cli("index", f"store={store}", "index=ivfpq", "index_params.m=4")
    text = " ".join(out.split())
    assert code == 2 and "35 embeddings cannot train nlist=1024" in text and "index_params.nlist=32" in text
    code, out = cli("index", f"store={store}", "index=ivfpq", "index_params.m=4",
                    "index_params.nlist=4", "index_params.nbits=5")
    assert code == 0, out


def test_damaged_json_artefacts_are_named_and_check_lists_them(scene, tmp_path):
    """Was: a truncated heads.json or metrics.json was json.loads' traceback, in check too."""
    scene, _ = scene
    store = tmp_path / "s.zarr"
    shutil.copytree(scene.store, store)
    heads = store / "artefacts/heads/geoalign/heads.json"
    heads.write_text(heads.read_text()[:50])
    metrics = next((store / "artefacts/scores").rglob("metrics.json"))
    metrics.write_text("{")
    code, out = cli("score", f"store={store}", "pictures=0")
    text = " ".join(out.split())
    assert code == 2 and "heads.json is not valid JSON" in text and "geoalign fit-heads" in text
    code, out = cli("check", f"store={store}", "--json")
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and set(report["artefacts_damaged"]) == {
        "heads/geoalign/heads.json", str(metrics.relative_to(store / "artefacts"))}


def test_fit_heads_on_a_train_only_store(tmp_path):
    """Was: KeyError, since the layers were checked against test/drone."""
    store = write_train_split(tmp_path / "train-only.zarr")
    code, out = cli("fit-heads", f"store={store}", "preset=paper", "agra.epochs=1", "isms.epochs=1")
    assert code == 0, out
    code, out = cli("fit-heads", f"store={store}", "name=other", "layers=[26, 27]")
    assert code == 2 and "layers [27] are not in the store's mine train features" in " ".join(out.split())


def test_fit_heads_resume_drops_a_half_written_log_line(tmp_path):
    """Was: json.loads of the torn last line of train_log.jsonl failed the resume (the log was
    flushed only at checkpoints, so a kill tore it mid-line)."""
    from pipelines.fit_heads import _truncate_log
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"epoch": e, "total": 0.5}) + "\n" for e in range(3))
                   + '{"epoch": 3, "tot')
    _truncate_log(log, 2)  # resuming from the checkpoint of epoch 2
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [0, 1]
    log.write_text('{"epoch": 0}\n{"epo\n{"epoch": 2}\n')  # damage before the last line is named
    from geoalign_store.store import DamagedArtefact
    with pytest.raises(DamagedArtefact, match="train_log.jsonl line 2 is not a JSON record"):
        _truncate_log(log, 2)


def test_an_unexpected_error_exits_1_with_a_log_not_a_traceback(tmp_path, monkeypatch):
    import pipelines.check as stage
    monkeypatch.setenv("GEOALIGN_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(stage, "run", lambda cfg: {}["a bug"])
    code, out = cli("check", f"store={tmp_path}")
    logs = list((tmp_path / "logs").glob("geoalign-check-*.log"))
    assert code == 1 and "Traceback" not in out and "unexpected error (KeyError" in out
    assert len(logs) == 1 and str(logs[0]) in "".join(out.split()) and "Traceback" in logs[0].read_text()
