"""Map tiles read for the backbone: each a rasterio windowed read of the working grid, resampled
on the fly to the backbone's input size (`out_shape`), so no tile image is ever written.

`MapTiles` is the map's counterpart of `ImageFiles`: decoded by flat index to (3, H, W) uint8,
a failure (or a tile mostly nodata or black) an error string, never an exception. Each thread
opens its own rasterio datasets (GDAL handles are not shared between threads) and keeps them
for its next tiles; geographic files are read through the same WarpedVRT the cut was planned on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from ..datasets import MapFile, bounded_gdal_cache

SKIPPED = "skipped:"      # errors starting so are tiles left out on purpose, not failures


@dataclass(frozen=True)
class MapSource:
    """What a worker needs to read a map's tiles (picklable: sent to dask tasks)."""
    files: tuple[MapFile, ...]
    max_invalid: float = 0.5          # a tile with more nodata/black pixels than this is skipped
    resampling: str = "bilinear"


def open_grid(f: MapFile):
    """A rasterio dataset on the file's working grid (the file, or its WarpedVRT)."""
    bounded_gdal_cache()  # a dask worker's first GDAL use may be here
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    src = rasterio.open(f.path)
    if not f.warped:
        return src
    return WarpedVRT(src, crs=f.crs, transform=Affine(*f.transform), width=f.width, height=f.height,
                     resampling=Resampling.bilinear)


def read_window(dataset, window, out_hw: tuple[int, int], resampling: str = "bilinear") -> np.ma.MaskedArray:
    """Bands of a window resampled to out_hw: (bands, H, W) masked where nodata."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window
    col, row, w, h = (int(v) for v in window)
    return dataset.read(window=Window(col, row, w, h), out_shape=(dataset.count, *out_hw),
                        resampling=Resampling[resampling], masked=True)


def tile_pixels(bands: np.ma.MaskedArray, max_invalid: float) -> tuple[np.ndarray | None, str]:
    """(3, H, W) uint8 RGB of a read window, or (None, why) when mostly nodata or black."""
    rgb = np.ma.concatenate([bands] * 3) if bands.shape[0] == 1 else bands[:3]
    invalid = np.ma.getmaskarray(rgb).any(axis=0) | (rgb.filled(0) == 0).all(axis=0)
    share = float(invalid.mean())
    if share > max_invalid:
        return None, f"{SKIPPED} {100 * share:.0f}% of the tile is nodata or black"
    return np.ascontiguousarray(rgb.filled(0), dtype=np.uint8), ""


class MapTiles(torch.utils.data.Dataset):
    """Tiles by flat index: rows of `windows` ((n, 5): file, col_off, row_off, width, height)."""

    def __init__(self, source: MapSource, windows: np.ndarray, image_size):
        self.source, self.windows = source, np.asarray(windows, np.int64)
        size = image_size if image_size is not None else 224
        self.out_hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.local = threading.local()

    def __len__(self) -> int:
        return len(self.windows)

    def _dataset(self, index: int):
        opened = self.local.__dict__.setdefault("opened", {})
        if index not in opened:
            opened[index] = open_grid(self.source.files[index])
        return opened[index]

    def __getitem__(self, index: int):
        file, *window = self.windows[index].tolist()
        try:
            bands = read_window(self._dataset(file), window, self.out_hw, self.source.resampling)
            pixels, why = tile_pixels(bands, self.source.max_invalid)
        except tile_read_failures() as e:  # recorded for this tile, not raised
            return index, None, f"{type(e).__name__}: {e}"
        return index, (None if pixels is None else torch.from_numpy(pixels)), why

    def __getstate__(self):  # thread-local handles stay behind (DataLoader processes open their own)
        return {"source": self.source, "windows": self.windows, "out_hw": self.out_hw}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.local = threading.local()


def tile_read_failures() -> tuple:
    """What reading a window of a damaged or unreadable map raises: rasterio's errors (I/O ones
    are also OSErrors), GDAL's own (CPLE_*), a bad window (ValueError)."""
    import rasterio._err
    import rasterio.errors
    return (rasterio.errors.RasterioError, rasterio._err.CPLE_BaseError, OSError, ValueError, RuntimeError)
