"""fit-heads / import-heads: determinism, resume after SIGKILL, labels ignored, refusals, the
label-free selection kept in heads.json and used by score."""

from __future__ import annotations

import re

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_plain_store, write_train_split
from geoalign_store.config import ConfigError, compose
from geoalign_store.method import AGRA, ISMS
from geoalign_store.store import StoreError
from pipelines import fit_heads, import_heads, score

FAST = ["agra.epochs=8", "agra.checkpoint_every=3", "isms.epochs=3", "isms.batch_size=32"]


def make_store(path: Path, group_ids=None) -> Path:
    write_plain_store(path, dim=40, n_loc=12, distractors=3)
    return write_train_split(path, group_ids=group_ids)


def fit(store: Path, *extra: str) -> dict:
    return fit_heads.run(compose("fit-heads", [f"store={store}", *FAST, *extra]))


def weights(store: Path, name: str = "geoalign") -> dict[str, torch.Tensor]:
    """Every tensor the heads folder holds (streams, centring means), by file and key."""
    folder = store / "artefacts" / "heads" / name
    return {f"{path.stem}:{k}": v for path in sorted(folder.glob("*.safetensors"))
            if path.stem != "checkpoint" for k, v in load_file(str(path)).items()}


def assert_same_weights(a: dict, b: dict) -> int:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    return len(a)


def test_fit_is_deterministic_and_scores_with_heads(tmp_path):
    one, two = make_store(tmp_path / "a.zarr"), make_store(tmp_path / "b.zarr")
    result = fit(one)
    assert result["trained"] and result["n_train"]["drone_groups"] == 24
    fit(two)
    assert assert_same_weights(weights(one), weights(two)) > 40      # agra + the chosen streams
    meta = [json.loads((s / "artefacts/heads/geoalign/heads.json").read_text()) for s in (one, two)]
    assert meta[0]["selection"] == meta[1]["selection"] and meta[0]["recipe"] == meta[1]["recipe"]
    again = fit(one)
    assert not again["trained"]  # up to date: nothing retrained
    scored = score.run(compose("score", [f"store={one}", "pictures=0"]))
    assert scored["heads"] == "geoalign" and scored["heads_recipe"] == meta[0]["selection"]["chosen"]
    log = (one / "artefacts/heads/geoalign/train_log.jsonl").read_text().splitlines()
    assert len(log) == 8 and not (one / "artefacts/heads/geoalign/checkpoint.safetensors").exists()


def test_paper_preset_trains_the_release_recipe_and_fuses_both_streams(tmp_path):
    one, two = make_store(tmp_path / "a.zarr"), make_store(tmp_path / "b.zarr")
    fit(one, "preset=paper")
    fit(two, "preset=paper")
    assert assert_same_weights(weights(one), weights(two)) > 40
    assert sorted(p.name for p in (one / "artefacts/heads/geoalign").glob("*.safetensors")) == [
        "agra.safetensors", "isms.safetensors"]
    fused = score.run(compose("score", [f"store={one}", "pictures=0"]))
    stream1 = score.run(compose("score", [f"store={one}", "pictures=0", "fusion=false"]))
    assert fused["fusion"] and fused["fusion_weight"] == 0.5 and not stream1["fusion"]
    assert fused["recall"] != stream1["recall"] or fused["ap"] != stream1["ap"]


def test_cross_view_labels_are_ignored(tmp_path):
    same = make_store(tmp_path / "same.zarr")
    other = make_store(tmp_path / "other.zarr", group_ids=100_000 + np.arange(24))  # order kept
    fit(same)
    fit(other)
    assert_same_weights(weights(same), weights(other))


def test_changed_request_refused_without_overwrite(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    fit(store)
    with pytest.raises(StoreError, match="overwrite=true"):
        fit(store, "agra.lr=1.0e-3")
    assert fit(store, "agra.lr=1.0e-3", "overwrite=true")["trained"]


def _fit_process(store: Path, args: list[str]) -> subprocess.Popen:
    # Every run in its own process with one thread: bitwise equality is only promised for
    # the same thread count (parallel float reductions change with the thread team).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "fit-heads", f"store={store}", *args],
                            cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)


