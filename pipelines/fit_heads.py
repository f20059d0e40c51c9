"""Stage `fit-heads`: fit heads on the store's train descriptors, without cross-view labels.

`preset=improved` (default, `select.enabled`): the candidates of geoalign_store.method.candidates are
fitted and one is chosen label-free on held-out drone flights (geoalign_store.method.selection); every
candidate's criterion, the choice and the estimate for centring alone are printed and kept in
heads.json. `preset=paper`: the release's AGRA + ISMS recipe, trained as it is.

Everything lands in `heads/<name>/`: the streams' safetensors (agra, isms, maps), centering
means, heads.json (resolved config, fingerprint of the features read, recipe, selection,
completion), train_log.jsonl and, while AGRA trains, checkpoint.safetensors. A killed run resumes
from its last checkpoint and ends with the weights an uninterrupted run would have; a finished
one is not retrained unless the request changed (then `overwrite=true` is needed).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from geoalign_store import store as st
from geoalign_store.config import ConfigError, fingerprint, to_plain
from geoalign_store.features import resolve_device
from geoalign_store.method import (AgraRecipe, IsmsRecipe, SelectionConfig, TrainViews,
                                   agra_candidate, agra_dim_error, claim_heads_folder, fit_agra,
                                   fit_isms, forked_rng, l2n, legacy_recipe, load_training_state,
                                   new_agra_state, save_module, save_training_state, select)
from geoalign_store.report import console, progress_bar
from geoalign_store.store import load_tensors, save_tensors

STAGE_VERSION = 3  # 3: train content digest in the spec


def read_train(root, dataset: str, layers: list[int], center: bool = False) -> dict:
    """Train descriptors of both views (failed images left out) and the drone group ids. With
    `center`, each view's mean descriptor is removed (label-free domain centring: the view of
    an image is known) and kept in out["means"] to apply the same shift at embedding time."""
    out: dict = {"means": {}}
    for view in ("satellite", "drone"):
        meta = st.read_view(root, dataset, "train", view)
        rows = np.flatnonzero(meta["errors"] == "")
        out[view] = {k: l2n(st.read_layer(root, dataset, "train", view, k)[rows]) for k in layers}
        if center:
            for k, x in out[view].items():
                out["means"][f"{view}.layer_{k}"] = x.mean(0)
                out[view][k] = l2n(x - x.mean(0))
        if view == "drone":
            out["drone_groups"] = meta["labels"][rows]  # grouping only: never compared to satellites
    return out


# select keys added after heads were first saved, with the value that reproduces those heads
SELECT_KEYS_ADDED = SelectionConfig.KEYS_ADDED


def heads_spec(cfg, root, dataset: str, layers: list[int]) -> dict:
    """What decides the heads (`full_heads_spec`), without the keys the recipe never reads."""
    return unread_keys_removed(full_heads_spec(cfg, root, dataset, layers), cfg)


def full_heads_spec(cfg, root, dataset: str, layers: list[int]) -> dict:
    """What decides the heads: the features' fingerprint (how they were made, when the store
    says), the digest of the train content read (any rewrite, reordering or regrouping shows),
    the recipe and the seed."""
    features = st.features_fingerprint(root, dataset)
    select = to_plain(cfg.select)
    for key, earlier in SELECT_KEYS_ADDED.items():  # at these values, heads fitted before the key existed still match
        if select.get(key) == earlier:
            select.pop(key)
    spec = {"features": features, "train_content": st.content_digest(root, dataset, "train", layers),
            "dataset": dataset, "layers": layers, "center": bool(cfg.center), "agra": to_plain(cfg.agra),
            "isms": to_plain(cfg.isms), "select": select, "seed": int(cfg.seed),
            "stage_version": STAGE_VERSION}
    return spec


def unread_keys_removed(spec: dict, cfg) -> dict:
    """What the selection never reads leaves its fingerprint: its candidates always centre,
    whiten in closed form (no ISMS training) and teach AGRA with the flight teacher. (Heads
    fitted when those keys were part of it still match: `run` accepts both fingerprints.)"""
    spec = copy.deepcopy(spec)
    if cfg.select.enabled:
        del spec["center"], spec["isms"], spec["agra"]["teacher"]
        if cfg.select.holdout_by == "flights":   # held-out flights are measured against the pairing space's claims
            spec["select"].pop("held_pairing", None)
            spec["select"].pop("second_opinion", None)
        if cfg.select.holdout_by == "flights" or not cfg.select.null_adjust:   # no held-out satellites / no null
            spec["select"].pop("null_of", None)
        if "ridge" not in cfg.select.map_kinds:   # no ridge map to shrink
            spec["select"].pop("ridge_folds", None)
        if not cfg.select.map_kinds or max(cfg.select.n_maps) < 2:   # no bank of several maps
            spec["select"].pop("best_of_maps", None)
        if not cfg.select.agra:
            del spec["agra"]
    return spec


def run(cfg) -> dict:
    device = resolve_device(cfg.device)  # a bad name stops here, before anything is written
    if cfg.select.enabled:
        SelectionConfig.from_config(to_plain(cfg.select))   # so does a bad select value
    root = st.open_store(cfg.store, mode="r+")
    dataset = st.resolve_dataset(root, cfg.dataset)
    layers = st.stored_layers(root, dataset, list(cfg.layers), split="train")
    if len(layers) != 2:
        raise st.StoreError(f"fit-heads needs layers=[a, b] (ISMS reads a and b, AGRA b), got {layers}")
    folder = st.artefact_dir(cfg.store, "heads", str(cfg.name))
    full = full_heads_spec(cfg, root, dataset, layers)
    spec = unread_keys_removed(full, cfg)
    try:
        meta = claim_heads_folder(folder, (fingerprint(spec), fingerprint(full)), bool(cfg.overwrite),
                                  "heads trained for another request (features, layers, recipe or seed changed)") or {
            "fingerprint": fingerprint(spec), "spec": spec, "config": to_plain(cfg), "complete": False}
    except st.StoreError as refused:  # a damaged train split also changes the fingerprint: say so
        raise st.split_damage(root, dataset, "train") or refused from None
    st.write_json(folder / "heads.json", meta)
    if meta["complete"]:
        console.print(f"heads {cfg.name}: up to date ({folder})")
        return _summary(cfg, dataset, folder, meta, trained=False)
    if cfg.select.enabled:
        meta.update(_fit_selected(cfg, folder, root, dataset, layers, device))
    else:
        meta.update(_fit_paper(cfg, folder, root, dataset, layers, device))
    meta["complete"] = True
    st.write_json(folder / "heads.json", meta)
    (folder / "checkpoint.safetensors").unlink(missing_ok=True)
    return _summary(cfg, dataset, folder, meta, trained=True)


def _counts(data: dict, layers) -> dict:
    return {"satellite": len(data["satellite"][layers[1]]), "drone": len(data["drone"][layers[1]]),
            "drone_groups": int(len(np.unique(data["drone_groups"])))}


def _fit_selected(cfg, folder: Path, root, dataset: str, layers: list[int], device) -> dict:
    """preset=improved: fit the candidates, choose label-free, save the chosen heads."""
    data = read_train(root, dataset, layers)
    views = TrainViews(data["satellite"], data["drone"], data["drone_groups"], tuple(layers))
    select_cfg = SelectionConfig.from_config(to_plain(cfg.select))
    dim = int(data["satellite"][layers[1]].shape[1])
    if select_cfg.agra and agra_dim_error(dim):
        console.print(f"AGRA candidate skipped: {agra_dim_error(dim)}")
        select_cfg.agra = False
    selection = select(views, select_cfg, int(cfg.seed), _agra_trainer(cfg, folder, device),
                       log=lambda msg: console.print(msg, highlight=False))
    _print_selection(selection)
    selection.heads.save(folder)
    return {"dim": dim, "n_train": {**_counts(data, layers), "held_out_groups": selection.held_out_flights},
            "recipe": selection.heads.recipe(), "selection": selection.summary()}


def _agra_trainer(cfg, folder: Path, device):
    """AGRA as a selection candidate, checkpointed and resumable like preset=paper's."""
    recipe = AgraRecipe(**to_plain(cfg.agra))
    ckpt, log_path = folder / "checkpoint.safetensors", folder / "train_log.jsonl"

    def train(centre, teacher, views):
        _truncate_log(log_path, int(load_tensors(ckpt)[1]["epoch"]) if ckpt.exists() else 0)
        with progress_bar() as progress, open(log_path, "a") as log:
            task = progress.add_task("AGRA", total=recipe.epochs)
            def resume(state):  # noqa: E306
                if ckpt.exists():
                    load_training_state(ckpt, state)
                    console.print(f"resuming AGRA at epoch {state.epoch} from {ckpt}")
                progress.update(task, completed=state.epoch)
            heads, state = agra_candidate(centre, teacher, views, recipe, int(cfg.seed), resume,
                                          _epoch_logger(log, progress, task, ckpt, recipe), device)
        # the costly candidate is kept whether chosen or not (heads.json's recipe says which is used)
        save_module(folder / "agra.safetensors", state.model, {"dim": int(views.sat[views.layers[1]].shape[1])})
        return heads
    return train


