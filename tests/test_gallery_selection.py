"""A direction's gallery as its rows' selection in the store (issue 23: the driver of an index
build holds nothing a gallery row long): store.RowSelection against the plain reading of the
whole view (read_view, mask, flatnonzero), the lazy gallery side against the eager one, the
fingerprints' values unchanged (builds made before stay valid), gallery_rows.npy byte for byte,
and the driver's retained memory not growing with the gallery."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import zarr

from conftest import write_plain_store
from geoalign_store import store as st
from geoalign_store.config import compose, fingerprint
from geoalign_store.retrieval import direction_sets, gallery_fingerprint, open_direction, side_embeddings
from geoalign_store.retrieval.embedder import rows_fingerprint
from geoalign_store.retrieval.embeddings import _side
from geoalign_store.store import selections


def _flagged_store(path, n_loc=300, drones=4, altitudes=(150, 200), failed=True, seed=0):
    """A plain store whose galleries select rows three ways: in_gallery flags (random), decoding
    errors (a complete view with failures, or an incomplete one) and, for drones, altitudes;
    meta arrays in small chunks, so that a selection's steps span many of them."""
    write_plain_store(path, n_loc=n_loc, drones=drones, distractors=20, altitudes=altitudes, seed=seed)
    root = zarr.open_group(str(path), mode="a")
    rng = np.random.default_rng(seed + 1)
    for view in ("satellite", "drone"):
        group = root[f"features/mine/test/{view}"]
        n = group["labels"].shape[0]
        for flag in ("in_gallery", "in_query"):
            group.create_array(flag, shape=(n,), dtype=bool, chunks=(97,))[:] = rng.random(n) < 0.8
        errors = np.where(rng.random(n) < 0.05, "unreadable", "").astype(object)
        group.create_array("errors", shape=(n,), dtype=str, chunks=(61,))[:] = errors
        group.attrs.update({"complete": True, "n_failed": int((errors != "").sum())} if failed else {})
    return path


def _eager_sets(root, mode, protocol="official"):
    """What direction_sets returned before the gallery became a selection: both views read
    whole (the slow, obviously correct reference)."""
    q_view, g_view = {"D2S": ("drone", "satellite"), "S2D": ("satellite", "drone")}[mode]
    meta = {v: st.read_view(root, "mine", "test", v) for v in (q_view, g_view)}
    altitude = meta["drone"]["extra"].get("altitude")
    subsets = [("all", None)] if altitude is None else [(f"altitude={int(h)}", altitude == h) for h in np.unique(altitude)]
    out = []
    for name, keep in subsets:
        query = _side(meta[q_view], q_view, "in_query", keep if q_view == "drone" else None)
        gallery = _side(meta[g_view], g_view, "in_gallery", keep if g_view == "drone" else None)
        if protocol == "query_locations":
            gallery.labels = np.where(np.isin(gallery.labels, query.labels), gallery.labels, -1)
        out.append((name, query, gallery))
    return out


@pytest.mark.parametrize("failed", [True, False])
@pytest.mark.parametrize("step", [64, 1 << 18])
def test_a_selection_maps_positions_to_the_rows_the_whole_view_selects(tmp_path, monkeypatch, failed, step):
    monkeypatch.setattr(selections, "STEP_ROWS", step)
    root = st.open_store(str(_flagged_store(tmp_path / "s.zarr", failed=failed)), mode="r")
    meta = st.read_view(root, "mine", "test", "drone")
    for extra, keep in ((None, True), (("altitude", 200), meta["extra"]["altitude"] == 200)):
        selection = st.view_selection(root, "mine", "test", "drone", "in_gallery", extra)
        rows = np.flatnonzero(meta["in_gallery"] & (meta["errors"] == "") & keep)
        assert len(selection) == len(rows) and not selection.everything
        np.testing.assert_array_equal(np.asarray(selection), rows)
        np.testing.assert_array_equal(selection[5:len(rows) - 7], rows[5:-7])
        np.testing.assert_array_equal(selection[len(rows) - 3:len(rows) + 9], rows[-3:])
        picked = np.random.default_rng(0).choice(len(rows), 200)            # any order, repeats
        np.testing.assert_array_equal(selection[picked], rows[picked])
        np.testing.assert_array_equal(selection[-1], rows[-1])
        np.testing.assert_array_equal(selection.values("labels", picked), meta["labels"][rows[picked]])
        assert list(selection.values("ids", picked)) == list(meta["ids"][rows[picked]])
        with pytest.raises(IndexError):
            selection[np.array([len(rows)])]


