"""The public face: ``lwfm_bus.__all__`` is complete, sorted, and every name in it resolves."""

from __future__ import annotations

import types

import lwfm_bus as lb


def test_every_exported_name_resolves() -> None:
    missing = [name for name in lb.__all__ if not hasattr(lb, name)]
    assert missing == []


def test_all_is_complete_and_has_no_duplicates() -> None:
    exported = set(lb.__all__)
    assert len(exported) == len(lb.__all__)
    public = {
        name
        for name, value in vars(lb).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and (getattr(value, "__module__", "") or "").startswith("lwfm_bus")
    }
    assert public - exported == set(), "public names missing from __all__"


def test_nothing_private_is_exported() -> None:
    assert [name for name in lb.__all__ if name.startswith("_") and name != "__version__"] == []
