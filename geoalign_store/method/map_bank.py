"""`MapBank`: K linear maps of the centred concat space for drone images (issue 8; issue 24's
best-of-maps rule). A module with no I/O, like the heads of heads.py.

Each map acts on the leading principal subspace (basis `q`, D x r: coordinates c = x q, mapped to
c M_k) and is the identity elsewhere. Satellites pass unchanged. How a drone image meets the maps:

- a gate picks one map per image: a linear gate on the coordinates (`gate_weight`, `gate_bias`)
  or, when `sat_axes` (r x m, m > 0) is set, the map that puts the largest share of the image into
  the satellites' principal subspace;
- `best_of` (the rule of a mixture): no gate, the image keeps all K mapped vectors, shape
  (n, K, D), and a (drone, satellite) pair scores as its best map: max_k cos(map_k(d), s). Every
  scorer of a 3-D embedding takes that max (method.turns, retrieval's metrics, indices, locate).

A map of rank r above ~0.41 D (the whole descriptor's, `select.other_map_ranks`) is applied as one
D x D matrix I + q (M_k - I) q^T, made from the buffers on first use and never saved: one product
where the factors make three.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .heads import SATELLITE_VIEWS


class MapBank(nn.Module):
    def __init__(self, dim: int, rank: int, n_maps: int, sat_dims: int = 0, best_of: bool = False):
        super().__init__()
        gate = 0 if best_of else rank            # a best-of bank has no gate: nothing fitted there
        self.register_buffer("basis", torch.zeros(dim, rank))
        self.register_buffer("maps", torch.eye(rank).repeat(n_maps, 1, 1))
        self.register_buffer("gate_weight", torch.zeros(n_maps if gate else 0, gate))
        self.register_buffer("gate_bias", torch.zeros(n_maps if gate else 0))
        self.register_buffer("sat_axes", torch.zeros(rank, sat_dims))
        if best_of:   # saved with the maps: a bank written before the rule existed has no such key
            self.register_buffer("best_of", torch.ones(1))

    @property
    def vectors(self) -> int:
        """Vectors per drone image: K under the best-of rule, else 1."""
        return len(self.maps) if self.is_best_of else 1

    @property
    def is_best_of(self) -> bool:
        return "best_of" in self._buffers

    @classmethod
    def build(cls, basis, maps, gate_weight=None, gate_bias=None, sat_axes=None, best_of: bool = False) -> "MapBank":
        sat_axes = np.zeros((basis.shape[1], 0), np.float32) if sat_axes is None else sat_axes
        bank = cls(basis.shape[0], basis.shape[1], len(maps), sat_axes.shape[1], best_of)
        values = {"basis": basis, "maps": maps, "sat_axes": sat_axes}
        if not best_of:
            values.update(gate_weight=gate_weight, gate_bias=gate_bias)
        for name, value in values.items():
            getattr(bank, name).copy_(torch.as_tensor(value))
        return bank.eval()

    @classmethod
    def from_state_dict(cls, sd: dict) -> "MapBank":
        best_of = "best_of" in sd
        return cls.build(sd["basis"], sd["maps"], sd.get("gate_weight"), sd.get("gate_bias"), sd.get("sat_axes"),
                         best_of)

    def choose(self, coords: torch.Tensor) -> torch.Tensor:
        if self.sat_axes.shape[1] == 0:
            return (coords @ self.gate_weight.T + self.gate_bias).argmax(1)
        mapped = torch.einsum("nr,krs->nks", coords, self.maps)
        share = (mapped @ self.sat_axes).pow(2).sum(-1) / mapped.pow(2).sum(-1).clamp_min(1e-12)
        return share.argmax(1)

    def embed(self, x: torch.Tensor, view: str) -> torch.Tensor:
        """(n, D) unit rows; drones under `best_of`: (n, K, D), one unit row per map."""
        if view in SATELLITE_VIEWS:
            return F.normalize(x, dim=-1)
        dense = self._dense_maps()
        if dense is not None:
            return self._embed_dense(x, dense)
        coords = x @ self.basis
        if self.is_best_of:   # every map's move at once: (n, K, r) -> (n, K, D)
            moved = torch.einsum("nr,krs->nks", coords, self.maps) - coords[:, None, :]
            return F.normalize(x[:, None, :] + moved @ self.basis.T, dim=-1)
        pick = self.choose(coords)
        moved = torch.zeros_like(coords)
        for k in range(len(self.maps)):   # a handful of maps: each applied to its rows at once
            rows = (pick == k).nonzero(as_tuple=True)[0]
            if rows.numel():
                moved[rows] = coords[rows] @ self.maps[k] - coords[rows]
        return F.normalize(x + moved @ self.basis.T, dim=-1)

    def _embed_dense(self, x: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        if self.is_best_of:
            return F.normalize(torch.einsum("nd,kde->nke", x, dense), dim=-1)
        if len(self.maps) == 1:
            return F.normalize(x @ dense[0], dim=-1)
        if self.sat_axes.shape[1] == 0:   # the linear gate read straight from x: (D x r)(r x K) once
            pick = (x @ (self.basis @ self.gate_weight.T) + self.gate_bias).argmax(1)
        else:
            pick = self.choose(x @ self.basis)
        out = torch.empty_like(x)
        for k in range(len(self.maps)):
            rows = (pick == k).nonzero(as_tuple=True)[0]
            if rows.numel():
                out[rows] = x[rows] @ dense[k]
        return F.normalize(out, dim=-1)

    def _dense_maps(self) -> torch.Tensor | None:
        """Each map as one D x D matrix I + q (M_k - I) q^T when the rank r is large enough that
        one (n x D)(D x D) product costs less than the maps' three factors (2 n D r + n r^2:
        r > 0.41 D; the whole descriptor's maps, issue 24), else None. Made on first use and
        kept (not saved) while the buffers stay as they are."""
        dim, rank = self.basis.shape
        if 2 * rank * dim + rank * rank <= dim * dim:
            return None
        key = tuple((t.data_ptr(), t._version) for t in (self.basis, self.maps))
        if getattr(self, "_dense", (None,))[0] != key:
            eye = torch.eye(rank, dtype=self.maps.dtype, device=self.maps.device)
            moves = self.basis @ (self.maps - eye) @ self.basis.T
            dense = moves + torch.eye(dim, dtype=moves.dtype, device=moves.device)
            self._dense = (key, dense)
        return self._dense[1]

    def __getstate__(self):   # the dense maps are remade from the buffers, never pickled
        state = dict(self.__dict__)
        state.pop("_dense", None)
        return state
