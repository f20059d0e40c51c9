"""IVF-PQ parameters from the gallery's size and dimension: the rule, and what cannot fit.

The rule (after autofaiss's `external/optimize.py`, with the limits FAISS's k-means imposes):

- `nlist` (coarse centroids): the power of two nearest 4 sqrt(N), at most N / 39 (FAISS warns
  below 39 training points a centroid), at least 1, at most 2^18. That gives 4096 at 1e6,
  16384 at 1e7, 32768 at 6e7 and 131072 at 1e9 (autofaiss: 2^14-2^16 for 1-10M, 2^16-2^18 above).
- training sample: `train_per_centroid` (40; autofaiss's range is 30-256) points per centroid of
  the larger of the coarse and the PQ codebooks, seeded, at most N rows.
- `d_out` (the dimension after the reduction): min(d, 256), a multiple of 4.
- `reduce`: `pca` (PCA to d_out followed by a random rotation, FAISS's `PCAR{d_out}`, so the
  PQ's sub-quantizers share the variance) when d_out < d, else `none`. `opq` (autofaiss's
  learned `OPQ{m}_{d}`) is there on request: on 2 CPU cores its 50 x 4 PQ trainings take ~180 s
  for 20,000 x 96-d, minutes more than PCA at 768-d for a recall that re-ranking recovers anyway.
- `m` (PQ sub-quantizers, = bytes a code at 8 bits): the largest divisor of d_out that is at most
  min(64, d_out / 4) (4+ dimensions a sub-quantizer): 64 bytes + 8 for the id at d = 768.
- `nbits`: 8, fewer when the sample has under 256 points (2^nbits <= sample).
- `quantizer`: `flat`, or `hnsw` (HNSW32 over the centroids) from nlist 2^14 on, where a flat
  assignment of every added vector to every centroid dominates the build.
- `kmeans`: `flat` (one k-means of nlist centroids over the sample), or `two_level` from nlist
  2^14 on (faiss `contrib/clustering.py` `two_level_clustering`: sqrt(nlist) coarse clusters,
  then each split in proportion to its size). A flat k-means costs sample x nlist, which grows
  as N (sample ~ nlist ~ sqrt(N)): 16x the 1e6 one at 1e7, 1,024x at 1e9; two levels cost
  sample x 2 sqrt(nlist).
- `nprobe` (search only, not part of the index's fingerprint): nlist / 64 within [16, 128],
  <= nlist. The cap keeps one query's scan near 10^5 codes: at 1e7 x 768 (IVF16384) nprobe 256
  took 12.5 ms a query for a re-ranked 1-recall@1 of 1.000, nprobe 128 ~9 ms for 0.995 (2 cores).
- `sample`: `rows` (seeded rows of the whole gallery), or `chunks` (seeded rows of a seeded
  subset of the storage chunks, a quarter of each at most: a store decodes whole chunks, so
  `rows` reads the whole gallery twice, for the reduction and for the sample). Measured at
  1e7 x 768 (2 cores, cold cache): training 179 s -> 50 s, the re-ranked 1-recall@1
  0.995 -> 0.982 (the k-means sees a quarter of the gallery's chunks). `chunks` is for galleries
  whose reads dominate (6e7: two reads of 184 GB), on request.

Any key given in `index_params` replaces the rule's value; a combination that cannot be trained
on this gallery is a ConfigError (exit 2) naming what fits.
"""

from __future__ import annotations

import math

from ..config import ConfigError

IVFPQ_KEYS = ("nlist", "m", "nbits", "nprobe", "reduce", "d_out", "train_per_centroid", "quantizer", "kmeans",
              "sample")
SEARCH_KEYS = ("nprobe",)            # change what a search does, not what the index holds
REDUCTIONS = ("opq", "pca", "none")
QUANTIZERS = ("flat", "hnsw")
KMEANS = ("flat", "two_level")
SAMPLES = ("rows", "chunks")
NPROBE_MAX = 128                     # the rule's nprobe at most (see the docstring)
LARGE_NLIST = 2 ** 14                # from here on: HNSW coarse quantizer, two-level k-means
CHOICES = {"reduce": REDUCTIONS, "quantizer": QUANTIZERS, "kmeans": KMEANS, "sample": SAMPLES}
DEFAULT_LEFT_OUT = {"kmeans": "flat", "sample": "rows"}   # out of the fingerprint at these values
MIN_PER_CENTROID = 39                # FAISS's k-means warns below this
OPQ_MIN_TRAIN = 256                  # OPQMatrix trains an 8-bit PQ of its own


