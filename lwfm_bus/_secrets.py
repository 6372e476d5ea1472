"""Secrets: ``secret:NAME`` references that travel on the bus, values that stay on the site.

A job's argv word or env value that is exactly ``secret:NAME`` is a reference.  Events,
submissions and bundles carry it as written; the agent that runs the job looks the
value up in its site's own store just before the adapter starts the job, so the value
exists only on the machine of that agent and on the job's host.

The store of a site is a directory ``<home>/secrets/<site>/`` (0700) holding one file
per secret, named after it, 0600: a value is any text without NUL, written whole by
rename so a reader never sees half of one.  An agent also takes a secret from its own
environment as ``LWFM_SECRET_<NAME>`` (a container or systemd unit that injects
credentials), or from the variable the site's configuration names for it (``secret_env =
{DB_PASSWORD = "VAULT_DB_PASSWORD"}`` in ``sites.toml``); the store wins over both.

Nothing here logs a value, and no error message quotes one: only names.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from ._errors import ConfigError
from ._jobs import JobDefn

__all__ = [
    "ENV_NAME",
    "ENV_PREFIX",
    "MIN_REDACTED",
    "SECRET_NAME",
    "SecretStore",
    "credential_like",
    "missing_secret_reason",
    "redact",
    "references",
    "resolve_defn",
    "secret_name",
]

SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_REFERENCE = re.compile(r"secret:([A-Za-z_][A-Za-z0-9_]{0,63})")
ENV_PREFIX = "LWFM_SECRET_"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
"""An environment variable's name (a site's ``secret_env`` values)."""
MIN_REDACTED = 4
"""Values shorter than this are not redacted from logs: replacing every ``a`` would wreck them."""
_MAX_VALUE = 65536  # a job argv word or env value may be no longer (JobDefn's ArgText)


def secret_name(text: str) -> str | None:
    """The NAME of a ``secret:NAME`` reference, or None if ``text`` is not exactly one."""
    m = _REFERENCE.fullmatch(text)
    return m.group(1) if m else None


def references(defn: JobDefn) -> list[str]:
    """The secrets a job names (argv words and env values), each once, in order."""
    found: dict[str, None] = {}
    for text in (*(defn.argv or ()), *defn.env.values()):
        name = secret_name(text)
        if name is not None:
            found[name] = None
    return list(found)


def credential_like(env: Mapping[str, str]) -> list[str]:
    """Env names that look like credentials but hold a plain value (a ``secret:`` reference is fine).

    Such a value would be published with the job and kept in the stream: worth a warning.
    """
    out = []
    for key, value in env.items():
        if secret_name(value) is None and _looks_secret(key):
            out.append(key)
    return out


def _looks_secret(key: str) -> bool:
    # TOKEN, PASSWORD, SECRET or KEY as a word part (API_TOKEN, db_password, SecretKey, KEY),
    # not inside a word (MONKEY, KEYBOARD).  Word parts: split snake_case and camelCase, then compare whole parts.
    parts = re.split(r"_|(?<=[a-z0-9])(?=[A-Z])", key)
    return any(p.upper() in {"TOKEN", "PASSWORD", "SECRET", "KEY", "PASSWD"} for p in parts if p)


def missing_secret_reason(name: str, site: str) -> str:
    """Why a job cannot start: names the secret and how to provide it, never a value."""
    return (
        f"secret {name!r} is not set at site {site!r} "
        f"(lwfm-bus secret set {name} --site {site}, or {ENV_PREFIX}{name} in its agent's environment)"
    )


class SecretStore:
    """One site's secrets under ``<home>/secrets/<site>/``: one 0600 file per secret."""

    def __init__(self, home: Path, site: str, env_names: Mapping[str, str] | None = None) -> None:
        self.site = site
        self.path = home / "secrets" / site
        # The site config's ``secret_env``: NAME -> the agent's environment variable that holds it.
        self.env_names = dict(env_names or {})

    @staticmethod
    def check_name(name: str) -> str:
        if not SECRET_NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not a secret name (a letter or _, then letters, digits or _; at most 64)")
        return name

    def set(self, name: str, value: str) -> None:
        """Store ``value`` under ``name`` (replacing it): written 0600 from the first byte, renamed into place."""
        self.check_name(name)
        if "\x00" in value:
            raise ConfigError(f"secret {name!r}: a value cannot contain NUL bytes (it is passed to a process)")
        if len(value) > _MAX_VALUE:
            raise ConfigError(f"secret {name!r}: a value may be at most {_MAX_VALUE} characters")
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)  # mkdir's mode is masked, and an existing directory keeps its own
        os.chmod(self.path.parent, 0o700)
        tmp = self.path / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(value.encode())
            tmp.replace(self.path / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, name: str) -> str | None:
        """The stored value, or None when the store has no such secret."""
        self.check_name(name)
        try:
            return (self.path / name).read_bytes().decode()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise ConfigError(f"secret {name!r} at site {self.site!r} is not UTF-8 text") from None

    def names(self) -> list[str]:
        try:
            entries = sorted(p.name for p in self.path.iterdir())
        except FileNotFoundError:
            return []
        return [n for n in entries if SECRET_NAME.fullmatch(n)]

    def remove(self, name: str) -> bool:
        """Forget a secret; False if there was none by that name."""
        self.check_name(name)
        try:
            (self.path / name).unlink()
        except FileNotFoundError:
            return False
        return True

    def lookup(self, name: str, environ: Mapping[str, str]) -> str | None:
        """The value for a job: the store's, else the variable the site config names for it (``secret_env``),
        else ``LWFM_SECRET_<NAME>`` in ``environ``."""
        value = self.get(name)
        if value is not None:
            return value
        if name in self.env_names:
            return environ.get(self.env_names[name])
        return environ.get(ENV_PREFIX + name)

    def values(self) -> list[str]:
        """Every stored value long enough to redact (for log redaction only)."""
        out = []
        for name in self.names():
            try:
                value = self.get(name)
            except ConfigError:
                continue
            if value is not None and len(value) >= MIN_REDACTED:
                out.append(value)
        return out


def resolve_defn(defn: JobDefn, values: Mapping[str, str]) -> JobDefn:
    """The job with each reference replaced by its value: for an adapter only, never published or stored."""

    def one(text: str) -> str:
        name = secret_name(text)
        return values[name] if name is not None and name in values else text

    argv = tuple(one(a) for a in defn.argv) if defn.argv is not None else None
    env = {k: one(v) for k, v in defn.env.items()}
    return defn.model_copy(update={"argv": argv, "env": env})


def redact(data: bytes, values: Iterable[str], marker: bytes = b"***") -> bytes:
    """``data`` with every occurrence of each value (UTF-8, at least MIN_REDACTED long) replaced by ``marker``."""
    for value in sorted({v for v in values if len(v) >= MIN_REDACTED}, key=len, reverse=True):
        data = data.replace(value.encode(), marker)
    return data
