"""Workspaces with a real nats-server: a shared map of logical files across two sites.

Two sites are configured (both run on this machine through the local adapter, with
different roots), and a second bus with its own home -- its own index, as another
machine would have -- must see every change, because changes are events.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

import lwfm_bus as lb
from lwfm_bus import JobState


@pytest.fixture
def two_sites(bus_config: lb.BusConfig, tmp_path: Path) -> lb.BusConfig:
    sites = tmp_path / "sites.toml"
    sites.write_text('[sites.local]\n\n[sites.cluster]\nadapter = "local"\n')
    return bus_config.model_copy(update={"sites_file": sites, "agents": ("*",)})  # both sites served here


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    made = {"local": tmp_path / "laptop" / "ws", "cluster": tmp_path / "cluster" / "scratch" / "ws"}
    for root in made.values():
        root.mkdir(parents=True)
    return made


async def test_a_logical_file_resolves_to_its_place_on_each_site(
    two_sites: lb.BusConfig, roots: dict[str, Path], tmp_path: Path
) -> None:
    async with lb.connect(two_sites) as bus:
        ws = await bus.workspaces.define("proj", {site: str(root) for site, root in roots.items()})
        assert ws.roots == {site: str(root) for site, root in roots.items()}
        await bus.workspaces.add("proj", "in/mesh.vtk", site="local")
        await bus.workspaces.add("proj", "in/mesh.vtk", site="cluster", path=str(roots["cluster"] / "m.vtk"))
        assert await bus.workspaces.resolve("workspace:proj/in/mesh.vtk", site="local") == str(
            roots["local"] / "in/mesh.vtk"
        )
        assert await bus.workspaces.resolve("workspace:proj/in/mesh.vtk", site="cluster") == str(
            roots["cluster"] / "m.vtk"
        )
        # Not mapped anywhere: an output, placed under the site's root.
        assert await bus.workspaces.resolve("workspace:proj/out/r.csv", site="cluster") == str(
            roots["cluster"] / "out/r.csv"
        )
        # Mapped only on the laptop: the cluster must copy it first, and is told so.
        await bus.workspaces.add("proj", "only-here.dat", site="local")
        with pytest.raises(lb.WorkspaceError, match=r"on site\(s\) local, not on"):
            await bus.workspaces.resolve("workspace:proj/only-here.dat", site="cluster")
        with pytest.raises(lb.WorkspaceError, match="no root on site 'elsewhere'"):
            await bus.workspaces.resolve("workspace:proj/in/mesh.vtk", site="elsewhere")
        with pytest.raises(lb.WorkspaceError, match="no workspace 'nope'"):
            await bus.workspaces.resolve("workspace:nope/x", site="local")


async def test_every_change_is_an_event_and_another_index_sees_the_same_map(
    two_sites: lb.BusConfig, roots: dict[str, Path], tmp_path: Path
) -> None:
    other_home = two_sites.model_copy(update={"home": tmp_path / "other-machine"})
    async with lb.connect(two_sites) as bus, lb.connect(other_home) as other:
        async with bus.subscribe("lwfm.*.workspace.>") as changes:
            await bus.workspaces.define("shared", {"local": str(roots["local"])})
            await bus.workspaces.add("shared", "a.txt")
            await bus.workspaces.add("shared", "b.txt")
            await other.workspaces.define("shared", {"cluster": str(roots["cluster"])})  # from "elsewhere"
            await other.workspaces.add("shared", "a.txt", site="cluster")
            await bus.workspaces.remove("shared", "b.txt")
            seen = [await changes.next(timeout=10) for _ in range(6)]
        assert [e.nats_subject().split(".")[-1] for e in seen] == [
            "define", "add", "add", "define", "add", "remove",
        ]  # fmt: skip
        mine, theirs = await bus.workspaces.get("shared"), await other.workspaces.get("shared")
        assert mine == theirs
        assert mine.roots == {"local": str(roots["local"]), "cluster": str(roots["cluster"])}
        assert sorted(mine.files) == ["a.txt"]
        assert {loc.site for loc in mine.files["a.txt"]} == {"local", "cluster"}
        assert await other.workspaces.names() == ["shared"]

        await other.workspaces.delete("shared")
        with pytest.raises(lb.WorkspaceError, match="no workspace"):
            await bus.workspaces.get("shared")
        assert await bus.workspaces.names() == []


async def test_a_job_names_a_workspace_file_and_reads_it_on_its_site(
    two_sites: lb.BusConfig, roots: dict[str, Path]
) -> None:
    (roots["cluster"] / "in").mkdir()
    (roots["cluster"] / "in" / "params.txt").write_text("42\n")
    copy = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])"
    async with lb.connect(two_sites) as bus:
        await bus.workspaces.define("job-ws", {"cluster": str(roots["cluster"])})
        await bus.workspaces.add("job-ws", "in/params.txt", site="cluster")
        defn = lb.JobDefn.of(
            [sys.executable, "-c", copy, "workspace:job-ws/in/params.txt", "workspace:job-ws/out/copy.txt"]
        )
        (roots["cluster"] / "out").mkdir()
        job = await bus.submit(defn, site="cluster")
        status = await job.wait(timeout=30)
        assert status.state is JobState.COMPLETE, await job.logs("stderr")
        assert (roots["cluster"] / "out" / "copy.txt").read_text() == "42\n"

        # A reference that cannot be resolved starts nothing: the submit fails, loudly.
        with pytest.raises(lb.WorkspaceError, match="no root on site 'local'"):
            await bus.submit(lb.JobDefn.of(["cat", "workspace:job-ws/in/params.txt"]), site="local")


@pytest.mark.parametrize(
    "logical",
    ["../escape.txt", "a/../../escape.txt", "/etc/passwd", "a//b", "./a", "a/./b", "", "a\\..\\b", "nul\x00"],
)
async def test_logical_names_that_could_escape_are_refused(bus: lb.Bus, tmp_path: Path, logical: str) -> None:
    await bus.workspaces.define("safe", {"local": str(tmp_path)})
    with pytest.raises(lb.WorkspaceError):
        await bus.workspaces.add("safe", logical)
    with pytest.raises(lb.WorkspaceError):
        await bus.workspaces.resolve(f"workspace:safe/{logical}")
    assert (await bus.workspaces.get("safe")).files == {}


async def test_locations_outside_the_root_are_refused(bus: lb.Bus, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sub" / "link").symlink_to(outside)
    await bus.workspaces.define("fenced", {"local": str(root)})
    with pytest.raises(lb.WorkspaceError, match="outside the workspace root"):
        await bus.workspaces.add("fenced", "x", path=str(outside / "x"))
    with pytest.raises(lb.WorkspaceError, match="outside the workspace root"):
        await bus.workspaces.add("fenced", "x", path=str(tmp_path / "rootother" / "x"))  # a prefix, not a parent
    with pytest.raises(lb.WorkspaceError, match="normalised"):
        await bus.workspaces.add("fenced", "x", path=f"{root}/sub/../../outside/x")
    with pytest.raises(lb.WorkspaceError, match="through a symlink"):
        await bus.workspaces.add("fenced", "sub/link/secret")
    # A symlink made after the name was mapped is caught when the name is resolved.
    await bus.workspaces.add("fenced", "late/secret")
    (root / "late").symlink_to(outside)
    with pytest.raises(lb.WorkspaceError, match="through a symlink"):
        await bus.workspaces.resolve("workspace:fenced/late/secret")
    with pytest.raises(lb.WorkspaceError, match="not absolute"):
        await bus.workspaces.define("rel", {"local": "relative/root"})
    with pytest.raises(lb.WorkspaceError, match="workspace name"):
        await bus.workspaces.resolve("workspace:bad.name/x")


async def test_concurrent_changes_from_two_processes_converge(
    two_sites: lb.BusConfig, roots: dict[str, Path], tmp_path: Path
) -> None:
    """Signal collisions (the LAS notes): both sides' adds stand, in stream order, everywhere."""
    other_home = two_sites.model_copy(update={"home": tmp_path / "other-machine"})
    async with lb.connect(two_sites) as bus, lb.connect(other_home) as other:
        await bus.workspaces.define("busy", {s: str(r) for s, r in roots.items()})
        await asyncio.gather(
            *(bus.workspaces.add("busy", f"f{i}", site="local") for i in range(20)),
            *(other.workspaces.add("busy", f"f{i}", site="cluster") for i in range(20)),
        )
        mine, theirs = await bus.workspaces.get("busy"), await other.workspaces.get("busy")
    assert mine == theirs
    assert len(mine.files) == 20
    assert all({loc.site for loc in locs} == {"local", "cluster"} for locs in mine.files.values())
