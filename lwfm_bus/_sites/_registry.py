"""Finding site adapters (entry points) and reading the sites file.

Adapters are plugins in the entry-point group ``lwfm_bus.sites``; the core names only
``local``.  A plugin that fails to import is reported and skipped, never fatal: one
broken SSH dependency must not stop a laptop from running local jobs.

The sites file is TOML, one table per site::

    [sites.hpc1]
    adapter = "slurm"        # entry-point name
    served_by_up = true      # `lwfm-bus up` runs its agent (the default); false: one runs elsewhere
    secret_env = {DB = "VAULT_DB"}  # secret:DB from the agent's $VAULT_DB when the store has none
    host = "login.hpc1"      # everything else: the adapter's options

Errors name the file and the key (``sites.toml: sites.hpc1.max_jobs: ...``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .._errors import ConfigError
from .._limits import read_toml_file
from .._secrets import ENV_NAME, SECRET_NAME
from .._subjects import check_token

__all__ = ["ENTRY_POINT_GROUP", "AdapterCatalog", "SiteSpec", "discover_adapters", "load_sites"]

log = logging.getLogger("lwfm_bus.sites")

ENTRY_POINT_GROUP = "lwfm_bus.sites"


@dataclass
class AdapterCatalog:
    """Adapter classes by name, and the plugins that could not be loaded, with why."""

    available: dict[str, type[Any]] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    not_loaded: set[str] = field(default_factory=set)
    """Installed plugins left unimported because nothing asked for them (see :func:`discover_adapters`)."""

    def get(self, name: str, where: str) -> type[Any]:
        if name in self.available:
            return self.available[name]
        if name in self.broken:
            raise ConfigError(f"{where}: adapter {name!r} is installed but broken: {self.broken[name]}")
        known = ", ".join(sorted({*self.available, *self.not_loaded})) or "none"
        raise ConfigError(f"{where}: unknown adapter {name!r} (available: {known})")


def discover_adapters(names: Collection[str] | None = None) -> AdapterCatalog:
    """Every installed adapter plugin, loaded; with ``names``, only those.

    Loading a plugin imports what it needs (``ssh`` and ``slurm``: asyncssh and
    cryptography, a tenth of a second or more), so a process that reads the sites file
    loads only the adapters the file names: a pipeline step recording its outputs
    must not pay for SSH on a laptop (issue #21).
    """
    from ._local import LocalSite  # built in: always there, whatever the plugins do

    catalog = AdapterCatalog(available={"local": LocalSite})
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in catalog.available:
            continue
        if names is not None and ep.name not in names:
            catalog.not_loaded.add(ep.name)
            continue
        try:
            cls = ep.load()
            options = getattr(cls, "Options", None)
            if not (isinstance(options, type) and issubclass(options, BaseModel)):
                raise TypeError("the adapter class has no pydantic 'Options' model")
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin is reported, not fatal
            catalog.broken[ep.name] = f"{type(exc).__name__}: {exc}"
            log.warning("site adapter plugin %r (%s) is broken and skipped: %r", ep.name, ep.value, exc)
            continue
        catalog.available[ep.name] = cls
    return catalog


@dataclass(frozen=True)
class SiteSpec:
    """One configured site: its name, adapter class and validated options.

    A site whose plugin is installed but broken keeps its place with ``broken`` set:
    opening that one site fails with the reason, every other site still works.
    """

    name: str
    adapter: str
    adapter_class: type[Any] | None
    options: BaseModel | None
    broken: str | None = None
    served_by_up: bool = True
    """Whether ``lwfm-bus up`` runs this site's agent (false: it runs elsewhere, e.g. on a login node)."""
    secret_env: dict[str, str] = field(default_factory=dict)
    """Secret NAME -> the agent's environment variable that holds its value (when the store has none)."""


def _spec(name: str, table: dict[str, Any], catalog: AdapterCatalog, where: str) -> SiteSpec:
    try:
        check_token(name, "site name")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    raw = dict(table)
    served = raw.pop("served_by_up", True)
    if not isinstance(served, bool):
        raise ConfigError(f"{where}.served_by_up: expected true or false")
    secret_env = _secret_env(raw.pop("secret_env", {}), where)
    adapter = raw.pop("adapter", "local" if name == "local" else None)
    if adapter is None:
        raise ConfigError(f'{where}.adapter: missing (name the adapter, e.g. adapter = "local")')
    if not isinstance(adapter, str):
        raise ConfigError(f'{where}.adapter: expected the adapter\'s name as a string, e.g. adapter = "local"')
    if adapter in catalog.broken:
        why = f"{where}.adapter: adapter {adapter!r} is installed but broken: {catalog.broken[adapter]}"
        return SiteSpec(
            name=name, adapter=adapter, adapter_class=None, options=None, broken=why, served_by_up=served,
            secret_env=secret_env,
        )  # fmt: skip
    cls = catalog.get(adapter, f"{where}.adapter")
    try:
        options = cls.Options.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where}.{key}: {first['msg']}{more}") from None
    return SiteSpec(
        name=name, adapter=adapter, adapter_class=cls, options=options, served_by_up=served, secret_env=secret_env
    )


def _secret_env(value: object, where: str) -> dict[str, str]:
    """``secret_env = {NAME = "ENV_VAR", ...}``: checked names, so a typo is said at once, with its key."""
    if not isinstance(value, dict):
        raise ConfigError(f'{where}.secret_env: expected a table of secret names to variables, e.g. {{DB = "DB_PW"}}')
    out: dict[str, str] = {}
    for name, var in value.items():
        if not SECRET_NAME.fullmatch(name):
            raise ConfigError(f"{where}.secret_env.{name}: not a secret name (a letter or _, then letters, digits, _)")
        if not isinstance(var, str) or not ENV_NAME.fullmatch(var):
            raise ConfigError(f"{where}.secret_env.{name}: expected an environment variable's name")
        out[name] = var
    return out


def load_sites(
    path: Path | None, catalog: AdapterCatalog | None = None, home_site: str = "local"
) -> dict[str, SiteSpec]:
    """Sites from a TOML file (if it exists), plus ``local`` with defaults if not configured.

    ``home_site`` (the site this bus speaks for) is this machine too unless the file
    says otherwise: a federation member runs jobs others can see under its own name.
    """
    specs: dict[str, SiteSpec] = {}
    sites: dict[str, Any] = {}
    if path is not None and path.exists():
        try:
            doc = read_toml_file(path)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        unknown = set(doc) - {"sites"}
        if unknown:
            raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected [sites.<name>] tables")
        sites = doc.get("sites", {})
        if not isinstance(sites, dict):
            raise ConfigError(f"{path}: sites: expected tables [sites.<name>]")
    if catalog is None:  # the adapters the file names, and no other plugin
        named = {t["adapter"] for t in sites.values() if isinstance(t, dict) and isinstance(t.get("adapter"), str)}
        catalog = discover_adapters(named)
    for name, table in sites.items():
        where = f"{path}: sites.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        specs[name] = _spec(name, table, catalog, where)
    for name in dict.fromkeys(("local", home_site)):
        if name not in specs:
            specs[name] = _spec(name, {"adapter": "local"}, catalog, f"<built-in>: sites.{name}")
    return specs