def _epoch_logger(log, progress, task, ckpt: Path, recipe: AgraRecipe):
    def on_epoch(state, record):
        log.write(json.dumps(record) + "\n")
        log.flush()  # whole lines reach the file as they are made (a kill tears at most the last)
        progress.update(task, advance=1, description=_describe(record))
        if state.epoch % recipe.checkpoint_every == 0 or state.epoch == recipe.epochs:
            save_training_state(ckpt, state)
    return on_epoch


def _print_selection(selection) -> None:
    from rich.table import Table
    table = Table(title="label-free selection (criterion: held-out single drones that pick their "
                        "flight's one-to-one satellite)")
    table.add_column("candidate")
    table.add_column("criterion", justify="right")
    for name, value in sorted(selection.estimates.items(), key=lambda kv: -kv[1]):
        mark = " <- chosen" if name == selection.chosen else (" (centring)" if name == "centre" else "")
        table.add_row(name + mark, f"{value:.3f}")
    console.print(table)
    console.print(f"heads: {selection.heads.describe()} ({selection.reason}); centring alone "
                  f"is estimated at {selection.estimates['centre']:.3f}", highlight=False)
    if selection.chosen == "centre":
        console.print("no candidate is estimated better than centring: the fitted heads are centring")


def _fit_paper(cfg, folder: Path, root, dataset: str, layers: list[int], device) -> dict:
    """preset=paper: the release's AGRA (self-taught) + ISMS, fused at 0.5."""
    data = read_train(root, dataset, layers, bool(cfg.center))
    if data["means"]:
        save_tensors(folder / "centering.safetensors",
                     {k: torch.from_numpy(v) for k, v in data["means"].items()})
    problem = agra_dim_error(int(data["satellite"][layers[1]].shape[1]))
    if problem:
        raise ConfigError(problem)
    _train_isms(cfg, folder, data, layers, device)
    state = _train_agra(cfg, folder, data, layers, device)
    return {"dim": int(data["satellite"][layers[1]].shape[1]), "n_train": _counts(data, layers),
            "recipe": legacy_recipe(layers, bool(data["means"]), 0.5),
            "final": state.history[-1] if state.history else None}


