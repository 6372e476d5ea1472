"""Workspaces: a shared map from logical file names to where the bytes are, per site.

From the LAS notes: steps on different machines refer to one logical file
(``workspace:inputs/mesh.vtk``) and each resolves it to a path it can read on its own
site.  A workspace has a root directory on each site it spans; a logical name is a
relative path inside it; each name maps to one or more locations (site, path).

The map is changed only by events (``lwfm.workspace.changed``) and projected by the
index, so every process sees the same map; concurrent changes apply in stream order.

Path rules, checked on every change and again when a name is resolved: logical
names are relative, normalised and never climb (``..``); a location lies under the
workspace's root on its site; on this machine, a location reached through a symlink
must still lie under the root's real path.  Remote paths are checked lexically (their
symlinks can only be seen on their site).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from ._errors import WorkspaceError
from ._subjects import Token, check_token

__all__ = [
    "WORKSPACE_PREFIX",
    "AbsPath",
    "LogicalName",
    "WorkspaceLocation",
    "WorkspaceRecord",
    "check_inside",
    "check_logical",
    "check_root",
    "parse_reference",
]

WORKSPACE_PREFIX = "workspace:"
_MAX_PATH = 4096


def check_logical(name: str) -> str:
    """A logical file name: relative, normalised, not climbing out; returned as given."""
    if not name or len(name) > 1024:
        raise WorkspaceError("a logical file name is 1-1024 characters")
    if "\x00" in name or "\\" in name:
        raise WorkspaceError(f"logical file name {name!r} contains a NUL or a backslash")
    if name.startswith("/"):
        raise WorkspaceError(f"logical file name {name!r} is absolute; it must be relative to the workspace")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise WorkspaceError(
            f"logical file name {name!r} has an empty, '.' or '..' component; write it as a plain relative path"
        )
    return name


def check_root(path: str) -> str:
    """A workspace root or location: an absolute, normalised POSIX path."""
    if not path or len(path) > _MAX_PATH or "\x00" in path:
        raise WorkspaceError(f"path {path!r}: expected 1-{_MAX_PATH} characters without NUL")
    if not path.startswith("/"):
        raise WorkspaceError(f"path {path!r} is not absolute")
    if posixpath.normpath(path) != path.rstrip("/") and path != "/":
        raise WorkspaceError(f"path {path!r} is not normalised (no '.', '..' or repeated '/')")
    return path.rstrip("/") or "/"


def _logical(value: str) -> str:
    return check_logical(value)


def _absolute(value: str) -> str:
    return check_root(value)


LogicalName = Annotated[str, AfterValidator(_logical)]
AbsPath = Annotated[str, StringConstraints(max_length=_MAX_PATH), AfterValidator(_absolute)]


class WorkspaceLocation(BaseModel):
    """Where one copy of a logical file lives."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site: Token
    path: AbsPath


def check_inside(root: str, path: str, *, local: bool) -> None:
    """Refuse ``path`` unless it lies under ``root`` (and, on this machine, really does)."""
    if not _under(root, path):
        raise WorkspaceError(f"{path!r} is outside the workspace root {root!r}")
    if local:
        real_root = os.path.realpath(root)
        if not _under(real_root, os.path.realpath(path)):
            raise WorkspaceError(f"{path!r} leads outside the workspace root {root!r} through a symlink")


def _under(root: str, path: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def parse_reference(ref: str) -> tuple[str, str]:
    """``workspace:NAME/logical/name`` -> (NAME, logical name), validated."""
    if not ref.startswith(WORKSPACE_PREFIX):
        raise WorkspaceError(f"{ref!r} is not a workspace reference (expected {WORKSPACE_PREFIX}NAME/path)")
    name, _, logical = ref[len(WORKSPACE_PREFIX) :].partition("/")
    try:
        check_token(name, "workspace name")
    except ValueError as exc:
        raise WorkspaceError(f"{ref!r}: {exc}") from None
    return name, check_logical(logical)


@dataclass
class WorkspaceRecord:
    """A workspace as the index knows it: its roots and its files' locations."""

    name: str
    roots: dict[str, str]
    files: dict[str, list[WorkspaceLocation]] = field(default_factory=dict)

    def resolve(self, logical: str, site: str, *, local: bool) -> str:
        """The path of ``logical`` on ``site``, checked against the root there.

        A name mapped on that site resolves to its location; a name not mapped anywhere
        resolves to its default place under the site's root (an output to be written);
        a name that lives only on other sites is an error naming them.
        """
        check_logical(logical)
        root = self.roots.get(site)
        if root is None:
            spans = ", ".join(sorted(self.roots)) or "none"
            raise WorkspaceError(f"workspace {self.name!r} has no root on site {site!r} (its sites: {spans})")
        locations = self.files.get(logical, [])
        here = [loc.path for loc in locations if loc.site == site]
        if here:
            path = here[0]
        elif locations:
            elsewhere = ", ".join(sorted({loc.site for loc in locations}))
            raise WorkspaceError(
                f"{WORKSPACE_PREFIX}{self.name}/{logical} is on site(s) {elsewhere}, not on {site!r}: copy it first"
            )
        else:
            path = posixpath.join(root, logical)
        check_inside(root, path, local=local)
        return path
