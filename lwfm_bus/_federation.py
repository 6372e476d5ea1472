"""Several sites, one federation: the file that describes it and what follows from it.

Each site runs its own bus (its own nats-server and JetStream, in a JetStream domain
named after the site).  One site is the hub; the others join it as NATS leaf nodes.
Everything a site needs is derived from one short file shared by all sites::

    version = 1
    hub_url = "nats-leaf://hub.example.org:7422"   # where leaves reach the hub

    [sites.hub]
    hub = true
    secret_hash = "$2b$12$..."      # bcrypt of the site's secret (the secret stays at the site)

    [sites.alpha]
    secret_hash = "$2b$12$..."
    names = ["hpc1"]                # further site names alpha speaks for (its Slurm cluster)
    submit_to = ["*"]               # site names alpha may submit jobs to ("*": every member's)

From it follow (a) each server's configuration, rendered by :mod:`._natsconf`
so nobody hand-writes NATS configuration; (b) what a site may publish: a leaf's
credentials let it publish events only under its own names (``lwfm.<name>.>``), and
submissions only to the sites its ``submit_to`` names, and the hub's server refuses
anything else; (c) each site's stream layout
(:meth:`Federation.stream_layout`): the stream captures the site's own names and
sources every other site's names from that site's domain.  Sourcing is what makes
cross-site triggers durable: the source position is kept by JetStream across restarts
and partitions, so events produced while a link was down arrive when it heals, once.

``lwfm.local.>`` stays private to each site (captured, never forwarded), so a laptop's
habit of submitting to ``local`` keeps working; jobs meant to be seen by other sites
run on the site's own name, which the built-in local adapter answers to.

Secrets: the file holds bcrypt hashes only; each site keeps its own secret in a file
(``<home>/federation.secret`` by default).  nats-server checks the hashes itself.
"""

from __future__ import annotations

import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._errors import ConfigError
from ._limits import load_toml_bounded, read_text_bounded
from ._subjects import AGENT_ROOT, CANCEL_ROOT, DLQ_ROOT, ROOT, SUBMIT_ROOT, Token

__all__ = [
    "Federation",
    "FederationMember",
    "FederationSite",
    "StreamLayout",
    "hash_secret",
    "load_federation",
    "new_secret",
    "read_secret",
]

