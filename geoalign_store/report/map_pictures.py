"""A map answer's picture: the photo beside the map around the answer, the top tiles outlined
(rank 1 thickest), the refined position with its uncertainty circle, and the truth when known."""

from __future__ import annotations

from pathlib import Path

from .pictures import save_answer_sheet

TILE_COLOURS = ("#ffd400", "#ff8c00", "#ff4fa0", "#b84dff", "#4d7dff")


def draw_map_answer(answer: dict, view: dict, folder: Path, size: int = 512) -> Path:
    """PNG of a map answer; `view`: Locator.map_view (pixels, and the points on them)."""
    from PIL import Image, ImageDraw, ImageOps
    area = Image.fromarray(view["pixels"])
    scale = size / max(area.size)
    area = area.resize((max(1, round(area.width * scale)), max(1, round(area.height * scale))), Image.BILINEAR)
    photo = ImageOps.fit(Image.open(answer["image"]).convert("RGB"), (size // 2, size // 2))
    sheet = Image.new("RGB", (size // 2 + area.width + 24, max(area.height, size // 2) + 60), "white")
    sheet.paste(photo, (8, 8))
    x0 = size // 2 + 16
    sheet.paste(area, (x0, 8))
    draw = ImageDraw.Draw(sheet)
    at = lambda xy: (x0 + xy[0] * scale, 8 + xy[1] * scale)  # noqa: E731
    for rank, corners in reversed(list(enumerate(view["tiles_xy"]))):
        points = [at(c) for c in corners]
        draw.polygon(points, outline=TILE_COLOURS[rank % len(TILE_COLOURS)], width=4 if rank == 0 else 2)
    pos = answer["position"]
    ax, ay = at(view["answer_xy"])
    r = pos["uncertainty_m"] / view["m_per_px"] * scale
    draw.ellipse([ax - r, ay - r, ax + r, ay + r], outline="cyan", width=2)
    draw.ellipse([ax - 6, ay - 6, ax + 6, ay + 6], fill="cyan", outline="black")
    lines = [f"answer {pos['lat']:.6f}, {pos['lon']:.6f} +- {pos['uncertainty_m']:.0f} m "
             f"({pos['n_tiles']} tiles agree)"]
    truth = answer.get("truth") or {}
    if view.get("truth_xy") is not None:
        tx, ty = at(view["truth_xy"])
        draw.line([tx - 8, ty - 8, tx + 8, ty + 8], fill="red", width=4)
        draw.line([tx - 8, ty + 8, tx + 8, ty - 8], fill="red", width=4)
        lines.append(f"truth (red x): error {truth['error_m']:.0f} m refined, "
                     f"{truth.get('tile_error_m', float('nan')):.0f} m top-1 tile centre")
    for i, line in enumerate([Path(answer["image"]).name] + lines):
        draw.text((8, sheet.height - 52 + 14 * i), line, fill="black")
    return save_answer_sheet(sheet, folder, answer["image"])
