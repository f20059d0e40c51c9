"""dataset=map through the stages: extract cuts a GeoTIFF into tiles read on the fly (blocks,
resumable, fingerprinted by the map), photos carry their positions, score counts a tile right
when its footprint holds the photo's position; bad input is refused by name."""

import os

import numpy as np
import pytest

pytest.importorskip("rasterio")
from geoalign_store import store as st  # noqa: E402
from geoalign_store.config import compose  # noqa: E402
from geoalign_store.datasets import MapError, cut_tiles, generate_demo_map, open_map  # noqa: E402
from geoalign_store.retrieval import footprint_goods, sdm_at_k  # noqa: E402
from pipelines import extract, score  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_demo_map(tmp_path_factory.mktemp("world") / "w", grid=2, n_photos=6, photo_px=64)


def map_overrides(store, world, *extra):
    return [f"store={store}", "dataset=map", f"map={world / 'map.tif'}", f"photos={world / 'photos'}",
            "tile_m=[150,250]", "image_size=64", "block_size=32", "batch_size=16", "num_workers=0", *extra]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, world):
    store = tmp_path_factory.mktemp("store") / "s.zarr"
    return store, extract.run(compose("extract", map_overrides(store, world)))


def test_tiles_and_photos_are_stored_with_their_geometry(extracted, world):
    store, summary = extracted
    table = cut_tiles(open_map(world / "map.tif"), [150, 250], 0.5)
    assert summary["views"]["test/satellite"]["n"] == len(table) == 8 * 8 + 4 * 4
    assert summary["views"]["test/drone"]["n"] == 6 and summary["n_failed"] == 0
    root = st.open_store(str(store), mode="r")
    tiles = st.read_tile_table(root, "map")
    assert np.array_equal(tiles["latlon"], table.centre_latlon)
    assert np.array_equal(tiles["window"], table.window) and np.array_equal(tiles["bounds"], table.bounds)
    assert sorted(set(tiles["scale_m"])) == [150, 250] and tiles["footprint"].shape == (80, 4, 2)
    assert st.read_map_files(root, "map")[0].crs == open_map(world / "map.tif")[0].crs
    photos = st.read_coordinates(root, "map", "test", "drone")
    csv_lat = [float(line.split(",")[1]) for line in (world / "photos" / "photos.csv").read_text().split()[1:]]
    assert np.allclose(photos[:, 0], csv_lat)
    desc = st.read_layer(root, "map", "test", "satellite", 28)
    assert desc.shape[0] == 80 and np.abs(desc).sum(1).min() > 0


def test_a_lost_block_is_extracted_again_identically(extracted, world, tmp_path):
    store, _ = extracted
    root = st.open_store(str(store), mode="r+")
    group = root[st.view_path("map", "test", "satellite")]
    before = np.asarray(group["layer_28/desc"][:])
    group["block_done"][1] = False
    group["layer_28/desc"][32:64] = 0
    again = extract.run(compose("extract", map_overrides(store, world)))
    assert again["images_extracted"] == 32
    assert np.array_equal(np.asarray(group["layer_28/desc"][:]), before)


def test_a_changed_map_is_refused_with_the_flag_to_add(extracted, world):
    store, _ = extracted
    path = world / "map.tif"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        with pytest.raises(st.StoreError, match=r"map: stored .*overwrite=true"):
            extract.run(compose("extract", map_overrides(store, world)))
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_score_counts_a_tile_right_when_its_footprint_holds_the_photo(extracted):
    store, _ = extracted
    result = score.run(compose("score", [f"store={store}", "heads=none", "pictures=0"]))
    root = st.open_store(str(store), mode="r")
    from geoalign_store.retrieval import direction_sets, raw_embedding
    ds = direction_sets(root, "map", "D2S")[0]
    gidx, n_good = footprint_goods(root, "map", ds)
    assert (n_good >= 2).all()                       # one tile per scale at least
    # the reference: rank the whole gallery per photo and find the first right tile
    emb = {v: raw_embedding({k: st.read_layer(root, "map", "test", v, k) for k in (26, 28)}, v)
           for v in ("drone", "satellite")}
    order = np.argsort(-(emb["drone"] @ emb["satellite"].T), axis=1)
    right = [set(gidx[q, :n_good[q]].tolist()) for q in range(len(n_good))]
    first = np.array([next(r for r, g in enumerate(order[q]) if g in right[q]) for q in range(len(right))])
    assert result["recall"]["1"] == pytest.approx(np.mean(first == 0))
    assert result["recall"]["5"] == pytest.approx(np.mean(first < 5))
    assert set(result["within_m"]) == {"5", "10", "25", "50", "100"} and result["dis@1_m"] > 0
    assert set(result["sdm"]) == {"1", "3", "5"}


