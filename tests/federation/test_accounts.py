"""One NATS account per site: a client holding a leaf's credentials reaches nothing it was not granted.

The federation runs as in ``test_federation.py`` (hub, alpha through a relay, beta).
A raw nats-py client logs in to the hub with alpha's credentials -- exactly what a
malicious alpha could do -- and tries to read or disturb beta's and the hub's
streams.  Each attempt is refused: the hub's server answers "no responders" (nothing
is exported there to alpha's account) or refuses the publish or the subscription as
a permissions violation.  Beta and the hub then show that no consumer was made and
their engine's consumer is as it was.  That the granted traffic still flows (triggers,
joins and jobs across sites, partitions) is what ``test_federation.py`` checks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client as NATS

import lwfm_bus as lb
from tests.federation.test_federation import Federation, _init, _secret, _true, running_federation

ENGINE = "lwfm-engine"  # the engine's durable consumer of every site's LWFM stream
# How the hub answers what it does not pass on: nothing exported there to the leaf's
# account ("no responders"), or a publish it refuses outright (a permissions violation).
# A JetStream answer, even an error, would mean the request reached a stream's server.
NOT_PASSED = ("no responders", "refused")


class _Rogue:
    """A raw client of the hub with a leaf's credentials, and the server's complaints to it."""

    def __init__(self, nc: NATS, errors: list[str], news: asyncio.Condition) -> None:
        self.nc = nc
        self.errors = errors
        self._news = news

    async def refused(self, what: str, subject: str, timeout: float) -> bool:
        """Whether the server said it refused a publish or subscription to ``subject`` (within ``timeout``).

        Its -ERR can come after the PONG of a flush, so this waits for it (bounded).
        """
        # A client's request to the hub's domain API is mapped to the plain one (in every
        # account, by the server) before its permissions are checked, and refused so named.
        forms = {subject, subject.replace("$JS.hub.API.", "$JS.API.", 1)}
        said = [f'{what} to "{form.lower()}"' for form in forms]  # nats-py lower-cases the server's text
        async with self._news:
            try:
                await asyncio.wait_for(
                    self._news.wait_for(lambda: any(s in e.lower() for e in self.errors for s in said)), timeout
                )
            except TimeoutError:
                return False
        return True

    async def ask(self, subject: str, body: dict[str, object] | None = None) -> str:
        """What became of a request: the server's answer, or how it was refused."""
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            reply = await self.nc.request(subject, payload, timeout=0.5)
        except nats.errors.NoRespondersError:
            return "no responders"
        except nats.errors.TimeoutError:
            return "refused" if await self.refused("publish", subject, 0.5) else "timeout"
        return bytes(reply.data).decode()

    async def subscribe_refused(self, subject: str) -> bool:
        """Whether the hub refuses a subscription to ``subject`` (a permissions violation)."""
        await self.nc.subscribe(subject)
        return await self.refused("subscription", subject, 10)


@asynccontextmanager
async def _rogue(federation: Federation, site: str) -> AsyncIterator[_Rogue]:
    errors: list[str] = []
    news = asyncio.Condition()

    async def on_error(exc: Exception) -> None:
        async with news:
            errors.append(str(exc))
            news.notify_all()

    nc = await nats.connect(
        str(federation["hub"].connected_url), user=site, password=_secret(federation, site), error_cb=on_error
    )
    try:
        yield _Rogue(nc, errors, news)
    finally:
        await nc.close()


def _consumer(stream: str, name: str, filter_subject: str, *, durable: bool) -> dict[str, object]:
    config: dict[str, object] = {
        "name": name,
        "deliver_subject": f"rogue.{name}",
        "ack_policy": "none",
        "deliver_policy": "all",
        "filter_subject": filter_subject,
    }
    if durable:
        config["durable_name"] = name
    return {"stream_name": stream, "config": config}


def _engine_like(filter_subject: str) -> dict[str, object]:
    """A request that would narrow the engine's consumer to ``filter_subject``, were it passed to its stream."""
    config = {
        "durable_name": ENGINE,
        "name": ENGINE,
        "deliver_subject": f"{ENGINE}.LWFM.deliver",
        "deliver_group": ENGINE,
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "filter_subject": filter_subject,
    }
    return {"stream_name": "LWFM", "config": config}


