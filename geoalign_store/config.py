"""Configs are data: YAML under `configs/`, composed per stage and overridden by `key=value`.

A stage's config is `configs/common.yaml` + `configs/stage/<stage>.yaml`, with the groups
(`dataset=NAME`, `backbone=NAME`) replaced by the content of `configs/<group>/NAME.yaml`. Every
override must name an existing key: a typo is an error that lists the valid keys and the nearest
one, never a silently ignored setting.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import yaml
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# Keys whose value names a file of configs/<key>/, per stage. Elsewhere `dataset` is just the
# name of a dataset in the store (which may have been written without any config of ours).
STAGE_GROUPS = {"extract": ("dataset", "backbone"), "demo": ()}
# Keys whose value names a file of configs/<key>/ that is merged over the stage's defaults
# (before the command line's overrides): recipes that set many keys at once.
STAGE_PRESETS = {"fit-heads": ("preset",)}


class ConfigError(ValueError):
    """A config request that cannot be satisfied; the message says what to change."""


def _load_yaml(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _load_group(group: str, name: Any) -> dict:
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not isinstance(name, str) or not path.exists():
        raise ConfigError(
            f"unknown {group} {name!r}; available: {', '.join(group_options(group))} "
            f"(files in {CONFIG_DIR / group})")
    return _load_yaml(path)


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any]]:
    """`key=value` strings -> (dotted key, YAML-parsed value) pairs, in order."""
    pairs = []
    for item in overrides or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        pairs.append((key.strip(), yaml.safe_load(raw) if raw != "" else None))
    return pairs


def valid_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, DictConfig):
            keys.extend(valid_keys(value, dotted + "."))
    return keys


def _check_key(cfg: DictConfig, key: str) -> None:
    keys = valid_keys(cfg)
    if key in keys:
        return
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ConfigError(f"unknown config key {key!r}.{hint} Valid keys: {', '.join(keys)}")


def compose(stage: str, overrides: Iterable[str] = ()) -> DictConfig:
    """The resolved config of `stage` with `overrides` (e.g. ["dataset=demo", "batch_size=8"])."""
    base = _load_yaml(CONFIG_DIR / "common.yaml")
    stage_file = CONFIG_DIR / "stage" / f"{stage}.yaml"
    if stage_file.exists():
        base.update(_load_yaml(stage_file))
    pairs = parse_overrides(overrides)
    groups = STAGE_GROUPS.get(stage, ())
    for group in groups:
        if group in base:
            chosen = [v for k, v in pairs if k == group]
            base[group] = _load_group(group, chosen[-1] if chosen else base[group])
    cfg = OmegaConf.create(base)
    presets = STAGE_PRESETS.get(stage, ())
    for group in presets:
        chosen = [v for k, v in pairs if k == group]
        name = chosen[-1] if chosen else base[group]
        cfg = OmegaConf.merge(cfg, OmegaConf.create(_load_group(group, name)))
        cfg[group] = name
    for key, value in pairs:
        if key in (*groups, *presets) and key in base:
            continue
        _check_key(cfg, key)
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def to_plain(cfg: DictConfig | dict) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of explicit, JSON-serialisable data (never of pickles)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_reject)
    return hashlib.sha256(text.encode()).hexdigest()


def _reject(value: Any) -> Any:
    raise TypeError(f"fingerprints take JSON data only, got {type(value).__name__}")


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
