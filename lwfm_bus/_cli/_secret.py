"""``lwfm-bus secret set | ls | rm``: a site's secrets, kept in this home and never on the bus.

Jobs name a secret as ``secret:NAME`` (an argv word or an env value); the site's agent
fills it in from ``<home>/secrets/<site>/`` just before the job starts.  ``set`` reads the
value from standard input, or prompts for it without echo on a terminal: a value on the
command line would be visible to every user of the machine in ``ps``.  Nothing here
connects to the bus, and no command prints a value.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from .._config import BusConfig
from .._errors import ConfigError
from .._secrets import SecretStore
from ._print import shown

__all__ = ["register"]


def register(sub: Any) -> None:
    s = sub.add_parser("secret", help="a site's secrets, used by jobs as secret:NAME (kept here, never on the bus)")
    ssub = s.add_subparsers(dest="secret_command", required=True, metavar="ACTION")
    st = ssub.add_parser("set", help="store a secret (the value from stdin, or a prompt without echo)")
    st.add_argument("name")
    _site_option(st)
    st.set_defaults(func=set_secret)
    ls = ssub.add_parser("ls", help="list the names of a site's secrets (never their values)")
    _site_option(ls)
    ls.set_defaults(func=list_secrets)
    rm = ssub.add_parser("rm", help="forget a secret")
    rm.add_argument("name")
    _site_option(rm)
    rm.set_defaults(func=remove_secret)


def _site_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", dest="secret_site", help="the site whose store (default: this home's site)")


def _store(args: argparse.Namespace, config: BusConfig) -> SecretStore:
    return SecretStore(config.home, args.secret_site or config.site)


def _read_value(name: str) -> str:
    """From a prompt without echo on a terminal; else all of stdin, less one final newline (``echo`` adds it)."""
    if sys.stdin.isatty():
        return getpass.getpass(f"value of secret {name}: ")
    data = sys.stdin.buffer.read()
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"secret {name!r}: the value is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")


async def set_secret(args: argparse.Namespace, config: BusConfig) -> int:
    store = _store(args, config)
    store.check_name(args.name)
    value = _read_value(args.name)
    if not value:
        raise ConfigError(f"secret {args.name!r}: empty value (nothing read from stdin); not stored")
    store.set(args.name, value)
    print(f"secret {shown(args.name)} set for site {shown(store.site)}", file=sys.stderr)
    return 0


async def list_secrets(args: argparse.Namespace, config: BusConfig) -> int:
    for name in _store(args, config).names():
        print(name)
    return 0


async def remove_secret(args: argparse.Namespace, config: BusConfig) -> int:
    store = _store(args, config)
    if not store.remove(args.name):
        raise ConfigError(f"site {store.site!r} has no secret {args.name!r}")
    return 0