def test_resume_after_sigkill_gives_identical_weights(tmp_path):
    killed, full = make_store(tmp_path / "killed.zarr"), make_store(tmp_path / "full.zarr")
    args = ["agra.epochs=400", "agra.checkpoint_every=20", "isms.epochs=3", "isms.batch_size=32"]
    proc = _fit_process(killed, args)
    checkpoint = killed / "artefacts/heads/geoalign/checkpoint.safetensors"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not checkpoint.exists():
        time.sleep(0.005)
    time.sleep(0.3)  # let it run past the checkpoint: the rerun must redo those epochs
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for store in (killed, full):
        run = _fit_process(store, args)
        err = run.communicate()[1].decode()
        assert run.returncode == 0, err
        assert ("resuming AGRA at epoch" in err) == (store == killed)
    assert assert_same_weights(weights(killed), weights(full)) > 40
    log = (killed / "artefacts/heads/geoalign/train_log.jsonl").read_text().splitlines()
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in log] == list(range(400))


def test_import_release_checkpoints(tmp_path):
    store = make_store(tmp_path / "imp.zarr")
    torch.manual_seed(3)
    agra, isms = AGRA(40), ISMS(80, 40)
    with torch.no_grad():
        agra.moe_layer.experts[0].proj.weight.normal_()  # non-identity drone branch
    agra.eval(), isms.eval()
    torch.save({"model": agra.state_dict()}, tmp_path / "300_param.t")
    torch.save(isms.state_dict(), tmp_path / "isms_model_26_28.pth")
    import_heads.run(compose("import-heads", [f"store={store}", f"agra={tmp_path / '300_param.t'}",
                                              f"isms={tmp_path / 'isms_model_26_28.pth'}"]))
    from geoalign_store.method import Heads, legacy_recipe
    embed = Heads.load(store / "artefacts/heads/paper", legacy_recipe([26, 28], False, 0.5))
    x26, x28 = np.random.default_rng(0).standard_normal((2, 5, 40)).astype(np.float32)
    x26 /= np.linalg.norm(x26, axis=1, keepdims=True)
    x28 /= np.linalg.norm(x28, axis=1, keepdims=True)
    got = embed({26: x26, 28: x28}, "drone")
    from geoalign_store.method import fuse
    with torch.no_grad():
        want = fuse(agra.embed(torch.from_numpy(x28), "drone"),
                    isms.embed(torch.from_numpy(np.concatenate([x26, x28], 1))))
    assert np.abs(got - want.numpy()).max() < 1e-6
    assert score.run(compose("score", [f"store={store}", "pictures=0", "heads=paper"]))["heads"] == "paper"


def test_import_never_replaces_other_heads_silently(tmp_path):
    store = make_store(tmp_path / "imp.zarr")
    fit(store, "name=paper")                           # trained heads (with centring means)
    torch.save(AGRA(40).state_dict(), tmp_path / "agra.t")
    args = ["import-heads", f"store={store}", f"agra={tmp_path / 'agra.t'}"]
    with pytest.raises(StoreError, match="overwrite=true"):
        import_heads.run(compose(*args[:1], args[1:]))
    assert (store / "artefacts/heads/paper/centering.safetensors").exists()   # nothing lost
    import_heads.run(compose(*args[:1], args[1:] + ["overwrite=true"]))
    assert sorted(p.name for p in (store / "artefacts/heads/paper").iterdir()) == ["agra.safetensors", "heads.json"]
    import_heads.run(compose(*args[:1], args[1:]))    # the same import again: no question


def test_import_refuses_bad_checkpoints(tmp_path):
    store = make_store(tmp_path / "bad.zarr")
    torch.save(AGRA(80).state_dict(), tmp_path / "wrong_dim.t")
    torch.save({"model": {"shared_enc.0.weight": torch.zeros(80, 40)}}, tmp_path / "missing.t")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickle.t")
    for name, message in (("wrong_dim.t", "C=80 descriptors, but the features have C=40"),
                          ("missing.t", "missing keys"), ("pickle.t", "pickles a Python object")):
        with pytest.raises(ConfigError, match=message):
            import_heads.run(compose("import-heads", [f"store={store}", f"agra={tmp_path / name}"]))


