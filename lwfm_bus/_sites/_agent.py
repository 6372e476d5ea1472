"""A site agent: takes the site's submissions from the bus and runs them through its adapter.

Every agent of a site shares one durable consumer (``lwfm-agent-<site>``) of the
site's submissions, so any number of agents, on any machines, share the work.

Concurrency.  An agent holds a submission un-acked for as long as its job runs
(telling the server so every ``ack_wait/3``) and acks it once the job's terminal
state is on the bus.  The consumer's ``max_ack_pending`` is the site's
``max_concurrent``: the server hands out no more submissions than that at once, across
all agents and processes; the rest wait in the stream, PENDING.

Crash safety.  A submission held by an agent that dies is redelivered after the ack
wait to another agent of the site (or to the restarted one), which submits it to the
adapter again.  Adapters treat a second submit of one job id as "adopt it": watch it
if it still runs, report it if it ended, start it only if it never started.  So no
job runs twice and every end is reported.  An agent that stops cleanly hands its
submissions back at once (nak), so adoption does not wait for the ack wait.

An agent that loses the server keeps its jobs running; their reports are retried
until acknowledged (:mod:`._report`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import nats.errors
import nats.js.errors
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from pydantic import ValidationError

from .._bus._connect import is_unanswered
from .._bus._eventbus import STREAM, SUBMIT_STREAM, EventBus, deliveries
from .._bus._replicas import open_bucket
from .._errors import ConfigError, LwfmBusError
from .._events import SiteStatus
from .._jobs import JobContext, JobDefn
from .._secrets import SecretStore, missing_secret_reason, redact, references, resolve_defn, secret_name
from .._states import JobState
from .._subjects import CANCEL_ROOT, ROOT, SUBMIT_ROOT, agent_subject
from ._health import HealthKeeper
from ._protocol import SiteAdapter, SiteRuntime
from ._registry import SiteSpec
from ._report import Reporter
from ._submit import CancelRequest, Submission, cancel_requested

__all__ = ["LAUNCH_BUCKET", "AgentConfig", "SiteAgent", "consumer_name", "serve_agents", "site_limit"]

log = logging.getLogger("lwfm_bus.agent")

_TERMINAL = tuple(s for s in JobState if s.is_terminal)
# A site whose adapter has no concurrency setting of its own (a scheduler queues for it).
_UNLIMITED = 10_000
# Who first launched each job: where (host and state directory) -- see SiteAgent._claim_launch.
LAUNCH_BUCKET = "lwfm_launches"
_CLAIM_TTL_S = 30 * 24 * 3600.0
_T = TypeVar("_T")


def consumer_name(site: str) -> str:
    return f"lwfm-agent-{site}"


def site_limit(spec: SiteSpec) -> int:
    """How many of the site's jobs may run at once, across all its agents."""
    value = getattr(spec.options, "max_concurrent", None)
    return int(value) if isinstance(value, int) and value > 0 else _UNLIMITED


@dataclass(frozen=True)
class AgentConfig:
    """How an agent behaves; the defaults suit a laptop and a cluster alike."""

    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    ack_wait_s: float = 30.0
    """A dead agent's jobs are taken over after this; live agents renew every third of it."""
    submit_attempts: int = 4
    """Adapter submits tried before the job is reported FAILED."""
    open_retry_max_s: float = 30.0
    """Longest wait between attempts to open an unreachable site."""
    close_timeout_s: float = 10.0
    """Bound on closing the adapter when the agent stops."""


@dataclass
class _Held:
    """A submission this agent holds while its job runs."""

    submission: Submission
    msg: Msg
    ended: anyio.Event = field(default_factory=anyio.Event)
    cancelled: bool = False