def test_sdm_is_game4locs_formula_in_metres():
    d = np.array([[0.0, 1000.0, 2000.0]])
    expected = (3 * 1 + 2 * np.exp(-1) + 1 * np.exp(-2)) / 6
    assert sdm_at_k(d, (1, 3)) == {"1": 1.0, "3": pytest.approx(expected)}


def test_photos_outside_the_map_are_refused(world, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "p.png").write_bytes((world / "photos" / "photo-000.png").read_bytes())
    (photos / "photos.csv").write_text("image,lat,lon\np.png,48.0,9.0\n")
    with pytest.raises(MapError, match="outside the map"):
        extract.run(compose("extract", map_overrides(tmp_path / "s.zarr", world, f"photos={photos}")))
    assert not (tmp_path / "s.zarr").exists()


def test_scoring_photos_without_positions_is_refused(world, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "p.png").write_bytes((world / "photos" / "photo-000.png").read_bytes())
    store = tmp_path / "s.zarr"
    extract.run(compose("extract", map_overrides(store, world, f"photos={photos}")))
    with pytest.raises(st.StoreError, match="no true position.*photos.csv"):
        score.run(compose("score", [f"store={store}", "heads=none", "pictures=0"]))


def test_tile_smaller_than_a_few_pixels_is_refused_before_anything_is_written(world, tmp_path):
    with pytest.raises(MapError, match="at least 8"):
        extract.run(compose("extract", map_overrides(tmp_path / "s.zarr", world, "tile_m=[5]")))
    assert not (tmp_path / "s.zarr").exists()


def test_locate_on_a_map_refines_the_position_and_draws_the_map_around_it(extracted, world, tmp_path):
    from pipelines import locate
    store, _ = extracted
    result = locate.run(compose("locate", [f"store={store}", "heads=none", f"out={tmp_path}", "k=3"]),
                        images=[world / "photos" / "photo-000.png"])
    answer = result["answers"][0]
    assert len(answer["top"]) == 3 and all(len(t["footprint"]) == 4 for t in answer["top"])
    position, truth = answer["position"], answer["truth"]
    assert position["uncertainty_m"] >= 150 / np.sqrt(6) - 1e-6 and position["n_tiles"] >= 1
    assert answer["tile_position"] == {"lat": answer["top"][0]["lat"], "lon": answer["top"][0]["lon"]}
    assert truth["error_m"] >= 0 and truth["tile_error_m"] >= 0
    from PIL import Image
    with Image.open(answer["picture"]) as picture:
        assert picture.width > 512 and picture.height > 256


@pytest.mark.parametrize("case, message", [
    ("not_a_raster", "is not a raster GDAL can read"),
    ("no_crs", "has no CRS"),
    ("tiny_tiles", "a tile needs at least 8"),
    ("map_without_dataset", "read with dataset=map"),
])
def test_bad_map_input_exits_2_with_the_reason_and_writes_nothing(world, tmp_path, case, message):
    from typer.testing import CliRunner
    import rasterio
    from pipelines.cli import app
    store = tmp_path / "s.zarr"
    args = ["extract", f"store={store}", "dataset=map", f"map={world / 'map.tif'}"]
    if case == "not_a_raster":
        (tmp_path / "x.tif").write_text("not a raster")
        args[3] = f"map={tmp_path / 'x.tif'}"
    elif case == "no_crs":
        with rasterio.open(tmp_path / "x.tif", "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8") as d:
            d.write(np.ones((3, 32, 32), np.uint8))
        args[3] = f"map={tmp_path / 'x.tif'}"
    elif case == "tiny_tiles":
        args.append("tile_m=[3]")
    else:
        args[2] = "dataset=folder"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not store.exists()


