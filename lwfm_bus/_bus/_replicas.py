"""How many copies the servers keep of each stream and bucket, and keeping them so.

On a NATS cluster every stream and key-value bucket of the bus is replicated, so
that a node's loss loses no event, no claim and no submission, and stops nothing
for longer than an election.  ``replicas = "auto"`` (the default) asks the server:
a node that is one of a cluster of three or more (its INFO names a cluster and
lists that many client URLs) gets 3, anything else 1.  A stream or bucket made with
fewer copies than wanted -- made before the cluster was whole, or on a single
server that later became a cluster -- is raised to the wanted number when a process
opens it; never lowered, so that one process that sees a degraded cluster (or is
configured for less) does not take copies away from everyone.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.kv import KeyValue

from .._errors import ConfigError

__all__ = ["CLUSTER_REPLICAS", "is_not_clustered", "not_clustered", "open_bucket", "raise_replicas", "resolve_replicas"]

log = logging.getLogger("lwfm_bus.bus")

CLUSTER_REPLICAS = 3
_NOT_CLUSTERED = 10074  # JetStream: "replicas > 1 not supported in non-clustered mode"


def resolve_replicas(nc: NATS, setting: Literal["auto"] | int) -> int:
    """The number of copies wanted: the setting, or for ``auto`` what the server's INFO says of its cluster."""
    if setting != "auto":
        return setting
    # nats-py keeps the server's INFO (the connection's first answer) only as a private attribute.
    info: dict[str, object] = getattr(nc, "_server_info", None) or {}
    urls = info.get("connect_urls")
    if not info.get("cluster") or not isinstance(urls, list):
        return 1
    return CLUSTER_REPLICAS if len(set(urls)) >= CLUSTER_REPLICAS else 1


async def raise_replicas(js: JetStreamContext, have: StreamConfig, wanted: int) -> None:
    """Give an existing stream (or a bucket's stream) ``wanted`` copies if it has fewer.

    JetStream moves a clustered stream to more replicas through an ordinary update.
    A refusal (not enough nodes up now) is said and left for the next process to try;
    a server that is not part of a cluster at all raises :class:`ConfigError`, in one line.
    """
    if (have.num_replicas or 1) >= wanted or have.name is None:
        return
    try:
        await js.update_stream(dataclasses.replace(have, num_replicas=wanted))
    except nats.js.errors.APIError as exc:
        if is_not_clustered(exc):  # a configuration error, not a passing refusal: said once, in one line
            raise not_clustered(f"stream {have.name}", wanted) from None
        log.warning("stream %s keeps %d copies (wanted %d): %r", have.name, have.num_replicas or 1, wanted, exc)
        return
    except (nats.js.errors.Error, nats.errors.Error, TimeoutError) as exc:
        log.warning("stream %s keeps %d copies (wanted %d): %r", have.name, have.num_replicas or 1, wanted, exc)
        return
    log.info("stream %s now keeps %d copies (it had %d)", have.name, wanted, have.num_replicas or 1)


async def open_bucket(js: JetStreamContext, config: KeyValueConfig, replicas: int) -> KeyValue:
    """Open a key-value bucket, creating it with ``replicas`` copies if absent (or raising it to that)."""
    assert config.bucket is not None
    try:
        kv = await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(dataclasses.replace(config, replicas=replicas))
        except nats.js.errors.APIError as exc:  # 400: made by another process first; 500: see below
            if replicas > 1 and is_not_clustered(exc):
                raise not_clustered(f"bucket {config.bucket}", replicas) from None
            if not isinstance(exc, nats.js.errors.BadRequestError):
                raise
        kv = await js.key_value(config.bucket)  # another process created it first
    if replicas > 1:
        info = await js.stream_info(f"KV_{config.bucket}")
        await raise_replicas(js, info.config, replicas)
    return kv


def is_not_clustered(exc: nats.js.errors.APIError) -> bool:
    """Whether the server refused more than one copy because it is not part of a cluster."""
    text = (exc.description or "").lower()
    return exc.err_code == _NOT_CLUSTERED or "non-clustered" in text or "not clustered" in text


def not_clustered(what: str, replicas: int) -> ConfigError:
    """The one line for ``replicas`` > 1 on a server that is not part of a cluster."""
    return ConfigError(
        f"cannot keep {replicas} copies of {what}: the server is not part of a JetStream cluster "
        "(set LWFM_BUS_REPLICAS=auto or 1)"
    )
