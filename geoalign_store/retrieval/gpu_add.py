"""A shard's rows added on a GPU (faiss-gpu, issue 23): the trained index's IVF-PQ part cloned
to the GPU (faiss.index_cpu_to_gpu), each chunk reduced on the CPU by the index's own transform
(PCA / OPQ, as IndexPreTransform.add applies it) and added there, then the filled inverted lists
brought back (index_gpu_to_cpu) into the very trained index read from trained.faiss: the shard
is written by the same code, in the same format, as a CPU shard, and merged the same way.

What faiss's GPU IVF-PQ cannot take as built is handled on purpose, not left to a C++ abort:
- an HNSW coarse quantizer (the rule's from nlist 2^14) has no GPU version: the GPU copy is
  given a flat quantizer holding the same centroids. A row then goes to its exact nearest
  centroid where the CPU's HNSW finds an approximate one, so a few rows may sit in another
  list than a CPU build puts them (benchmarks/gpu.py measures the agreement); the shard keeps
  the HNSW, which is what searches.
- PQ codes of other than 8 bits (the rule's for galleries under ~40 x 256 rows) or a number of
  sub-quantizers the GPU has no kernel for: refused before any GPU call (`gpu_refusal`, a
  GpuAddError), the shard added on the CPU, the reason reported.
- the GPU's lookup tables must fit its shared memory (float32 tables stop at ~48 sub-quantizers
  at 8 bits): the clone asks for float16 tables, which only a GPU search would use; adding
  computes none, so the codes do not depend on it.
- cuVS (faiss-gpu-cuvs builds) is not asked for: faiss's own GPU IVF-PQ converts its lists back
  to the CPU layout; an option this faiss lacks is left unset.
Any other GPU failure (out of memory, a driver error) is a GpuAddError naming it, and the caller
redoes the shard on the CPU.
"""

from __future__ import annotations

import faiss

from .index import gpu_resources   # one StandardGpuResources a GPU a process: reserved once, not a shard

GPU_PQ_BYTES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)  # faiss GPU IVF-PQ's code sizes


class GpuAddError(RuntimeError):
    """faiss's GPU could not add a shard (the message says why); it is redone on the CPU."""


def gpu_refusal(index) -> str | None:
    """Why faiss's GPU IVF-PQ cannot add to `index` as built; None when it can."""
    pq = faiss.downcast_index(faiss.extract_index_ivf(index)).pq
    if pq.nbits != 8:
        return f"its PQ codes have {pq.nbits} bits; faiss's GPU IVF-PQ takes 8"
    if pq.M not in GPU_PQ_BYTES:
        return (f"its PQ has {pq.M} sub-quantizers; faiss's GPU IVF-PQ takes "
                + ", ".join(map(str, GPU_PQ_BYTES)))
    return None


def _flat_centroids(ivf):
    """A flat L2 quantizer holding the centroids of ivf's coarse quantizer (HNSW's storage)."""
    flat = faiss.IndexFlatL2(ivf.d)
    flat.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
    return flat


class GpuAdder:
    """`index` (trained, empty, read from trained.faiss) filled on GPU `gpu`: add(x, ids) a chunk
    at a time, then filled() -> `index` holding the rows, its own quantizer kept."""

    def __init__(self, index, gpu: int):
        why = gpu_refusal(index)
        if why:
            raise GpuAddError(f"not added on the GPU: {why}")
        self.index, self.ivf = index, faiss.extract_index_ivf(index)
        chain = index.chain if isinstance(index, faiss.IndexPreTransform) else None
        self.transforms = [faiss.downcast_VectorTransform(chain.at(i)) for i in range(chain.size() if chain else 0)]
        self.resources = self._guarded(gpu_resources, gpu)
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True     # search tables only (adding computes none): lets m <= 96 pass
        if hasattr(options, "use_cuvs"):
            options.use_cuvs = False  # faiss's own GPU IVF-PQ: lists converted back to the CPU layout
        self.gpu_ivf = self._guarded(self._clone, gpu, options)

    def _clone(self, gpu: int, options):
        if isinstance(faiss.downcast_index(self.ivf.quantizer), faiss.IndexFlat):
            return faiss.index_cpu_to_gpu(self.resources, gpu, self.ivf, options)
        own, flat = self.ivf.quantizer, _flat_centroids(self.ivf)
        self.ivf.quantizer = flat     # for the clone only: the CPU index keeps its HNSW
        try:
            return faiss.index_cpu_to_gpu(self.resources, gpu, self.ivf, options)
        finally:
            self.ivf.quantizer = own

    def add(self, x, ids) -> None:
        for transform in self.transforms:
            x = transform.apply(x)
        self._guarded(self.gpu_ivf.add_with_ids, x, ids)

    def filled(self):
        cpu = self._guarded(faiss.index_gpu_to_cpu, self.gpu_ivf)   # owns what `back` points into
        back = faiss.extract_index_ivf(cpu)
        self.ivf.replace_invlists(back.invlists, True)   # the lists change owner: ivf frees them
        back.own_invlists = False
        self.ivf.ntotal = self.index.ntotal = back.ntotal
        self.gpu_ivf = None
        return self.index

    @staticmethod
    def _guarded(call, *args):
        try:
            return call(*args)
        except RuntimeError as e:   # faiss's C++ exceptions (FaissException) arrive as RuntimeError
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise GpuAddError(f"faiss-gpu failed ({first[:200]})") from e
