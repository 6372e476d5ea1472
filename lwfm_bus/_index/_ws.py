"""The workspaces' half of the index: each workspace's roots and file map, from its events.

Changes apply in stream order, so two processes changing one workspace at once end
with the same map everywhere (the later event wins for a root; adds and removes of
different locations both stand).  An ``add`` to a workspace that does not exist (it
was deleted meanwhile) is ignored: the map never holds a file without a workspace.
"""

from __future__ import annotations

import json

import aiosqlite

from .._events import WorkspaceChangedEvent
from .._workspace import WorkspaceLocation, WorkspaceRecord

__all__ = ["WS_SCHEMA", "WS_TABLES", "apply_workspace", "workspace", "workspace_names"]

WS_SCHEMA = """
CREATE TABLE IF NOT EXISTS workspaces (
    name TEXT PRIMARY KEY,
    roots TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workspace_files (
    name TEXT NOT NULL,
    logical TEXT NOT NULL,
    site TEXT NOT NULL,
    path TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (name, logical, site, path)
) WITHOUT ROWID;
"""
WS_TABLES = ("workspaces", "workspace_files")


async def apply_workspace(db: aiosqlite.Connection, event: WorkspaceChangedEvent, seq: int) -> None:
    d = event.data
    when = event.time.isoformat()
    if d.op == "define":
        async with db.execute("SELECT roots FROM workspaces WHERE name = ?", (d.workspace,)) as cur:
            row = await cur.fetchone()
        roots = json.loads(row[0]) if row else {}
        roots.update(d.roots)
        await db.execute(
            "INSERT INTO workspaces (name, roots, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET roots = excluded.roots, updated_at = excluded.updated_at",
            (d.workspace, json.dumps(roots, sort_keys=True), when),
        )
    elif d.op == "delete":
        await db.execute("DELETE FROM workspace_files WHERE name = ?", (d.workspace,))
        await db.execute("DELETE FROM workspaces WHERE name = ?", (d.workspace,))
    elif d.op == "add":
        assert d.logical is not None and d.location is not None
        await db.execute(
            "INSERT OR IGNORE INTO workspace_files (name, logical, site, path, seq) "
            "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM workspaces WHERE name = ?)",
            (d.workspace, d.logical, d.location.site, d.location.path, seq, d.workspace),
        )
    else:
        if d.location is None:
            await db.execute("DELETE FROM workspace_files WHERE name = ? AND logical = ?", (d.workspace, d.logical))
        else:
            await db.execute(
                "DELETE FROM workspace_files WHERE name = ? AND logical = ? AND site = ? AND path = ?",
                (d.workspace, d.logical, d.location.site, d.location.path),
            )


async def workspace(db: aiosqlite.Connection, name: str) -> WorkspaceRecord | None:
    async with db.execute("SELECT roots FROM workspaces WHERE name = ?", (name,)) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    record = WorkspaceRecord(name=name, roots=json.loads(row[0]))
    async with db.execute(
        "SELECT logical, site, path FROM workspace_files WHERE name = ? ORDER BY logical, seq", (name,)
    ) as cur:
        async for logical, site, path in cur:
            record.files.setdefault(logical, []).append(WorkspaceLocation(site=site, path=path))
    return record


async def workspace_names(db: aiosqlite.Connection) -> list[str]:
    async with db.execute("SELECT name FROM workspaces ORDER BY name") as cur:
        return [r[0] for r in await cur.fetchall()]
