"""The embedding step shared by `index` and `score`: which rows a direction reads, and how
stored descriptors become retrieval vectors (raw baseline or trained heads).

Directions read every dataset the same way (SPEC §3): D2S queries are `test/drone` rows with
`in_query`, its gallery the `test/satellite` rows with `in_gallery`; S2D the reverse. Images that
failed to decode (non-empty `errors`) are left out on both sides. When the drone view carries
`extra/altitude` (SUES-200), each altitude is its own subset, scored separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import store as st
from ..store import read_rows, row_chunk

MODES = {"D2S": ("drone", "satellite"), "S2D": ("satellite", "drone")}
PROTOCOLS = ("official", "query_locations")


@dataclass
class Side:
    view: str
    rows: np.ndarray          # row indices into the view's arrays
    ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def selection(self) -> np.ndarray:
        """Position -> view row (what StoredEmbeddings and the fingerprints index)."""
        return self.rows

    def labels_at(self, positions) -> np.ndarray:
        return self.labels[positions]

    def ids_at(self, positions) -> np.ndarray:
        return self.ids[positions]


class StoredSide:
    """A side as its rows' selection in the store (store.RowSelection), not as arrays: a gallery
    of millions in the driver of an index build, which needs none of its rows, names or labels
    (issue 23). `labels_at` / `ids_at` read the positions asked (an approximate index's answers);
    `.rows`, `.ids`, `.labels` read them whole on first use and keep them (the exact score and
    the pictures need them all). `junk_unless`: labels outside it read as -1 (query_locations)."""

    def __init__(self, view: str, selection, junk_unless: np.ndarray | None = None):
        self.view, self.selection, self.junk_unless = view, selection, junk_unless
        self._whole: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.selection)

    def _read_whole(self, name: str) -> np.ndarray:
        if name not in self._whole:
            every = np.arange(len(self.selection))
            self._whole[name] = {"rows": lambda: np.asarray(self.selection), "ids": lambda: self.ids_at(every),
                                 "labels": lambda: self.labels_at(every)}[name]()
        return self._whole[name]

    rows = property(lambda self: self._read_whole("rows"))
    ids = property(lambda self: self._read_whole("ids"))

    @property
    def labels(self) -> np.ndarray:
        return self._read_whole("labels")

    @labels.setter
    def labels(self, value: np.ndarray) -> None:
        self._whole["labels"] = value

    def labels_at(self, positions) -> np.ndarray:
        if "labels" in self._whole:
            return self._whole["labels"][positions]
        labels = self.selection.values("labels", positions).astype(np.int64)
        if self.junk_unless is not None:
            labels = np.where(np.isin(labels, self.junk_unless), labels, -1)
        return labels

    def ids_at(self, positions) -> np.ndarray:
        return self._whole["ids"][positions] if "ids" in self._whole else self.selection.values("ids", positions)


@dataclass
class DirectionSet:
    mode: str
    subset: str               # "all", or e.g. "altitude=150"
    query: Side
    gallery: Side | StoredSide


def _side(meta: dict, view: str, flag: str, keep: np.ndarray | None = None) -> Side:
    mask = meta[flag] & (meta["errors"] == "")
    if keep is not None:
        mask &= keep
    rows = np.flatnonzero(mask)
    return Side(view, rows, meta["ids"][rows], meta["labels"][rows])


def direction_sets(root, dataset: str, mode: str, protocol: str = "official") -> list[DirectionSet]:
    """The direction's query and gallery sides, per altitude where the drone view has one. The
    queries are read whole (they are embedded and searched whole); the gallery is a StoredSide:
    nothing a gallery row long is held until asked for."""
    if mode not in MODES:
        raise st.StoreError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if protocol not in PROTOCOLS:
        raise st.StoreError(f"unknown gallery_protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    q_view, g_view = MODES[mode]
    meta = st.read_view(root, dataset, "test", q_view)
    altitude = (meta["extra"].get("altitude") if q_view == "drone"
                else st.extra_values(root, dataset, "test", "drone", "altitude"))
    heights = None if altitude is None else np.unique(altitude)
    subsets = [("all", None)] if heights is None else [(f"altitude={int(h)}", h) for h in heights]
    sets = []
    for name, h in subsets:
        query = _side(meta, q_view, "in_query", None if h is None or q_view != "drone" else altitude == h)
        keep = ("altitude", h) if h is not None and g_view == "drone" else None
        gallery = StoredSide(g_view, st.view_selection(root, dataset, "test", g_view, "in_gallery", keep))
        if len(query) == 0 or len(gallery) == 0:
            raise st.StoreError(f"{mode} {name} of {dataset}: {len(query)} queries and "
                                f"{len(gallery)} gallery items; both must be non-empty")
        if protocol == "query_locations":  # gallery items of locations without a query: junk
            gallery.junk_unless = np.unique(query.labels)
        sets.append(DirectionSet(mode, name, query, gallery))
    return sets


def streamed_good_counts(query_labels: np.ndarray, gallery, chunk: int = 1 << 18) -> np.ndarray:
    """metrics.good_counts(query_labels, gallery.labels): each query's number of gallery items of
    its label (junk, -1, never good), the gallery's labels read a chunk at a time (a side or a
    StoredSide), never whole."""
    query_labels = np.asarray(query_labels, np.int64)
    wanted = np.unique(query_labels[query_labels != -1])
    counts = np.zeros(len(wanted), np.int64)
    for start in range(0, len(gallery) if len(wanted) else 0, chunk):   # (no goods to count: none)
        labels = gallery.labels_at(np.arange(start, min(start + chunk, len(gallery))))
        at = np.clip(np.searchsorted(wanted, labels), 0, len(wanted) - 1)
        counts += np.bincount(at[wanted[at] == labels], minlength=len(wanted))
    if not len(wanted):
        return np.zeros(len(query_labels), np.int64)
    at = np.clip(np.searchsorted(wanted, query_labels), 0, len(wanted) - 1)
    return np.where(wanted[at] == query_labels, counts[at], 0)   # (-1 is not wanted: 0)


def gallery_side(root, dataset: str, mode: str, subset: str) -> StoredSide:
    """The gallery of `mode`'s `subset` (a direction set's name) alone, as direction_sets gives
    it, without reading the query view (a worker of an index build: S2D's queries are the
    satellite view, a map's every tile)."""
    g_view, keep = MODES[mode][1], None
    if g_view == "drone" and subset != "all":
        heights = st.extra_values(root, dataset, "test", "drone", "altitude")
        keep = next((("altitude", h) for h in ([] if heights is None else heights) if f"altitude={int(h)}" == subset), None)
        if keep is None:
            raise st.StoreError(f"{mode} of {dataset} has no subset {subset!r} (its drone view's altitudes changed)")
    return StoredSide(g_view, st.view_selection(root, dataset, "test", g_view, "in_gallery", keep))


def raw_embedding(layer_desc: dict[int, np.ndarray], view: str) -> np.ndarray:
    """`heads=none`: each layer's descriptor L2-normalised, concatenated, L2-normalised."""
    parts = [layer_desc[k] for k in sorted(layer_desc)]
    return _normalise_layers_(np.concatenate(parts, axis=1, dtype=np.float32), [p.shape[1] for p in parts])


class StoredEmbeddings:
    """Embeddings of some rows of a view, computed lazily in row chunks from the store, so that
    a gallery of millions is never held in memory at once. Supports `.shape`, `e[a:b]` and
    `e[int_array]` (what the streamed metrics read). Heads that embed an image as K vectors
    (best of maps: (n, K, d)) give rows of K * d and `vectors` = K (retrieval/multi_vector.py)."""

    def __init__(self, root, dataset: str, split: str, side: Side, layers: list[int],
                 embed: Callable[[dict, str], np.ndarray] = raw_embedding, dim: int | None = None):
        self.arrays = {k: _layer_array(root, dataset, split, side.view, k) for k in layers}
        n = root[f"{st.view_path(dataset, split, side.view)}/labels"].shape[0]
        for k, array in self.arrays.items():
            if array.ndim != 2 or array.shape[0] != n:
                raise st.StoreError(f"{array.path} has shape {array.shape} but the view has {n} "
                                    "labels: every array of a view needs one row per image")
        self.rows, self.view, self.embed = side.selection, side.view, embed   # position -> view row
        probe = embed({k: np.ones((1, a.shape[1]), np.float32) for k, a in self.arrays.items()}, side.view)
        self.vectors = probe.shape[1] if probe.ndim == 3 else 1
        self.dim = dim or int(np.prod(probe.shape[1:]))
        self.shape = (len(self.rows), self.dim)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def chunks(self) -> tuple[int, int] | None:
        """Rows per storage chunk of the stored layers: reads of whole chunks are the cheapest."""
        unit = max(row_chunk(a) for a in self.arrays.values())
        return (unit, self.dim) if unit else None

    def __getitem__(self, key) -> np.ndarray:
        rows = np.atleast_1d(self.rows[key])
        return self.read_into(key, np.empty((len(rows), self.dim), np.float32))

    def read_into(self, key, out: np.ndarray) -> np.ndarray:
        """Embeddings of rows `key` written into `out` (float32, C-contiguous), read from the
        store in bounded requests (store/rows.py read_rows). Raw descriptors go straight into their
        columns of `out` and are normalised there: no per-layer copies, no concatenation."""
        rows = np.atleast_1d(self.rows[key])
        if len(rows) > 1 and np.any(rows[1:] < rows[:-1]):  # the store is read in row order
            order = np.argsort(rows, kind="stable")
            out[order] = self._fill(rows[order], np.empty_like(out))
            return out
        return self._fill(rows, out)

    def _fill(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.embed is raw_embedding:
            return _raw_embedding_into(self.arrays, rows, out)
        out[:] = self.embed({k: read_rows(a, rows) for k, a in self.arrays.items()}, self.view).reshape(len(rows), -1)
        return out

    def materialise(self, chunk: int = 65536) -> np.ndarray:
        """Every row in memory: (n, dim), or (n, K, d) for items of K vectors."""
        out = np.empty(self.shape, np.float32)
        for start in range(0, len(self), chunk):
            self.read_into(slice(start, start + chunk), out[start:start + chunk])
        return out if self.vectors == 1 else out.reshape(len(self), self.vectors, -1)


def _normalise_layers_(out: np.ndarray, widths: list[int]) -> np.ndarray:
    """raw_embedding in place: each layer's columns L2-normalised (norms clamped at 1e-12, as
    F.normalize), then the whole row. The concatenation's norm follows from the layers' norms,
    so each layer takes one read (its norms) and one scaling pass, in numpy: this runs in the
    reader thread of a scoring process that never imports torch, on ~30 MB slabs."""
    bounds = np.cumsum([0, *widths])
    parts = [out[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    norms = [np.sqrt(np.einsum("ij,ij->i", p, p)) for p in parts]
    clamped = [np.maximum(n, np.float32(1e-12)) for n in norms]
    whole = np.sqrt(sum(np.square(n / c) for n, c in zip(norms, clamped)))  # ~sqrt(#layers)
    np.maximum(whole, np.float32(1e-12), out=whole)
    for p, c in zip(parts, clamped):
        p *= (np.float32(1.0) / (c * whole))[:, None]
    return out


def _raw_embedding_into(arrays: dict, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """raw_embedding of `rows`, each layer read into its columns of `out`, normalised in place."""
    col = 0
    for k in sorted(arrays):
        width = arrays[k].shape[1]
        read_rows(arrays[k], rows, out[:, col:col + width])
        col += width
    return _normalise_layers_(out, [arrays[k].shape[1] for k in sorted(arrays)])


def _layer_array(root, dataset, split, view, layer):
    path = f"{st.view_path(dataset, split, view)}/layer_{layer}/desc"
    if path not in root:
        raise st.StoreError(f"the store has no {path}; score with layers= among those extracted "
                            f"({st.read_view_layers(root, dataset, split, view)})")
    return st.layer_array(root, dataset, split, view, layer)  # reads name damaged blocks