def test_centring_and_pca_init_options(tmp_path):
    """Improvement knobs (defaults = the paper): per-view train means are stored and removed at
    embedding time; `isms.init=pca` starts the encoder at the pooled rows' principal axes."""
    store = make_store(tmp_path / "c.zarr")
    fit(store, "preset=paper", "center=true", "isms.init=pca", "isms.latent_dim=8", "isms.epochs=0")
    means = load_file(str(store / "artefacts/heads/geoalign/centering.safetensors"))
    assert set(means) == {f"{v}.layer_{k}" for v in ("satellite", "drone") for k in (26, 28)}
    encoder = weights(store)["isms:encoder.weight"]
    assert encoder.shape == (8, 80)
    torch.testing.assert_close(encoder @ encoder.T, torch.eye(8), atol=1e-5, rtol=0)
    result = score.run(compose("score", [f"store={store}", "pictures=0"]))
    assert result["heads"] == "geoalign" and 0 <= result["recall"]["1"] <= 1


def test_flight_plan_pairs_satellites_with_their_flights():
    """agra.teacher=isms: averaging each flight beats single drones, the plan's columns follow
    the sorted group ids (the order of the per-epoch draws), and the ids' values do not matter."""
    from geoalign_store.method import draw_one_per_group, flight_plan, group_index
    rng = np.random.default_rng(0)
    sat = rng.standard_normal((30, 16))
    flight_of_sat = rng.permutation(30)                     # satellite i is seen by flight f(i)
    groups = np.repeat(500 + rng.permutation(30) * 7, 6)    # ids match nothing, rows unsorted
    sat_of_group = {g: i for i, g in zip(np.argsort(flight_of_sat), np.unique(groups))}
    truth = np.array([sat_of_group[g] for g in groups])
    drone = sat[truth] + 1.6 * rng.standard_normal((len(groups), 16))
    plan, sim = flight_plan(sat, drone, groups, epsilon=0.05, n_iter=50)
    assert plan.shape == sim.shape == (30, 30)
    np.testing.assert_allclose(plan.sum(0).numpy(), 1 / 30, rtol=1e-4)
    assert (plan.argmax(1).numpy() == flight_of_sat).all()
    single = np.mean(np.argmax(drone @ sat.T, axis=1) == truth)
    assert single < 0.9                                     # one drone alone is often wrong
    picked = draw_one_per_group(group_index(groups), torch.Generator().manual_seed(0)).numpy()
    assert (truth[picked] == np.argsort(flight_of_sat)).all()  # draw k belongs to column k
    relabelled = np.searchsorted(np.unique(groups), groups) * 3 + 10**6
    assert torch.equal(flight_plan(sat, drone, relabelled, 0.05, 50)[0], plan)


def test_flight_rows_spread_over_each_flight():
    from geoalign_store.method import flight_rows
    groups = np.array([7, 3, 7, 3, 7, 9, 7, 7, 3, 7, 7, 7])  # 3: 3 rows, 7: 8 rows, 9: 1 row
    rows = flight_rows(groups, per_flight=4)
    assert list(groups[rows]) == [3, 3, 3, 7, 7, 7, 7, 9]
    assert list(rows) == [1, 3, 8, 0, 4, 7, 10, 5]           # every other row of flight 7


def test_heads_json_keeps_the_selection_and_score_says_when_heads_are_centring(tmp_path, capsys):
    """Every candidate's criterion, the choice and centring's own estimate are kept; heads that
    are centring score exactly as centring with the train means, and score says so."""
    store = make_store(tmp_path / "w.zarr")
    fit(store, "select.margin_se=1000")                # no candidate can clear this margin
    meta = json.loads((store / "artefacts/heads/geoalign/heads.json").read_text())
    sel = meta["selection"]
    assert sel["chosen"] == "centre" and meta["recipe"]["streams"] == ["centre"]
    assert {"centre", "whiten(16)", "ridge(1)", "orth(2)", "agra"} <= set(sel["estimates"])
    assert sel["centring_estimate"] == sel["estimates"]["centre"] and sel["held_out_flights"] == 5
    capsys.readouterr()
    auto = score.run(compose("score", [f"store={store}", "pictures=0", "heads=auto"]))
    assert "centring only" in capsys.readouterr().err and auto["heads_recipe"] == "centre"
    from geoalign_store.method import l2n
    from geoalign_store.retrieval import retrieval_metrics
    from geoalign_store.store import open_store, read_layer, read_view
    means = load_file(str(store / "artefacts/heads/geoalign/centering.safetensors"))
    root, emb = open_store(str(store), mode="r"), {}
    for view in ("drone", "satellite"):
        parts = [l2n(l2n(read_layer(root, "mine", "test", view, k)) - means[f"{view}.layer_{k}"].numpy())
                 for k in (26, 28)]
        emb[view] = (l2n(np.concatenate(parts, 1)), read_view(root, "mine", "test", view)["labels"])
    want = retrieval_metrics(emb["drone"][0], emb["satellite"][0], emb["drone"][1], emb["satellite"][1])
    assert auto["recall"] == want["recall"] and abs(auto["ap"] - want["ap"]) < 1e-9
    with pytest.raises(ConfigError, match="fusion_weight takes .auto. or a number"):
        score.run(compose("score", [f"store={store}", "pictures=0", "fusion_weight=heavy"]))


