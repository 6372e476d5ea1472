"""A group's bus on a NATS cluster: the file that describes the nodes, and their secrets.

One bus (one JetStream, one ``LWFM`` stream) served by several nats-servers that
replicate it, so that losing a node loses nothing and stops nothing.  As for a
federation, nobody hand-writes server configuration: one short file names the
nodes, and every node's ``nats-server.conf`` is derived from it
(:func:`lwfm_bus._bus._natsconf.render_cluster`)::

    version = 1
    name = "lwfm"                  # the NATS cluster's name
    bind = "0.0.0.0"               # the address every node listens on
    store_dir = "/data/jetstream"  # each node's JetStream store ({node} is the node's name)

    clients_hash = "$2b$11$..."    # bcrypt of the clients' password (the password is not here)

    [nodes.n1]
    host = "host1"                 # where clients and the other nodes reach n1
    client_port = 4222
    route_port = 6222

Secrets never go into that file: the routes' password (every node needs it, in
plain text, to join the others) and the clients' password (engines, agents, users)
live in their own mode-600 files beside it, and a node's configuration, which
holds the routes' password, is written mode 600 too.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from ._errors import ConfigError
from ._limits import read_toml_file
from ._subjects import Token

__all__ = [
    "CLIENT_USER",
    "ROUTE_USER",
    "Cluster",
    "ClusterNode",
    "host_port",
    "load_cluster",
    "problems",
    "read_private",
]

CLIENT_USER = "lwfm"
"""The login every process of the bus uses (its password is the clients' secret)."""
ROUTE_USER = "route"
"""The login nodes use with each other."""

_Host = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9._:\[\]-]+$")]
_Port = Annotated[int, Field(ge=1, le=65535)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClusterNode(_Frozen):
    """One nats-server of the cluster, as every other node and every client sees it."""

    host: _Host = Field(description="Where clients and the other nodes reach this node (a name or an address).")
    client_port: _Port = Field(default=4222, description="Port for clients (engines, agents, users).")
    route_port: _Port = Field(default=6222, description="Port for the other nodes' routes.")

    @field_validator("host")
    @classmethod
    def _bracketed(cls, value: str) -> str:
        return _check_host(value, "an IPv6 host")

    def client_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"

    def route_address(self) -> str:
        return f"{self.host}:{self.route_port}"


class Cluster(_Frozen):
    """The shared description of a cluster (``cluster.toml``)."""

    version: Literal[1] = Field(default=1, description="Format version of this file.")
    name: Token = Field(default="lwfm", description="The NATS cluster's name.")
    bind: _Host = Field(default="0.0.0.0", description="The address each node listens on (clients and routes).")  # noqa: S104
    store_dir: str = Field(
        default="/data/jetstream",
        min_length=1,
        max_length=4096,
        description="Each node's JetStream store directory; '{node}' is replaced by the node's name.",
    )
    clients_hash: str = Field(
        description="bcrypt hash of the clients' password; the nodes check it, the password stays in its own file.",
        pattern=r"^\$2[abxy]?\$\d{2}\$[./A-Za-z0-9]{53}$",
    )
    nodes: dict[Token, ClusterNode] = Field(description="Every node, by name.", min_length=1)

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        return _check_host(value, "an IPv6 bind address", bare_ipv6=True)

    @model_validator(mode="after")
    def _distinct(self) -> Cluster:
        if "{node}" not in self.store_dir:
            hosts = Counter(node.host for node in self.nodes.values())
            shared = sorted(host for host, count in hosts.items() if count > 1)
            if shared:
                raise ValueError(
                    f"several nodes on host {shared[0]} would share the store directory {self.store_dir!r}: "
                    "put {node} in --store-dir (e.g. /data/{node}/jetstream)"
                )
        seen: dict[str, str] = {}
        for name, node in self.nodes.items():
            for address in (f"{node.host}:{node.client_port}", node.route_address()):
                if address in seen and seen[address] != name:
                    raise ValueError(f"nodes {seen[address]!r} and {name!r} both use {address}")
                seen[address] = name
            if node.client_port == node.route_port:
                raise ValueError(f"node {name!r}: the client and route ports must differ")
        return self

    def node(self, name: str) -> ClusterNode:
        try:
            return self.nodes[name]
        except KeyError:
            known = ", ".join(sorted(self.nodes))
            raise ConfigError(f"node {name!r} is not in the cluster (nodes: {known})") from None

    def client_urls(self) -> tuple[str, ...]:
        """Every node's client URL: what ``LWFM_BUS_URL`` should list, so a client fails over."""
        return tuple(node.client_url() for node in self.nodes.values())

    def node_store(self, name: str) -> str:
        return self.store_dir.replace("{node}", name)


def _check_host(value: str, what: str, *, bare_ipv6: bool = False) -> str:
    """A host name or address; an IPv6 address in brackets (``[::1]``), or bare too where allowed."""
    if value.startswith("[") or value.endswith("]") or (":" in value and not bare_ipv6):
        if not re.fullmatch(r"\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]", value):
            raise ValueError(f"{value!r}: {what} goes in brackets, e.g. [::1]")
    elif ":" in value and not re.fullmatch(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*", value):
        raise ValueError(f"{value!r}: not a host name or an address")
    return value


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::]:4222``)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def problems(exc: ValidationError, whole: str = "<file>") -> str:
    """A validation error in one line: each problem names its field (``whole``: none, the whole)."""

    def one(e: Any) -> str:
        where = ".".join(str(p) for p in e["loc"]) or whole
        message = str(e["msg"]).removeprefix("Value error, ")
        return f"{where}: {message}" if where else message

    return "; ".join(one(e) for e in exc.errors())


def read_private(path: Path, what: str) -> str:
    """A secret from its own file, refusing a file others can read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} from {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode & 0o777:o}): chmod 600 it")
    if not text:
        raise ConfigError(f"{path} is empty: it should hold {what}")
    return text


def load_cluster(path: Path) -> Cluster:
    """Read and check a cluster file; errors name the file and the field."""
    try:
        raw = read_toml_file(path, "cluster file")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return Cluster.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {problems(exc)}") from None
