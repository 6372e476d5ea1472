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
so nobody hand-writes NATS configuration; (b) one NATS account per site on the hub
(:meth:`Federation.account_config`): a leaf's credentials bind its link to its site's
account, and nothing crosses between accounts but what each exports to whom -- its
public events, consumers of the copy of its public names, the deliveries of those
consumers to each reader, and submissions to the members its ``submit_to`` allows; the
leaf's credentials further let it publish events only under its own names
(``lwfm.<name>.>``); (c) each site's stream layout (:meth:`Federation.stream_layout`):
the stream captures the site's own names and sources every other site's names from
that site's domain (from its ``LWFM_PUBLIC`` copy, see :data:`PUBLIC_STREAM_NAME`).
Sourcing is what makes cross-site triggers durable: the source position is kept by
JetStream across restarts and partitions, so events produced while a link was down
arrive when it heals, once.

``lwfm.local.>`` stays private to each site (captured, never forwarded), so a laptop's
habit of submitting to ``local`` keeps working; jobs meant to be seen by other sites
run on the site's own name, which the built-in local adapter answers to.

Secrets: the file holds bcrypt hashes only; each site keeps its own secret in a file
(``<home>/federation.secret`` by default).  nats-server checks the hashes itself.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._errors import ConfigError
from ._limits import read_toml_file
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
# What other sites source: a copy of a site's public names (``lwfm.<name>.>``), kept by
# the site's own server from its LWFM stream.  Other sites make consumers only here, so
# none of them can touch a consumer of the site's own processes (its engine's durable one).
PUBLIC_STREAM_NAME = "LWFM_PUBLIC"
FEED_ROOT = "lwfm-feed"  # deliveries of a site's source consumers: lwfm-feed.<origin>.<reader>.>
_FC = f"$JS.FC.{PUBLIC_STREAM_NAME}.>"  # flow-control replies of sourcing, as the reading server sends them
_FC_ROOT = "lwfm-fc"  # ... and as a leaf's account renames them: lwfm-fc.<reader>.>
_REPLIES = "_R_.>"  # replies to what another account asked through an import (the server's own names)
# The JetStream plumbing a leaf's server sends when it sources others and is sourced:
# consumer creation on LWFM_PUBLIC (only what its account imports reaches anyone), the hub's
# account info (its start-up probe), deliveries of its own source consumers and
# flow-control replies.  Not consumer deletion, not stream administration.
_SOURCING_OUT = (f"$JS.*.API.CONSUMER.CREATE.{PUBLIC_STREAM_NAME}.>", "$JS.*.API.INFO", "$JS.FC.>")


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

    def account(self, site: str) -> str:
        """The NATS account of ``site`` on the hub (its leaf link, or the hub's own processes)."""
        self.member(site)
        return f"lwfm-{site}"

    def feed_prefix(self, origin: str, reader: str) -> str:
        """Where ``origin``'s server delivers what ``reader``'s stream sources from it."""
        return f"{FEED_ROOT}.{origin}.{reader}"

    def submitters(self, name: str) -> tuple[str, ...]:
        """The other members that may submit jobs to site name ``name``."""
        return tuple(other for other in self.sites if name in self.submit_targets(other))

    def account_config(self, site: str) -> dict[str, object]:
        """``site``'s account on the hub: what it exports to whom, what it imports, its mappings.

        Every site is its own account, so nothing crosses between sites but what is
        exported here, each export naming the accounts that may import it:

        * its public events ``lwfm.<name>.>`` as plain messages (heartbeats, live
          watchers), never ``lwfm.local.>``, KV, dead letters or agents' deliveries;
        * consumer creation on its ``LWFM_PUBLIC`` stream (a copy of its public names;
          no process of the site consumes it, so no reader can redefine the site's own
          consumers) only in the form that names the filter, and only with a filter
          under one of its public names
          (``<api>.CONSUMER.CREATE.LWFM_PUBLIC.<consumer>.lwfm.<name>.>``): a reader can
          make a consumer that delivers public events, and nothing else of the API (no
          info, no message get, no deletion, no other stream) is reachable;
        * the deliveries of those consumers, one prefix per reader
          (:meth:`feed_prefix`), to that reader only;
        * flow-control replies: a leaf's account renames those its server sends
          (``$JS.FC.LWFM_PUBLIC.>`` -> ``lwfm-fc.<site>.>``) and the others import them back
          under the original name -- two accounts cannot import the same subject from
          each other (nats-server refuses the cycle).  The hub's JetStream publishes
          its replies inside its own account, where no renaming applies, so the hub
          imports ``$JS.FC.LWFM_PUBLIC.>`` from each leaf as a service instead;
        * submissions, cancel requests and agent pings to its names, to the members
          whose ``submit_to`` allows it, as services (the reply comes back through the
          import).
        The hub's JetStream API is its account's own ``$JS.API``; a leaf's is reached
        through its link as ``$JS.<site>.API``.  Leaves also get the hub's account info
        (their start-up probe of the link).
        """
        hub = self.hub
        others = [other for other in self.sites if other != site]
        exports: list[dict[str, object]] = []
        imports: list[dict[str, object]] = []

        def export(kind: str, subject: str, to: list[str]) -> None:
            if to:
                exports.append({kind: subject, "accounts": [self.account(o) for o in to]})

        def import_(kind: str, origin: str, subject: str, to: str | None = None) -> None:
            entry: dict[str, object] = {kind: {"account": self.account(origin), "subject": subject}}
            if to is not None:
                entry["to"] = to
            imports.append(entry)

        for name in self.names_of(site):
            export("stream", f"{ROOT}.{name}.>", others)
            export("service", self._create_subject(site, name), others)
            for root in (SUBMIT_ROOT, CANCEL_ROOT):
                export("service", f"{root}.{name}.>", list(self.submitters(name)))
            export("service", f"{AGENT_ROOT}.{name}.ping", list(self.submitters(name)))
        for reader in others:
            export("stream", f"{self.feed_prefix(site, reader)}.>", [reader])
        if site == hub:
            export("service", "$JS.API.INFO", others)
        else:
            export("stream", f"{_FC_ROOT}.{site}.>", others)
            export("service", _FC, [hub])
        for origin in others:
            for name in self.names_of(origin):
                import_("stream", origin, f"{ROOT}.{name}.>")
                import_("service", origin, self._create_subject(origin, name))
            import_("stream", origin, f"{self.feed_prefix(origin, site)}.>")
            if origin != hub:
                import_("stream", origin, f"{_FC_ROOT}.{origin}.>", to=_FC)
                if site == hub:
                    import_("service", origin, _FC)
            else:
                import_("service", origin, "$JS.API.INFO")
            for name in self.names_of(origin):
                if name in self.submit_targets(site):
                    for root in (SUBMIT_ROOT, CANCEL_ROOT):
                        import_("service", origin, f"{root}.{name}.>")
                    import_("service", origin, f"{AGENT_ROOT}.{name}.ping")
        config: dict[str, object] = {"exports": exports, "imports": imports}
        if site != hub:
            config["mappings"] = {_FC: f"{_FC_ROOT}.{site}.>"}
        return config

    def _create_subject(self, origin: str, name: str) -> str:
        """Consumer creation on ``origin``'s stream, filtered under ``name``, as its account sees it.

        The hub's API is its account's own; a leaf's arrives over its link under its
        domain.  A reader's server asks for ``$JS.<origin>.API...`` either way: in a
        reader's account the server maps the hub's domain prefix to ``$JS.API`` itself.
        """
        api = "$JS.API" if origin == self.hub else f"$JS.{origin}.API"
        return f"{api}.CONSUMER.CREATE.{PUBLIC_STREAM_NAME}.*.{ROOT}.{name}.>"

    def leaf_permissions(self, site: str) -> dict[str, object]:
        """What the hub lets a leaf's connection (or a client with a leaf's credentials) carry.

        Its account (:meth:`account_config`) decides what reaches whom; these
        permissions refuse early what a leaf never has reason to send or receive.
        ``publish``: its own events, the sourcing plumbing, the deliveries of its own
        source consumers, submissions, cancel requests and agent pings to the sites it
        may submit to, and replies to what was asked of it through an import
        (``_R_.>``, names the server made for those requests alone).  ``subscribe``:
        never any site's private traffic -- ``lwfm.local``, dead letters, KV/object-store
        subjects, agents' submission deliveries.
        """
        own = self.names_of(site)
        submissions = [
            subject
            for name in self.submit_targets(site)
            for subject in (f"{SUBMIT_ROOT}.{name}.>", f"{CANCEL_ROOT}.{name}.>", f"{AGENT_ROOT}.{name}.ping")
        ]
        feeds = f"{FEED_ROOT}.{site}.>"
        private = [f"{ROOT}.{PRIVATE_NAME}.>", f"{DLQ_ROOT}.>", "$KV.>", "$O.>", f"{AGENT_ROOT}.*.deliver"]
        return {
            "publish": {"allow": [*(f"{ROOT}.{n}.>" for n in own), *_SOURCING_OUT, feeds, *submissions, _REPLIES]},
            "subscribe": {"deny": private},
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
        raw = read_toml_file(path, "federation file")
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
