"""config: what a run is asked to do. The YAML defaults (`yaml/`, shipped in the package and
linked as the repository's top-level `configs/`), their composition with `key=value` overrides,
typed and checked before any work starts, fingerprints of configs and files, and ConfigError,
the error of a request that cannot be satisfied (exit 2).

May import: nothing of geoalign_store (the bottom wing).
"""

from ..faces import face

IMPORTS: tuple[str, ...] = ()
__getattr__, __dir__, __all__ = face(__name__, {
    "composition": ("CONFIG_DIR", "ConfigError", "compose", "file_sha256", "fingerprint",
                    "group_options", "parse_overrides", "to_plain", "valid_keys"),
})
