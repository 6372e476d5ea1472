"""The ``lwfm-bus`` command line: the edge where configuration is read, once."""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
