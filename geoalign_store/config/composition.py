"""Configs are data: YAML under `yaml/` (package data, linked as the repository's `configs/`),
composed per stage and overridden by `key=value`.

A stage's config is `configs/common.yaml` + `configs/stage/<stage>.yaml`, with the groups
(`dataset=NAME`, `backbone=NAME`) replaced by the content of `configs/<group>/NAME.yaml`. Every
override must name an existing key: a typo is an error that lists the valid keys and the nearest
one, never a silently ignored setting.

Values are typed when composed, before any work starts: the YAML files are the one source of
defaults, and a key's type is its default's (an integer stays an integer, a list a list), with
the enumerations and the `auto`-or-number keys of KEY_TYPES; `agra.epochs=abc` or
`agra.teacher=ismss` are refused at once, naming the key, the value and what it accepts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / "yaml"  # package data: found in a wheel too
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
    if name not in group_options(group):  # never a path built from the text (too long, "../x")
        raise ConfigError(
            f"unknown {group} {name!r}; available: {', '.join(group_options(group))} "
            f"(files in {CONFIG_DIR / group})")
    return _load_yaml(path)


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any]]:
    """`key=value` strings -> (dotted key, YAML-parsed value) pairs, in order."""
    pairs = []
    for item in overrides or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        pairs.append((key.strip(), _parse_value(key.strip(), raw)))
    return pairs


def _parse_value(key: str, raw: str) -> Any:
    if raw == "":
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        why = str(e).strip().splitlines()[0]
        raise ConfigError(f"{key}={raw!r}: the value is not valid YAML ({why}); quote text, write "
                          "lists as [1, 2] and mappings as {a: 1}") from None
    if isinstance(value, dict) and any(v is None and ":" in str(k) for k, v in value.items()):
        raise ConfigError(f"{key}={raw!r}: YAML needs a space after ':' in a mapping, as in "
                          f"{{m: 4}}; or set one entry: {key}.m=4")
    return value


def valid_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, DictConfig):
            keys.extend(valid_keys(value, dotted + "."))
    return keys


# Mappings whose entries are free (checked by their stage): dotted keys may add entries.
OPEN_MAPPINGS = ("index_params",)
TEXT_INDEX_PARAMS = ("reduce", "quantizer", "kmeans", "sample")
# Integer keys that must be at least 1 (every integer key is at least 0 and below 2^31).
POSITIVE = ("block_size", "batch_size", "token_pool", "k", "topk", "agra.checkpoint_every",
            "isms.batch_size")
INT_MAX = 2 ** 31 - 1


def _check_key(cfg: DictConfig, key: str) -> None:
    keys = valid_keys(cfg)
    head, _, rest = key.partition(".")
    if key in keys or head in OPEN_MAPPINGS and rest and "." not in rest and head in keys:
        return
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ConfigError(f"unknown config key {key!r}.{hint} Valid keys: {', '.join(keys)}")


# Keys whose values are not simply of their default's type: the allowed literals and/or types.
# A key is matched by its full dotted name.
KEY_TYPES: dict[str, tuple] = {
    "mode": ("D2S", "S2D", "d2s", "s2d"),
    "index": ("flat", "ivfpq", "hnsw"),
    "gallery_protocol": ("official", "query_locations"),
    "precision": ("auto", "fp32", "bf16"),
    "num_workers": ("auto", int),
    "decode": ("threads", "processes"),
    "fusion_weight": ("auto", float),
    "image_size": (None, int, list),
    "split": (None, str, list),
    "cluster": (None, str),
    "dataset": (None, str, dict),
    "weights": (None, str),
    "agra.teacher": ("self", "isms"),
    "isms.init": ("orthogonal", "pca"),
    "isms.latent_dim": (None, int),
    "select.map_kinds": (list,),
    "agra": (None, str, dict),
    "isms": (None, str, dict),
    "heads": (None, str),
    "tile_m": (list, int, float),
    "web_scheme": ("xyz", "tms"),
}


def _expected(key: str, default: Any) -> tuple | None:
    """What `key` accepts: KEY_TYPES' entry, else its default's type (None: anything)."""
    if key in KEY_TYPES:
        return KEY_TYPES[key]
    if key.partition(".")[0] in OPEN_MAPPINGS and "." in key:
        # index parameters are counts (nlist, m, nbits, nprobe, M, ef*) but for ivfpq's choices
        # of method, whose values retrieval/ivf_rule.py checks before any work
        return (str,) if key.rpartition(".")[2] in TEXT_INDEX_PARAMS else (int,)
    if default is None or isinstance(default, str):
        return None  # free text or a path: its stage checks it where it is used
    if isinstance(default, ListConfig):
        return (list,)
    return (type(default),)


def _coerce(value: Any, allowed: tuple) -> tuple[bool, Any]:
    """(ok, value): literals match as given; an int is a float; "2e-4" (YAML 1.1 reads it as
    text) is a float."""
    for item in allowed:
        if not isinstance(item, type):
            if value == item and type(value) is type(item):
                return True, value
        elif item is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        elif item is float and isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                continue
        elif item is int and isinstance(value, bool):
            continue
        elif item in (list, tuple) and isinstance(value, (list, tuple, ListConfig)):
            return True, value
        elif item is dict and isinstance(value, (dict, DictConfig)):
            return True, value
        elif isinstance(value, item):
            return True, value
    return False, value


def _describe(allowed: tuple) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text",
             list: "a list like [1, 2]", dict: "a mapping"}
    return " or ".join(names.get(a, a.__name__) if isinstance(a, type) else
                       ("null" if a is None else repr(a)) for a in allowed)


def check_types(cfg: DictConfig, defaults: DictConfig, prefix: str = "") -> None:
    """Every value of `cfg` against its default in `defaults` (coercing "2e-4" to 2e-4)."""
    for key in list(cfg.keys()):
        dotted, value = f"{prefix}{key}", cfg[key]
        default = defaults.get(key) if isinstance(defaults, DictConfig) else None
        if isinstance(value, DictConfig) and isinstance(default, DictConfig):
            check_types(value, default, dotted + ".")
            continue
        allowed = _expected(dotted, default)
        if allowed is None:
            continue
        ok, coerced = _coerce(value, allowed)
        if not ok:
            raise ConfigError(f"{dotted}={value!r} is not valid: {dotted} takes {_describe(allowed)}"
                              + (f" (default {default!r})" if default is not None else ""))
        _check_range(dotted, coerced)
        if coerced is not value:
            cfg[key] = coerced


def _check_range(key: str, value: Any) -> None:
    """Numbers a stage could not use are refused here, before any work: NaN, infinities,
    negative counts, 0 where at least one is needed, integers beyond 2^31. `select.*` values are
    checked by the selection's own config, which names the rule each breaks."""
    if key.startswith("select."):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} is not valid: {key} takes a finite number")
    if isinstance(value, int) and not isinstance(value, bool):
        low = 1 if key in POSITIVE else 0
        if not low <= value <= INT_MAX:
            raise ConfigError(f"{key}={value!r} is out of range: {key} takes an integer in "
                              f"[{low}, {INT_MAX}]")


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
    defaults = cfg.copy()
    for key, value in pairs:
        if key in (*groups, *presets) and key in base:
            continue
        _check_key(cfg, key)
        OmegaConf.update(cfg, key, value, merge=False)
    check_types(cfg, defaults)
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
