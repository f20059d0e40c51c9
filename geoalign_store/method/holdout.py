"""What the label-free choice holds out: whole *locations*, on both sides (issue 24).

The test asks about new locations: drones of places no fitted piece has seen, retrieving among
satellites no fitted piece has seen. Holding out drone flights alone is not that question: their
satellites stay in every fit (the centring means, the satellites the maps are fitted to, the
pairs the teacher claims, AGRA's batches), so a map that memorises satellites looks better on
them than on new ones, and the criterion cannot see it.

`select.holdout_by=regions` (the default) holds out regions:

1. in the centred space of all rows (means only: no direction is fitted), the flights are
   assigned one-to-one to satellites by their mean embeddings (the Hungarian assignment);
2. the satellites are split into `REGIONS` regions by seeded k-means in that space, each flight
   belonging to the region of its satellite (a flight left without one is always seen);
3. seeded whole regions are held out until they hold `fraction` of the satellites: their
   satellites and their flights leave every fit, and the criterion is measured on them.

A held-out region is content the fits have not seen, as a test region is (University-1652's
test universities are not its train ones). The pairing of step 1 only decides what is held out;
the criterion never reuses it: in every candidate's space the seen flights claim satellites anew
(criterion.py). Reusing it would count as right, in the centred space alone, the flights that
space pairs wrongly, and as wrong, in every space that pairs them rightly, the same flights: on
the altitude family it rated centring 0.255 where its test R@1 is 0.015. `regions_folds` splits
the other regions into the confirmation folds (confirmation.py) the same way. `holdout_by=flights` is the earlier rule
(seeded flights only), kept to reproduce heads fitted with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REGIONS = 10      # regions of the train satellites: 2 held out at holdout 0.2, 2 per fold of 4


@dataclass(frozen=True)
class Holdout:
    drone: np.ndarray    # (n_drone,) bool: the held-out drone rows (whole flights)
    sat: np.ndarray      # (n_sat,) bool: the held-out satellites (none under holdout_by=flights)

    def seen(self, views):
        """The views every candidate is fitted on: no held-out flight or satellite."""
        sat = {k: v[~self.sat] for k, v in views.sat.items()}
        return type(views)(sat, {k: v[~self.drone] for k, v in views.drone.items()},
                           views.groups[~self.drone], views.layers)

    @property
    def of_locations(self) -> bool:
        return bool(self.sat.any())


def flights_only(views, drone: np.ndarray) -> Holdout:
    return Holdout(drone, np.zeros(len(next(iter(views.sat.values()))), bool))


def regions(views, seed: int, n_regions: int = REGIONS) -> tuple[np.ndarray, np.ndarray]:
    """(region of each satellite, region of each drone row; -1: a flight without a satellite)."""
    from .candidates import assign, centring, flight_means, kmeans
    centre = centring(views)
    sat = centre.embed(views.sat, "satellite")
    means, inverse = flight_means(centre.embed(views.drone, "drone"), views.groups)
    sat_region = kmeans(sat, min(n_regions, len(sat)), seed)
    match = assign(means, sat)
    flight_region = np.where(match >= 0, sat_region[np.maximum(match, 0)], -1)
    return sat_region, flight_region[inverse]


def _holdout(sat_region, drone_region, picked) -> Holdout:
    return Holdout(np.isin(drone_region, picked), np.isin(sat_region, picked))


def region_order(sat_region: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0x4E6]).permutation(np.unique(sat_region))


def region_holdout(views, fraction: float, seed: int) -> Holdout:
    """Seeded whole regions holding `fraction` of the satellites (at least one region; never so
    many that fewer than two flights stay seen or fewer than two are held out)."""
    return region_folds(views, fraction, 0, seed)[0]


def _take(sat_region, drone_region, order, fraction: float, groups) -> tuple[Holdout, list]:
    """Regions taken from `order` until `fraction` of the satellites: (holdout, regions left)."""
    target, taken = fraction * len(sat_region), []
    for region in order:
        trial = _holdout(sat_region, drone_region, taken + [region])
        if len(np.unique(groups[~trial.drone])) < 2:
            break
        taken.append(region)
        if trial.sat.sum() >= target and len(np.unique(groups[trial.drone])) >= 2:
            break
    return _holdout(sat_region, drone_region, taken), [r for r in order if r not in taken]


def region_folds(views, fraction: float, n_folds: int, seed: int) -> tuple[Holdout, list[Holdout]]:
    """The held-out regions (`region_holdout`) and the other regions in up to `n_folds` seeded
    folds of whole regions, each one a Holdout (for the confirmation of the gate)."""
    sat_region, drone_region = regions(views, seed)
    first, rest = _take(sat_region, drone_region, region_order(sat_region, seed), fraction, views.groups)
    folds = []
    for part in np.array_split(np.asarray(rest), min(n_folds, len(rest))) if rest and n_folds > 0 else []:
        fold = _holdout(sat_region, drone_region, list(part))
        if len(np.unique(views.groups[fold.drone])) >= 2 and len(np.unique(views.groups[~fold.drone])) >= 2:
            folds.append(fold)
    return first, folds
