"""The engine's push consumers: made (or brought up to date) one way, and read only from themselves.

Two durable consumers of the ``LWFM`` stream are shared by every replica (a deliver
group): the work consumer (:mod:`._replica`) and the retry consumer (:mod:`._retrying`).
A message on their delivery subject is acted on only when its reply subject says it
comes from that consumer: in a federation, another site may create a consumer of this
site's public events and point its deliveries at any subject of this server (see the
README's federation "Limits"); such messages are not work.
"""

from __future__ import annotations

import logging

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .._bus._eventbus import STREAM, EventBus

__all__ = ["ensure_push_consumer", "own_delivery"]

log = logging.getLogger("lwfm_bus.engine")
_strangers_said: set[str] = set()


async def ensure_push_consumer(
    bus: EventBus, durable: str, filter_subject: str, *, ack_wait_s: float, max_ack_pending: int
) -> str:
    """Create the durable push consumer, or bring its settings up to date; its delivery subject."""
    deliver = f"{durable}.{STREAM}.deliver"
    cfg = ConsumerConfig(
        durable_name=durable,
        deliver_subject=deliver,
        deliver_group=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_ack_pending=max_ack_pending,
        filter_subject=filter_subject,
    )
    try:
        await bus.jetstream.add_consumer(STREAM, cfg)
    except nats.js.errors.APIError as exc:  # 400, or 500 for "cannot be updated" (e.g. deliver policy)
        info = await bus.jetstream.consumer_info(STREAM, durable)
        log.warning("engine: keeping the existing consumer %s as it is: %s", durable, exc)
        return str(info.config.deliver_subject or deliver)
    return deliver


def own_delivery(msg: Msg, durable: str) -> bool:
    """Whether ``msg`` was delivered by our consumer ``durable`` of the ``LWFM`` stream (said once if not)."""
    if (msg.reply or "").startswith(f"$JS.ACK.{STREAM}.{durable}."):
        return True
    if durable not in _strangers_said:
        _strangers_said.add(durable)
        log.warning(
            "engine: ignoring a message on %s's delivery subject that %s did not deliver (reply %.80r)",
            durable, durable, msg.reply,
        )  # fmt: skip
    return False
