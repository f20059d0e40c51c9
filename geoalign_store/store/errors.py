"""The store's error: below layout and integrity, so that both raise it without importing each other."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The store cannot serve the request as it stands; the message names the fix."""
