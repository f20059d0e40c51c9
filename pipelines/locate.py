"""Stage `locate`: drone photos -> ranked satellite tiles of a store, with coordinates, and a
PNG per photo (the photo, its top-k tiles, the coordinates under each). See `Locator`."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from geoalign_store import store as st
from geoalign_store.datasets import IMAGE_EXTENSIONS

from .locator import LocateError, Locator


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
            answer["picture"] = str(draw_answer(answer, locator.data_root(), out))
    return {"stage": "locate", "store": str(cfg.store), "dataset": locator.dataset,
            "heads": locator.embedder.name, "search": "index " + locator.index_name if locator.index is not None
            else "exact scan", "answers": answers,
            "timing_s": {"load": round(t1 - t0, 3), "locate": round(t2 - t1, 3),
                         "total": round(time.perf_counter() - t0, 3)}}


def _caption(item: dict) -> list[str]:
    lines = [f"#{item['rank']} {item['location']}  {item['score']:.3f}"]
    if "lat" in item:
        lines.append(f"{item['lat']:.5f}, {item['lon']:.5f}")
    return lines


def draw_answer(answer: dict, data_root: Path | None, folder: Path, size: int = 160) -> Path:
    """PNG: the photo, then its top-k tiles, each with rank, location, score and coordinates;
    when the true location is known its tiles are framed green and the others red (all grey
    when it is not)."""
    from PIL import Image, ImageDraw, ImageOps
    truth = (answer.get("truth") or {}).get("location")
    query = [Path(answer["image"]).name[:24], "query" + (f", truly {truth}" if truth else "")]
    cells = [(Path(answer["image"]), query, "blue")]
    for item in answer["top"]:
        colour = "grey" if truth is None else ("green" if item["location"] == truth else "red")
        cells.append(((data_root / item["satellite_id"]) if data_root else None, _caption(item), colour))
    pad, text_h = 8, 30
    sheet = Image.new("RGB", (len(cells) * (size + pad) + pad, size + 2 * pad + text_h), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (path, lines, colour) in enumerate(cells):
        try:
            thumb = ImageOps.fit(Image.open(path).convert("RGB"), (size, size))
        except (OSError, TypeError, AttributeError):
            thumb = Image.new("RGB", (size, size), "lightgrey")  # tile images moved since extract
        x = pad + c * (size + pad)
        sheet.paste(thumb, (x, pad))
        draw.rectangle([x - 3, pad - 3, x + size + 2, pad + size + 2], outline=colour, width=3)
        for i, line in enumerate(lines):
            draw.text((x, pad + size + 4 + 12 * i), line, fill="black")
    digest = hashlib.sha256(str(Path(answer["image"]).resolve()).encode()).hexdigest()[:8]
    path = folder / f"{Path(answer['image']).stem}-{digest}.png"
    tmp = path.with_name(path.name + ".tmp.png")
    sheet.save(tmp)
    tmp.replace(path)
    return path
