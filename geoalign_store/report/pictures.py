"""Pictures for people: a score's retrieval grid and a located photo's answer sheet (PNG)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


LEGEND = "blue: query   green: a correct match (same location)   red: a wrong one   (#rank, location, cosine score)"
# what opening an image file that is not a (whole) image raises: a grey cell is drawn instead
PICTURE_FAILURES = (OSError, ValueError, SyntaxError, EOFError)


def draw_retrievals(cfg, root, dataset, ds, top_i, folder: Path, k: int = 5, size: int = 96, top_s=None):
    """PNG grid: a seeded sample of queries, each with its top-k (green = correct, red = wrong),
    a caption under each cell (query id; rank, location, score) and a legend on top. None when
    the images cannot be found (a store written without them)."""
    from PIL import Image, ImageDraw, ImageOps
    from ..store import view_path
    data_root = cfg.data_root or root[view_path(dataset, "test", ds.query.view)].attrs.get("data_root")
    if not data_root or not Path(data_root).is_dir():
        return None
    rng = np.random.default_rng(int(cfg.seed))
    picks = np.sort(rng.choice(len(ds.query.rows), min(int(cfg.pictures), len(ds.query.rows)), replace=False))
    k = min(k, top_i.shape[1])
    row_h, top = size + 34, 24
    sheet = Image.new("RGB", (max((k + 1) * (size + 8) + 8, 6 * len(LEGEND) + 16), top + len(picks) * row_h + 8), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 6), f"{dataset} {ds.mode} {ds.subset}: " + LEGEND, fill="black")
    shown = np.maximum(top_i[picks, :k], 0)   # the names and labels of the rows drawn, no others
    names = ds.gallery.ids_at(shown.ravel()).reshape(shown.shape)
    labels = ds.gallery.labels_at(shown.ravel()).reshape(shown.shape)
    for r, q in enumerate(picks):
        cells = [(ds.query.ids[q], None, [str(ds.query.ids[q]).split("/")[-2:][0][:15], "query"])] + [
            (names[r, rank], labels[r, rank] == ds.query.labels[q],
             [f"#{rank + 1} {str(names[r, rank]).split('/')[-2:][0][:12]}",
              f"{float(top_s[q, rank]):.3f}" if top_s is not None else ""])
            for rank, g in enumerate(top_i[q, :k]) if g >= 0]
        for c, (image_id, correct, caption) in enumerate(cells):
            try:
                thumb = ImageOps.fit(Image.open(Path(data_root) / str(image_id)).convert("RGB"), (size, size))
            except PICTURE_FAILURES:
                thumb = Image.new("RGB", (size, size), "grey")
            x, y = 8 + c * (size + 8), top + 8 + r * row_h
            sheet.paste(thumb, (x, y))
            colour = "blue" if correct is None else ("green" if correct else "red")
            draw.rectangle([x - 3, y - 3, x + size + 2, y + size + 2], outline=colour, width=3)
            for line, text in enumerate(caption):
                draw.text((x, y + size + 4 + 12 * line), text, fill="black")
    path = folder / f"retrievals-{ds.subset.replace('=', '')}.png"
    sheet.save(path)
    return path


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
    return save_answer_sheet(sheet, folder, answer["image"])


def save_answer_sheet(sheet, folder: Path, image) -> Path:
    """An answer's picture, named after its photo (stem and a digest of its full path, so two
    photos of one name never share a file), written to a temp file then replaced."""
    digest = hashlib.sha256(str(Path(image).resolve()).encode()).hexdigest()[:8]
    path = folder / f"{Path(image).stem}-{digest}.png"
    tmp = path.with_name(path.name + ".tmp.png")
    sheet.save(tmp)
    tmp.replace(path)
    return path
