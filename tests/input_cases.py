"""Generated bad images for every dataset layout (issue 22): files that are empty, truncated, a
decompression bomb, not an image under an image extension, a folder named like an image; and
valid images of every Pillow mode a camera or a GIS export writes, EXIF-rotated too."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

from PIL import Image

from conftest import smooth_image

GOOD_MODES = {"1": "png", "L": "png", "P": "png", "RGBA": "png", "CMYK": "jpg", "I;16": "png", "LA": "png"}


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png() -> bytes:
    """A PNG whose header claims 40000 x 40000 pixels (1.6e9, past Pillow's limit of 2 x 89e6):
    a few bytes on disk; Pillow refuses it before decoding anything."""
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def write_bad_inputs(folder: Path, seed: int = 0) -> tuple[list[str], list[str]]:
    """Bad and good files in `folder` (a location folder of some layout): (bad names, good names)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = smooth_image(__import__("numpy").random.default_rng(seed), 48, 64)
    png = io.BytesIO()
    base.save(png, "PNG")
    whole = png.getvalue()
    bad = {"zz-empty.png": b"", "zz-truncated.png": whole[:rng.randrange(8, len(whole) // 2)],
           "zz-bomb.png": bomb_png(), "zz-text.jpg": b"hello, not a jpeg\n",
           "zz-garbage.webp": rng.randbytes(2048)}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    (folder / "zz-folder.png").mkdir()
    good = []
    for mode, ext in GOOD_MODES.items():
        name = f"mode-{mode.replace(';', '')}.{ext}"
        (base.convert("L").convert(mode) if mode == "I;16" else base.convert(mode)).save(folder / name)
        good.append(name)
    (folder / "exif-rotated.jpg").write_bytes(exif_rotated_jpeg(base))
    return [*bad, "zz-folder.png"], [*good, "exif-rotated.jpg"]


LAYOUTS = {  # layout -> (drone folder, satellite folder, other folders it requires, overrides)
    "folder": ("test/drone", "test/satellite", (), []),
    "university1652": ("test/query_drone", "test/gallery_satellite",
                       ("test/gallery_drone", "test/query_satellite"), []),
    "sues200": ("Testing/150/query_drone", "Testing/150/gallery_satellite",
                ("Testing/150/gallery_drone", "Testing/150/query_satellite"), ["dataset.altitudes=[150]"]),
}


def layouts(root: Path) -> dict[str, tuple[Path, list[str], Path]]:
    """layout -> (data root, its overrides, the drone location folder to spoil): a test split of
    3 locations, 2 drone views each."""
    import numpy as np
    rng = np.random.default_rng(1)
    made = {}
    for layout, (drone, satellite, others, extra) in LAYOUTS.items():
        data = root / layout
        for folder in others:
            (data / folder).mkdir(parents=True, exist_ok=True)
        for loc in ("0001", "0002", "0003"):
            for view, n in ((drone, 2), (satellite, 1)):
                (data / view / loc).mkdir(parents=True, exist_ok=True)
                for k in range(n):
                    smooth_image(rng, 48, 64).save(data / view / loc / f"v{k}.png")
        made[layout] = (data, extra, data / drone / "0001")
    return made
