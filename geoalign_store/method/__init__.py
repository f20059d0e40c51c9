"""method: descriptors -> heads, with no cross-view labels. The release's modules (AGRA, ISMS)
and the map bank, the paper's published weights, their losses (OT pseudo-labels, DAMO) and training, the flight teacher, the
candidate heads, the label-free criterion, its null and the do-no-harm confirmation, the
selection among candidates, the `Heads` set that embeds stored descriptors, its checkpoints, and
the registry of the heads a store holds (which exist, which a request means, which are stale).
Heads are `nn.Module`s with no I/O; candidates are functions of arrays.

May import: config, store.
"""

from ..faces import face

IMPORTS = ("config", "store")
__getattr__, __dir__, __all__ = face(__name__, {
    "heads": ("AGRA", "ISMS", "LayerScale", "RMSNorm", "agra_dim_error", "export_state_dict",
              "fuse", "isms_losses"),
    "map_bank": ("MapBank",),
    "release_weights": ("load_release_agra", "load_release_isms", "read_release_checkpoint",
                        "unwrap_state_dict"),
    "headset": ("Heads", "l2n", "legacy_recipe"),
    "checkpoints": ("load_training_state", "save_module", "save_training_state"),
    "alignment": ("CautiousAdamW", "distillation_loss", "epsilon_schedule", "matching_loss",
                  "reliable_pairs", "sinkhorn_log", "soft_targets", "warmup_cosine"),
    "training": ("AgraRecipe", "IsmsRecipe", "draw_one_per_group", "fit_agra", "fit_isms", "forked_rng",
                 "group_index", "new_agra_state"),
    "teacher": ("FlightTeacher", "agra_candidate", "flight_means", "flight_plan", "flight_rows"),
    "shrinkage": ("ridge", "ridge_lambda", "ridge_path"),
    "candidates": ("TrainViews", "centring", "map_pairs", "maps", "principal_basis", "whitening"),
    "criterion": ("Rows", "adjusted", "read", "stream_order"),
    "turns": ("NULL_TURNS", "SatelliteSets", "Turns"),
    "confirmation": ("Gate", "confirm_folds"),
    "selection": ("Selection", "SelectionConfig", "holdout_mask", "holdouts", "select"),
    "holdout": ("Holdout", "REGIONS", "region_folds", "region_holdout", "regions"),
    "registry": ("available_heads", "check_heads_current", "claim_heads_folder", "heads_recipe",
                 "heads_staleness", "pick_heads"),
})
