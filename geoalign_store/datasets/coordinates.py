"""Coordinates of locations: what a dataset says about where its images are.

Coordinates come from a `locations.csv` (`location,lat,lon[,...]`, WGS84 degrees) at the dataset
root or from `coords=PATH`; a location is an image's folder name (`<view>/<location>/<image>` in
every layout). The distances computed from them are retrieval's (retrieval/distances.py).
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

import numpy as np

from ..config import ConfigError

class CoordinatesError(ConfigError):
    """A coordinates file that cannot be read as `location,lat,lon`; the message says where."""


def read_locations_csv(path: str | Path) -> dict[str, tuple[float, float]]:
    """location name -> (lat, lon). Extra columns are ignored; a repeated location is an error."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            header = [h.strip() for h in (rows[0].keys() if rows else [])]
    except OSError as e:
        raise CoordinatesError(f"cannot read coordinates {path}: {e}") from e
    if not rows or header[:3] != ["location", "lat", "lon"]:
        raise CoordinatesError(f"{path}: expected a header `location,lat,lon[,...]` and one row "
                               f"per location, got {header[:3] or 'nothing'}")
    out: dict[str, tuple[float, float]] = {}
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        try:
            lat, lon = float(row["lat"]), float(row["lon"])
        except ValueError:
            raise CoordinatesError(f"{path} line {line}: lat/lon must be numbers, got "
                                   f"{row['lat']!r}, {row['lon']!r}") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise CoordinatesError(f"{path} line {line}: ({lat}, {lon}) is not a WGS84 position")
        if row["location"] in out:
            raise CoordinatesError(f"{path} line {line}: location {row['location']!r} repeated")
        out[row["location"]] = (lat, lon)
    return out


def location_of(image_id: str) -> str:
    """The location folder of an image id (`.../<location>/<image>`)."""
    return PurePosixPath(str(image_id)).parent.name


def coordinates_for(ids, table: dict[str, tuple[float, float]]) -> np.ndarray:
    """(N, 2) lat/lon of each image's location, NaN where the table does not have it. A numeric
    folder also matches its number written without leading zeros (`0839` and `839`)."""
    numeric = {str(int(k)): v for k, v in table.items() if k.isdigit()}
    if len(ids) == 0:
        return np.full((0, 2), np.nan)
    # one lookup per folder, not per image (University-1652's drone view: 51,355 ids, 701 folders)
    folders, inverse = np.unique(np.strings.rpartition(np.asarray(ids, dtype=str), "/")[0], return_inverse=True)
    per_folder = np.full((len(folders), 2), np.nan)
    for row, folder in enumerate(folders.tolist()):
        loc = location_of(f"{folder}/_")
        hit = table.get(loc) or (numeric.get(str(int(loc))) if loc.isdigit() else None)
        if hit is not None:
            per_folder[row] = hit
    return per_folder[inverse.reshape(-1)]
