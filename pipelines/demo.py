"""`geoalign demo`: extract -> fit-heads -> score (D2S and S2D, raw and heads) on the demo data,
then `locate` of a freshly generated drone photo of a test location that the store does not hold."""

from __future__ import annotations

import time
from pathlib import Path

from geoalign_store import store as st
import numpy as np

from geoalign_store.config import compose
from geoalign_store.datasets import generate_demo_map, read_locations_csv, render_drone_view, resolve_data_root
from geoalign_store.report import draw_answer
from geoalign_store.retrieval import add_truth

from . import extract, fit_heads, locate, score  # the demo runs the stages (as the CLI does)

NEW_PHOTO_STREAM = 1000  # RNG streams 1..drone_views are the dataset's views; this one is new


def run(cfg) -> dict:
    if cfg.map:
        return run_map(cfg)
    t0 = time.perf_counter()
    common = [f"store={cfg.store}", f"overwrite={str(bool(cfg.overwrite)).lower()}"]
    extracted = extract.run(compose("extract", [*common, "dataset=demo", f"num_workers={cfg.num_workers}"]))
    epochs = [] if cfg.agra_epochs is None else [f"agra.epochs={cfg.agra_epochs}"]
    heads = fit_heads.run(compose("fit-heads", [*common, "dataset=demo", *epochs,
                                                f"isms.epochs={cfg.isms_epochs}"]))
    results: dict = {}
    written: list[str] = []  # reports and retrieval grids, for the terminal
    for label, heads_name in (("raw", "none"), ("heads", heads["name"])):
        for mode in ("D2S", "S2D"):
            metrics = score.run(compose("score", [f"store={cfg.store}", "dataset=demo", f"mode={mode}",
                                                  f"heads={heads_name}"]))
            outputs = metrics.pop("_outputs", {})
            written += [outputs.get("report"), *outputs.get("pictures", [])]
            results.setdefault(label, {})[mode] = metrics
    return {"stage": "demo", "store": str(cfg.store), "images": sum(v["n"] for v in extracted["views"].values()),
            "heads": heads["name"], "results": results, "locate": locate_new_photo(cfg, heads["name"]),
            "wall_s": round(time.perf_counter() - t0, 1), "_written": [w for w in written if w]}


def locate_new_photo(cfg, heads_name: str) -> dict:
    """A new drone photo of the first test location (not in the store) through `locate`."""
    params = dict(compose("extract", ["dataset=demo"]).dataset.generate)
    loc = params["n_train"]  # the first test location
    photo = st.artefact_dir(cfg.store, "demo") / f"new-drone-{loc:04d}.png"
    render_drone_view(loc, NEW_PHOTO_STREAM, seed=params["seed"], image_size=params["image_size"]).save(photo)
    answer = locate.run(compose("locate", [f"store={cfg.store}", "dataset=demo", f"heads={heads_name}"]),
                        images=[photo])["answers"][0]
    data_root = Path(st.open_store(cfg.store, mode="r")[st.view_path("demo", "test", "satellite")].attrs["data_root"])
    lat, lon = read_locations_csv(data_root / "locations.csv")[f"{loc:04d}"]  # as the store has them
    add_truth(answer, {"location": f"{loc:04d}", "lat": lat, "lon": lon})
    if answer.get("picture"):  # again, now that the true location can be marked
        draw_answer(answer, data_root, Path(answer["picture"]).parent)
    return answer


MAP_SCALES = "[150,250]"   # metres: two ground scales, both in one gallery
MAP_PX = 128               # tiles and photos as the backbone sees them (the demo's image size)


def run_map(cfg) -> dict:
    """`demo map=true`: the demo's scenes on a UTM GeoTIFF, cut at two scales; every photo
    located against it (raw, then with heads fitted on the demo's train split), in metres."""
    t0 = time.perf_counter()
    world = generate_demo_map()
    train_root = resolve_data_root(compose("extract", ["dataset=demo"]).dataset, None)
    common = [f"store={cfg.store}", "dataset=map", f"overwrite={str(bool(cfg.overwrite)).lower()}"]
    extracted = extract.run(compose("extract", [*common, f"map={world / 'map.tif'}", f"photos={world / 'photos'}",
                                                f"train_root={train_root}", f"tile_m={MAP_SCALES}",
                                                f"image_size={MAP_PX}", f"num_workers={cfg.num_workers}"]))
    epochs = [] if cfg.agra_epochs is None else [f"agra.epochs={cfg.agra_epochs}"]
    heads = fit_heads.run(compose("fit-heads", [*common, *epochs, f"isms.epochs={cfg.isms_epochs}"]))
    results = {}
    for label, name in (("raw", "none"), ("heads", heads["name"])):
        scored = score.run(compose("score", [f"store={cfg.store}", "dataset=map", f"heads={name}", "pictures=0"]))
        scored.pop("_outputs", None)
        located = locate.run(compose("locate", [f"store={cfg.store}", "dataset=map", f"heads={name}",
                                                f"out={st.artefact_dir(cfg.store, 'locate') / label}"]),
                             images=[world / "photos"])
        results[label] = {"score": scored, "refined": refined_figures(located["answers"]),
                          "picture": located["answers"][0].get("picture")}
    return {"stage": "demo", "map": str(world / "map.tif"), "store": str(cfg.store),
            "tiles": tile_counts(cfg.store), "n_photos": extracted["views"]["test/drone"]["n"],
            "heads": heads["name"], "results": results, "wall_s": round(time.perf_counter() - t0, 1)}


def tile_counts(store) -> dict[str, int]:
    tiles = st.read_tile_table(st.open_store(str(store), mode="r"), "map")
    scales, counts = np.unique(tiles["scale_m"], return_counts=True)
    return {f"{s:g} m": int(c) for s, c in zip(scales, counts)}


def refined_figures(answers: list[dict]) -> dict:
    """Dis@1 and within 25/50/100 m of the refined position and of the top-1 tile centre."""
    out = {}
    for key, name in (("error_m", "refined"), ("tile_error_m", "top1_tile")):
        d = np.array([a["truth"][key] for a in answers if key in (a.get("truth") or {})])
        out[name] = {"dis@1_m": float(d.mean()), "n": int(len(d)),
                     "within_m": {str(t): float((d <= t).mean()) for t in (25, 50, 100)}}
    out["mean_uncertainty_m"] = float(np.mean([a["position"]["uncertainty_m"] for a in answers]))
    return out
