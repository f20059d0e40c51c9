"""Benchmark layouts: merged copies, flags, distractors, altitudes, errors."""

from pathlib import Path

import numpy as np
import pytest

from geoalign_store.datasets import DatasetLayoutError, list_sues200, list_university1652


def touch(path: Path, content: bytes = b"img") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_university1652_merges_query_and_gallery_copies(tmp_path):
    for loc in ("0001", "0002"):
        touch(tmp_path / f"train/drone/{loc}/image-01.jpeg")
        touch(tmp_path / f"train/satellite/{loc}/{loc}.jpg")
    for loc in ("0010", "0011"):
        for name in ("image-01.jpeg", "image-02.jpeg"):
            touch(tmp_path / f"test/query_drone/{loc}/{name}")
            touch(tmp_path / f"test/gallery_drone/{loc}/{name}")
        touch(tmp_path / f"test/query_satellite/{loc}/{loc}.jpg")
    for loc in ("0010", "0011", "0500"):  # 0500: a gallery-only distractor location
        touch(tmp_path / f"test/gallery_satellite/{loc}/{loc}.jpg")
        touch(tmp_path / f"test/gallery_drone/{loc}/image-01.jpeg")
    views = {(v.split, v.view): v for v in list_university1652(tmp_path, ["train", "test"])}
    drone = views["test", "drone"]
    assert len(drone) == 5 and all(i.startswith("test/gallery_drone/") for i in drone.ids)
    assert drone.in_query.tolist() == [True, True, True, True, False]
    assert drone.in_gallery.all() and drone.labels.tolist() == [10, 10, 11, 11, 500]
    sat = views["test", "satellite"]
    assert sat.labels.tolist() == [10, 11, 500] and sat.in_query.tolist() == [True, True, False]
    assert views["train", "satellite"].ids == ["train/satellite/0001/0001.jpg",
                                               "train/satellite/0002/0002.jpg"]


def test_university1652_copy_with_other_content_is_not_merged(tmp_path):
    touch(tmp_path / "test/query_drone/0001/a.jpeg", b"one")
    touch(tmp_path / "test/gallery_drone/0001/a.jpeg", b"other!")
    for v in ("query_satellite", "gallery_satellite"):
        touch(tmp_path / f"test/{v}/0001/s.jpg")
    drone = list_university1652(tmp_path, ["test"])[0]
    assert len(drone) == 2 and drone.in_query.sum() == 1 and drone.in_gallery.sum() == 1


def test_university1652_missing_folder(tmp_path):
    touch(tmp_path / "test/query_drone/0001/a.jpeg")
    with pytest.raises(DatasetLayoutError, match=r"missing folder .*gallery_drone.*University-Release"):
        list_university1652(tmp_path, ["test"])


def test_sues200_altitudes_and_shared_satellite(tmp_path):
    for h in (150, 200):
        for loc in ("0001", "0002", "0003"):  # 0003: train location, distractor in the gallery
            touch(tmp_path / f"Testing/{h}/gallery_satellite/{loc}/0.png")
            touch(tmp_path / f"Testing/{h}/gallery_drone/{loc}/{h}-1.jpg")
            if loc != "0003":
                touch(tmp_path / f"Testing/{h}/query_satellite/{loc}/0.png")
                touch(tmp_path / f"Testing/{h}/query_drone/{loc}/{h}-1.jpg")
    drone, sat = list_sues200(tmp_path, ["test"], [150, 200])
    assert len(sat) == 3 and sat.in_query.tolist() == [True, True, False]
    assert len(drone) == 6 and drone.extra["altitude"].tolist() == [150] * 3 + [200] * 3
    assert np.array_equal(drone.in_query, [True, True, False] * 2)