class SiteAgent:
    """Serves one site.  Run it with ``await tg.start(agent.run)``; cancel the task group to stop it."""

    def __init__(
        self,
        bus: EventBus,
        spec: SiteSpec,
        *,
        state_dir: Path,
        job_env: Mapping[str, str],
        config: AgentConfig | None = None,
        secrets: SecretStore | None = None,
    ) -> None:
        self._bus = bus
        # The site's own secrets, read just before a job that names one starts (see _with_secrets).
        self._secrets = secrets
        self._spec = spec
        self.site = spec.name
        self.config = config or AgentConfig()
        self._state_dir = state_dir
        self._job_env = dict(job_env)
        self._held: dict[str, _Held] = {}
        self._stopping = False
        self._adapter: SiteAdapter | None = None
        self._opened = anyio.Event()
        self._claims: Any = None
        # Every report of this agent and its adapter: retried until acknowledged, and each
        # terminal one tells the agent that a job it holds has ended.
        self._reporter = Reporter(bus, stopping=lambda: self._stopping, on_reported=self._reported)
        self._tg: TaskGroup | None = None
        self.health = HealthKeeper(bus, spec.name, self.config.name, spec.adapter)
        # Where this agent launches jobs: agents of one place share adoption through the adapter.
        self._place = f"{socket.gethostname()}:{state_dir.absolute()}"

    async def opened(self) -> SiteAdapter:
        """The site's adapter, once this agent has opened it."""
        await self._opened.wait()
        assert self._adapter is not None
        return self._adapter

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Answer pings, follow cancel requests, open the site, then take submissions until cancelled.

        Ready (``task_status.started``) as soon as it answers pings: a site that cannot
        be opened yet (a host down) is retried in the background and never delays the
        process that runs this agent.
        """
        if self._spec.broken is not None or self._spec.adapter_class is None:
            raise LwfmBusError(self._spec.broken or f"site {self.site!r} has no adapter")
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(self._answer_pings)
                await tg.start(self._follow_cancels, tg)
                await tg.start(self._follow_ends)
                tg.start_soon(self.health.run)
                task_status.started()
                await self._open_adapter()
                await self._take_submissions(tg)
        finally:
            self._stopping = True
            with anyio.CancelScope(shield=True):
                await self._release()

    async def _release(self) -> None:
        """Close the site (its jobs run on), then hand held submissions back for adoption at once."""
        with anyio.move_on_after(self.config.close_timeout_s):
            if self._adapter is not None:
                try:
                    await self._adapter.close()
                except Exception:
                    log.exception("agent %s: closing site %s failed", self.config.name, self.site)
                self._adapter = None
            for held in list(self._held.values()):
                await _settle(held.msg.nak())
            self._held.clear()

    async def _open_adapter(self) -> None:
        """Open the adapter (which adopts what earlier agents left), retrying until it opens."""
        assert self._spec.adapter_class is not None
        runtime = SiteRuntime(
            site=self.site,
            state_dir=self._state_dir,
            reporter=self._reporter,
            job_env=self._job_env,
            role="agent",
            on_health=self.health.set,
            withheld_env=frozenset(self._secrets.env_names.values()) if self._secrets is not None else frozenset(),
        )
        delay = min(1.0, self.config.open_retry_max_s)
        said: str | None = None  # the failure last reported at WARNING
        failures = 0
        while True:
            adapter: SiteAdapter | None = None
            try:
                adapter = self._spec.adapter_class(self._spec.options, runtime)
                await adapter.open()
            except BaseException as exc:
                if adapter is not None:
                    await self._close_quietly(adapter)  # half-open (or stopped while opening): release it
                if not isinstance(exc, Exception):
                    raise
                failures += 1
                why = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the adapter said
                self.health.set(SiteStatus.DOWN, f"cannot be opened: {why}")
                if why != said:
                    # Said at once and once, permanent (a host name that does not resolve) or
                    # not: repeating it every few seconds would bury everything else.
                    log.warning(
                        "agent %s: site %s cannot be opened: %s (checking again in the background)",
                        self.config.name, self.site, why,
                    )  # fmt: skip
                    said = why
                else:
                    log.debug(
                        "agent %s: site %s still cannot be opened (next try in %.1fs): %s",
                        self.config.name, self.site, delay, why,
                    )  # fmt: skip
                await anyio.sleep(delay)  # back-off before the next attempt
                delay = min(self.config.open_retry_max_s, delay * 2)
                continue
            if failures:
                log.warning(
                    "agent %s: site %s is open now, after %d failed attempts", self.config.name, self.site, failures
                )
            self._adapter = adapter
            if self.health.status in (None, SiteStatus.DOWN):  # the adapter may have said DEGRADED while opening
                self.health.set(SiteStatus.UP)
            self._opened.set()
            return

    async def _close_quietly(self, adapter: SiteAdapter) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.close_timeout_s):
            try:
                await adapter.close()
            except Exception as exc:  # noqa: BLE001 - closing what failed to open: said, not raised
                log.info("agent %s: closing site %s after a failed open: %r", self.config.name, self.site, exc)

    # ------------------------------------------------------------------ pings, cancels, ends

    async def _answer_pings(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async def answer(msg: Msg) -> None:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(self.config.name.encode())

        sub = await self._bus.nats.subscribe(
            agent_subject(self.site, "ping"), queue=consumer_name(self.site), cb=answer
        )
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _follow_cancels(
        self, tg: TaskGroup, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Every agent hears every cancel request of its site; the one holding the job acts.

        A request missed while the subscription was down is not lost: an agent looks
        for one before it starts a job, and a redelivered job is looked at again.
        """
        started = False
        delay = 0.5
        while True:
            try:
                async with _ordered(self._bus, f"{CANCEL_ROOT}.{self.site}.>") as sub:
                    if not started:
                        task_status.started()
                        started = True
                    delay = 0.5
                    while True:
                        msg = await sub.next_msg(timeout=None)
                        try:
                            request = CancelRequest.model_validate_json(msg.data)
                        except ValidationError:
                            log.error(
                                "agent %s: ignored a malformed cancel request on %s", self.config.name, msg.subject
                            )
                            continue
                        # A job's own id, or the logical id all its attempts share (a retried job).
                        for held in [h for h in self._held.values() if request.job_id in _ids(h.submission.ctx)]:
                            tg.start_soon(self._cancel_held, held)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                if not started:
                    raise
                log.warning("agent %s: following cancel requests again after: %r", self.config.name, exc)
                await anyio.sleep(delay)  # back-off before subscribing again
                delay = min(10.0, delay * 2)

    async def _follow_ends(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """A job that reports its own end (callback mode), or that another process reported, ends here too."""

        async def ended(msg: Msg) -> None:
            parts = msg.subject.split(".")
            if len(parts) == 6 and parts[4] in self._held and self._tg is not None:
                self._tg.start_soon(self._verify_end, parts[4])  # does the site agree?

        subs = [
            await self._bus.nats.subscribe(f"{ROOT}.{self.site}.job.*.*.{state.value}", cb=ended) for state in _TERMINAL
        ]
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                for sub in subs:
                    with contextlib.suppress(nats.errors.Error):
                        await sub.unsubscribe()

    def _reported(self, ctx: JobContext, state: JobState) -> None:
        if state.is_terminal:
            held = self._held.get(ctx.job_id)
            if held is not None:
                held.ended.set()

    # ------------------------------------------------------------------ submissions

    async def _ensure_consumer(self) -> str:
        deliver = agent_subject(self.site, "deliver")
        cfg = ConsumerConfig(
            durable_name=consumer_name(self.site),
            deliver_subject=deliver,
            deliver_group=consumer_name(self.site),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.config.ack_wait_s,
            max_ack_pending=site_limit(self._spec),
            filter_subject=f"{SUBMIT_ROOT}.{self.site}.>",
        )
        try:
            await self._bus.jetstream.add_consumer(SUBMIT_STREAM, cfg)
        except nats.js.errors.APIError as exc:
            info = await self._bus.jetstream.consumer_info(SUBMIT_STREAM, consumer_name(self.site))
            log.warning("agent %s: keeping the existing consumer as it is: %s", self.config.name, exc)
            return str(info.config.deliver_subject or deliver)
        return deliver

    async def _take_submissions(self, tg: TaskGroup) -> None:
        delay = 0.5
        while True:  # a stalled or restarting server must not end the agent: try again
            try:
                deliver = await self._ensure_consumer()
                sub = await self._bus.nats.subscribe(
                    deliver, queue=consumer_name(self.site), pending_msgs_limit=0, pending_bytes_limit=0
                )
                break
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.warning("agent %s: cannot follow site %s's submissions yet: %r", self.config.name, self.site, exc)
                await anyio.sleep(delay)  # back-off before the next attempt
                delay = min(30.0, delay * 2)
        log.info("agent %s: serving site %s", self.config.name, self.site)
        # Only the deliveries of this agent's own consumer are submissions: another
        # consumer of a stream of this site's server (a leaf may make one on LWFM_PUBLIC)
        # could name this delivery subject.  Its messages are dropped untouched.
        ours = f"$JS.ACK.{SUBMIT_STREAM}.{consumer_name(self.site)}."
        warned = False
        try:
            async for msg in sub.messages:
                if not (msg.reply or "").startswith(ours):
                    if not warned:
                        warned = True
                        log.warning(
                            "agent %s: ignoring deliveries on %s that are not from consumer %s (reply %r)",
                            self.config.name, msg.subject, consumer_name(self.site), msg.reply,
                        )  # fmt: skip
                    continue
                try:
                    submission = Submission.model_validate_json(msg.data)
                    if submission.ctx.site != self.site:
                        raise ValueError(f"it is for site {submission.ctx.site!r}")
                except ValueError as exc:
                    log.error("agent %s: dropped a malformed submission on %s: %s", self.config.name, msg.subject, exc)
                    await _settle(msg.term())
                    continue
                job_id = submission.ctx.job_id
                held = self._held.get(job_id)
                if held is not None:
                    held.msg = msg  # redelivered while we run it (a stalled server): renew the newest
                    continue
                self._held[job_id] = _Held(submission=submission, msg=msg)
                tg.start_soon(self._serve, job_id)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _serve(self, job_id: str) -> None:
        """Run one submission to its end: then, and only then, ack it.

        Anything unexpected hands the submission back (nak): it is redelivered and the
        job adopted, rather than one job's trouble stopping the agent.
        """
        held = self._held[job_id]
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_held, held)
                await self._begin(held)
                await held.ended.wait()
                tg.cancel_scope.cancel()
        except Exception:
            log.exception("agent %s: job %s: handing its submission back after an error", self.config.name, job_id)
            self._held.pop(job_id, None)
            await _settle(held.msg.nak(delay=1.0))
            return
        self._held.pop(job_id, None)
        await _settle(held.msg.ack())

    async def _begin(self, held: _Held) -> None:
        """Start, adopt, cancel or recognise as ended the job of a submission just taken."""
        ctx = held.submission.ctx
        if deliveries(held.msg) == 1 and await self._adapter_state(ctx) is None:
            # The common case, a job nobody has seen: it cannot have ended.  Whether it was
            # cancelled while queued is asked first, and only then is its launch claimed: a
            # claim is stored only once nothing can fail before the launch (a claim stored
            # and the submission handed back would leave the next agent waiting for a job
            # nobody started).
            if await self._asked(lambda: self._cancel_asked(ctx)):
                if not await self._asked(lambda: self._launched_elsewhere(ctx)):
                    await self._cancelled_unstarted(ctx)
                return  # or launched elsewhere (see _start): its end comes from the bus
            if not await self._claim_launch(ctx):
                return  # launched elsewhere (see _start): its end comes from the bus
            await self._start_then_check(held, claimed=True)
            return
        if await self._cancel_asked(ctx):
            if await self._adapter_state(ctx) is None and not await self._launched_elsewhere(ctx):
                await self._cancelled_unstarted(ctx)
                return
            await self._start(held)  # adopt it, so that it is watched to its end
            await self._cancel_held(held)
            return
        if await self._has_ended(held):
            held.ended.set()
            return
        await self._start_then_check(held)

    async def _cancelled_unstarted(self, ctx: JobContext) -> None:
        await self._reporter.report(
            ctx, JobState.CANCELLED, native_state="cancelled", native_info="cancelled before it started"
        )

    async def _start_then_check(self, held: _Held, *, claimed: bool = False) -> None:
        """Start the job; then stop it if a cancel came while it started (a cancel heard just
        before its launch found nothing to stop)."""
        await self._start(held, claimed=claimed)
        if await self._asked(lambda: self._cancel_asked(held.submission.ctx)):
            await self._cancel_held(held)

    async def _cancel_asked(self, ctx: JobContext) -> bool:
        """Whether a cancel is stored for this attempt or for the logical job all its attempts stand for."""
        for job_id in _ids(ctx):
            if await cancel_requested(self._bus, self.site, job_id):
                return True
        return False

    async def _keep_held(self, held: _Held) -> None:
        """Every third of the ack wait: renew the lease, and look again at what may have been missed.

        A cancel request heard while the cancel subscription was down (or a cancel that
        failed) is acted on now; an end published while this agent's link was down, or
        by another process, is recognised now -- a held slot is never leaked.
        """
        ctx = held.submission.ctx
        while True:
            await anyio.sleep(self.config.ack_wait_s / 3)  # a lease renewal period, not synchronisation
            await _settle(held.msg.in_progress())
            try:
                if not held.cancelled and await self._cancel_asked(ctx):
                    await self._cancel_held(held)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.info("agent %s: job %s: could not look at the bus: %r", self.config.name, ctx.job_id, exc)
            await self._verify_end(ctx.job_id)

    async def _cancel_held(self, held: _Held) -> None:
        await self._opened.wait()
        assert self._adapter is not None
        try:
            await self._adapter.cancel(held.submission.ctx)
            held.cancelled = True
        except Exception as exc:  # noqa: BLE001 - said; the next look at the job tries again
            log.warning(
                "agent %s: cancel of job %s failed (will retry): %s", self.config.name, held.submission.ctx.job_id, exc
            )

    async def _has_ended(self, held: _Held) -> bool:
        """The job's end is on the bus, and the adapter does not know it as still going.

        Another process may publish an end (a cancel of a queued job, an orphaned job's
        own reporter, a job in callback mode): it counts only once the site agrees.
        """
        job_id = held.submission.ctx.job_id
        if not await self._ended_on_bus(job_id):
            return False
        state = await self._adapter_state(held.submission.ctx)
        return state is None or state.is_terminal

    async def _verify_end(self, job_id: str) -> None:
        held = self._held.get(job_id)
        if held is None:
            return
        try:
            if await self._has_ended(held):
                held.ended.set()
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.info("agent %s: job %s: end not checked now (%r); checked again later", self.config.name, job_id, exc)

    async def _ended_on_bus(self, job_id: str) -> bool:
        """Whether the job's terminal state is already recorded (a redelivery after its end)."""
        for state in _TERMINAL:
            try:
                await self._bus.jetstream.get_msg(STREAM, subject=f"{ROOT}.{self.site}.job.*.{job_id}.{state.value}")
            except nats.js.errors.NotFoundError:
                continue
            return True
        return False

    async def _adapter_state(self, ctx: JobContext) -> JobState | None:
        """What the site says of the job (None: it does not know it); an error counts as 'still going'."""
        await self._opened.wait()
        assert self._adapter is not None
        try:
            return await self._adapter.status(ctx)
        except Exception as exc:  # noqa: BLE001 - unknown: assume it may run
            log.info("agent %s: status of job %s unknown: %r", self.config.name, ctx.job_id, exc)
            return JobState.RUNNING

    async def _launch_claims(self) -> Any:
        if self._claims is None:
            self._claims = await open_bucket(
                self._bus.jetstream,
                KeyValueConfig(bucket=LAUNCH_BUCKET, history=1, storage=StorageType.FILE, ttl=_CLAIM_TTL_S),
                self._bus.replicas,
            )
        return self._claims

    async def _claim_launch(self, ctx: JobContext) -> bool:
        """Claim the first launch of a job for this agent's place (host and state directory).

        Agents sharing a state directory adopt each other's jobs through the adapter; an
        agent elsewhere (another home, another machine) must never start a job that was
        launched somewhere it cannot see.  True: launch it here.
        """
        kv = await self._asked(self._launch_claims)
        key = _claim_key(ctx)

        async def claim() -> bool:
            try:
                await kv.create(key, self._place.encode())
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                entry = await kv.get(key)
                return bytes(entry.value or b"").decode() == self._place

        # Asked until answered: a claim stored whose answer was lost (a leader election) is
        # found again as this agent's own, rather than left for another agent to wait on.
        return await self._asked(claim)

    async def _asked(self, question: Callable[[], Awaitable[_T]]) -> _T:
        """A question to the server, asked again while it goes unanswered (an election, a reconnect).

        Before a job is launched, a failure would hand its submission back with this
        agent's launch claim possibly stored: another agent (another place) that took the
        submission then would wait for the end of a job nobody started.  So the questions
        around a launch end only with an answer or a refusal (the lease is renewed meanwhile).
        """
        delay = 0.05
        while True:
            try:
                return await question()
            except Exception as exc:
                if not is_unanswered(exc, self._bus.nats):
                    raise
                log.info("agent %s: the server did not answer (%r); asking again", self.config.name, exc)
                await anyio.sleep(delay)  # back-off between questions, not synchronisation
                delay = min(2.0, delay * 2)

    async def _launched_elsewhere(self, ctx: JobContext) -> bool:
        kv = await self._launch_claims()
        try:
            entry = await kv.get(_claim_key(ctx))
        except nats.js.errors.KeyNotFoundError:
            return False
        return bytes(entry.value or b"").decode() != self._place

    async def _start(self, held: _Held, *, claimed: bool = False) -> None:
        """Hand the job to the adapter (a repeat submit adopts it), retrying transient refusals."""
        ctx, defn = held.submission.ctx, held.submission.defn
        await self._opened.wait()
        assert self._adapter is not None
        if not claimed and await self._adapter_state(ctx) is None and not await self._claim_launch(ctx):
            # Launched by an agent of this site elsewhere, which this one cannot see or adopt:
            # its end comes from the bus (its orphan reporter, callback mode, or that agent back).
            log.info("agent %s: job %s was launched elsewhere; waiting for its end", self.config.name, ctx.job_id)
            return
        found = await self._with_secrets(ctx, defn)
        if found is None:
            return  # a secret is missing: reported FAILED, naming it
        ready, values = found
        delay = 0.5
        last = ""
        for attempt in range(1, self.config.submit_attempts + 1):
            try:
                await self._adapter.submit(ctx, ready)
                return
            except Exception as exc:  # noqa: BLE001 - every refusal is retried, then reported
                last = f"{type(exc).__name__}: {exc}" if not isinstance(exc, LwfmBusError) else str(exc)
                # An adapter's error may quote the command it was given: never a secret's value.
                last = redact(last.encode(), values.values()).decode(errors="replace") if values else last
                log.warning(
                    "agent %s: job %s: submit attempt %d failed: %s", self.config.name, ctx.job_id, attempt, last
                )
            if attempt < self.config.submit_attempts:
                await anyio.sleep(delay)  # back-off between attempts
                delay *= 2
        await self._reporter.report(
            ctx, JobState.FAILED, native_state="submit-failed", native_info=f"submit failed: {last}"[:4000]
        )

    async def _with_secrets(self, ctx: JobContext, defn: JobDefn) -> tuple[JobDefn, dict[str, str]] | None:
        """The job as the adapter gets it: its ``secret:NAME`` references filled in from this site's store.

        The values exist from here on only in this process and on the job's host: the
        submission, its events and bundles keep the references.  The local site stores
        the definition it is given in its job directory, so it gets the job wrapped in
        :mod:`._secretrun` instead, which reads the values when the job starts and
        redacts them from its output.  Remote adapters get the values, which they pass
        in the job's 0600 environment file and its argv, on the site only.

        Returns the job and the values it uses (to redact an adapter's error message).
        A missing secret fails the job (None), naming the secret -- unless the site
        already knows the job (an adoption), which then needs no values.  Nothing here
        logs a value or the resolved definition.
        """
        names = references(defn)
        if not names:
            return defn, {}
        store = self._secrets
        values: dict[str, str] = {}
        problems: list[str] = []
        for name in names:
            try:
                value = store.lookup(name, os.environ) if store is not None else os.environ.get(f"LWFM_SECRET_{name}")
            except ConfigError as exc:  # not UTF-8: said by name, like a missing one (a retry would not help)
                problems.append(str(exc))
                continue
            if value is None:
                problems.append(missing_secret_reason(name, self.site))
            else:
                values[name] = value
        if problems:
            if await self._adapter_state(ctx) is not None:
                return defn, {}  # adopted: the site has it already and will not start it again
            reason = "; ".join(problems)
            log.warning("agent %s: job %s: %s", self.config.name, ctx.job_id, reason)
            # Said as info too: that is what 'run' prints beside a failed step.
            await self._reporter.report(
                ctx, JobState.FAILED, native_state="secret-missing", native_info=reason, info=reason
            )
            return None
        if self._spec.adapter != "local" or store is None:
            return resolve_defn(defn, values), values
        env_refs = {var: ref for var, value in defn.env.items() if (ref := secret_name(value)) is not None}
        spec = json.dumps({"store": str(store.path), "site": self.site, "env": env_refs, "vars": store.env_names})
        runner = str(Path(__file__).with_name("_secretrun.py"))
        wrapped = defn.model_copy(update={"argv": (sys.executable, runner, spec, "--", *defn.command()), "shell": None})
        return wrapped, values


