"""The workspace API: define, add, remove, delete, list and resolve, all through events.

Every change is checked against the current map (the index, caught up with the
stream) and then published as one ``lwfm.workspace.changed`` event; the index of
every process applies it, so all of them resolve a logical name the same way.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import ValidationError

from .._errors import WorkspaceError
from .._events import WorkspaceChanged, _summarise, make_event
from .._jobs import JobDefn
from .._workspace import WORKSPACE_PREFIX, WorkspaceLocation, WorkspaceRecord, check_inside, parse_reference

if TYPE_CHECKING:
    from ._repository import RepoBus

__all__ = ["Workspaces"]


class Workspaces:
    """``bus.workspaces``: a shared map from logical file names to locations on sites."""

    def __init__(self, bus: RepoBus) -> None:
        self._bus = bus

    async def _publish(self, **fields: object) -> None:
        try:
            change = WorkspaceChanged.model_validate({"site": self._bus.config.site, **fields})
        except ValidationError as exc:
            raise WorkspaceError(f"workspace {fields.get('workspace')!r}: {_summarise(exc)}") from None
        await self._bus.publish(make_event(change, source=f"/sites/{self._bus.config.site}/workspaces"))

    async def define(self, name: str, roots: Mapping[str, str]) -> WorkspaceRecord:
        """Create a workspace, or add or move its roots (one directory per site)."""
        await self._publish(workspace=name, op="define", roots=dict(roots))
        return await self.get(name)

    async def get(self, name: str) -> WorkspaceRecord:
        found = await (await self._bus.index()).workspace(name)
        if found is None:
            raise WorkspaceError(f"no workspace {name!r} (define it first)")
        return found

    async def names(self) -> list[str]:
        return await (await self._bus.index()).workspaces()

    async def add(self, name: str, logical: str, *, site: str = "local", path: str | None = None) -> WorkspaceLocation:
        """Map ``logical`` to ``path`` on ``site`` (default: its place under the site's root)."""
        ws = await self.get(name)
        root = ws.roots.get(site)
        if root is None:
            raise WorkspaceError(f"workspace {name!r} has no root on site {site!r}")
        try:
            location = WorkspaceLocation(site=site, path=path or posixpath.join(root, logical))
        except ValidationError as exc:
            raise WorkspaceError(f"workspace {name!r}: {_summarise(exc)}") from None
        check_inside(root, location.path, local=self._bus.is_local_site(site))
        await self._publish(workspace=name, op="add", logical=logical, location=location)
        return location

    async def remove(self, name: str, logical: str, *, site: str | None = None) -> None:
        """Unmap ``logical`` (only its locations on ``site``, if given)."""
        ws = await self.get(name)
        if site is None:
            await self._publish(workspace=name, op="remove", logical=logical)
            return
        for loc in ws.files.get(logical, []):
            if loc.site == site:
                await self._publish(workspace=name, op="remove", logical=logical, location=loc)

    async def delete(self, name: str) -> None:
        await self.get(name)
        await self._publish(workspace=name, op="delete")

    async def resolve(self, reference: str, *, site: str = "local") -> str:
        """``workspace:NAME/logical`` -> the path to use on ``site`` (see WorkspaceRecord.resolve)."""
        name, logical = parse_reference(reference)
        ws = await self.get(name)
        return ws.resolve(logical, site, local=self._bus.is_local_site(site))

    async def resolve_job(self, defn: JobDefn, site: str) -> JobDefn:
        """The job with each ``workspace:`` argument, env value and cwd replaced by its path on ``site``."""
        changes: dict[str, object] = {}
        if defn.argv is not None and any(a.startswith(WORKSPACE_PREFIX) for a in defn.argv):
            changes["argv"] = tuple([await self._value(a, site) for a in defn.argv])
        if any(v.startswith(WORKSPACE_PREFIX) for v in defn.env.values()):
            changes["env"] = {k: await self._value(v, site) for k, v in defn.env.items()}
        if defn.cwd is not None and defn.cwd.startswith(WORKSPACE_PREFIX):
            changes["cwd"] = await self.resolve(defn.cwd, site=site)
        return defn.model_copy(update=changes) if changes else defn

    async def _value(self, text: str, site: str) -> str:
        return await self.resolve(text, site=site) if text.startswith(WORKSPACE_PREFIX) else text