def test_a_view_selecting_every_row_reads_none_to_map_them(tmp_path, monkeypatch):
    root = st.open_store(str(write_plain_store(tmp_path / "s.zarr", n_loc=50)), mode="r")
    selection = st.view_selection(root, "mine", "test", "satellite", "in_gallery")
    monkeypatch.setattr(selections, "_meta_rows", lambda *a: pytest.fail("read a row"))
    assert selection.everything and len(selection) == 55 and selection.starts is None
    np.testing.assert_array_equal(selection[3:9], np.arange(3, 9))
    np.testing.assert_array_equal(selection[np.array([7, 2])], [7, 2])


@pytest.mark.parametrize("mode", ["D2S", "S2D"])
@pytest.mark.parametrize("protocol", ["official", "query_locations"])
def test_the_lazy_gallery_is_the_eager_one_and_keeps_its_fingerprint(tmp_path, monkeypatch, mode, protocol):
    """Rows, names, labels (read whole, or at the positions asked) and the gallery fingerprint
    equal those of the views read whole; the fingerprint's value is the one builds made before
    recorded: fingerprint(rows.tolist()) under "rows"."""
    monkeypatch.setattr(selections, "STEP_ROWS", 64)
    store = _flagged_store(tmp_path / "s.zarr")
    root, dataset, embedder, sets = open_direction(compose("score", [f"store={store}", f"mode={mode}",
                                                                     f"gallery_protocol={protocol}"]))
    reference = _eager_sets(root, mode, protocol)
    assert [ds.subset for ds in sets] == [name for name, _, _ in reference] == ["altitude=150", "altitude=200"]
    for ds, (_, query, gallery) in zip(sets, reference):
        np.testing.assert_array_equal(ds.query.rows, query.rows)
        picked = np.random.default_rng(1).choice(len(gallery.rows), 50)
        np.testing.assert_array_equal(ds.gallery.labels_at(picked), gallery.labels[picked])
        assert list(ds.gallery.ids_at(picked)) == list(gallery.ids[picked])
        old = fingerprint({**embedder.spec, "view": gallery.view, "subset": ds.subset,
                           "rows": fingerprint(gallery.rows.tolist())})
        assert gallery_fingerprint(embedder, ds) == old
        np.testing.assert_array_equal(ds.gallery.rows, gallery.rows)
        np.testing.assert_array_equal(ds.gallery.labels, gallery.labels)
        assert list(ds.gallery.ids) == list(gallery.ids)
        embedded = side_embeddings(root, dataset, embedder, ds.gallery)
        np.testing.assert_array_equal(embedded[picked], side_embeddings(root, dataset, embedder, gallery)[picked])


def test_rows_fingerprint_of_a_selection_is_that_of_its_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(selections, "STEP_ROWS", 64)
    root = st.open_store(str(_flagged_store(tmp_path / "s.zarr", n_loc=600)), mode="r")
    selection = st.view_selection(root, "mine", "test", "drone", "in_gallery")
    rows = np.asarray(selection)
    assert rows_fingerprint(selection, chunk=100) == rows_fingerprint(rows) == fingerprint(rows.tolist())