@pytest.mark.parametrize("preset", ["improved", "paper"])
def test_device_cpu_gives_the_default_heads_bitwise(tmp_path, preset):
    """device=cpu runs the path the default always ran on a CPU: the very same weights."""
    one, two = make_store(tmp_path / "a.zarr"), make_store(tmp_path / "b.zarr")
    fit(one, f"preset={preset}")
    fit(two, f"preset={preset}", "device=cpu")
    assert assert_same_weights(weights(one), weights(two)) > 40


def test_bad_device_is_a_clear_error_before_anything_is_written(tmp_path):
    from typer.testing import CliRunner
    from pipelines.cli import app
    store = make_store(tmp_path / "s.zarr")
    result = CliRunner().invoke(app, ["fit-heads", f"store={store}", *FAST, "device=gpu"])
    assert result.exit_code == 2, result.output
    assert "device='gpu' is not one of auto, cpu, cuda, cuda:N" in result.output
    assert "Traceback" not in result.output and not (store / "heads").exists()


@pytest.mark.parametrize("key,earlier,other", [("null_adjust", "false", "true"), ("confirm_folds", "0", "4"),
                                               ("holdout_by", "flights", "regions"),
                                               ("held_pairing", "seen_first", "joint"),
                                               ("held_pairing", "seen_first", "seen_on_seen"),
                                               ("null_of", "all", "held"),
                                               ("second_opinion", "none", "joint_held"),
                                               ("ridge_folds", "1", "5"),
                                               ("best_of_maps", "false", "true"),
                                               ("held_per_flight", "0", "16"),
                                               ("other_map_ranks", "[]", "[4096]")])
def test_heads_fitted_before_a_select_key_existed_keep_their_fingerprint(monkeypatch, key, earlier, other):
    """A select key added later, at the value that reproduces earlier heads, stays out of the
    fingerprint (no spurious "configs changed"); at any other value it is part of the recipe."""
    from pipelines import fit_heads as stage
    monkeypatch.setattr(stage.st, "features_fingerprint", lambda root, dataset: "features")
    monkeypatch.setattr(stage.st, "content_digest", lambda root, dataset, split, layers: "content")
    spec = {v: stage.heads_spec(compose("fit-heads", [f"select.{key}={v}"]), None, "sim", [26, 28])
            for v in (earlier, other)}
    assert key not in spec[earlier]["select"] and str(spec[other]["select"][key]).lower() == other


def _spec(monkeypatch, overrides):
    from pipelines import fit_heads as stage
    monkeypatch.setattr(stage.st, "features_fingerprint", lambda root, dataset: "features")
    monkeypatch.setattr(stage.st, "content_digest", lambda root, dataset, split, layers: "content")
    return stage.heads_spec(compose("fit-heads", overrides), None, "sim", [26, 28])


@pytest.mark.parametrize("key", ["center=true", "isms.epochs=5", "isms.latent_dim=64", "agra.teacher=self"])
def test_keys_the_selection_never_reads_stay_out_of_its_fingerprint(monkeypatch, key):
    """preset=improved: centring is always a candidate, whitening is closed-form and AGRA is
    taught by flights, so these keys change nothing and must not force overwrite=true; under
    preset=paper they are the recipe."""
    from geoalign_store.config import fingerprint
    assert fingerprint(_spec(monkeypatch, [key])) == fingerprint(_spec(monkeypatch, []))
    paper, changed = ["preset=paper"], key.replace("teacher=self", "teacher=isms")   # paper's teacher is self
    assert fingerprint(_spec(monkeypatch, paper + [changed])) != fingerprint(_spec(monkeypatch, paper))
    assert fingerprint(_spec(monkeypatch, ["select.holdout=0.3"])) != fingerprint(_spec(monkeypatch, []))


