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
