"""The training sample's seeded rows without an array the gallery long (issue 23).

`np.random.Generator.choice(n, size, replace=False)` draws by a tail shuffle when size > n / 50
(and n > 10,000): it allocates `arange(n)` (8 B a tile: 480 MB at 6e7 tiles, the sample of 1.3M
rows being above n / 50 there) and swaps its last `size` entries with random earlier ones.
`choice_without_replacement` makes the same swaps on a dict of the positions they touch, with
numpy's own bounded draws (Lemire's method on the PCG64 stream's 32-bit halves, as numpy's
`random_bounded_uint64` for ranges under 2^32), so it returns the very rows and leaves the
generator in the very state numpy would: the index trained on them is the same index. It holds
~150 B a sample row instead of 8 B a tile, so it is used where that is less (galleries of ~9e6
to 6.4e7 tiles; at 6e7 ~200 MB instead of 480 MB), and takes ~4 us of Python a sample row
(~5 s at 6e7, beside the sample's read of 184 GB). Below
n / 50 numpy uses Floyd's algorithm (memory of the sample only), and that is called as it is.
"""
from __future__ import annotations

import numpy as np

LOW = 0xFFFFFFFF
SWAP_BYTES = 150   # what the swaps' dict holds a sample row at its peak (tracemalloc: 132-146 B)


def tail_shuffled(n: int, size: int) -> bool:
    """Whether numpy's choice(n, size, replace=False) takes its tail shuffle."""
    return n > 10000 and size > n // 50


def choice_without_replacement(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """rng.choice(n, size, replace=False): the same rows in the same order, the same state after;
    numpy's own call where it holds less than the swaps here would (~SWAP_BYTES a sample row)."""
    if not (tail_shuffled(n, size) and 0 < size < n <= 1 << 32 and isinstance(rng.bit_generator, np.random.PCG64)) \
            or 8 * n <= SWAP_BYTES * size:
        return rng.choice(n, size, replace=False)
    words = _Words(rng.bit_generator)
    moved: dict[int, int] = {}   # position -> value, where a swap changed it (else its own index)
    for i in range(n - 1, n - size - 1, -1):   # numpy's swaps of the tail, each with a drawn partner
        j = _bounded(words, i)
        moved[i], moved[j] = moved.get(j, j), moved.get(i, i)
    words.settle()
    return np.fromiter((moved.get(k, k) for k in range(n - size, n)), np.int64, size)


def _bounded(words: "_Words", top: int) -> int:
    """A uniform integer in [0, top] (top < 2^32 - 1), Lemire's method with rejection."""
    span = top + 1
    m = words.next() * span
    if (m & LOW) < span:
        threshold = (LOW - top) % span
        while (m & LOW) < threshold:
            m = words.next() * span
    return m >> 32


class _Words:
    """The PCG64 generator's 32-bit draws (next_uint32: the low half of a 64-bit draw, then its
    high half, kept in the state's `has_uint32` / `uinteger`), read ahead in batches; settle()
    puts the generator where exactly the words used would have left it."""

    def __init__(self, bitgen):
        self.bitgen, self.start = bitgen, bitgen.state
        self.buffer = [self.start["uinteger"]] if self.start["has_uint32"] else []
        self.at = self.used = 0   # (in the buffer, in all)

    def next(self) -> int:
        if self.at == len(self.buffer):
            self.buffer, self.at = [half for raw in self.bitgen.random_raw(1 << 14).tolist()
                                    for half in (raw & LOW, raw >> 32)], 0
        self.at, self.used = self.at + 1, self.used + 1
        return self.buffer[self.at - 1]

    def settle(self) -> None:
        kept = 1 if self.start["has_uint32"] else 0
        halves = max(0, self.used - kept)
        self.bitgen.state = self.start
        raws = self.bitgen.random_raw(-(-halves // 2)) if halves else np.empty(0, np.uint64)
        state = self.bitgen.state
        state["has_uint32"] = halves % 2
        state["uinteger"] = int(raws[-1]) >> 32 if len(raws) else self.start["uinteger"]
        self.bitgen.state = state
