"""Maps cut into georeferenced tiles (datasets/maps.py, features/map_tiles.py): positions from the
working grid and pyproj, checked against what the pixels show; a geographic map through its
WarpedVRT in the local UTM zone; bad maps refused by name."""

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from pyproj import Transformer  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.warp import Resampling, calculate_default_transform, reproject  # noqa: E402

from geoalign_store.datasets import MapError, cut_tiles, open_map, open_map_file  # noqa: E402
from geoalign_store.features import open_grid, read_window, tile_pixels  # noqa: E402
from geoalign_store.retrieval import haversine_m  # noqa: E402

E0, N0, RES, SIDE = 500_000.0, 5_600_000.0, 0.5, 1000   # EPSG:32632, 500 m x 500 m at 0.5 m


def coordinate_map(path):
    """A UTM raster whose two bands are each pixel centre's easting and northing (minus E0, N0)."""
    cols, rows = np.meshgrid(np.arange(SIDE) + 0.5, np.arange(SIDE) + 0.5)
    bands = np.stack([cols * RES, -rows * RES]).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=2, dtype="float32",
                       crs="EPSG:32632", transform=from_origin(E0, N0, RES, RES), nodata=np.nan) as dst:
        dst.write(bands)
    return path


def warped_to_4326(src_path, path):
    with rasterio.open(src_path) as src:
        transform, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=2, dtype="float32",
                           crs="EPSG:4326", transform=transform, nodata=np.nan) as dst:
            for b in (1, 2):
                reproject(rasterio.band(src, b), rasterio.band(dst, b), resampling=Resampling.bilinear)
    return path


def ground_at_tile_centres(f, table):
    """(E, N) the map's pixels show at each tile's centre: the mean of its central 2 x 2 pixels
    (the bands are linear in position, so this is the value at the centre itself)."""
    out = np.full((len(table), 2), np.nan)
    with open_grid(f) as grid:
        for i, (col, row, w, h) in enumerate(table.window):
            bands = read_window(grid, (col, row, w, h), (h, w)).filled(np.nan)
            centre = bands[:, h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1].reshape(2, -1).mean(1)
            out[i] = centre + (E0, N0)
    return out


@pytest.mark.parametrize("geographic", [False, True])
def test_tile_centres_are_where_pyproj_puts_the_ground_they_show(tmp_path, geographic):
    path = coordinate_map(tmp_path / "utm.tif")
    if geographic:
        path = warped_to_4326(path, tmp_path / "wgs84.tif")
    f = open_map_file(path, pixels=False)
    assert f.warped is geographic and "32632" in f.crs or "UTM zone 32N" in f.crs
    table = cut_tiles([f], [100], 0.5)
    assert len(table) >= 49 and np.allclose(table.ground_m, 100, atol=1)
    ground = ground_at_tile_centres(f, table)
    seen = np.isfinite(ground).all(axis=1)        # a warped map's corners hold nodata
    assert seen.mean() > 0.6
    lon, lat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(*ground[seen].T)
    error = haversine_m(table.centre_latlon[seen], np.stack([lat, lon], axis=1))
    assert error.max() < 0.5, f"worst tile centre {error.max():.3f} m from the ground it shows"


def test_tiles_step_by_overlap_and_footprints_hold_their_centres(tmp_path):
    f = open_map_file(coordinate_map(tmp_path / "utm.tif"), pixels=False)
    table = cut_tiles([f], [100, 250], 0.5)
    small = table.scale_m == 100
    assert small.sum() == 9 * 9 and (~small).sum() == 3 * 3   # (500 - 100) / 50 + 1 a side
    x0, y0, x1, y1 = table.bounds.T
    assert np.allclose(x1 - x0, table.ground_m) and np.allclose(y1 - y0, table.ground_m)
    lat, lon = table.centre_latlon.T
    fp = table.footprint_latlon
    assert ((fp[:, :, 0].min(1) < lat) & (lat < fp[:, :, 0].max(1))).all()
    assert ((fp[:, :, 1].min(1) < lon) & (lon < fp[:, :, 1].max(1))).all()
    assert len(set(table.ids)) == len(table)


def rgb_map(path, crs="EPSG:32632", transform=None, black_corner=0):
    rng = np.random.default_rng(0)
    pixels = (rng.random((3, 400, 400)) * 200 + 30).astype(np.uint8)
    pixels[:, :black_corner, :black_corner] = 0
    with rasterio.open(path, "w", driver="GTiff", width=400, height=400, count=3, dtype="uint8", crs=crs,
                       transform=transform or from_origin(E0, N0, 1.0, 1.0)) as dst:
        dst.write(pixels)
    return path


def test_mostly_black_tiles_are_skipped_with_the_share_said(tmp_path):
    f = open_map_file(rgb_map(tmp_path / "m.tif", black_corner=150))
    table = cut_tiles([f], [100], 0.0)
    with open_grid(f) as grid:
        results = [tile_pixels(read_window(grid, w, (32, 32)), 0.5) for w in table.window]
    skipped = [why for pixels, why in results if pixels is None]
    assert len(skipped) == 1 and "100% of the tile is nodata or black" in skipped[0]
    pixels = next(p for p, _ in results if p is not None)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8


def test_bad_maps_are_refused_by_name(tmp_path):
    (tmp_path / "notes.tif").write_text("not a raster")
    with pytest.raises(MapError, match="not a raster"):
        open_map(tmp_path / "notes.tif")
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(np.ones((3, 64, 64), np.uint8))
    with pytest.raises(MapError, match="no CRS"):
        open_map(plain)
    with pytest.raises(MapError, match="at least 8"):
        cut_tiles([open_map_file(rgb_map(tmp_path / "m.tif"))], [5], 0.5)
    with pytest.raises(MapError, match="no GeoTIFF"):
        open_map(tmp_path / "empty_folder" if (tmp_path / "empty_folder").mkdir() is None else None)


def test_a_vrt_of_a_map_is_cut_exactly_as_the_map(tmp_path):
    from rasterio.shutil import copy
    tif = rgb_map(tmp_path / "m.tif")
    copy(tif, tmp_path / "m.vrt", driver="VRT")
    a, b = (cut_tiles(open_map(p), [100], 0.5) for p in (tif, tmp_path / "m.vrt"))
    assert np.array_equal(a.window, b.window) and np.array_equal(a.centre_latlon, b.centre_latlon)
    with open_grid(open_map(tmp_path / "m.vrt")[0]) as grid, open_grid(open_map(tif)[0]) as direct:
        assert np.array_equal(read_window(grid, a.window[5], (32, 32)), read_window(direct, a.window[5], (32, 32)))
