"""``lwfm-bus workspace define | add | rm | ls | resolve | delete``: shared maps of logical file names.

A workspace maps each logical file name to its locations on sites, under a root per site.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._errors import WorkspaceError
from ._print import shown

__all__ = ["register"]


def register(sub: Any) -> None:
    w = sub.add_parser("workspace", help="shared maps of logical file names to locations on sites")
    wsub = w.add_subparsers(dest="workspace_command", required=True, metavar="ACTION")
    d = wsub.add_parser("define", help="create a workspace, or add or move its roots")
    d.add_argument("name")
    d.add_argument("--root", action="append", required=True, metavar="SITE=PATH", help="root on a site (repeat)")
    d.set_defaults(func=define)
    a = wsub.add_parser("add", help="map a logical file name to a location")
    a.add_argument("name")
    a.add_argument("logical", help="relative path inside the workspace")
    a.add_argument("--on-site", dest="ws_site", default="local", help="site of the location (default: local)")
    a.add_argument("--path", help="absolute path on that site (default: under the site's root)")
    a.set_defaults(func=add)
    r = wsub.add_parser("rm", help="unmap a logical file name (on one site, or everywhere)")
    r.add_argument("name")
    r.add_argument("logical")
    r.add_argument("--on-site", dest="ws_site", help="only its locations on this site")
    r.set_defaults(func=remove)
    ls = wsub.add_parser("ls", help="list workspaces, or one workspace's files")
    ls.add_argument("name", nargs="?")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_workspaces)
    res = wsub.add_parser("resolve", help="the path of workspace:NAME/logical on a site")
    res.add_argument("reference", help="workspace:NAME/logical/name")
    res.add_argument("--on-site", dest="ws_site", default="local")
    res.set_defaults(func=resolve)
    rm = wsub.add_parser("delete", help="forget a workspace (its files stay where they are)")
    rm.add_argument("name")
    rm.set_defaults(func=delete)


def _roots(items: list[str]) -> dict[str, str]:
    roots = {}
    for item in items:
        site, sep, path = item.partition("=")
        if not sep or not site or not path:
            raise WorkspaceError(f"--root {item!r}: expected SITE=/absolute/path")
        roots[site] = path
    return roots


async def define(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus workspace") as bus:
        ws = await bus.workspaces.define(args.name, _roots(args.root))
    for site, root in sorted(ws.roots.items()):
        print(f"{shown(site)}\t{shown(root)}")
    return 0


async def add(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus workspace") as bus:
        loc = await bus.workspaces.add(args.name, args.logical, site=args.ws_site, path=args.path)
    print(f"{shown(loc.site)}\t{shown(loc.path)}")
    return 0


async def remove(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus workspace") as bus:
        await bus.workspaces.remove(args.name, args.logical, site=args.ws_site)
    return 0


async def delete(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus workspace") as bus:
        await bus.workspaces.delete(args.name)
    return 0


async def resolve(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus workspace") as bus:
        print(shown(await bus.workspaces.resolve(args.reference, site=args.ws_site)))
    return 0


async def list_workspaces(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus workspace") as bus:
        if args.name is None:
            names = await bus.workspaces.names()
            print(json.dumps(names) if args.json else "\n".join(shown(n) for n in names))
            return 0
        ws = await bus.workspaces.get(args.name)
    if args.json:
        files = {k: [loc.model_dump() for loc in v] for k, v in ws.files.items()}
        print(json.dumps({"name": ws.name, "roots": ws.roots, "files": files}, indent=2))
        return 0
    for site, root in sorted(ws.roots.items()):
        print(f"root  {shown(site)}\t{shown(root)}")
    for logical, locations in ws.files.items():
        for loc in locations:
            print(f"file  {shown(logical)}\t{shown(loc.site)}\t{shown(loc.path)}")
    return 0
