"""All nats-server configuration text, in one place: the embedded server's and a federation member's.

Two things write server configuration -- the embedded singleton (listen address,
JetStream store, authorization) and a federation member (its JetStream domain, the
hub's leaf listener and users with their permissions, or a leaf's remote) -- and they
share one quoting rule, so that no value from a file or a user ever changes the
meaning of a line.
"""

from __future__ import annotations

import json
from pathlib import Path

from .._config import EmbeddedServerConfig, is_loopback
from .._errors import ConfigError
from .._federation import FederationMember

__all__ = ["quote", "render_config", "render_federation"]


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
    site's streams and KV buckets its own.  The hub's users are the leaves (bcrypt-checked,
    with :meth:`Federation.leaf_permissions`) and the hub's own processes, all in the
    global account like a singleton's; a leaf adds a remote to the hub.  Returns the lines that
    go after the ``jetstream`` block (whose domain the caller sets) and, for the hub,
    the (user, password) its local clients must use.
    """
    fed = member.federation
    lines: list[str] = []
    if not member.is_hub:
        lines.append(f"leafnodes {{ remotes: [ {{ url: {quote(member.leaf_remote_url())} }} ] }}")
        return lines, None
    own = fed.hub_permissions()
    own_perms = f", permissions: {json.dumps(own)}" if own else ""
    users = [f"{{ user: {quote(member.site)}, password: {quote(member.secret)}{own_perms} }}"]
    for name, site in fed.sites.items():
        if site.hub:
            continue
        perms = json.dumps(fed.leaf_permissions(name))
        users.append(f"{{ user: {quote(name)}, password: {quote(site.secret_hash)}, permissions: {perms} }}")
    # The global account, as a singleton's: a home that becomes the hub keeps its streams and buckets.
    lines.append(f"authorization {{ users: [ {', '.join(users)} ] }}")
    lines.append(f"leafnodes {{ listen: {quote(member.hub_listen())} }}")
    return lines, (member.site, member.secret)