def test_map_blocks_as_dask_tasks_equal_the_in_process_run(extracted, world, tmp_path):
    store, _ = extracted
    other = tmp_path / "dask.zarr"
    extract.run(compose("extract", map_overrides(other, world, "cluster=local:1")))
    a, b = st.open_store(str(store), mode="r"), st.open_store(str(other), mode="r")
    for view in ("satellite", "drone"):
        assert np.array_equal(st.read_layer(a, "map", "test", view, 28), st.read_layer(b, "map", "test", view, 28))


def test_a_photo_without_a_row_takes_its_exif_gps_position(world, tmp_path):
    from PIL import Image
    from PIL.ExifTags import GPS, IFD
    from geoalign_store.datasets import list_photos
    lat, lon = (float(v) for v in (world / "photos" / "photos.csv").read_text().split()[1].split(",")[1:3])
    photos = tmp_path / "photos"
    photos.mkdir()
    exif = Image.Exif()
    gps = exif.get_ifd(IFD.GPSInfo)
    for key, value in ((GPS.GPSLatitude, lat), (GPS.GPSLongitude, lon)):
        minutes, seconds = divmod(value * 3600, 60)
        gps[key] = (float(int(minutes // 60)), float(int(minutes % 60)), seconds)
    gps[GPS.GPSLatitudeRef], gps[GPS.GPSLongitudeRef], gps[GPS.GPSAltitude] = "N", "E", 212.5
    Image.open(world / "photos" / "photo-000.png").convert("RGB").save(photos / "g.jpg", exif=exif)
    Image.open(world / "photos" / "photo-001.png").save(photos / "none.png")
    listing = list_photos(photos, open_map(world / "map.tif"))
    assert listing.ids == ["g.jpg", "none.png"]
    assert listing.extra["lat"][0] == pytest.approx(lat, abs=1e-9) and listing.extra["lon"][0] == pytest.approx(lon, abs=1e-9)
    assert listing.extra["alt_m"][0] == pytest.approx(212.5) and np.isnan(listing.extra["lat"][1])


def test_heads_from_another_store_serve_a_map_made_the_same_way_and_only_then(extracted, world, folder_dataset,
                                                                              tmp_path):
    from pipelines import fit_heads
    store, _ = extracted
    bench = tmp_path / "bench.zarr"
    extract.run(compose("extract", [f"store={bench}", "dataset=folder", f"data_root={folder_dataset}",
                                    "image_size=64", "num_workers=0"]))
    fitted = fit_heads.run(compose("fit-heads", [f"store={bench}", "agra.epochs=8", "isms.epochs=3",
                                                 "isms.batch_size=32"]))
    result = score.run(compose("score", [f"store={store}", f"heads={bench}:{fitted['name']}", "pictures=0"]))
    assert result["heads"] == f"bench.zarr.{fitted['name']}" and result["inputs"]["heads_store"] == str(bench)
    assert 0 <= result["recall"]["1"] <= 1 and "dis@1_m" in result
    other = tmp_path / "other.zarr"
    extract.run(compose("extract", map_overrides(other, world, "image_size=48", "tile_m=[250]")))
    with pytest.raises(st.StoreError, match=r"made differently.*image_size \(64 there, 48 here\)"):
        score.run(compose("score", [f"store={other}", f"heads={bench}:{fitted['name']}", "pictures=0"]))
    with pytest.raises(st.StoreError, match="no finished heads 'nope'"):
        score.run(compose("score", [f"store={store}", f"heads={bench}:nope", "pictures=0"]))
