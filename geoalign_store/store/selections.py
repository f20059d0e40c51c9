"""The rows of a view that a direction reads, described without an array the view's length
(issue 23: a gallery of 6e7 tiles held as rows, names and labels took ~40 B a tile of the
index driver's memory): a view's flag (`in_gallery`, `in_query`), no decoding error, and
optionally one value of an `extra/` array (SUES-200's altitude), read a step of rows at a time.

A `RowSelection` holds, per step of view rows, how many are selected; position p (0 .. len-1,
in row order, as faiss ids and the embeddings number them) maps to its view row by reading the
step that holds it. A view of which every row is selected (a map gallery, the usual case) is
known as such and maps positions to rows without reading anything. Values of per-image arrays
(labels, ids) are read for the positions asked, not for the whole view.
"""

from __future__ import annotations

import numpy as np
import zarr

from .errors import StoreError
from .integrity import CHUNK_FAILURES, LISTING_CHANGED, listing_changes
from .layout import TEXT, list_views, read_meta, rewrite_view_hint, view_path
from .rows import row_chunk

STEP_ROWS = 1 << 18   # view rows read at a time (a step's flags: 256 KB; its errors as text: ~4 MB)


class RowSelection:
    """The selected rows of a view as positions: len(), [slice] and [int array] -> view rows
    (int64), `values(name, positions)` -> a per-image array's values at those positions."""

    def __init__(self, group: zarr.Group, flag: str, extra: tuple[str, object] | None = None):
        self.group, self.flag, self.extra = group, flag, extra
        if "labels" not in group:
            read_meta(group, "labels")   # raises, naming the missing array
        self.n_view = group["labels"].shape[0]
        changed = listing_changes(group)   # (chunk tails only: milliseconds at any size)
        if changed:
            raise StoreError(f"{group.path}/{changed[0]}: {LISTING_CHANGED}; {rewrite_view_hint(group)}")
        # a complete view records its failures (n_failed); without any, its errors are all empty
        self.no_errors = "errors" not in group or bool(group.attrs.get("complete") and group.attrs.get("n_failed") == 0)
        names = [n for n in (flag, "errors", extra and f"extra/{extra[0]}") if n and n in group]
        unit = max([row_chunk(group[n]) for n in names] + [1])
        self.step = max(unit, STEP_ROWS // unit * unit)   # whole storage chunks a step
        read_nothing = flag not in group and self.no_errors and extra is None   # every row, known unread
        counts = [] if read_nothing else [int(self._mask(a, min(a + self.step, self.n_view)).sum())
                                          for a in range(0, self.n_view, self.step)]
        # position of each step's first selected row (step s: view rows [s x step, (s + 1) x step))
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64) if counts else None
        self.size = self.n_view if self.starts is None else int(self.starts[-1])
        self.everything = self.size == self.n_view

    def __len__(self) -> int:
        return self.size

    def _mask(self, a: int, b: int) -> np.ndarray:
        """Which of view rows [a, b) are selected."""
        mask = _meta_rows(self.group, self.flag, a, b).astype(bool) if self.flag in self.group else np.ones(b - a, bool)
        if not self.no_errors:
            mask &= _meta_rows(self.group, "errors", a, b).astype(TEXT, copy=False) == ""
        if self.extra is not None:
            mask &= _meta_rows(self.group, f"extra/{self.extra[0]}", a, b) == self.extra[1]
        return mask

    def _step_rows(self, s: int) -> np.ndarray:
        a = s * self.step
        return np.flatnonzero(self._mask(a, min(a + self.step, self.n_view))).astype(np.int64) + a

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, stride = key.indices(self.size)
            if stride != 1:
                return self[np.arange(start, stop, stride)]
            return self.rows(start, stop)
        positions = np.asarray(key, dtype=np.int64)
        if positions.ndim == 0:
            return self[positions[None]][0]
        if len(positions) and (positions.min() < -self.size or positions.max() >= self.size):
            raise IndexError(f"positions out of range for a selection of {self.size} rows")
        positions = np.where(positions < 0, positions + self.size, positions)
        return positions.copy() if self.everything else self._map(positions)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """View rows of positions [start, stop): the steps that hold them read, no others."""
        start, stop = max(0, start), min(stop, self.size)
        if stop <= start:
            return np.empty(0, np.int64)
        if self.everything:
            return np.arange(start, stop, dtype=np.int64)
        return self._map(np.arange(start, stop, dtype=np.int64))

    def _map(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty(len(positions), np.int64)
        step_of = np.searchsorted(self.starts, positions, side="right") - 1
        for s in np.unique(step_of):
            where = np.flatnonzero(step_of == s)
            out[where] = self._step_rows(int(s))[positions[where] - self.starts[s]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every selected row (what a caller needing them all, e.g. the exact score, reads)."""
        whole = self.rows(0, self.size)
        return whole if dtype is None else whole.astype(dtype)

    def values(self, name: str, positions) -> np.ndarray:
        """A per-image array (`labels`, `ids`) at the rows of `positions` (any order), read in
        bounded requests of whole chunks, ids as numpy strings."""
        rows = self[np.asarray(positions, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")
        out = _read_sorted(self.group, name, rows[order])
        result = np.empty_like(out)
        result[order] = out
        return result


def _read_sorted(group: zarr.Group, name: str, rows: np.ndarray) -> np.ndarray:
    """group[name][rows] (rows ascending) a storage chunk at a time; text as numpy strings."""
    array = group[name]
    unit = row_chunk(array) or max(1, array.shape[0])
    parts, i = [_meta_rows(group, name, 0, 0)], 0
    while i < len(rows):
        a = int(rows[i]) // unit * unit
        j = int(np.searchsorted(rows, a + unit, side="left"))
        parts.append(_meta_rows(group, name, a, a + unit)[rows[i:j] - a])
        i = j
    out = np.concatenate(parts)
    return out.astype(TEXT, copy=False) if out.dtype.kind in "OTU" else out


def _meta_rows(group: zarr.Group, name: str, a: int, b: int) -> np.ndarray:
    """Rows [a, b) of a view's per-image array; damage named as read_meta names it."""
    try:
        return np.asarray(group[name][a:b])
    except CHUNK_FAILURES as e:
        raise StoreError(f"{group.path}/{name} is damaged and cannot be read ({type(e).__name__}: "
                         f"{str(e)[:100]}); {rewrite_view_hint(group)} (`geoalign check` lists every "
                         "damaged array)") from None


def view_selection(root: zarr.Group, dataset: str, split: str, view: str, flag: str,
                   extra: tuple[str, object] | None = None) -> RowSelection:
    path = view_path(dataset, split, view)
    if path not in root:
        raise StoreError(f"the store has no {path} (it has: {', '.join(list_views(root)) or 'nothing'})")
    return RowSelection(root[path], flag, extra)


def extra_values(root: zarr.Group, dataset: str, split: str, view: str, name: str) -> np.ndarray | None:
    """The distinct values of a view's `extra/<name>` (None when absent), read a step at a time."""
    group = root[view_path(dataset, split, view)]
    if f"extra/{name}" not in group:
        return None
    n, found = group[f"extra/{name}"].shape[0], set()
    unit = row_chunk(group[f"extra/{name}"]) or max(1, n)
    step = max(unit, STEP_ROWS // unit * unit)
    for a in range(0, n, step):
        found.update(np.unique(_meta_rows(group, f"extra/{name}", a, min(a + step, n))).tolist())
    return np.array(sorted(found))