def test_gallery_rows_npy_is_written_in_chunks_as_np_save_writes_it(tmp_path):
    for n in (0, 1, 4097):
        values = np.arange(n, dtype=np.int64) * 7
        np.save(tmp_path / "whole.npy", values)
        st.write_npy_chunks(tmp_path / "chunks.npy", np.int64, n, (values[a:a + 1000] for a in range(0, n, 1000)))
        assert (tmp_path / "chunks.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    with pytest.raises(ValueError, match="3 values given for a .npy of 4"):
        st.write_npy_chunks(tmp_path / "short.npy", np.int64, 4, [np.arange(3)])
    assert not (tmp_path / "short.npy").exists()


def _retained_by_the_driver(store) -> int:
    """Bytes tracemalloc sees still held after what the index driver does before training:
    the direction's sets, the gallery's embeddings object and its fingerprint."""
    tracemalloc.start()
    try:
        root, dataset, embedder, sets = open_direction(compose("index", [f"store={store}", "index=ivfpq"]))
        gallery = side_embeddings(root, dataset, embedder, sets[0].gallery)
        gallery_fingerprint(embedder, sets[0])
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(gallery) > 0
    return held


def test_the_driver_holds_nothing_a_gallery_row_long(tmp_path):
    """The gallery grows 8x (4,020 -> 32,020 satellites); what the driver holds after opening the
    direction and fingerprinting the gallery grows by less than a byte a tile (the eager sides
    held ~40 B a tile: rows, names, labels)."""
    small = write_plain_store(tmp_path / "small.zarr", n_loc=20, drones=1, distractors=4000, dim=8)
    large = write_plain_store(tmp_path / "large.zarr", n_loc=20, drones=1, distractors=32000, dim=8)
    _retained_by_the_driver(small)              # (first imports and caches)
    grew = _retained_by_the_driver(large) - _retained_by_the_driver(small)
    assert grew < 28000, f"{grew} B more for 28,000 more tiles"


@pytest.mark.parametrize("protocol", ["official", "query_locations"])
def test_goods_counted_a_chunk_at_a_time_are_the_whole_gallerys(tmp_path, monkeypatch, protocol):
    """score index=ivfpq counts each query's goods without the gallery's labels whole: equal to
    metrics.good_counts of the labels read whole (junk and queries without goods included)."""
    from geoalign_store.retrieval import good_counts, streamed_good_counts
    monkeypatch.setattr(selections, "STEP_ROWS", 64)
    store = _flagged_store(tmp_path / "s.zarr")
    for mode in ("D2S", "S2D"):
        root, _, _, sets = open_direction(compose("score", [f"store={store}", f"mode={mode}",
                                                            f"gallery_protocol={protocol}"]))
        for ds, (_, query, gallery) in zip(sets, _eager_sets(root, mode, protocol)):
            labels = np.append(query.labels, [-1, 10 ** 6])          # junk and a label no item has
            expected = good_counts(labels, gallery.labels)
            np.testing.assert_array_equal(streamed_good_counts(labels, ds.gallery, chunk=50), expected)
            np.testing.assert_array_equal(streamed_good_counts(labels, gallery), expected)
            assert expected[-2:].tolist() == [0, 0] and expected.max() > 0


def test_score_on_the_sharded_index_reads_no_gallery_array_whole(tmp_path, monkeypatch):
    """index and score index=ivfpq (pictures off, no coordinates) never read the gallery's rows,
    names or labels whole: labels of the retrieved rows and the goods counted in chunks; the
    figures are the exact score's (a 35-item gallery: the re-ranked index is exact), and the
    top-k names written are the exact score's."""
    from geoalign_store.retrieval import StoredSide
    from pipelines import index, score
    store = write_plain_store(tmp_path / "s.zarr", noise=0.3)
    exact = score.run(compose("score", [f"store={store}", "pictures=0"]))
    monkeypatch.setattr(StoredSide, "_read_whole", lambda self, name: pytest.fail(f"read the gallery's {name} whole"))
    index.run(compose("index", [f"store={store}", "index=ivfpq"]))
    approx = score.run(compose("score", [f"store={store}", "index=ivfpq", "pictures=0"]))
    assert approx["approximate"] and approx["recall"] == exact["recall"] and approx["ap"] == exact["ap"]
    tops = [zarr.open_group(str(store), mode="r")[f"scores/{name}/D2S/all/topk_ids"][:]
            for name in ("mine-none", "mine-none-ivfpq")]
    assert (tops[0][:, :1] == tops[1][:, :1]).all()


@pytest.mark.parametrize("mode", ["D2S", "S2D"])
def test_a_workers_gallery_side_is_the_direction_sets_without_the_query_view(tmp_path, monkeypatch, mode):
    from geoalign_store.retrieval.embeddings import gallery_side
    store = _flagged_store(tmp_path / "s.zarr")
    root = st.open_store(str(store), mode="r")
    sets = direction_sets(root, "mine", mode)
    monkeypatch.setattr(st, "read_view", lambda *a: pytest.fail("read a view whole"))
    for ds in sets:
        side = gallery_side(root, "mine", mode, ds.subset)
        assert side.view == ds.gallery.view
        np.testing.assert_array_equal(np.asarray(side.selection), np.asarray(ds.gallery.selection))
    with pytest.raises(st.StoreError, match="has no subset 'altitude=999'"):
        gallery_side(root, "mine", "S2D", "altitude=999")
