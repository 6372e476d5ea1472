"""Site adapters as plugins, and the sites file: real entry points, real TOML, a real bus.

The third-party adapter is installed for each test as a genuine distribution -- a module
and a ``*.dist-info`` directory with ``entry_points.txt`` on ``sys.path`` -- so discovery
goes through ``importlib.metadata`` exactly as it does for a ``pip install``-ed plugin.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import lwfm_bus as lb
from lwfm_bus._errors import ConfigError
from lwfm_bus._sites._local import LocalSite
from lwfm_bus._sites._registry import AdapterCatalog, discover_adapters, load_sites

_PLUGIN_MODULES = ("good_site_plugin", "broken_site_plugin")

_GOOD_PLUGIN = '''
"""A third-party site adapter: records what the bus asks of it, and finishes jobs at once."""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from lwfm_bus import JobState


class GoodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    greeting: str = "hello"
    retries: int = 1


class GoodSite:
    Options: ClassVar[type[BaseModel]] = GoodOptions
    opened: ClassVar[list[Any]] = []
    closed: ClassVar[list[Any]] = []
    submitted: ClassVar[list[tuple[str, list[str]]]] = []

    def __init__(self, options, runtime):
        self.options = options
        self.runtime = runtime

    async def open(self):
        GoodSite.opened.append(self)

    async def close(self):
        GoodSite.closed.append(self)

    async def submit(self, ctx, defn):
        native = f"good-{len(GoodSite.submitted)}"
        GoodSite.submitted.append((ctx.job_id, defn.command()))
        ctx = ctx.model_copy(update={"native_id": native})
        await self.runtime.reporter.report(ctx, JobState.RUNNING, native_state="running")
        await self.runtime.reporter.report(ctx, JobState.COMPLETE, exit_code=0, native_state="done")
        return native

    async def status(self, ctx):
        return None

    async def cancel(self, ctx):
        pass

    async def logs(self, ctx, stream="stdout"):
        return b""

    async def put(self, local_path, site_path):
        pass

    async def get(self, site_path, local_path):
        pass


class NoOptions:
    """Looks like an adapter but declares no pydantic Options model."""

    def __init__(self, options, runtime):
        pass
'''

_ENTRY_POINTS = """\
[lwfm_bus.sites]
goodsite = good_site_plugin:GoodSite
brokensite = broken_site_plugin:Missing
nooptions = good_site_plugin:NoOptions
local = good_site_plugin:GoodSite
"""


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution ``good-site-plugin`` installed into a directory on ``sys.path``."""
    root = tmp_path / "site-packages"
    info = root / "good_site_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (root / "good_site_plugin.py").write_text(_GOOD_PLUGIN)
    (root / "broken_site_plugin.py").write_text('raise ImportError("needs libfoo, which is not installed")\n')
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: good-site-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    try:
        yield root
    finally:
        for name in _PLUGIN_MODULES:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()


@pytest.fixture
def plugin(plugin_dist: Path) -> ModuleType:
    """The plugin module itself (the one ``ep.load()`` returns classes from)."""
    return importlib.import_module("good_site_plugin")


@pytest.fixture
def catalog(plugin_dist: Path) -> AdapterCatalog:
    return discover_adapters()


# --------------------------------------------------------------------- discovery


def test_discovery_loads_good_plugins_and_reports_broken_ones(
    plugin_dist: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lwfm_bus.sites"):
        catalog = discover_adapters()
    plugin = sys.modules["good_site_plugin"]

    assert set(catalog.available) == {"local", "goodsite", "ssh", "slurm"}  # ours (adapters/) are plugins too
    assert catalog.available["goodsite"] is plugin.GoodSite
    assert catalog.available["local"] is LocalSite  # a plugin cannot shadow the built-in site

    assert set(catalog.broken) == {"brokensite", "nooptions"}
    assert "ImportError" in catalog.broken["brokensite"]
    assert "needs libfoo" in catalog.broken["brokensite"]
    assert "TypeError" in catalog.broken["nooptions"]
    assert "Options" in catalog.broken["nooptions"]

    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("brokensite" in m and "broken_site_plugin:Missing" in m for m in warned), warned
    assert any("nooptions" in m for m in warned), warned


def test_catalog_get_names_broken_and_unknown_adapters(catalog: AdapterCatalog) -> None:
    with pytest.raises(lb.ConfigError, match=r"^here: adapter 'brokensite' is installed but broken: ImportError"):
        catalog.get("brokensite", "here")
    unknown = "unknown adapter 'slurmm' (available: goodsite, local, slurm, ssh)"
    with pytest.raises(lb.ConfigError, match=re.escape(unknown)):
        catalog.get("slurmm", "here")


# --------------------------------------------------------------------- the sites file


def _sites(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sites.toml"
    path.write_text(text)
    return path


def test_plugin_site_options_are_validated(tmp_path: Path, catalog: AdapterCatalog, plugin: ModuleType) -> None:
    path = _sites(tmp_path, '[sites.mygood]\nadapter = "goodsite"\nretries = 3\n\n[sites.local]\nmax_concurrent = 2\n')
    specs = load_sites(path, catalog)

    assert set(specs) == {"mygood", "local"}
    good = specs["mygood"]
    assert (good.name, good.adapter, good.adapter_class) == ("mygood", "goodsite", plugin.GoodSite)
    assert isinstance(good.options, plugin.GoodOptions)
    assert good.options.model_dump() == {"greeting": "hello", "retries": 3}
    assert specs["local"].options.model_dump() == {"max_concurrent": 2, "kill_grace_s": 5.0}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[sites.mygood]\nadapter = "goodsite"\nretries = "lots"\n', "sites.mygood.retries: "),
        ('[sites.mygood]\nadapter = "goodsite"\ncolour = "red"\n', "sites.mygood.colour: "),
        ("[sites.local]\nmax_concurrent = 0\n", "sites.local.max_concurrent: "),
        ("[sites.local]\nmax_concurency = 4\n", "sites.local.max_concurency: "),
        ('[sites.local]\nkill_grace_s = "soon"\n', "sites.local.kill_grace_s: "),
        ('[sites.hpc]\nhost = "login.hpc"\n', "sites.hpc.adapter: missing"),
        ('[sites.hpc]\nadapter = "nosuch"\n', "sites.hpc.adapter: unknown adapter 'nosuch'"),
        ("[sites.hpc]\nadapter = 5\n", "sites.hpc.adapter: expected the adapter's name"),
        ("[sites.local]\nmax_concurrent = \n", "not valid TOML"),
        ("[site.local]\nmax_concurrent = 2\n", "unknown top-level key(s) ['site']"),
        ('sites = "local"\n', "sites: expected tables"),
        ("[sites]\nhpc = 3\n", "sites.hpc: expected a table"),
        ('[sites."bad name"]\nadapter = "local"\n', "invalid site name 'bad name'"),
        ('[sites."a.b"]\nadapter = "local"\n', "invalid site name 'a.b'"),
    ],
)
def test_bad_sites_file_names_the_file_and_the_key(
    tmp_path: Path, catalog: AdapterCatalog, text: str, key: str
) -> None:
    path = _sites(tmp_path, text)
    with pytest.raises(lb.ConfigError) as info:
        load_sites(path, catalog)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert key in message, message


