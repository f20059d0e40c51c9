"""How the criterion (criterion.py) reads a candidate's space: the similarities of a part's rows
(the held-out drones, the sample of seen flights) with every satellite set, and those of the
rows' flight means (per vote mask of the part: each half of the held-out images, or every seen
row).

- `Vectors` embeds the rows and takes their products: any candidate.
- `Fusion` reads a fusion of two one-vector streams through its streams alone. Its vectors are
  concat(sqrt(w) u1, sqrt(1 - w) u2) (u: unit stream vectors; heads.fuse), so its similarities
  are w S1 + (1 - w) S2, and a flight mean's are the sum of its rows' similarities over
  sqrt(w |sum u1|^2 + (1 - w) |sum u2|^2). Each stream's S and flight-sum norms (`StreamBlock`)
  are made once for every fusion that has the stream: the three weights of a map, and the
  teacher space that every fusion shares. At University-1652 size 45 of the 67 default
  candidates are fusions, whose vectors cost a concat, two normalisations and a product over
  2,688 dimensions per part (~0.9 s a candidate). The numbers equal the vectors' to rounding
  (tests/test_spaces.py), not bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F

from .headset import Heads, l2n
from .teacher import flight_sums


@dataclass
class StreamBlock:
    """One stream's rows of one part, as a fusion reads them (unit vectors, sat the stream's
    unit satellites): `sims`, the rows' similarities with the satellites (float32; the held-out
    part only: their picks), and per vote mask of the part, each flight's sum of unit rows
    through its similarities with the satellites (`flight`) and its squared norm (`sq_norms`),
    float64, flights in sorted group-id order."""
    sims: np.ndarray | None
    flight: list
    sq_norms: list

    @classmethod
    def of(cls, rows: np.ndarray, sat: np.ndarray, groups: np.ndarray, votes: list, picks: bool) -> "StreamBlock":
        unit, unit_sat = l2n(rows), l2n(sat)
        return cls.from_sums(unit @ unit_sat.T if picks else None,
                             [flight_sums(unit[v], groups[v])[0] for v in votes], unit_sat)

    @classmethod
    def from_sums(cls, sims, sums: list, unit_sat: np.ndarray) -> "StreamBlock":
        return cls(sims, [total.numpy() @ unit_sat.T for total in sums], [total.pow(2).sum(1).numpy() for total in sums])


class Vectors:
    """A space read through its vectors (each part embedded once per reading). A one-stream,
    one-vector space then offers its streams' blocks to the fusions that follow it (`share`):
    the same products, not made again."""

    def __init__(self, heads: Heads, rows):
        self.heads, self.rows, self._parts, self._sums, self._sims = heads, rows, {}, {}, {}
        self.sat = rows.embed(heads, "sat")

    def _embedded(self, part: str) -> np.ndarray:
        if part not in self._parts:
            self._parts[part] = self.rows.embed(self.heads, part)
        return self._parts[part]

    def similarities(self, sets, part: str) -> list[np.ndarray]:
        y = self._embedded(part)
        if y.ndim == 3:
            return sets.similarities(y)
        self._sims[part] = y @ sets.sat.T
        return sets.with_turns(self._sims[part], y)

    def flight_similarities(self, sets, part: str, vote: int) -> list[np.ndarray]:
        """The similarities of the flight means of the rows of `part`'s vote mask `vote`."""
        if (part, vote) not in self._sums:
            mask = self.rows.votes[part][vote]
            self._sums[part, vote] = flight_sums(self._embedded(part)[mask], self.rows.groups[part][mask])[0]
        # flight_means' numbers: the sums normalised
        return sets.similarities(F.normalize(self._sums[part, vote], dim=-1, eps=1e-12).numpy())

    def share(self) -> None:
        """Give `rows` the blocks of this space's one stream that this reading made whole."""
        if len(self.heads.streams) != 1 or self.heads.vectors("drone") != 1:
            return
        for part, votes in self.rows.votes.items():
            sums = [self._sums.get((part, v)) for v in range(len(votes))]
            if all(total is not None for total in sums) and (part != "held" or part in self._sims):
                block = StreamBlock.from_sums(self._sims.get(part) if part == "held" else None, sums, self.sat)
                self.rows.stream_block(self.heads, 0, part, block)


class Fusion:
    """A fusion of two one-vector streams, read through its streams' `StreamBlock`s."""

    def __init__(self, heads: Heads, rows):
        self.heads, self.rows, self.weight = heads, rows, heads.weights[0]
        self.sat = rows.embed(heads, "sat")     # 700-odd rows: the turns' axes come from them

    def _blocks(self, part: str) -> list[StreamBlock]:
        return [self.rows.stream_block(self.heads, i, part) for i in (0, 1)]

    def _mix(self, first, second):
        return self.weight * first + (1 - self.weight) * second

    def similarities(self, sets, part: str) -> list[np.ndarray]:
        return sets.with_turns(self._mix(*(block.sims for block in self._blocks(part))))

    def flight_similarities(self, sets, part: str, vote: int) -> list[np.ndarray]:
        first, second = self._blocks(part)
        norm = np.sqrt(self._mix(first.sq_norms[vote], second.sq_norms[vote]))
        return sets.with_turns(self._mix(first.flight[vote], second.flight[vote]) / np.maximum(norm, 1e-12)[:, None])

    def share(self) -> None:
        """Nothing to give: its streams' blocks are in `rows` already."""


def space_of(heads: Heads, rows):
    """The reading a candidate takes: a fusion of one-vector streams through its streams."""
    if len(heads.streams) == 2 and heads.vectors("drone") == 1:
        return Fusion(heads, rows)
    return Vectors(heads, rows)
