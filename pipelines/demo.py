"""`geoalign demo`: extract -> fit-heads -> score (D2S and S2D, raw and heads) on the demo data,
then `locate` of a freshly generated drone photo of a test location that the store does not hold."""

from __future__ import annotations

import time
from pathlib import Path

from geoalign_store import store as st
from geoalign_store.config import compose
from geoalign_store.datasets import read_locations_csv, render_drone_view
from geoalign_store.report import draw_answer
from geoalign_store.retrieval import add_truth

from . import extract, fit_heads, locate, score  # the demo runs the stages (as the CLI does)

NEW_PHOTO_STREAM = 1000  # RNG streams 1..drone_views are the dataset's views; this one is new


def run(cfg) -> dict:
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
