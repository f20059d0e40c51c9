"""Stage `locate`: drone photos -> ranked satellite tiles of a store, with coordinates, and a
PNG per photo (the photo, its top-k tiles, the coordinates under each). See `Locator`."""

from __future__ import annotations

import time
from pathlib import Path

from geoalign_store import store as st
from geoalign_store.datasets import IMAGE_EXTENSIONS
from geoalign_store.report import draw_answer, draw_map_answer
from geoalign_store.retrieval import LocateError, Locator


def image_paths(items) -> list[Path]:
    """Images named, and the images under folders named (sorted, recursively)."""
    paths = []
    for item in items or ():
        path = Path(str(item)).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise LocateError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {path}")
            paths += found
        else:
            paths.append(path)
    if not paths:
        raise LocateError("name at least one drone image or folder: geoalign locate PHOTO.jpg store=...")
    return paths


def locator_from(cfg) -> Locator:
    return Locator(cfg.store, dataset=cfg.dataset, heads=cfg.heads, weights=cfg.weights,
                   device=cfg.device, k=int(cfg.k), fusion=bool(cfg.fusion),
                   fusion_weight=cfg.fusion_weight, layers=cfg.layers, precision=cfg.precision,
                   batch_size=int(cfg.batch_size))


def run(cfg, images=None, locator: Locator | None = None) -> dict:
    t0 = time.perf_counter()
    paths = image_paths(images or cfg.images)
    locator = locator or locator_from(cfg)
    t1 = time.perf_counter()
    answers = locator.locate(paths)
    t2 = time.perf_counter()
    if cfg.pictures:
        out = Path(cfg.out).expanduser() if cfg.out else st.artefact_dir(cfg.store, "locate")
        out.mkdir(parents=True, exist_ok=True)
        for answer in answers:
            view = locator.map_view(answer)  # a map gallery: the map around the answer
            answer["picture"] = str(draw_map_answer(answer, view, out) if view else
                                    draw_answer(answer, locator.data_root(), out))
    return {"stage": "locate", "store": str(cfg.store), "dataset": locator.dataset,
            "heads": locator.embedder.name, "search": "index " + locator.index_name if locator.index is not None
            else "exact scan", "answers": answers,
            "timing_s": {"load": round(t1 - t0, 3), "locate": round(t2 - t1, 3),
                         "total": round(time.perf_counter() - t0, 3)}}
