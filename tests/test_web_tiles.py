"""A local folder of web tiles as a map (datasets/web_tiles.py): bounds from morecantile, ground
size corrected for latitude, XYZ and TMS numbering, extracted and scored like any map."""

import numpy as np
import pytest

morecantile = pytest.importorskip("morecantile")
from geoalign_store import store as st  # noqa: E402
from geoalign_store.config import compose  # noqa: E402
from geoalign_store.datasets import web_tile_map  # noqa: E402
from pipelines import extract, score  # noqa: E402

Z = 18


def web_folder(root, scheme="xyz", lat=50.5, lon=9.0, n=3):
    from PIL import Image
    grid = morecantile.tms.get("WebMercatorQuad")
    t0 = grid.tile(lon, lat, Z)
    rng = np.random.default_rng(0)
    for dx in range(n):
        for dy in range(n):
            x, y = t0.x + dx, t0.y + dy
            name_y = (2 ** Z - 1 - y) if scheme == "tms" else y
            path = root / str(Z) / str(x) / f"{name_y}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path)
    return root, grid, t0


def test_a_z18_tile_at_50_5_north_is_about_97_m_of_ground(tmp_path):
    root, grid, t0 = web_folder(tmp_path / "xyz")
    f, table = web_tile_map(root)
    assert len(table) == 9 and f.web_tiles
    assert table.ground_m == pytest.approx(np.full(9, 97.2), abs=0.3)
    first = table.ids.index(f"{Z}/{t0.x}/{t0.y}.png")
    west, south, east, north = grid.bounds(t0)
    lat, lon = table.centre_latlon[first]
    assert south < lat < north and west < lon < east
    assert np.allclose(table.footprint_latlon[first], [[north, west], [north, east], [south, east], [south, west]])


def test_tms_numbering_gives_the_same_places(tmp_path):
    xyz = web_tile_map(web_folder(tmp_path / "xyz")[0])[1]
    tms = web_tile_map(web_folder(tmp_path / "tms", "tms")[0], "tms")[1]
    assert np.allclose(np.sort(xyz.centre_latlon, axis=0), np.sort(tms.centre_latlon, axis=0))


def test_web_tiles_extract_and_score_as_a_map(tmp_path):
    root, grid, t0 = web_folder(tmp_path / "xyz")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "p.png").write_bytes((root / str(Z) / str(t0.x + 1) / f"{t0.y + 1}.png").read_bytes())
    west, south, east, north = grid.bounds(morecantile.Tile(t0.x + 1, t0.y + 1, Z))
    (photos / "photos.csv").write_text(f"image,lat,lon\np.png,{(south + north) / 2},{(west + east) / 2}\n")
    store = tmp_path / "s.zarr"
    summary = extract.run(compose("extract", [f"store={store}", "dataset=map", f"map={root}", f"photos={photos}",
                                              "image_size=64", "num_workers=0"]))
    assert summary["views"]["test/satellite"]["n"] == 9
    root_store = st.open_store(str(store), mode="r")
    assert st.read_map_files(root_store, "map")[0].web_tiles
    result = score.run(compose("score", [f"store={store}", "heads=none", "pictures=0"]))
    assert result["recall"]["1"] == 1.0          # the photo is that very tile
    assert result["dis@1_m"] < 1.0
