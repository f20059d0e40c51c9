"""The array operations of the scorers, on numpy (the CPU) or on torch (a GPU).

Why two backends: on a CPU numpy's BLAS computes the similarity blocks as fast as torch's
(1.06 s vs 1.09 s for University-1652 D2S on 2 cores), and a scoring process that never imports
torch starts ~1.4 s sooner: a third of the whole run at University-1652 size. On a GPU the blocks,
top-k and rank counting run in torch. `metrics.score_retrieval` and
`query_streaming.score_streamed_queries` are written once against this interface; the tests run
both backends on the CPU against the official loop, so the GPU code path is checked without one.
torch is imported only when a TorchOps is made.
"""
from __future__ import annotations

import numpy as np


def to_numpy(x) -> np.ndarray:
    """An array-like (numpy, torch on any device, zarr) as numpy, without importing torch."""
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def ops_for(device=None, backend: str | None = None):
    """NumpyOps for the CPU, TorchOps for anything else; backend="torch" forces torch (tests)."""
    name = "cpu" if device is None else str(device)
    if backend == "torch" or (backend is None and name != "cpu"):
        return TorchOps(name)
    return NumpyOps()


class NumpyOps:
    """Blocks as numpy arrays; rank counting by comparison or by sorted keys (no torch)."""

    def asarray(self, x, dtype) -> np.ndarray:
        return np.ascontiguousarray(to_numpy(x), dtype=dtype)

    def empty(self, n, dtype):
        return np.empty(n, dtype)

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype)

    def numpy(self, x) -> np.ndarray:
        return x

    def matmul(self, a, b, out):
        """a @ b.T into out."""
        return np.matmul(a, b.T, out=out)

    def amax(self, x, axes, out):
        """The maximum over `axes`, into out."""
        return np.amax(x, axis=axes, out=out)

    def index(self, idx):
        return idx

    def topk(self, s, k):
        """(values, columns) of the k largest entries of each row, best first; in row pieces, so
        that argpartition's int64 positions stay ~TEMP_BYTES whatever the block's size."""
        k = min(k, s.shape[1])
        vals = np.empty((s.shape[0], k), s.dtype)
        cols = np.empty((s.shape[0], k), np.int64)
        for a, b in _row_pieces(s.shape, 8):
            part = np.argpartition(s[a:b], s.shape[1] - k, axis=1)[:, -k:] if k < s.shape[1] else \
                np.broadcast_to(np.arange(k), (b - a, k))
            v = np.take_along_axis(s[a:b], part, 1)
            order = np.argsort(-v, axis=1, kind="stable")
            vals[a:b], cols[a:b] = np.take_along_axis(v, order, 1), np.take_along_axis(part, order, 1)
        return vals, cols

    def gather(self, s, idx):
        return np.take_along_axis(s, idx, 1)

    def cat(self, parts):
        return np.concatenate(parts, axis=1)

    def sort_desc(self, x):
        return -np.sort(-x, axis=1)

    def count_greater(self, s, col):
        """#{j : s[q, j] > col[q]} per row (the comparison's booleans in row pieces)."""
        out = np.empty(s.shape[0], np.int64)
        for a, b in _row_pieces(s.shape, 1):
            out[a:b] = np.count_nonzero(s[a:b] > col[a:b], axis=1)
        return out

    def count_above_many(self, s, goods):
        """#{j : s[q, j] > goods[q, i]} for many goods per row (goods: descending, -inf padding,
        whose counts are ignored). Only the entries above a row's lowest good can count: those
        few are sorted (as integer keys, all rows at once), not the whole row."""
        if s.dtype != np.float32:  # float64 (references, tests): by comparison, O(slots x n)
            return np.stack([self.count_greater(s, goods[:, i:i + 1]) for i in range(goods.shape[1])], 1)
        finite = np.where(np.isneginf(goods), np.inf, goods)
        lowest = finite.min(axis=1, initial=np.inf).astype(np.float32)
        out = np.empty(goods.shape, np.int64)
        for a, b in _row_pieces(s.shape, 32):  # per candidate: mask, rows, cols, value, key
            out[a:b] = _count_above_lowest(s[a:b], goods[a:b], lowest[a:b])
        return out


