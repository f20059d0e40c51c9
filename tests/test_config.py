"""Config composition: groups, overrides, unknown keys, fingerprints."""

import pytest

from geoalign_store.config import ConfigError, compose, fingerprint


def test_groups_and_overrides_compose():
    cfg = compose("extract", ["dataset=university1652", "backbone=dinov3_vith16plus",
                              "batch_size=8", "layers=[-6,-4]", "dataset.views=[drone]"])
    assert cfg.dataset.kind == "university1652" and cfg.backbone.hidden_size == 1280
    assert cfg.batch_size == 8 and list(cfg.layers) == [-6, -4]
    assert list(cfg.dataset.views) == ["drone"]


def test_unknown_key_lists_valid_keys_and_nearest():
    with pytest.raises(ConfigError) as info:
        compose("extract", ["batchsize=4"])
    message = str(info.value)
    assert "unknown config key 'batchsize'" in message
    assert "Did you mean 'batch_size'?" in message
    assert "num_workers" in message and "backbone.hidden_size" in message


def test_unknown_group_option_and_malformed_override():
    with pytest.raises(ConfigError, match="unknown dataset 'u1652'.*university1652"):
        compose("extract", ["dataset=u1652"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        compose("extract", ["batch_size"])


def test_fingerprint_is_canonical_and_rejects_objects():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    with pytest.raises(TypeError):
        fingerprint({"a": object()})


@pytest.mark.parametrize("stage, override, says", [
    ("fit-heads", "agra.epochs=abc", "agra.epochs='abc' is not valid: agra.epochs takes an integer"),
    ("fit-heads", "agra.teacher=ismss", "agra.teacher takes 'self' or 'isms'"),
    ("fit-heads", "isms.init=random", "isms.init takes 'orthogonal' or 'pca'"),
    ("fit-heads", "select.enabled=yes please", "select.enabled takes true or false"),
    ("extract", "batch_size=1.5", "batch_size takes an integer"),
    ("extract", "layers=26", "layers takes a list"),
    ("score", "mode=D3S", "mode takes 'D2S' or 'S2D'"),
    ("score", "fusion_weight=half", "fusion_weight takes 'auto' or a number"),
])
def test_values_are_typed_when_composed(stage, override, says):
    with pytest.raises(ConfigError) as info:
        compose(stage, [override])
    assert says in str(info.value)


def test_typed_values_are_coerced_where_unambiguous():
    cfg = compose("fit-heads", ["agra.lr=2e-4", "agra.weight_decay=0", "select.latents=[8, 16]"])
    assert cfg.agra.lr == 2e-4 and isinstance(cfg.agra.lr, float)   # YAML 1.1 reads "2e-4" as text
    assert isinstance(cfg.agra.weight_decay, float) and list(cfg.select.latents) == [8, 16]


def test_the_recipes_defaults_are_the_yaml_files():
    from geoalign_store.config import to_plain
    from geoalign_store.method import AgraRecipe, IsmsRecipe, SelectionConfig
    paper = compose("fit-heads", ["preset=paper"])
    assert AgraRecipe.defaults() == AgraRecipe(**to_plain(paper.agra))
    assert IsmsRecipe.defaults(epochs=3).epochs == 3
    assert SelectionConfig.defaults() == SelectionConfig.from_config(to_plain(paper.select))
    with pytest.raises(TypeError):
        AgraRecipe(epochs=3)        # no second set of defaults in the code