def rule_nlist(n: int) -> int:
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** round(math.log2(target))
    return int(max(1, min(nlist, 2 ** 18, _pow2_floor(n // MIN_PER_CENTROID))))


def _pow2_floor(x: int) -> int:
    return 1 if x < 1 else 2 ** int(math.log2(x))


def pq_m(d_out: int) -> int:
    """The largest divisor of d_out that is at most min(64, d_out // 4) (>= 1)."""
    cap = max(1, min(64, d_out // 4))
    return max(m for m in range(1, cap + 1) if d_out % m == 0)


def train_size(n: int, p: dict) -> int:
    return int(min(n, p["train_per_centroid"] * max(p["nlist"], 2 ** p["nbits"])))


def choose_ivfpq(n: int, d: int, given: dict | None = None) -> dict:
    """The IVF-PQ parameters for a gallery of n vectors of dimension d: the rule's, with
    `given` (index_params) replacing any of them; ConfigError when they cannot fit."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(IVFPQ_KEYS))
    if unknown:
        raise ConfigError(f"unknown ivfpq index_params {unknown}; valid: {', '.join(IVFPQ_KEYS)}")
    _check_types(given)
    p = {"nlist": given.get("nlist", rule_nlist(n)), "train_per_centroid": given.get("train_per_centroid", 40)}
    p["nbits"] = given.get("nbits", min(8, max(1, int(math.log2(max(min(n, 40 * p["nlist"]), 2))))))
    p["d_out"] = given.get("d_out", max(min(d, 256) // 4 * 4, min(d, 4)))
    p["reduce"] = given.get("reduce", _rule_reduce(n, d, p))
    p["m"] = given.get("m", pq_m(p["d_out"]))
    p["quantizer"] = given.get("quantizer", "hnsw" if p["nlist"] >= LARGE_NLIST else "flat")
    p["kmeans"] = given.get("kmeans", "two_level" if p["nlist"] >= LARGE_NLIST else "flat")
    p["sample"] = given.get("sample", "rows")
    p["nprobe"] = min(given.get("nprobe", min(max(16, p["nlist"] // 64), NPROBE_MAX)), p["nlist"])
    check_fit(n, d, p)
    return {k: p[k] for k in IVFPQ_KEYS}


def _rule_reduce(n: int, d: int, p: dict) -> str:
    return "pca" if p["d_out"] < d else "none"


def _check_types(given: dict) -> None:
    for key, value in given.items():
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"index_params.{key}={value!r}: takes {', '.join(CHOICES[key])}")
        elif key not in CHOICES and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"index_params.{key}={value!r}: must be a positive integer")


def check_fit(n: int, d: int, p: dict) -> None:
    """ConfigError naming what fits when `p` cannot be trained on n vectors of dimension d."""
    rule = f"(the rule picks nlist={rule_nlist(n)}, m={pq_m(min(d, 256) // 4 * 4 or d)})"
    if n < 1:
        raise ConfigError("empty gallery: cannot build an index over 0 embeddings")
    if p["nlist"] > n:
        raise ConfigError(f"ivfpq: nlist={p['nlist']} needs at least {p['nlist']} training points "
                          f"(one a centroid) but the gallery has {n}: nlist <= {n} fits, "
                          f"<= {max(1, n // MIN_PER_CENTROID)} trains well {rule}")
    if not 1 <= p["nbits"] <= 16 or 2 ** p["nbits"] > n:
        fits = min(16, int(math.log2(n))) if n > 1 else 0
        raise ConfigError(f"ivfpq: nbits={p['nbits']} needs 2^{p['nbits']} training points a "
                          f"sub-quantizer and at most 16 bits; the gallery has {n}: nbits <= {fits} fits")
    if p["d_out"] > d or (p["reduce"] == "none" and p["d_out"] != d):
        raise ConfigError(f"ivfpq: d_out={p['d_out']} with reduce={p['reduce']} on {d}-dimensional "
                          f"embeddings: d_out <= {d} with reduce=opq|pca, d_out={d} with reduce=none")
    if p["d_out"] % p["m"]:
        divisors = [m for m in range(1, min(p["d_out"], 128) + 1) if p["d_out"] % m == 0]
        raise ConfigError(f"ivfpq: m={p['m']} does not divide the PQ's dimension d_out={p['d_out']} "
                          f"(sub-quantizers split it evenly): m in {divisors} fits {rule}")
    if p["reduce"] == "opq" and train_size(n, p) < OPQ_MIN_TRAIN:
        raise ConfigError(f"ivfpq: reduce=opq trains an 8-bit PQ of its own on >= {OPQ_MIN_TRAIN} "
                          f"points but the training sample has {train_size(n, p)}: use reduce=pca or none")


def factory_string(p: dict, d: int) -> str:
    """The FAISS index_factory string of `p` (e.g. PCAR256,IVF4096,PQ64x8)."""
    pre = {"opq": f"OPQ{p['m']}_{p['d_out']},", "pca": f"PCAR{p['d_out']},", "none": ""}[p["reduce"]]
    quant = "_HNSW32" if p["quantizer"] == "hnsw" else ""
    return f"{pre}IVF{p['nlist']}{quant},PQ{p['m']}x{p['nbits']}"


def build_params(p: dict) -> dict:
    """What decides the index's content (the fingerprint): every key but the search ones, and
    `kmeans` / `sample` only when not `flat` / `rows` (indices built before those keys existed
    ran a flat k-means on rows from the whole gallery and keep their fingerprint)."""
    return {k: v for k, v in p.items() if k not in SEARCH_KEYS and DEFAULT_LEFT_OUT.get(k) != v}
