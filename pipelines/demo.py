"""`geoalign demo`: extract -> fit-heads -> score (D2S and S2D, raw and heads) on the demo data."""

from __future__ import annotations

import time

from geoalign_store.config import compose

from . import extract, fit_heads, score


def run(cfg) -> dict:
    t0 = time.perf_counter()
    common = [f"store={cfg.store}", f"overwrite={str(bool(cfg.overwrite)).lower()}"]
    extracted = extract.run(compose("extract", [*common, "dataset=demo", f"num_workers={cfg.num_workers}"]))
    epochs = [] if cfg.agra_epochs is None else [f"agra.epochs={cfg.agra_epochs}"]
    heads = fit_heads.run(compose("fit-heads", [*common, "dataset=demo", *epochs,
                                                f"isms.epochs={cfg.isms_epochs}"]))
    results: dict = {}
    for label, heads_name in (("raw", "none"), ("heads", heads["name"])):
        for mode in ("D2S", "S2D"):
            metrics = score.run(compose("score", [f"store={cfg.store}", "dataset=demo", f"mode={mode}",
                                                  f"heads={heads_name}"]))
            metrics.pop("_outputs", None)
            results.setdefault(label, {})[mode] = metrics
    return {"stage": "demo", "store": str(cfg.store), "images": sum(v["n"] for v in extracted["views"].values()),
            "heads": heads["name"], "results": results, "wall_s": round(time.perf_counter() - t0, 1)}
