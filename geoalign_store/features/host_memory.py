"""Torch's large CPU tensors on transparent huge pages (Linux): `use_huge_pages`.

Every large temporary of a fit-heads (a held-out part's embeddings in one candidate's space is
~100 MB at University-1652 size, its float64 flight sums twice that) is a fresh `mmap` from
glibc, unmapped when freed, so it is paid for again in page faults, the kernel zeroing each 4 KiB
page: thousands of them, a quarter of the fit's CPU time spent in the kernel. Numpy already
asks for huge pages on its large arrays; torch does when `THP_MEM_ALLOC_ENABLE=1` (c10's CPU
allocator: allocations of 2 MiB and more aligned to 2 MiB and `madvise(MADV_HUGEPAGE)`), 512
times fewer faults. The resident memory is the same (a page is still only touched when used), and so are the
numbers computed, bit for bit. `benchmarks/fit.py --pages both` measures it (README, Heads: Time).

Tuning glibc's malloc instead to keep freed memory (M_MMAP_MAX = 0) was faster (0.82 of the
time, against 0.96), but torch's aligned allocations (`posix_memalign`) then never reuse a freed
block of their own size and the heap grows by one block per allocation: measured and refused.

Torch reads the variable once, at its first allocation: this must run before torch is imported.
The CLI and the benchmarks call it at start, never on import. Left alone where the user set
`THP_MEM_ALLOC_ENABLE` (`=0` opts out), off Linux, and once torch is loaded.
"""

from __future__ import annotations

import os
import sys

SWITCH = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> bool:
    """Set torch's huge-page switch as the module docstring says; True when this set it."""
    if SWITCH in os.environ or not sys.platform.startswith("linux") or "torch" in sys.modules:
        return False
    os.environ[SWITCH] = "1"
    return True
