"""sim: feature-level worlds with known ground truth, to judge heads. The simulator families
(structurally different generative models of how drone descriptors depart from satellite ones),
the random world generator (`family=random`: each seed draws a world's structure from a broad
prior) and the writer that lays a drawn world out as a store, with its raw and oracle baselines.

May import: config, datasets, store, method (the oracle's ridge map).
"""

from ..faces import face

IMPORTS = ("config", "datasets", "store", "method")
__getattr__, __dir__, __all__ = face(__name__, {
    "families": ("DEFAULTS", "SIZES"),
    "simulator": ("DEFAULT_FAMILY", "FAMILIES", "GROUP_BASE", "LAYERS", "baselines", "generate",
                  "oracle_map", "recall_at_1", "resolve", "simulate"),
    "worlds": ("PRIOR", "RandomWorld", "realise"),
})
