"""All nats-server configuration text, in one place: the embedded server's, a federation member's
and a cluster node's.

Two things write server configuration -- the embedded singleton (listen address,
JetStream store, authorization) and a federation member (its JetStream domain, the
hub's leaf listener and users with their permissions, or a leaf's remote) -- and they
share one quoting rule, so that no value from a file or a user ever changes the
meaning of a line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .._cluster import CLIENT_USER, ROUTE_USER, Cluster, host_port
from .._config import EmbeddedServerConfig, is_loopback
from .._errors import ConfigError
from .._federation import FederationMember

__all__ = [
    "adopt_global_store",
    "both_stores",
    "global_store",
    "quote",
    "render_cluster",
    "render_config",
    "render_federation",
]

log = logging.getLogger("lwfm_bus.server")


def quote(value: str) -> str:
    """A NATS config string: JSON-style quoting, but UTF-8 as is (nats-server rejects ``\\uXXXX``)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigError(f"{value!r}: control characters cannot go into the nats-server configuration")
    return json.dumps(value, ensure_ascii=False)


def render_config(
    options: EmbeddedServerConfig, store_dir: Path, server_name: str, federation: FederationMember | None = None
) -> str:
    """The nats-server configuration file for the embedded server.

    Refuses to listen beyond loopback without authentication: an open JetStream on a
    network is an open door to every job launcher on the bus.  A federation member's
    server also gets its JetStream domain and its hub or leaf settings.
    """
    fed_lines, hub_login = render_federation(federation) if federation else ([], None)
    if not is_loopback(options.host) and not options.has_auth and hub_login is None:
        raise ConfigError(
            f"refusing to listen on {options.host!r} (beyond loopback) without authentication: "
            "configure a user and password or a token for the embedded server"
        )
    port = options.port or -1
    lines = [
        f"listen: {quote(f'{options.host}:{port}')}",
        f"server_name: {quote(server_name)}",
        f"max_payload: {options.max_payload}",
        f"jetstream {{ store_dir: {quote(str(store_dir))}"
        + (f", domain: {quote(federation.site)}" if federation else "")
        + " }",
        *fed_lines,
    ]
    if hub_login is not None:
        return "\n".join(lines) + "\n"  # the hub's accounts block holds every login, its own processes' too
    if options.token is not None:
        lines.append(f"authorization {{ token: {quote(options.token.get_secret_value())} }}")
    elif options.user is not None and options.password is not None:
        lines.append(
            f"authorization {{ user: {quote(options.user)}, password: {quote(options.password.get_secret_value())} }}"
        )
    return "\n".join(lines) + "\n"


def render_federation(member: FederationMember) -> tuple[list[str], tuple[str, str] | None]:
    """nats-server configuration lines for a member, and the hub's local client login.

    Both kinds of member get a JetStream domain named after the site, which keeps each
    site's streams and KV buckets its own.  The hub holds one account per site
    (:meth:`Federation.account_config`): a leaf's credentials (bcrypt-checked, with
    :meth:`Federation.leaf_permissions`) bind its link to its site's account, and the
    hub's own processes log in to the hub site's account, the only one with JetStream
    on the hub.  A leaf's own server needs no accounts: it serves its site alone, and
    its link lands in its account at the hub.  Returns the lines that go after the
    ``jetstream`` block (whose domain the caller sets) and, for the hub, the
    (user, password) its local clients must use.
    """
    fed = member.federation
    lines: list[str] = []
    if not member.is_hub:
        lines.append(f"leafnodes {{ remotes: [ {{ url: {quote(member.leaf_remote_url())} }} ] }}")
        return lines, None
    accounts: dict[str, dict[str, object]] = {}
    for name, site in fed.sites.items():
        account = fed.account_config(name)
        if site.hub:
            own = fed.hub_permissions()
            user: dict[str, object] = {"user": member.site, "password": member.secret}
            account["jetstream"] = "enabled"
        else:
            own = fed.leaf_permissions(name)
            user = {"user": name, "password": site.secret_hash}
        if own:
            user["permissions"] = own
        account["users"] = [user]
        accounts[fed.account(name)] = account
    lines.append(f"accounts: {json.dumps(accounts, ensure_ascii=False)}")
    lines.append(f"leafnodes {{ listen: {quote(member.hub_listen())} }}")
    return lines, (member.site, member.secret)


def adopt_global_store(store_dir: Path, member: FederationMember | None) -> None:
    """Give the hub site's account the streams and buckets its server kept in the global account.

    A singleton's home (or a hub from before accounts) keeps JetStream's state under
    ``jetstream/$G``; the hub's own processes now live in their site's account, whose
    state nats-server keeps under ``jetstream/<account>``.  Moving the directory once,
    before the server starts, keeps that history.
    """
    old, new = global_store(store_dir, member)
    if old is None:
        return
    if not new.exists():
        old.rename(new)
    else:
        log.warning(both_stores(old, new))


def global_store(store_dir: Path, member: FederationMember | None) -> tuple[Path | None, Path]:
    """A hub's store kept in the global account (``jetstream/$G``), if any, and its account's directory."""
    root = store_dir / "jetstream"
    if member is None or not member.is_hub:
        return None, root
    old, new = root / "$G", root / member.federation.account(member.site)
    return (old if old.is_dir() else None), new


def both_stores(old: Path, new: Path) -> str:
    """What is said when a hub's store holds both the global account's state and its site account's."""
    return (
        f"{old} and {new} both exist: the hub uses {new}; the streams under {old} (from before "
        "per-site accounts) are not served -- move what you need from it, then remove it"
    )


def render_cluster(cluster: Cluster, node: str, routes_secret: str, max_payload: int = 1024 * 1024) -> str:
    """The nats-server configuration of one node of a cluster (see :mod:`lwfm_bus._cluster`).

    Clients log in as one user whose password the node checks by its bcrypt hash; the
    nodes log in to each other with the routes' password, which each node must hold in
    plain text to dial the others -- so this text is a secret and is written mode 600.
    Each node advertises its ``host`` to clients and routes, so a client given one URL
    learns the others (and fails over to them) whatever address the node binds.
    """
    me = cluster.node(node)
    route_urls = [
        f"nats-route://{ROUTE_USER}:{_url_part(routes_secret)}@{other.route_address()}"
        for name, other in cluster.nodes.items()
        if name != node
    ]
    client = f"{{ user: {quote(CLIENT_USER)}, password: {quote(cluster.clients_hash)} }}"
    lines = [
        f"server_name: {quote(node)}",
        f"listen: {quote(host_port(cluster.bind, me.client_port))}",
        f"client_advertise: {quote(f'{me.host}:{me.client_port}')}",
        f"max_payload: {max_payload}",
        f"jetstream {{ store_dir: {quote(cluster.node_store(node))} }}",
        f"authorization {{ users: [ {client} ] }}",
        "cluster {",
        f"  name: {quote(cluster.name)}",
        f"  listen: {quote(host_port(cluster.bind, me.route_port))}",
        f"  advertise: {quote(me.route_address())}",
        f"  authorization {{ user: {quote(ROUTE_USER)}, password: {quote(routes_secret)} }}",
        f"  routes: [ {', '.join(quote(url) for url in route_urls)} ]",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _url_part(value: str) -> str:
    """A credential as it may sit in a route URL (the generated ones are URL-safe already)."""
    from urllib.parse import quote as url_quote

    return url_quote(value, safe="")
