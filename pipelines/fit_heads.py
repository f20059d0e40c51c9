"""Stage `fit-heads`: train AGRA + ISMS on the store's train descriptors, without labels.

Everything lands in `heads/<name>/`: agra.safetensors, isms.safetensors, heads.json (resolved
config, fingerprint of the features read, completion), train_log.jsonl and, while training,
checkpoint.safetensors. A killed run resumes from its last checkpoint and ends with the weights
an uninterrupted run would have; a finished one is not retrained unless the request changed
(then `overwrite=true` is needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from geoalign_store import store as st
from geoalign_store.checkpoints import (load_tensors, load_training_state, save_module,
                                        save_tensors, save_training_state)
from geoalign_store.config import ConfigError, fingerprint, to_plain
from geoalign_store.heads import agra_dim_error, load_release_isms
from geoalign_store.embeddings import l2n
from geoalign_store.teacher import (FlightTeacher, holdout_flights, mutual_pairs,
                                    select_fusion_weight)
from geoalign_store.training import (AgraRecipe, IsmsRecipe, fit_agra, fit_isms, new_agra_state,
                                     select_latent_dim)

from .progress import console, progress_bar
from .retrieval import claim_heads_folder, resolve_layers

STAGE_VERSION = 1


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


def heads_spec(cfg, root, dataset: str, layers: list[int]) -> dict:
    features = root[f"{st.FEATURES}/{dataset}"].attrs.get("fingerprint", {}).get("hash")
    return {"features": features or _content_hash(root, dataset, layers), "dataset": dataset,
            "layers": layers, "center": bool(cfg.center), "agra": to_plain(cfg.agra), "isms": to_plain(cfg.isms),
            "seed": int(cfg.seed), "stage_version": STAGE_VERSION}


def _content_hash(root, dataset, layers) -> str:
    """Stores written with plain zarr carry no fingerprint: hash what training reads."""
    data = read_train(root, dataset, layers)
    return fingerprint([float(np.float64(v[k]).sum()) for v in (data["satellite"], data["drone"])
                        for k in layers] + [int(data["drone_groups"].sum())])


def run(cfg) -> dict:
    root = st.open_store(cfg.store, mode="r+")
    dataset = st.resolve_dataset(root, cfg.dataset)
    layers = resolve_layers(root, dataset, list(cfg.layers))
    if len(layers) != 2:
        raise st.StoreError(f"fit-heads needs layers=[a, b] (ISMS reads a and b, AGRA b), got {layers}")
    folder = st.artefact_dir(cfg.store, "heads", str(cfg.name))
    spec = heads_spec(cfg, root, dataset, layers)
    meta = claim_heads_folder(folder, fingerprint(spec), bool(cfg.overwrite),
                              "heads trained for another request (features, layers, recipe or seed changed)") or {
        "fingerprint": fingerprint(spec), "spec": spec, "config": to_plain(cfg), "complete": False}
    st.write_json(folder / "heads.json", meta)
    if meta["complete"]:
        console.print(f"heads {cfg.name}: up to date ({folder})")
        return _summary(cfg, dataset, folder, meta, trained=False)
    data = read_train(root, dataset, layers, bool(cfg.center))
    if data["means"]:
        save_tensors(folder / "centering.safetensors",
                     {k: torch.from_numpy(v) for k, v in data["means"].items()})
    problem = agra_dim_error(int(data["satellite"][layers[1]].shape[1]))
    if problem:
        raise ConfigError(problem)
    _train_isms(cfg, folder, data, layers)
    held = holdout_flights(data["drone_groups"], float(cfg.agra.holdout_flights), int(cfg.seed))
    needs_isms = cfg.agra.teacher != "self" or held.any()   # the paper's recipe does not
    isms_emb = _isms_embeddings(folder, data, layers) if needs_isms else None
    state = _train_agra(cfg, folder, data, layers, isms_emb, ~held)
    meta.update({"complete": True, "dim": int(data["satellite"][layers[1]].shape[1]),
                 "n_train": {"satellite": len(data["satellite"][layers[1]]),
                             "drone": len(data["drone"][layers[1]]),
                             "drone_groups": int(len(np.unique(data["drone_groups"]))),
                             "held_out_groups": int(len(np.unique(data["drone_groups"][held])))},
                 "final": state.history[-1] if state.history else None})
    if held.any():
        meta["fusion_weight"], meta["fusion_selection"] = _choose_fusion(state.model, data, layers, isms_emb, held)
    st.write_json(folder / "heads.json", meta)
    (folder / "checkpoint.safetensors").unlink(missing_ok=True)
    return _summary(cfg, dataset, folder, meta, trained=True)


def _train_isms(cfg, folder: Path, data: dict, layers: list[int]) -> None:
    if (folder / "isms.safetensors").exists():
        return
    a, b = layers
    x = np.concatenate([np.concatenate([data[v][a], data[v][b]], axis=1) for v in ("satellite", "drone")])
    recipe = IsmsRecipe(**to_plain(cfg.isms))
    channels = data["satellite"][b].shape[1]
    latent, scores = recipe.latent_dim or channels, None
    if latent == "auto":
        sat, drone = (np.concatenate([data[v][a], data[v][b]], axis=1) for v in ("satellite", "drone"))
        candidates = list(range(8, min(2 * channels, 256) + 1, 8))
        latent, scores = select_latent_dim(sat, drone, data["drone_groups"], candidates)
        console.print(f"ISMS latent size {latent} (label-free selection over {candidates[0]}..{candidates[-1]})")
    with progress_bar() as progress:
        task = progress.add_task("ISMS", total=recipe.epochs)
        def on_epoch(epoch, losses):  # noqa: E306
            progress.update(task, advance=1, description=f"ISMS loss {losses['total']:.4f}")
        model = fit_isms(torch.from_numpy(x), int(latent), recipe, int(cfg.seed), on_epoch)
    save_module(folder / "isms.safetensors", model, {"in_dim": x.shape[1], "latent_dim": model.latent_dim,
                                                     "latent_selection": scores})


def _isms_embeddings(folder: Path, data: dict, layers: list[int]) -> dict[str, torch.Tensor]:
    """Train rows in the ISMS space (read back from isms.safetensors: a resumed run sees the
    very same numbers)."""
    isms = load_release_isms(load_tensors(folder / "isms.safetensors")[0])
    with torch.inference_mode():
        return {v: isms.embed(torch.from_numpy(np.concatenate([data[v][k] for k in layers], axis=1)))
                for v in ("satellite", "drone")}


def _train_agra(cfg, folder: Path, data: dict, layers: list[int], isms_emb: dict, rows: np.ndarray):
    """AGRA on every satellite and the drone `rows` (flights not held out)."""
    b = layers[1]
    sat, drone = torch.from_numpy(data["satellite"][b]), torch.from_numpy(data["drone"][b][rows])
    groups = data["drone_groups"][rows]
    recipe = AgraRecipe(**to_plain(cfg.agra))
    teacher = _teacher(sat, drone, isms_emb, rows, groups, recipe)
    state = new_agra_state(sat.shape[1], recipe, int(cfg.seed))
    ckpt, log_path = folder / "checkpoint.safetensors", folder / "train_log.jsonl"
    if ckpt.exists():
        load_training_state(ckpt, state)
        console.print(f"resuming AGRA at epoch {state.epoch} from {ckpt}")
    _truncate_log(log_path, state.epoch)
    with progress_bar() as progress, open(log_path, "a") as log:
        task = progress.add_task("AGRA", total=recipe.epochs, completed=state.epoch)
        def on_epoch(st_, record):  # noqa: E306
            log.write(json.dumps(record) + "\n")
            progress.update(task, advance=1, description=_describe(record))
            if st_.epoch % recipe.checkpoint_every == 0 or st_.epoch == recipe.epochs:
                log.flush()
                save_training_state(ckpt, st_)
        fit_agra(state, sat, drone, groups, recipe, on_epoch, teacher)
    save_module(folder / "agra.safetensors", state.model,
                {"dim": sat.shape[1], "config": state.model.config, "logit_scale": float(state.log_scale.detach().exp())})
    return state


def _choose_fusion(model, data: dict, layers: list[int], isms_emb: dict, held: np.ndarray):
    b = layers[1]
    with torch.inference_mode():
        sat = model.embed(torch.from_numpy(data["satellite"][b]), "satellite")
        drone = model.embed(torch.from_numpy(data["drone"][b][held]), "drone")
    weight, scores = select_fusion_weight(sat, isms_emb["satellite"], drone,
                                          isms_emb["drone"][torch.from_numpy(held)], data["drone_groups"][held])
    console.print(f"fusion weight {weight} (label-free, on {len(np.unique(data['drone_groups'][held]))} "
                  f"held-out flights; consistency by weight: {scores})")
    return weight, scores


def _teacher(sat, drone, isms_emb, rows, groups, recipe: AgraRecipe) -> FlightTeacher | None:
    """agra.teacher=isms: satellites vs drone flights (the drone `rows`), first in the ISMS space."""
    if recipe.teacher == "self":
        return None
    if recipe.teacher != "isms":
        raise ConfigError(f"agra.teacher must be self or isms, got {recipe.teacher!r}")
    teacher = FlightTeacher(sat, drone, isms_emb["satellite"], isms_emb["drone"][torch.from_numpy(rows)],
                            groups, recipe.teacher_epsilon,
                            recipe.teacher_iters, recipe.teacher_per_flight)
    plan = teacher.initial()[0]
    console.print(f"AGRA teacher: OT plan of {plan.shape[0]} satellites x {plan.shape[1]} drone flights "
                  f"in the ISMS space, {mutual_pairs(plan)} mutual pairs"
                  + (f"; rebuilt every {recipe.teacher_refresh} epochs in the fused space" if recipe.teacher_refresh else ""))
    return teacher


def _describe(record: dict) -> str:
    keys = ("total", "distill", "match", "recon")
    return "AGRA " + " ".join(f"{k} {record[k]:.3f}" for k in keys if k in record)


def _truncate_log(path: Path, epoch: int) -> None:
    """Keep the log lines of the epochs a resumed run does not redo."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if json.loads(line)["epoch"] < epoch]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)


def _summary(cfg, dataset, folder, meta, trained) -> dict:
    return {"stage": "fit-heads", "store": str(cfg.store), "dataset": dataset, "name": str(cfg.name),
            "folder": str(folder), "trained": trained, "layers": meta["spec"]["layers"],
            "n_train": meta.get("n_train"), "final": meta.get("final")}
