"""Drone photos for a map: a folder of images and, for evaluation, their true positions in
`<folder>/photos.csv` (`image,lat,lon[,alt_m,heading_deg,pitch_deg]`, WGS84 degrees; `image`
relative to the folder), else the photo's own EXIF GPS (latitude, longitude, altitude). A photo
with neither has no known position (NaN): it can be located, not scored. A position outside
every map file is refused: it would be scored against nothing.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .layouts import IMAGE_EXTENSIONS, ViewListing
from .maps import MapError, MapFile, from_latlon

PHOTOS_CSV = "photos.csv"
OPTIONAL = ("alt_m", "heading_deg", "pitch_deg")


def read_photos_csv(path: Path) -> dict[str, dict[str, float]]:
    """image -> {lat, lon[, alt_m, heading_deg, pitch_deg]}."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise MapError(f"cannot read {path}: {e}") from None
    header = [h.strip() for h in (rows[0].keys() if rows else [])]
    if header[:3] != ["image", "lat", "lon"]:
        raise MapError(f"{path}: expected a header `image,lat,lon[,alt_m,heading_deg,pitch_deg]`, got "
                       f"{header[:3] or 'nothing'}")
    out = {}
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        try:
            values = {k: float(row[k]) for k in ("lat", "lon", *OPTIONAL) if row.get(k)}
        except ValueError:
            raise MapError(f"{path} line {line}: lat, lon (and alt_m, heading_deg, pitch_deg) must be numbers") from None
        if not (-90 <= values.get("lat", 99) <= 90 and -180 <= values.get("lon", 999) <= 180):
            raise MapError(f"{path} line {line}: lat/lon {row.get('lat')!r}, {row.get('lon')!r} are not WGS84 degrees")
        if row["image"] in out:
            raise MapError(f"{path} line {line}: image {row['image']!r} appears twice")
        out[row["image"]] = values
    return out


def list_photos(folder, files: list[MapFile]) -> ViewListing:
    """The `test/drone` listing of a photos folder: ids relative to it, positions in `extra`
    (lat, lon, and the optional columns; NaN where unknown)."""
    root = Path(str(folder)).expanduser()
    if not root.is_dir():
        raise MapError(f"photos={root} is not a folder")
    images = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                    if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not images:
        raise MapError(f"photos={root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in it")
    table = read_photos_csv(root / PHOTOS_CSV) if (root / PHOTOS_CSV).exists() else {}
    for image in images:  # no row: the photo's own EXIF GPS, if it has one
        if image not in table and (gps := exif_position(root / image)) is not None:
            table[image] = gps
    missing = sorted(set(table) - set(images))
    if missing:
        raise MapError(f"{root / PHOTOS_CSV} names {len(missing)} image(s) not in the folder, e.g. {missing[0]!r}")
    extra = {k: np.array([table.get(i, {}).get(k, np.nan) for i in images]) for k in ("lat", "lon", *OPTIONAL)}
    check_inside(np.stack([extra["lat"], extra["lon"]], axis=1), files, images, root / PHOTOS_CSV)
    n = len(images)
    return ViewListing("test", "drone", images, np.full(n, -1, np.int64), np.ones(n, bool),
                       np.zeros(n, bool), extra)


def exif_position(path: Path) -> dict[str, float] | None:
    """{lat, lon[, alt_m]} from a photo's EXIF GPS block (degrees, minutes, seconds; N/S, E/W;
    altitude below sea level when GPSAltitudeRef is 1), or None without one."""
    from PIL import Image
    from PIL.ExifTags import GPS, IFD
    try:
        with Image.open(path) as img:
            gps = img.getexif().get_ifd(IFD.GPSInfo)
        lat = _degrees(gps[GPS.GPSLatitude], gps.get(GPS.GPSLatitudeRef, "N"), "S")
        lon = _degrees(gps[GPS.GPSLongitude], gps.get(GPS.GPSLongitudeRef, "E"), "W")
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OSError):
        return None
    out = {"lat": lat, "lon": lon}
    if GPS.GPSAltitude in gps:
        out["alt_m"] = float(gps[GPS.GPSAltitude]) * (-1 if gps.get(GPS.GPSAltitudeRef) in (1, b"\x01") else 1)
    return out


def _degrees(dms, ref, negative: str) -> float:
    d, m, s = (float(v) for v in dms)
    return (d + m / 60 + s / 3600) * (-1 if str(ref).strip().upper() == negative else 1)


def inside_any(latlon: np.ndarray, files: list[MapFile]) -> np.ndarray:
    """Which positions lie on at least one map file's grid."""
    inside = np.zeros(len(latlon), bool)
    known = np.isfinite(latlon).all(axis=1)
    for f in files:
        x, y = from_latlon(f.crs, latlon[known])
        a, _, c, _, e, g = f.transform
        xs, ys = sorted((c, c + a * f.width)), sorted((g, g + e * f.height))
        inside[known] |= (xs[0] <= x) & (x <= xs[1]) & (ys[0] <= y) & (y <= ys[1])
    return inside


def check_inside(latlon: np.ndarray, files: list[MapFile], images: list[str], source) -> None:
    known = np.isfinite(latlon).all(axis=1)
    outside = np.flatnonzero(known & ~inside_any(latlon, files))
    if len(outside):
        i = outside[0]
        raise MapError(f"{source}: {len(outside)} photo position(s) lie outside the map, e.g. {images[i]!r} at "
                       f"{latlon[i, 0]:.6f}, {latlon[i, 1]:.6f}; fix the positions or give the map that covers them")