async def test_a_leafs_credentials_reach_nothing_of_another_site_but_what_it_is_granted(tmp_path: Path) -> None:
    async with running_federation(tmp_path) as federation:
        hub = federation["hub"]
        engines = {site: await federation[site].jetstream.consumer_info("LWFM", ENGINE) for site in ("hub", "beta")}
        firsts = {site: (await federation[site].jetstream.stream_info("LWFM")).state.first_seq for site in engines}
        attempts: list[tuple[str, dict[str, object] | None]] = []
        # Consumers on beta's and the hub's streams that would deliver their private
        # events, durable or ephemeral, by the domain API and the plain one; on their
        # own stream, and on the copy of their public names that alpha may source.
        for api in ("$JS.beta.API", "$JS.hub.API", "$JS.API"):
            for stream in ("LWFM", "LWFM_PUBLIC"):
                for durable in (True, False):
                    name = f"rogue-{'d' if durable else 'e'}"
                    body = _consumer(stream, name, "lwfm.local.>", durable=durable)
                    attempts += [
                        (f"{api}.CONSUMER.CREATE.{stream}.{name}.lwfm.local.>", body),
                        (f"{api}.CONSUMER.CREATE.{stream}", body),
                        (f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{name}", body),
                    ]
            # Redefining the engine's consumer, even to a filter of public names.
            for site in ("beta", "hub"):
                body = _engine_like(f"lwfm.{site}.>")
                attempts += [
                    (f"{api}.CONSUMER.CREATE.LWFM.{ENGINE}.lwfm.{site}.>", body),
                    (f"{api}.CONSUMER.CREATE.LWFM.{ENGINE}.lwfm.>", body),
                    (f"{api}.CONSUMER.DURABLE.CREATE.LWFM.{ENGINE}", body),
                ]
            # Deleting or reading the engine's consumer; the streams' info and messages.
            for stream in ("LWFM", "LWFM_PUBLIC"):
                for subject in (
                    f"CONSUMER.DELETE.{stream}.{ENGINE}",
                    f"CONSUMER.INFO.{stream}.{ENGINE}",
                    f"CONSUMER.MSG.NEXT.{stream}.{ENGINE}",
                    f"CONSUMER.LIST.{stream}",
                    f"STREAM.INFO.{stream}",
                    f"STREAM.MSG.GET.{stream}",
                    f"DIRECT.GET.{stream}",
                    f"STREAM.UPDATE.{stream}",
                    f"STREAM.PURGE.{stream}",
                ):
                    attempts.append((f"{api}.{subject}", {"last_by_subj": "lwfm.local.>"}))
            attempts.append((f"{api}.STREAM.NAMES", None))
        async with _rogue(federation, "alpha") as rogue:
            # All at once: each waits for its answer, or for the server to say it refused it.
            outcomes = await asyncio.gather(*(rogue.ask(subject, body) for subject, body in attempts))
            passed = {subject: outcome for (subject, _), outcome in zip(attempts, outcomes, strict=True)}
            assert {s: o for s, o in passed.items() if o not in NOT_PASSED} == {}
            assert "refused" in passed.values() and "no responders" in passed.values()  # both kinds occur
            # Private traffic and buckets: refused outright.
            for subject in ("lwfm.local.>", "$KV.>", "$KV.lwfm_claims.>", "lwfm-agent.beta.deliver", "lwfm-dlq.>"):
                assert await rogue.subscribe_refused(subject), subject

            # Alpha may submit to beta, but does not see what others submit to beta.
            seen = await rogue.nc.subscribe("lwfm-submit.beta.>")
            await rogue.nc.flush()
            job = await hub.submit(_true("from-hub"), site="beta")
            await job.wait(timeout=60)  # stored in beta's submission stream, through the hub, and run
            await rogue.nc.flush()  # anything the hub passed to this client came before this round trip
            assert seen.pending_msgs == 0

        for site, before in engines.items():
            bus = federation[site]
            after = await bus.jetstream.consumer_info("LWFM", ENGINE)
            assert after.config.filter_subject == before.config.filter_subject == "lwfm.>"
            assert after.config.deliver_subject == before.config.deliver_subject
            assert (await bus.jetstream.stream_info("LWFM")).state.first_seq == firsts[site]  # not purged
            for stream in ("LWFM", "LWFM_PUBLIC"):
                names = {c.name for c in await bus.jetstream.consumers_info(stream)}
                assert not {n for n in names if n.startswith("rogue") or (n == ENGINE and stream != "LWFM")}, names


async def test_a_leaf_may_read_another_sites_public_events_only(tmp_path: Path) -> None:
    """What alpha is granted -- a consumer of the copy of beta's public names -- works, and no more."""
    async with running_federation(tmp_path) as federation:
        beta = federation["beta"]
        public, private, marker = _status("beta"), _status("local"), _status("beta")
        for event in (public, private, marker):
            await beta.publish(event)
        async with _rogue(federation, "alpha") as rogue:
            inbox = "lwfm-feed.beta.alpha.rogue"  # deliveries reach alpha only under its own feed prefix
            sub = await rogue.nc.subscribe(inbox)
            await rogue.nc.flush()
            answer = await rogue.ask(
                "$JS.beta.API.CONSUMER.CREATE.LWFM_PUBLIC.rogue-reader.lwfm.beta.>",
                {
                    "stream_name": "LWFM_PUBLIC",
                    "config": {
                        "name": "rogue-reader",
                        "deliver_subject": inbox,
                        "ack_policy": "none",
                        "deliver_policy": "all",
                        "filter_subject": "lwfm.beta.>",
                        "inactive_threshold": 5_000_000_000,
                    },
                },
            )
            assert json.loads(answer)["config"]["filter_subject"] == "lwfm.beta.>", answer
            ids = set()
            while marker.id not in ids:  # in stream order: the private one would have come before
                msg = await sub.next_msg(timeout=30)
                assert msg.subject.startswith("lwfm.beta.")  # delivered on the event's own subject
                ids.add(lb.decode_event(msg.data).id)
            assert public.id in ids and private.id not in ids


def _status(site: str) -> lb.Event:
    return lb.make_event(lb.JobStatus(job_id=lb.new_id(), site=site, state=lb.JobState.RUNNING), source="/test")


def test_each_site_is_its_own_account_exporting_only_its_public_names(tmp_path: Path) -> None:
    fed = lb.load_federation(_init_file(tmp_path))
    for site in ("hub", "alpha", "beta"):
        config = fed.account_config(site)
        exports = config["exports"]
        assert isinstance(exports, list)
        text = json.dumps(exports)
        assert "lwfm.local" not in text and "$KV" not in text and "lwfm-dlq" not in text
        for export in exports:
            subject = str(export.get("service") or export.get("stream"))
            assert fed.account(site) not in export["accounts"]  # exported to others only
            if subject.startswith("$JS") and ".CONSUMER." in subject:
                api = "$JS.API" if site == "hub" else f"$JS.{site}.API"  # the hub's JetStream is in its account
                prefix = f"{api}.CONSUMER.CREATE.LWFM_PUBLIC.*.lwfm."
                assert subject.startswith(prefix) and subject.endswith(".>"), subject
                assert subject[len(prefix) : -2] in fed.names_of(site)


def _init_file(tmp_path: Path) -> Path:
    _init(tmp_path / "fed")
    return tmp_path / "fed" / "federation.toml"


# --------------------------------------------------------------------------- deliveries aimed at a site's processes

# A leaf may make a consumer on another site's LWFM_PUBLIC (it is granted, to read its
# public events) and may name any delivery subject, including the subject on which that
# site's agents or engine take their own consumer's deliveries.  They must ignore such
# deliveries: neither run nor settle them.
_HOUR_NS = 3600 * 1_000_000_000


async def _aim_public_deliveries(federation: Federation, name: str, deliver: str, group: str | None) -> set[str]:
    """Alpha makes a consumer of beta's public events delivered to ``deliver``; returns once some were delivered.

    The events delivered are three job statuses beta publishes: their job ids are returned.
    """
    beta = federation["beta"]
    events = [_status("beta") for _ in range(3)]
    for event in events:
        await beta.publish(event)
    watch = await beta.nats.subscribe(deliver)  # beta's account: sees every delivery to that subject
    await beta.nats.flush()
    config: dict[str, object] = {
        "name": name,
        "deliver_subject": deliver,
        "ack_policy": "explicit",  # an ack, nak or term by anyone shows in the consumer's state
        "ack_wait": _HOUR_NS,  # no redelivery during the test
        "deliver_policy": "all",
        "filter_subject": "lwfm.beta.>",
        "inactive_threshold": _HOUR_NS,
    }
    if group is not None:
        config["deliver_group"] = group
    async with _rogue(federation, "alpha") as rogue:
        answer = await rogue.ask(
            f"$JS.beta.API.CONSUMER.CREATE.LWFM_PUBLIC.{name}.lwfm.beta.>",
            {"stream_name": "LWFM_PUBLIC", "config": config},
        )
    assert json.loads(answer)["config"]["deliver_subject"] == deliver, answer  # accepted, as the reviewer showed
    waiting = {e.id for e in events}
    while waiting:  # the copy into LWFM_PUBLIC is asynchronous: wait for these three to be delivered
        msg = await watch.next_msg(timeout=30)
        if (msg.reply or "").startswith(f"$JS.ACK.LWFM_PUBLIC.{name}."):  # not the site's own consumer's
            waiting.discard(lb.decode_event(msg.data).id)
    await watch.unsubscribe()
    return {e.data.job_id for e in events if isinstance(e.data, lb.JobStatus)}


async def _untouched(federation: Federation, name: str) -> None:
    info = await federation["beta"].jetstream.consumer_info("LWFM_PUBLIC", name)
    assert info.delivered is not None and (info.delivered.consumer_seq or 0) >= 3, info
    # Nobody acked, nak'ed or terminated any delivery.
    assert info.num_ack_pending == info.delivered.consumer_seq, info
    assert info.ack_floor is not None and (info.ack_floor.consumer_seq or 0) == 0, info
    assert info.num_redelivered == 0, info


async def test_a_leaf_cannot_feed_another_sites_agents_deliveries_of_its_own(tmp_path: Path) -> None:
    async with running_federation(tmp_path) as federation:
        hub, beta = federation["hub"], federation["beta"]
        published = await _aim_public_deliveries(federation, "rogue-agent", "lwfm-agent.beta.deliver", None)
        # A real job afterwards: its submission reaches the agents after the rogue
        # deliveries did (one subject, one connection each), and it runs normally.
        job = await hub.submit(_true("after-rogue"), site="beta")
        assert (await job.wait(timeout=60)).state == lb.JobState.COMPLETE
        await _untouched(federation, "rogue-agent")
        after = await beta.jetstream.consumer_info("LWFM_SUBMIT", "lwfm-agent-beta")
        assert after.num_ack_pending == 0 and after.num_redelivered == 0
        jobs = {e.data.job_id for e in await _jobs_of(beta) if isinstance(e.data, lb.JobStatus)}
        assert jobs == {job.job_id} | published, jobs  # nothing was launched from the rogue deliveries


async def _jobs_of(bus: lb.Bus) -> list[lb.Event]:
    async with bus.replay("lwfm.beta.job.>") as history:
        return [e async for e in history]


async def test_a_leaf_cannot_feed_another_sites_engine_deliveries_of_its_own(tmp_path: Path) -> None:
    async with running_federation(tmp_path) as federation:
        hub, beta = federation["hub"], federation["beta"]
        engine = beta.engine
        assert engine is not None
        await _aim_public_deliveries(federation, "rogue-engine", f"{ENGINE}.LWFM.deliver", ENGINE)
        judged = engine.stats.events
        # Events beta's engine judges after the rogue deliveries reached it: a job's
        # events, from its own consumer; its end shows they were judged.
        job = await hub.submit(_true("after-rogue"), site="beta")
        await job.wait(timeout=60)
        await _untouched(federation, "rogue-engine")
        ours = len(await _jobs_of(beta))
        assert engine.stats.events - judged <= ours, (engine.stats.events, judged, ours)