def _ids(ctx: JobContext) -> tuple[str, ...]:
    """The ids a cancel request may name for this job: its own, and its logical job's (a retry attempt)."""
    return (ctx.job_id,) if ctx.attempt_of is None else (ctx.job_id, ctx.attempt_of)


def _claim_key(ctx: JobContext) -> str:
    """A KV key for one job of one site (job ids may hold characters KV keys may not)."""
    return f"{ctx.site}.{ctx.job_id}".encode().hex()


@contextlib.asynccontextmanager
async def _ordered(bus: EventBus, subject: str) -> AsyncIterator[Any]:
    """An ordered consumer of new messages on ``subject`` in the submission stream."""
    sub = await bus.jetstream.subscribe(
        subject, stream=SUBMIT_STREAM, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    )
    try:
        yield sub
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error, TimeoutError):
            await sub.unsubscribe()


async def _settle(op: Any) -> None:
    """Ack, nak, renew or term; a lost one only means a redelivery, which adoption makes harmless."""
    try:
        with anyio.fail_after(5):
            await op
    except (TimeoutError, nats.errors.Error) as exc:
        log.info("agent: could not settle a submission: %r", exc)


@contextlib.asynccontextmanager
async def serve_agents(
    bus: EventBus,
    specs: Sequence[SiteSpec],
    *,
    home: Path,
    job_env: Mapping[str, str],
    config: AgentConfig | None = None,
) -> AsyncIterator[list[SiteAgent]]:
    """Run one agent per site until the block exits; entered once each answers pings."""
    agents: list[SiteAgent] = []
    for spec in specs:
        if spec.broken is not None or spec.adapter_class is None:
            # One broken plugin must not stop the other sites' agents: said, and skipped.
            log.error("no agent for site %s: %s", spec.name, spec.broken or "it has no adapter")
            continue
        agents.append(
            SiteAgent(
                bus,
                spec,
                state_dir=home / "sites" / spec.name,
                job_env=job_env,
                config=config,
                secrets=SecretStore(home, spec.name, spec.secret_env),
            )
        )
    async with anyio.create_task_group() as tg:
        for agent in agents:
            await tg.start(agent.run)
        try:
            yield agents
        finally:
            tg.cancel_scope.cancel()