def _train_isms(cfg, folder: Path, data: dict, layers: list[int], device) -> None:
    if (folder / "isms.safetensors").exists():
        return
    a, b = layers
    x = np.concatenate([np.concatenate([data[v][a], data[v][b]], axis=1) for v in ("satellite", "drone")])
    recipe = IsmsRecipe(**to_plain(cfg.isms))
    channels = data["satellite"][b].shape[1]
    latent = recipe.latent_dim or channels
    with progress_bar() as progress:
        task = progress.add_task("ISMS", total=recipe.epochs)
        def on_epoch(epoch, losses):  # noqa: E306
            progress.update(task, advance=1, description=f"ISMS loss {losses['total']:.4f}")
        model = fit_isms(torch.from_numpy(x), int(latent), recipe, int(cfg.seed), on_epoch, device)
    save_module(folder / "isms.safetensors", model, {"in_dim": x.shape[1], "latent_dim": model.latent_dim})


def _train_agra(cfg, folder: Path, data: dict, layers: list[int], device):
    """The release's self-taught AGRA on every satellite and drone (layer b)."""
    b = layers[1]
    sat, drone = torch.from_numpy(data["satellite"][b]), torch.from_numpy(data["drone"][b])
    recipe = AgraRecipe(**to_plain(cfg.agra))
    if recipe.teacher != "self":
        raise ConfigError(f"preset=paper trains AGRA with agra.teacher=self, got {recipe.teacher!r} "
                          "(the flight teacher is a candidate of preset=improved)")
    ckpt, log_path = folder / "checkpoint.safetensors", folder / "train_log.jsonl"
    with forked_rng(device):
        state = new_agra_state(sat.shape[1], recipe, int(cfg.seed), device)
        if ckpt.exists():
            load_training_state(ckpt, state)
            console.print(f"resuming AGRA at epoch {state.epoch} from {ckpt}")
        _truncate_log(log_path, state.epoch)
        with progress_bar() as progress, open(log_path, "a") as log:
            task = progress.add_task("AGRA", total=recipe.epochs, completed=state.epoch)
            fit_agra(state, sat, drone, data["drone_groups"], recipe,
                     _epoch_logger(log, progress, task, ckpt, recipe))
    save_module(folder / "agra.safetensors", state.model,
                {"dim": sat.shape[1], "config": state.model.config, "logit_scale": float(state.log_scale.detach().exp())})
    return state


def _describe(record: dict) -> str:
    keys = ("total", "distill", "match", "recon")
    return "AGRA " + " ".join(f"{k} {record[k]:.3f}" for k in keys if k in record)


def _truncate_log(path: Path, epoch: int) -> None:
    """Keep the log lines of the epochs a resumed run does not redo."""
    if not path.exists():
        return
    records = st.read_json_lines(path, "delete it (it is a log: training resumes without it)")
    kept = [r for r in records if isinstance(r.get("epoch"), int) and r["epoch"] < epoch]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)


def _summary(cfg, dataset, folder, meta, trained) -> dict:
    return {"stage": "fit-heads", "store": str(cfg.store), "dataset": dataset, "name": str(cfg.name),
            "folder": str(folder), "trained": trained, "layers": meta["spec"]["layers"],
            "n_train": meta.get("n_train"), "final": meta.get("final"),
            "recipe": meta.get("recipe"), "selection": meta.get("selection")}