PRIVATE_NAME = "local"
STREAM_NAME = "LWFM"
# JetStream plumbing a site needs to source another site's stream through the hub, and
# nothing more: creating a consumer on the LWFM stream, its replies, deliveries and flow
# control.  Not consumer deletion, not stream administration, not other clients' inboxes.
# (Subject permissions cannot tell a source's consumer from any other by name; only NATS
# accounts per site could -- see the README's limits.)
_SOURCING_OUT = (
    "$JS.*.API.INFO",
    f"$JS.*.API.CONSUMER.CREATE.{STREAM_NAME}.>",
    "$JS.S.>",
    "$JS.FC.>",
    "$JSC.R.>",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FederationSite(_Frozen):
    """One member of the federation, as every other member sees it."""

    hub: bool = Field(default=False, description="This site runs the hub (exactly one site does).")
    secret_hash: str = Field(
        description="bcrypt hash of the site's secret; the server checks it, the secret never leaves the site.",
        pattern=r"^\$2[abxy]?\$\d{2}\$[./A-Za-z0-9]{53}$",
    )
    names: tuple[Token, ...] = Field(
        default=(), description="Further site names this member publishes events for (e.g. its clusters)."
    )
    submit_to: tuple[Token | Literal["*"], ...] = Field(
        default=(),
        description="Site names of other members this member may submit jobs to ('*': all of them); "
        "the hub's server refuses any other submission.",
    )


class Federation(_Frozen):
    """The shared description of a federation (``federation.toml``)."""

    version: Literal[1] = Field(default=1, description="Format version of this file.")
    hub_url: str = Field(description="Where leaves reach the hub's leaf-node listener: nats-leaf://host:port.")
    hub_listen: str | None = Field(
        default=None,
        description="host:port the hub's leaf-node listener binds; default 0.0.0.0 and hub_url's port.",
        pattern=r"^[^\s:]+:\d{1,5}$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$",
    )
    sites: dict[Token, FederationSite] = Field(description="Every member, by site name.", min_length=1)

    @field_validator("hub_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("nats-leaf", "tls") or not parts.hostname or parts.port is None:
            raise ValueError(f"hub_url {value!r} must look like nats-leaf://host:port")
        if parts.username or parts.password:
            raise ValueError("hub_url must not carry credentials: each site's secret stays in its own file")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Federation:
        hubs = [name for name, site in self.sites.items() if site.hub]
        if len(hubs) != 1:
            raise ValueError(f"exactly one site must have hub = true (found {len(hubs)}: {hubs})")
        owner: dict[str, str] = {}
        for name in self.sites:
            for spoken in self.names_of(name):
                if spoken == PRIVATE_NAME:
                    raise ValueError(f"site {name!r}: {PRIVATE_NAME!r} is private to every site and cannot be shared")
                if spoken in owner:
                    raise ValueError(f"site name {spoken!r} is claimed by both {owner[spoken]!r} and {name!r}")
                owner[spoken] = name
        for name, site in self.sites.items():
            for target in site.submit_to:
                if target != "*" and target not in owner:
                    raise ValueError(f"site {name!r}: submit_to names {target!r}, which no member speaks for")
        return self

    @property
    def hub(self) -> str:
        return next(name for name, site in self.sites.items() if site.hub)

    def member(self, site: str) -> FederationSite:
        try:
            return self.sites[site]
        except KeyError:
            known = ", ".join(sorted(self.sites))
            raise ConfigError(f"site {site!r} is not a member of the federation (members: {known})") from None

    def names_of(self, site: str) -> tuple[str, ...]:
        """Every site name ``site`` publishes events under: its own first."""
        return (site, *self.member(site).names)

    def submit_targets(self, site: str) -> tuple[str, ...]:
        """The other members' site names ``site`` may submit jobs to."""
        wanted = self.member(site).submit_to
        others = [name for other in self.sites if other != site for name in self.names_of(other)]
        return tuple(name for name in others if "*" in wanted or name in wanted)

    def may_submit(self, site: str, target: str) -> bool:
        """Whether a process of ``site`` may submit a job to site name ``target``."""
        return target in (*self.names_of(site), PRIVATE_NAME) or target in self.submit_targets(site)

    def stream_layout(self, site: str) -> StreamLayout:
        """What ``site``'s event stream captures itself, and what it sources from whom."""
        own = [f"{ROOT}.{name}.>" for name in (*self.names_of(site), PRIVATE_NAME)]
        sources = tuple(
            (other, f"{ROOT}.{name}.>") for other in self.sites if other != site for name in self.names_of(other)
        )
        return StreamLayout(subjects=tuple(own), sources=sources)

    def leaf_permissions(self, site: str) -> dict[str, object]:
        """What the hub lets a leaf's connection carry.

        ``publish``: what the leaf may send into the federation -- its own events, the
        sourcing plumbing, submissions, cancel requests and agent pings to the sites it
        may submit to (``submit_to``), and replies (a submission's acknowledgement from
        its stream, its agents' answers to pings), nothing else.  Replies need
        ``_INBOX.>``: nats-server's ``allow_responses`` does not pass a leaf connection
        (nats-server issue 2949), so a leaf could also answer requests it was not asked;
        accounts per site would close that (see the README's limits).  ``subscribe``: what the hub passes
        to it (and, as nats-server propagates interest along the same rule, what the leaf
        learns the hub wants): everything but each site's private traffic --
        ``lwfm.local``, dead letters, KV/object-store writes, agents' submission
        deliveries, and the submissions, cancel requests and pings of members it may not
        submit to -- which would otherwise reach the other side's same-named stream,
        bucket or agents, or show one member another's job definitions.
        """
        own = self.names_of(site)
        targets = self.submit_targets(site)
        submissions = [
            subject
            for name in targets
            for subject in (f"{SUBMIT_ROOT}.{name}.>", f"{CANCEL_ROOT}.{name}.>", f"{AGENT_ROOT}.{name}.ping")
        ]
        replies = ["_INBOX.>"] if any(site.submit_to for site in self.sites.values()) else []
        # Submissions, cancel requests and pings for members this leaf may not submit to are
        # never passed to it (job definitions may carry private values).  Those it may
        # submit to must be: the hub passes a leaf the interest only of what it may receive,
        # and without that interest its own submissions would find no stream.
        others = [name for other in self.sites if other != site for name in self.names_of(other) if name not in targets]
        not_ours = [
            subject
            for name in others
            for subject in (f"{SUBMIT_ROOT}.{name}.>", f"{CANCEL_ROOT}.{name}.>", f"{AGENT_ROOT}.{name}.>")
        ]
        private = [f"{ROOT}.{PRIVATE_NAME}.>", f"{DLQ_ROOT}.>", "$KV.>", "$O.>", f"{AGENT_ROOT}.*.deliver"]
        return {
            "publish": {"allow": [*(f"{ROOT}.{n}.>" for n in own), *_SOURCING_OUT, *submissions, *replies]},
            "subscribe": {"deny": [*private, *not_ours]},
        }

    def hub_permissions(self) -> dict[str, object]:
        """The hub's own processes: anything, but submissions only where the hub may submit."""
        hub = self.hub
        allowed = set(self.submit_targets(hub))
        refused = [name for other in self.sites if other != hub for name in self.names_of(other) if name not in allowed]
        deny = [f"{root}.{name}.>" for name in refused for root in (SUBMIT_ROOT, CANCEL_ROOT)]
        deny += [f"{AGENT_ROOT}.{name}.ping" for name in refused]
        return {"publish": {"deny": deny}} if deny else {}


@dataclass(frozen=True)
class StreamLayout:
    """A member's event stream: subjects captured here, and (site, filter) pairs sourced."""

    subjects: tuple[str, ...]
    sources: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class FederationMember:
    """This process's place in a federation: the description, its site, its secret."""

    federation: Federation
    site: str
    secret: str

    @property
    def is_hub(self) -> bool:
        return self.federation.member(self.site).hub

    def leaf_remote_url(self) -> str:
        """The hub URL with this leaf's credentials (for its server's config only)."""
        parts = urlsplit(self.federation.hub_url)
        netloc = f"{quote(self.site, safe='')}:{quote(self.secret, safe='')}@{parts.netloc}"
        return parts._replace(netloc=netloc).geturl()

    def hub_listen(self) -> str:
        """The hub's leaf-node listener; port 0 lets the server choose (it logs the port)."""
        fed = self.federation
        if not fed.hub_listen:
            return f"0.0.0.0:{urlsplit(fed.hub_url).port}"
        host, _, port = fed.hub_listen.rpartition(":")
        return f"{host}:{-1 if port == '0' else port}"


def load_federation(path: Path) -> Federation:
    """Read and check a federation file; errors name the file and the field."""
    try:
        raw = load_toml_bounded(read_text_bounded(path, str(path)), str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read federation file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return Federation.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<file>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None


def read_secret(path: Path, site: str) -> str:
    """A site's secret from its file, refusing a file others can read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the federation secret of site {site!r} from {path}: {exc.strerror or exc} "
            "(set LWFM_BUS_FEDERATION_SECRET to its file)"
        ) from None
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode & 0o777:o}): chmod 600 it")
    if not text:
        raise ConfigError(f"{path} is empty: it should hold site {site!r}'s secret")
    return text


def new_secret() -> str:
    """A fresh random secret: URL-safe, so it can sit in a leaf URL unescaped."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """bcrypt hash as nats-server checks it."""
    import bcrypt

    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=11)).decode()
