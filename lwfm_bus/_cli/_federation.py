"""``lwfm-bus federation``: describe a federation once, derive every server's configuration.

``init`` writes the shared ``federation.toml`` (hashes only) and one secret file per
site; ``config`` prints the nats-server configuration of one site, for those who run
their own server rather than the embedded one; ``status`` shows how far this site's
stream has caught up with every other site's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .._bus._connect import federation_member
from .._bus._fedkeeper import source_states
from .._bus._natsconf import adopt_global_store, both_stores, global_store
from .._bus._server import render_config
from .._client import connect
from .._config import BusConfig
from .._errors import ConfigError
from .._federation import Federation, FederationSite, hash_secret, new_secret
from .._subjects import check_token
from ._print import shown

__all__ = ["register"]


def _site_arg(text: str) -> tuple[str, tuple[str, ...]]:
    name, _, extra = text.partition("=")
    try:
        check_token(name, "site name")
        names = tuple(check_token(n.strip(), "site name") for n in extra.split(",") if n.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name, names


def register(sub: Any) -> None:
    fed = sub.add_parser("federation", help="several sites as one bus: hub and leaf configuration")
    cmds = fed.add_subparsers(dest="federation_command", required=True, metavar="SUBCOMMAND")
    init = cmds.add_parser("init", help="write federation.toml and one secret per site")
    init.add_argument("-o", "--output", type=Path, required=True, help="directory to write into (must not exist)")
    init.add_argument("--hub", type=_site_arg, required=True, metavar="NAME[=EXTRA,...]", help="the hub's site")
    init.add_argument("--hub-url", required=True, help="where leaves reach the hub: nats-leaf://host:port")
    init.add_argument("--hub-listen", help="host:port the hub's leaf listener binds (default 0.0.0.0:<port>)")
    init.add_argument(
        "--leaf", dest="leaves", type=_site_arg, action="append", default=[], metavar="NAME[=EXTRA,...]",
        help="a leaf site, with the further site names it publishes for (repeatable)",
    )  # fmt: skip
    init.set_defaults(func=init_cmd)
    cfg = cmds.add_parser("config", help="print this site's nats-server configuration (for your own server)")
    cfg.add_argument("--listen", default="127.0.0.1:4222", help="client listen address (default 127.0.0.1:4222)")
    cfg.add_argument("--store", type=Path, help="JetStream store directory (default <home>/jetstream)")
    cfg.add_argument("-o", "--output", type=Path, help="write here, mode 600 (default: standard output)")
    cfg.add_argument(
        "--move-store", action="store_true",
        help="a hub: move the store's global-account state (jetstream/$G) to the site's account (server stopped)",
    )  # fmt: skip
    cfg.set_defaults(func=config_cmd)
    status = cmds.add_parser("status", help="how far this site has received every other site's events")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=status_cmd)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _toml(fed: Federation) -> str:
    q = json.dumps  # TOML basic strings share JSON's escapes
    lines = ["# lwfm-bus federation: the same file at every site. It holds no secret.", "version = 1"]
    lines.append(f"hub_url = {q(fed.hub_url)}")
    if fed.hub_listen:
        lines.append(f"hub_listen = {q(fed.hub_listen)}")
    for name, site in fed.sites.items():
        lines += ["", f"[sites.{q(name)}]"]  # a name may hold ":" or "@", which a bare key may not
        if site.hub:
            lines.append("hub = true")
        lines.append(f"secret_hash = {q(site.secret_hash)}")
        if site.names:
            lines.append(f"names = [{', '.join(q(n) for n in site.names)}]")
        if site.submit_to:
            lines.append(f"submit_to = [{', '.join(q(n) for n in site.submit_to)}]")
    return "\n".join(lines) + "\n"


async def init_cmd(args: argparse.Namespace, config: BusConfig) -> int:
    _init(args.output, args)
    return 0


def _init(out: Path, args: argparse.Namespace) -> None:
    if out.exists():
        raise ConfigError(f"{out} exists: federation init never overwrites secrets")
    secrets = {name: new_secret() for name, _ in [args.hub, *args.leaves]}
    # By default every member may submit jobs to every other: a federation exists to run across sites.
    anywhere = ("*",)
    sites = {
        args.hub[0]: FederationSite(
            hub=True, secret_hash=hash_secret(secrets[args.hub[0]]), names=args.hub[1], submit_to=anywhere
        )
    }
    for name, names in args.leaves:
        if name in sites:
            raise ConfigError(f"site {name!r} is given twice")
        sites[name] = FederationSite(secret_hash=hash_secret(secrets[name]), names=names, submit_to=anywhere)
    try:
        fed = Federation(hub_url=args.hub_url, hub_listen=args.hub_listen, sites=sites)
    except ValueError as exc:
        raise ConfigError(f"federation init: {exc}") from None
    (out / "secrets").mkdir(parents=True, mode=0o700)
    (out / "federation.toml").write_text(_toml(fed))
    for name, secret in secrets.items():
        _write_private(out / "secrets" / f"{name}.secret", secret + "\n")
    print(f"wrote {shown(out / 'federation.toml')} and {len(secrets)} secrets under {shown(out / 'secrets')}")
    print("give every site federation.toml, and each site only its own secret (as <home>/federation.secret);")
    print("then at each site: LWFM_BUS_FEDERATION=federation.toml lwfm-bus --site NAME up")


async def config_cmd(args: argparse.Namespace, config: BusConfig) -> int:
    member = federation_member(config)
    if member is None:
        raise ConfigError("no federation file: pass --federation FILE or set LWFM_BUS_FEDERATION")
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen {args.listen!r}: expected host:port")
    options = config.embedded.model_copy(update={"host": host, "port": int(port)})
    store = args.store or config.store_dir()
    text = render_config(options, store, f"lwfm-{member.site}", member)
    # A hub's own processes live in its site's account: a store from before (a single
    # server, or a hub from before accounts) keeps its streams under the global account.
    old, new = global_store(store, member)
    if old is not None and new.exists():
        print(f"warning: {both_stores(old, new)}", file=sys.stderr)
    elif old is not None and not args.move_store:
        raise ConfigError(
            f"{old} holds this hub's streams under the global account, which it no longer serves: stop the "
            f"server, then run again with --move-store (it moves them to {new.name}), or move it yourself"
        )
    elif old is not None:
        adopt_global_store(store, member)
        print(f"moved {shown(old)} to {shown(new)}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file too: the hub's configuration holds a password
        out.write(text)
    print(f"wrote {shown(args.output)} (mode 600: it holds this site's password)")
    return 0


async def status_cmd(args: argparse.Namespace, config: BusConfig) -> int:
    if config.federation_file is None:
        raise ConfigError("no federation file: pass --federation FILE or set LWFM_BUS_FEDERATION")
    async with connect(config.model_copy(update={"engine": "off"}), name="lwfm-bus federation status") as bus:
        messages, states = await source_states(bus)
    if args.json:
        rows = [{"source": s.site, "filter": s.filter, "lag": s.lag, "active_s": s.active_s, "error": s.error}
                for s in states]  # fmt: skip
        print(json.dumps({"site": config.site, "messages": messages, "sources": rows}))
        return 0
    print(f"site {shown(config.site)}: {messages} events stored")
    for s in states:
        seen = "never" if s.active_s is None else f"{s.active_s:.1f}s ago"
        error = f", error: {shown(s.error)}" if s.error else ""
        print(f"  {shown(s.filter)} from {shown(s.site)}: lag {s.lag}, last contact {seen}{error}")
    return 0