def test_without_a_sites_file_there_is_only_local_with_defaults(tmp_path: Path) -> None:
    for path in (None, tmp_path / "absent.toml"):
        specs = load_sites(path)
        assert list(specs) == ["local"]
        local = specs["local"]
        assert (local.adapter, local.adapter_class) == ("local", LocalSite)
        assert local.options.model_dump() == {"max_concurrent": os.cpu_count() or 1, "kill_grace_s": 5.0}


# --------------------------------------------------------------------- through the bus


async def test_bus_rejects_an_unknown_site_naming_the_configured_ones(bus: lb.Bus) -> None:
    assert "ConfigError" in lb.__all__
    assert lb.ConfigError is ConfigError
    with pytest.raises(lb.ConfigError, match=re.escape("unknown site 'nope' (configured: local;")):
        await bus.site("nope")
    with pytest.raises(lb.ConfigError, match="unknown site 'nope'"):
        await bus.submit(lb.JobDefn.of(["true"]), site="nope")


async def test_a_third_party_adapter_is_a_first_class_site(
    bus_config: lb.BusConfig, tmp_path: Path, plugin: ModuleType
) -> None:
    path = _sites(tmp_path, '[sites.mygood]\nadapter = "goodsite"\ngreeting = "bonjour"\n')
    good_site = plugin.GoodSite
    async with lb.connect(bus_config.model_copy(update={"sites_file": path, "agents": ("*",)})) as bus:
        with pytest.raises(lb.ConfigError, match=re.escape("(configured: local, mygood;")):
            await bus.site("other")

        served = await bus._agent_adapter("mygood")  # the site's agent, in this process, runs its jobs
        assert isinstance(served, lb.SiteAdapter)  # the plugin satisfies the Protocol at run time
        assert type(served) is good_site
        assert served.options.greeting == "bonjour"
        assert (served.runtime.site, served.runtime.role) == ("mygood", "agent")
        assert served.runtime.state_dir == bus_config.home / "sites" / "mygood"
        client = await bus.site("mygood")  # opened as a client: for logs and data, never to run jobs
        assert client is not served and client.runtime.role == "client"
        assert await bus.site("mygood") is client  # opened once, then reused
        assert good_site.opened == [served, client]

        job = await bus.submit(lb.JobDefn.of(["true"]), site="mygood")
        status = await job.wait(timeout=30)
        assert good_site.submitted == [(job.job_id, ["true"])]
        assert (status.state, status.exit_code, status.site) == (lb.JobState.COMPLETE, 0, "mygood")
        assert status.native_id == "good-0"

        record = await job.status()
        assert (record.state, record.site, record.native_id) == (lb.JobState.COMPLETE, "mygood", "good-0")
        assert good_site.closed == []
    assert sorted(map(id, good_site.closed)) == sorted(map(id, [served, client]))  # closing the bus closes both


async def test_a_site_on_a_broken_plugin_does_not_stop_local_jobs(
    bus_config: lb.BusConfig, tmp_path: Path, plugin_dist: Path
) -> None:
    path = _sites(tmp_path, '[sites.hpc]\nadapter = "brokensite"\n')
    specs = load_sites(path)
    assert specs["hpc"].broken is not None and "installed but broken" in specs["hpc"].broken
    async with lb.connect(bus_config.model_copy(update={"sites_file": path})) as bus:
        job = await bus.submit(lb.JobDefn.of(["true"]))
        assert (await job.wait(timeout=30)).state is lb.JobState.COMPLETE
        with pytest.raises(lb.ConfigError, match=r"sites\.hpc\.adapter: adapter 'brokensite' is installed but broken"):
            await bus.site("hpc")