def test_held_pairing_stays_out_of_the_fingerprint_where_only_flights_are_held_out(monkeypatch):
    """select.held_pairing decides how held-out locations' flights get their satellites; with
    holdout_by=flights every candidate is measured against the pairing space's claims instead."""
    from geoalign_store.config import fingerprint
    flights = ["select.holdout_by=flights"]
    assert fingerprint(_spec(monkeypatch, flights + ["select.held_pairing=joint"])) == \
        fingerprint(_spec(monkeypatch, flights + ["select.held_pairing=seen_first"]))
    assert fingerprint(_spec(monkeypatch, flights + ["select.second_opinion=joint_held"])) == \
        fingerprint(_spec(monkeypatch, flights))   # the second opinion pairs held-out locations too
    assert fingerprint(_spec(monkeypatch, ["select.held_pairing=joint"])) != \
        fingerprint(_spec(monkeypatch, ["select.held_pairing=seen_first"]))


def test_ridge_folds_stays_out_of_the_fingerprint_without_ridge_maps(monkeypatch):
    """select.ridge_folds chooses the ridge maps' shrinkage; with map_kinds=[orth] there is none."""
    from geoalign_store.config import fingerprint
    orth = ["select.map_kinds=[orth]"]
    assert fingerprint(_spec(monkeypatch, orth + ["select.ridge_folds=1"])) == \
        fingerprint(_spec(monkeypatch, orth + ["select.ridge_folds=5"]))
    assert fingerprint(_spec(monkeypatch, ["select.ridge_folds=1"])) != fingerprint(_spec(monkeypatch, []))


def test_best_of_maps_stays_out_of_the_fingerprint_without_a_bank_of_several_maps(monkeypatch):
    """select.best_of_maps adds the gate-free banks of K > 1 maps; with n_maps=[1] there is none."""
    from geoalign_store.config import fingerprint
    one = ["select.n_maps=[1]"]
    assert fingerprint(_spec(monkeypatch, one + ["select.best_of_maps=false"])) == \
        fingerprint(_spec(monkeypatch, one + ["select.best_of_maps=true"]))
    assert fingerprint(_spec(monkeypatch, ["select.best_of_maps=true"])) != fingerprint(_spec(monkeypatch, []))


def test_null_of_stays_out_of_the_fingerprint_where_there_is_no_null_or_no_held_out_satellite(monkeypatch):
    """select.null_of picks which satellites the null turns: with holdout_by=flights no satellite
    is held out, with null_adjust=false there is no null; then it changes nothing."""
    from geoalign_store.config import fingerprint
    for where in (["select.holdout_by=flights"], ["select.null_adjust=false"]):
        assert fingerprint(_spec(monkeypatch, where + ["select.null_of=held"])) == \
            fingerprint(_spec(monkeypatch, where + ["select.null_of=all"]))
    assert fingerprint(_spec(monkeypatch, ["select.null_of=held"])) != fingerprint(_spec(monkeypatch, []))


@pytest.mark.parametrize("override,named", [("select.map_kinds=[ridg]", "select.map_kinds: 'ridg'"),
                                            ("select.confirm_folds=-1", "confirm_folds >= 0"),
                                            ("select.fusion_weights=[1.5]", "select.fusion_weights"),
                                            ("select.holdout_by=locations", "select.holdout_by: 'locations'"),
                                            ("select.held_pairing=both", "select.held_pairing: 'both'"),
                                            ("select.null_of=seen", "select.null_of: 'seen'"),
                                            ("select.second_opinion=maybe", "select.second_opinion: 'maybe'"),
                                            ("select.ridge_folds=6", "select.ridge_folds: how many"),
                                            ("select.n_maps=[]", "select.n_maps"),
                                            ("select.best_of_maps=maybe", "select.best_of_maps takes true or false"),
                                            ("select.held_per_flight=1", "select.held_per_flight: images"),
                                            ("select.held_per_flight=-3", "select.held_per_flight: images"),
                                            ("select.other_map_ranks=[0]", "select.other_map_ranks: ranks"),
                                            ("select.other_map_ranks=[whole]", "select.other_map_ranks: ranks")])
def test_bad_select_values_stop_before_anything_is_read_or_written(tmp_path, override, named):
    """Refused at the start of the stage (the store is not even opened), naming the key."""
    from geoalign_store.config import ConfigError
    from pipelines import fit_heads as stage
    with pytest.raises(ConfigError, match=re.escape(named)):
        stage.run(compose("fit-heads", [f"store={tmp_path / 'absent.zarr'}", override]))
    assert not (tmp_path / "absent.zarr").exists()
