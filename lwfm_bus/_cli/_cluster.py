"""``lwfm-bus cluster``: one bus on several nats-servers, every node's configuration derived from one file.

``init`` writes the shared ``cluster.toml`` (no secret in it), the two secrets in
their own mode-600 files, and each node's ``nats-server.conf``; ``config`` writes one
node's configuration again (after the file changed, or on the node's own machine).
The engines, agents and users then point at every node (``LWFM_BUS_URL``) with the
clients' login, which ``init`` writes as an environment file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .._bus._natsconf import render_cluster
from .._bus._replicas import CLUSTER_REPLICAS
from .._cluster import CLIENT_USER, Cluster, ClusterNode, load_cluster, problems, read_private
from .._config import BusConfig
from .._errors import ConfigError
from .._federation import hash_secret, new_secret
from .._subjects import check_token
from ._print import shown

__all__ = ["register"]

ROUTES_SECRET = "routes.secret"  # noqa: S105 - a file name
CLIENTS_ENV = "clients.env"


def _node_arg(text: str) -> tuple[str, ClusterNode]:
    """``NAME=HOST[:CLIENT_PORT[:ROUTE_PORT]]`` (an IPv6 host in brackets)."""
    usage = f"{text!r}: expected NAME=HOST[:CLIENT_PORT[:ROUTE_PORT]] (an IPv6 host in brackets: [::1])"
    name, sep, where = text.partition("=")
    if where.startswith("["):
        host, closed, rest = where.partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(usage)  # "[::1" or "[::1]junk"
        parts = [host + "]", *rest.split(":")[1:]]
    else:
        parts = where.split(":")
    if not sep or not where or len(parts) > 3 or not all(parts):
        raise argparse.ArgumentTypeError(usage)
    try:
        check_token(name, "node name")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        ports = dict(zip(("client_port", "route_port"), (int(p) for p in parts[1:]), strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(usage) from None
    try:
        return name, ClusterNode.model_validate({"host": parts[0], **ports})
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {problems(exc)}") from None


def register(sub: Any) -> None:
    cluster = sub.add_parser("cluster", help="one bus on a NATS cluster: every node's configuration")
    cmds = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    init = cmds.add_parser("init", help="write cluster.toml, the secrets and every node's nats-server.conf")
    init.add_argument("-o", "--output", type=Path, required=True, help="directory to write into (must not exist)")
    init.add_argument(
        "--node", dest="nodes", type=_node_arg, action="append", required=True,
        metavar="NAME=HOST[:CLIENT_PORT[:ROUTE_PORT]]", help="a node (repeatable; ports default to 4222 and 6222)",
    )  # fmt: skip
    init.add_argument("--name", default="lwfm", help="the NATS cluster's name (default lwfm)")
    init.add_argument("--bind", default="0.0.0.0", help="address every node listens on (default 0.0.0.0)")  # noqa: S104
    init.add_argument("--store-dir", default="/data/jetstream", help="each node's JetStream store; {node} is its name")
    init.set_defaults(func=init_cmd)
    cfg = cmds.add_parser("config", help="write one node's nats-server configuration")
    cfg.add_argument("--cluster", type=Path, required=True, help="the cluster file (cluster.toml)")
    cfg.add_argument("--node", required=True, help="the node's name")
    cfg.add_argument(
        "--routes-secret", type=Path, help="the routes' secret file (default: secrets/routes.secret beside the file)"
    )
    cfg.add_argument("-o", "--output", type=Path, help="write here, mode 600 (default: standard output)")
    cfg.set_defaults(func=config_cmd)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)


def _toml(cluster: Cluster) -> str:
    q = json.dumps  # TOML basic strings share JSON's escapes
    lines = [
        "# lwfm-bus cluster: the same file on every node and client. It holds no secret.",
        "version = 1",
        f"name = {q(cluster.name)}",
        f"bind = {q(cluster.bind)}",
        f"store_dir = {q(cluster.store_dir)}",
        f"clients_hash = {q(cluster.clients_hash)}",
    ]
    for name, node in cluster.nodes.items():
        lines += ["", f"[nodes.{q(name)}]", f"host = {q(node.host)}"]  # a name may hold ':' or '@'...
        lines += [f"client_port = {node.client_port}", f"route_port = {node.route_port}"]
    return "\n".join(lines) + "\n"


async def init_cmd(args: argparse.Namespace, config: BusConfig) -> int:
    _init(args.output, args.nodes, args)
    return 0


def _init(out: Path, given: list[tuple[str, ClusterNode]], args: argparse.Namespace) -> None:
    if out.exists():
        raise ConfigError(f"{out} exists: cluster init never overwrites secrets")
    nodes: dict[str, ClusterNode] = {}
    for name, node in given:
        if name in nodes:
            raise ConfigError(f"node {name!r} is given twice")
        nodes[name] = node
    routes, clients = new_secret(), new_secret()
    try:
        cluster = Cluster(
            name=args.name, bind=args.bind, store_dir=args.store_dir, clients_hash=hash_secret(clients), nodes=nodes
        )
    except ValidationError as exc:
        raise ConfigError(f"cluster init: {problems(exc, whole='')}") from None
    (out / "secrets").mkdir(parents=True, mode=0o700)
    (out / "cluster.toml").write_text(_toml(cluster))
    _write_private(out / "secrets" / ROUTES_SECRET, routes + "\n")
    env = f"LWFM_BUS_URL={','.join(cluster.client_urls())}\nLWFM_BUS_USER={CLIENT_USER}\nLWFM_BUS_PASSWORD={clients}\n"
    if len(nodes) >= CLUSTER_REPLICAS:
        # Not left to "auto": it reads the server's INFO at connect time, which may come
        # from a node whose routes have not formed yet (one copy, wrongly).
        env += f"LWFM_BUS_REPLICAS={CLUSTER_REPLICAS}\n"
    _write_private(out / "secrets" / CLIENTS_ENV, env)
    for name in nodes:
        _write_private(out / f"{name}.conf", render_cluster(cluster, name, routes))
    print(f"wrote {shown(out / 'cluster.toml')}, {len(nodes)} node configurations and the secrets under "
          f"{shown(out / 'secrets')}")  # fmt: skip
    print(f"start each node with: nats-server -c {shown(out)}/<node>.conf (each needs only its own .conf)")
    print(f"give engines, agents and users {shown(out / 'secrets' / CLIENTS_ENV)} as their environment")


async def config_cmd(args: argparse.Namespace, config: BusConfig) -> int:
    cluster = load_cluster(args.cluster)
    cluster.node(args.node)  # a clear error for a node that is not in the file
    secret_file = args.routes_secret or args.cluster.parent / "secrets" / ROUTES_SECRET
    text = render_cluster(cluster, args.node, read_private(secret_file, "the routes' secret"))
    if args.output is None:
        sys.stdout.write(text)
        return 0
    _write_private(args.output, text)
    print(f"wrote {shown(args.output)} (mode 600: it holds the routes' secret)")
    return 0