TEMP_BYTES = 32 << 20  # temporaries of one row piece (a block's int64 positions would be 2x it)


def _row_pieces(shape, bytes_per_element: int):
    """Row ranges of a block whose temporaries (bytes_per_element each) stay ~TEMP_BYTES."""
    rows = max(1, TEMP_BYTES // max(1, shape[1] * bytes_per_element))
    return [(a, min(a + rows, shape[0])) for a in range(0, shape[0], rows)]


def _count_above_lowest(s: np.ndarray, goods: np.ndarray, lowest: np.ndarray) -> np.ndarray:
    """count_above_many for a row piece: the entries above each row's lowest good, as
    order-preserving int keys offset by row, sorted once; one searchsorted finds every good."""
    rows, cols = np.nonzero(s > lowest[:, None])
    keys = _ordered_keys(s[rows, cols] + np.float32(0.0)) + (rows << 32)  # + 0.0: -0.0 -> +0.0
    keys.sort()
    offset = (np.arange(len(s), dtype=np.int64) << 32)[:, None]
    at = np.searchsorted(keys, (_ordered_keys(goods + np.float32(0.0)) + offset).ravel(), side="right")
    row_end = np.cumsum(np.bincount(rows, minlength=len(s)))[:, None]
    return row_end - at.reshape(goods.shape)


def _ordered_keys(x: np.ndarray) -> np.ndarray:
    """float32 -> int64 in [0, 2^32), ordered as the floats (infinities included, no NaN; -0.0
    sorts just below +0.0). Negative floats' bits order backwards, so their magnitude is flipped."""
    bits = x.view(np.int32).astype(np.int64)
    return np.where(bits < 0, (1 << 31) - 1 - (bits & 0x7FFFFFFF), bits + (1 << 31))


class TorchOps:
    """The same operations on a torch device."""

    def __init__(self, device: str):
        import torch
        self.torch, self.device = torch, torch.device(device)

    def asarray(self, x, dtype):
        t = self.torch.as_tensor(x) if hasattr(x, "detach") else self.torch.from_numpy(np.ascontiguousarray(x))
        return t.detach().to(self.device, self._dtype(dtype)).contiguous()

    def _dtype(self, dtype):
        return self.torch.float64 if np.dtype(dtype) == np.float64 else (
            self.torch.int64 if np.dtype(dtype) == np.int64 else self.torch.float32)

    def empty(self, n, dtype):
        return self.torch.empty(n, dtype=self._dtype(dtype), device=self.device)

    def full(self, shape, value, dtype):
        return self.torch.full(shape, value, dtype=self._dtype(dtype), device=self.device)

    def numpy(self, x) -> np.ndarray:
        return x.cpu().numpy()

    def matmul(self, a, b, out):
        return self.torch.matmul(a, b.T, out=out)

    def amax(self, x, axes, out):
        return self.torch.amax(x, dim=axes, out=out)

    def index(self, idx):
        return self.torch.from_numpy(np.asarray(idx)).to(self.device)

    def topk(self, s, k):
        return self.torch.topk(s, min(k, s.shape[1]), dim=1)

    def gather(self, s, idx):
        return s.gather(1, idx)

    def cat(self, parts):
        return self.torch.cat(parts, dim=1)

    def sort_desc(self, x):
        return self.torch.sort(x, dim=1, descending=True).values.contiguous()

    def count_greater(self, s, col):
        return (s > col).sum(1)

    def count_above_many(self, s, goods):
        s = self.torch.sort(s, dim=1).values
        return s.shape[1] - self.torch.searchsorted(s, goods.contiguous(), right=True)
