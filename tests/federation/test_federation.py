"""Federation: a hub and two leaf sites, three real nats-servers on loopback.

Every server runs from the configuration lwfm-bus generates out of one federation
file written by ``lwfm-bus federation init``; alpha reaches the hub through a relay
whose link the partition test cuts.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.subscription import Subscription

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._config import BusConfig
from tests._helpers import wait_state
from tests.federation._proxy import LinkProxy, link_proxy

CLI = [sys.executable, "-m", "lwfm_bus"]
PLACEHOLDER = "nats-leaf://127.0.0.1:1"


@dataclass
class Federation:
    root: Path
    buses: dict[str, lb.Bus] = field(default_factory=dict)
    proxy: LinkProxy | None = None

    def __getitem__(self, site: str) -> lb.Bus:
        return self.buses[site]


def _init(root: Path) -> None:
    subprocess.run(
        [
            *CLI, "federation", "init", "-o", str(root), "--hub", "hub", "--hub-url", PLACEHOLDER,
            "--hub-listen", "127.0.0.1:0", "--leaf", "alpha=alpha-hpc", "--leaf", "beta",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def _config(fed_root: Path, fed_file: Path, site: str, home: Path) -> BusConfig:
    return BusConfig(
        autostart="process",  # each site serves its own server from the test process
        home=home,
        site=site,
        federation_file=fed_file,
        federation_secret_file=fed_root / "secrets" / f"{site}.secret",
        engine="on",
    )


def _leaf_file(fed_root: Path, site: str, hub_url: str) -> Path:
    """The shared file as that leaf sees it: the hub's real address (here, per leaf)."""
    path = fed_root / f"federation-{site}.toml"
    path.write_text((fed_root / "federation.toml").read_text().replace(PLACEHOLDER, hub_url))
    return path


def _restrict_submissions(path: Path, site: str, targets: list[str]) -> None:
    """Edit the federation file: ``site`` may submit only to ``targets`` (init allows every member)."""
    blocks = path.read_text().split("\n\n")
    for i, block in enumerate(blocks):
        if block.startswith(f"[sites.{json.dumps(site)}]"):
            blocks[i] = block.replace('submit_to = ["*"]', f"submit_to = {json.dumps(targets)}")
    path.write_text("\n\n".join(blocks))


@asynccontextmanager
async def running_federation(
    tmp_path: Path, submit_to: dict[str, list[str]] | None = None
) -> AsyncIterator[Federation]:
    """Hub, alpha (through a relay) and beta, each with its engine and its agents.

    Entered in the test's own task, not as a fixture: the engines' task groups must
    be left by the task that entered them.  ``submit_to`` narrows who may submit where.
    """
    root = tmp_path / "fed"
    await asyncio.to_thread(_init, root)
    for site, targets in (submit_to or {}).items():
        _restrict_submissions(root / "federation.toml", site, targets)
    fed = Federation(root)
    async with AsyncExitStack() as stack:
        hub_home = tmp_path / "hub-home"
        fed.buses["hub"] = await stack.enter_async_context(
            lb.connect(_config(root, root / "federation.toml", "hub", hub_home))
        )
        leaf_port = json.loads((hub_home / "server.json").read_text())["leaf_port"]
        fed.proxy = await stack.enter_async_context(link_proxy("127.0.0.1", leaf_port))
        urls = {"alpha": f"nats-leaf://127.0.0.1:{fed.proxy.port}", "beta": f"nats-leaf://127.0.0.1:{leaf_port}"}
        for site, url in urls.items():
            config = _config(root, _leaf_file(root, site, url), site, tmp_path / f"{site}-home")
            fed.buses[site] = await stack.enter_async_context(lb.connect(config))
        yield fed


def _true(name: str) -> lb.JobDefn:
    return lb.JobDefn.of([sys.executable, "-c", "pass"], name=name)


async def _stored(bus: lb.Bus, subject_filter: str) -> list[lb.Event]:
    async with bus.replay(subject_filter) as history:
        return [e async for e in history]


async def _arrival(bus: lb.Bus, subject_filter: str, timeout: float = 60) -> lb.Event:
    """The first event on ``subject_filter`` in this bus's own stream (replayed or new)."""

    async def first() -> lb.Event:
        async with bus.subscribe(subject_filter, from_start=True) as events:
            async for event in events:
                return event
        raise AssertionError("a followed subscription ended")  # pragma: no cover

    return await asyncio.wait_for(first(), timeout)


# --------------------------------------------------------------------------- configuration


def test_init_writes_hashes_not_secrets_and_each_secret_private(tmp_path: Path) -> None:
    root = tmp_path / "fed"
    _init(root)
    text = (root / "federation.toml").read_text()
    for site in ("hub", "alpha", "beta"):
        secret_file = root / "secrets" / f"{site}.secret"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert secret_file.read_text().strip() not in text
    fed = lb.load_federation(root / "federation.toml")
    assert fed.hub == "hub"
    assert fed.names_of("alpha") == ("alpha", "alpha-hpc")
    assert fed.stream_layout("beta").subjects == ("lwfm.beta.>", "lwfm.local.>")
    assert set(fed.stream_layout("beta").sources) == {
        ("hub", "lwfm.hub.>"), ("alpha", "lwfm.alpha.>"), ("alpha", "lwfm.alpha-hpc.>"),
    }  # fmt: skip
    # The server configuration for one's own nats-server: domain, and the leaf's remote.
    env = {**os.environ, "LWFM_BUS_FEDERATION_SECRET": str(root / "secrets" / "alpha.secret")}
    out = subprocess.run(
        [*CLI, "--site", "alpha", "--federation", str(root / "federation.toml"), "federation", "config"],
        check=True, capture_output=True, text=True, env=env, timeout=60,
    ).stdout  # fmt: skip
    assert 'domain: "alpha"' in out
    assert "nats-leaf://alpha:" in out


def test_site_names_beyond_toml_bare_keys_make_a_readable_federation_file(tmp_path: Path) -> None:
    root = tmp_path / "fed"
    subprocess.run(
        [*CLI, "federation", "init", "-o", str(root), "--hub", "h@q", "--hub-url", PLACEHOLDER,
         "--leaf", "a:b=a+hpc", "--leaf", "c~d^e"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    fed = lb.load_federation(root / "federation.toml")
    assert (fed.hub, sorted(fed.sites)) == ("h@q", ["a:b", "c~d^e", "h@q"])
    assert fed.names_of("a:b") == ("a:b", "a+hpc")


def test_a_hubs_config_takes_its_old_global_store_and_is_written_private(tmp_path: Path) -> None:
    """A hub's store from before per-site accounts (``jetstream/$G``) is refused, or moved on
    request; both directories at once is said; ``-o`` writes the hub's password mode 600."""
    root, store = tmp_path / "fed", tmp_path / "store"
    _init(root)
    env = {**os.environ, "LWFM_BUS_FEDERATION_SECRET": str(root / "secrets" / "hub.secret")}
    argv = [*CLI, "--site", "hub", "--federation", str(root / "federation.toml"), "federation", "config"]
    argv += ["--store", str(store)]

    def config(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*argv, *extra], capture_output=True, text=True, env=env, timeout=60)

    old, new = store / "jetstream" / "$G", store / "jetstream" / "lwfm-hub"
    (old / "streams" / "LWFM").mkdir(parents=True)
    done = config()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "--move-store" in done.stderr and done.stdout == ""
    assert old.is_dir() and not new.exists()
    out = tmp_path / "hub.conf"
    out.write_text("")
    out.chmod(0o644)  # an existing file is made private too
    done = config("--move-store", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert (new / "streams" / "LWFM").is_dir() and not old.exists()  # as the embedded hub adopts it
    assert out.stat().st_mode & 0o777 == 0o600
    secret = (root / "secrets" / "hub.secret").read_text().strip()
    assert secret in out.read_text() and f"store_dir: {json.dumps(str(store))}" in out.read_text()
    old.mkdir()  # both: the account's directory is used, the old one is said
    done = config()
    assert done.returncode == 0 and "both exist" in done.stderr and secret in done.stdout


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("hub = true\n", ""), "exactly one site must have hub = true"),
        (lambda t: t.replace('names = ["alpha-hpc"]', 'names = ["beta"]'), "claimed by both"),
        (lambda t: t.replace('names = ["alpha-hpc"]', 'names = ["local"]'), "private"),
        (lambda t: t.replace(PLACEHOLDER, "nats-leaf://u:p@h:1"), "must not carry credentials"),
    ],
)
def test_a_bad_federation_file_is_refused_naming_the_problem(tmp_path: Path, edit: object, message: str) -> None:
    root = tmp_path / "fed"
    _init(root)
    path = root / "federation.toml"
    path.write_text(edit(path.read_text()))  # type: ignore[operator]
    with pytest.raises(lb.ConfigError, match=message):
        lb.load_federation(path)


async def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "fed"
    await asyncio.to_thread(_init, root)
    secret = root / "secrets" / "beta.secret"
    secret.chmod(0o644)
    config = _config(root, root / "federation.toml", "beta", tmp_path / "home")
    with pytest.raises(lb.ConfigError, match="readable by others"):
        async with lb.connect(config):
            pass  # pragma: no cover


# --------------------------------------------------------------------------- cross-site triggers


async def test_a_job_on_beta_fires_when_a_job_on_alpha_completes(tmp_path: Path) -> None:
    async with running_federation(tmp_path) as federation:
        await _a_job_on_beta_fires_when_a_job_on_alpha_completes(federation)


async def _a_job_on_beta_fires_when_a_job_on_alpha_completes(federation: Federation) -> None:
    alpha, beta = federation["alpha"], federation["beta"]
    upstream_id, downstream_id = lb.new_id(), lb.new_id()
    await beta.set_job_trigger(_true("b"), upstream_id, site="beta", job_id=downstream_id)
    await alpha.submit(_true("a"), site="alpha", job_id=upstream_id)

    done = await wait_state(beta, downstream_id, JobState.COMPLETE, timeout=60)
    assert done.site == "beta"
    # beta learned of alpha's job from its own stream (sourced), not by asking alpha.
    seen = await _stored(beta, f"lwfm.alpha.job.*.{upstream_id}.*")
    assert JobState.COMPLETE in {e.data.state for e in seen if isinstance(e, lb.JobStatusEvent)}


async def test_a_trigger_at_alpha_starts_its_downstream_on_beta(tmp_path: Path) -> None:
    async with running_federation(tmp_path) as federation:
        alpha, beta = federation["alpha"], federation["beta"]
        upstream_id, downstream_id = lb.new_id(), lb.new_id()
        trigger = await alpha.set_job_trigger(_true("b"), upstream_id, site="beta", job_id=downstream_id)
        await alpha.submit(_true("a"), site="alpha", job_id=upstream_id)

        done = await wait_state(beta, downstream_id, JobState.COMPLETE, timeout=60)
        assert done.site == "beta"  # run by beta's agent, reported by beta
        assert (await wait_state(alpha, downstream_id, JobState.COMPLETE, timeout=60)).site == "beta"  # sourced
        await _arrival(alpha, f"lwfm.alpha.trigger.*.{trigger.trigger_id}.fired")  # announced after the submit
        fired = await _stored(alpha, f"lwfm.alpha.trigger.*.{trigger.trigger_id}.fired")
        assert len(fired) == 1
        # The submission is in beta's submission stream, not alpha's.
        stored = await beta.jetstream.get_msg("LWFM_SUBMIT", subject=f"lwfm-submit.beta.{downstream_id}")
        assert stored.data is not None
        with pytest.raises(nats.js.errors.NotFoundError):
            await alpha.jetstream.get_msg("LWFM_SUBMIT", subject=f"lwfm-submit.beta.{downstream_id}")


async def test_a_submission_the_federation_does_not_allow_fails_its_trigger(tmp_path: Path) -> None:
    async with running_federation(tmp_path, submit_to={"alpha": ["hub"]}) as federation:
        alpha, beta = federation["alpha"], federation["beta"]
        upstream_id, downstream_id = lb.new_id(), lb.new_id()
        trigger = await alpha.set_job_trigger(_true("b"), upstream_id, site="beta", job_id=downstream_id)
        await alpha.submit(_true("a"), site="alpha", job_id=upstream_id)

        failed = await _arrival(alpha, f"lwfm.alpha.trigger.*.{trigger.trigger_id}.failed")
        assert isinstance(failed, lb.TriggerFailedEvent)
        assert "may not submit jobs to site 'beta'" in failed.data.reason
        down = await alpha.wait(downstream_id, timeout=30)  # reported at alpha, which owns the trigger
        assert (down.state, down.site) == (JobState.FAILED, "alpha")
        assert down.native_info is not None and "site 'beta'" in down.native_info
        record = await alpha.trigger(trigger.trigger_id)
        assert record is not None and record.state == "failed"

        # The hub's server refuses it too: a raw client of alpha's server that skips the check.
        nc = await nats.connect(alpha.connected_url)
        try:
            with pytest.raises(
                (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)
            ):
                await nc.jetstream().publish("lwfm-submit.beta.forged", b"{}", timeout=2)
        finally:
            await nc.close()
        with pytest.raises(nats.js.errors.NotFoundError):
            await beta.jetstream.get_msg("LWFM_SUBMIT", subject="lwfm-submit.beta.forged")


async def test_a_join_over_jobs_on_two_sites_fires_a_job_on_a_third(tmp_path: Path) -> None:
    async with running_federation(tmp_path) as federation:
        await _a_join_over_jobs_on_two_sites_fires_a_job_on_a_third(federation)


async def _a_join_over_jobs_on_two_sites_fires_a_job_on_a_third(federation: Federation) -> None:
    # Both ways round: A = alpha, B = beta, C = the hub (whose sources of the leaves start
    # when each leaf announces its new stream); then A = the hub, B = alpha, C = beta.
    hub, alpha, beta = federation["hub"], federation["alpha"], federation["beta"]
    for (a_bus, a_site), (b_bus, b_site), (c_bus, c_site) in (
        ((alpha, "alpha"), (beta, "beta"), (hub, "hub")),
        ((hub, "hub"), (alpha, "alpha"), (beta, "beta")),
    ):
        a_id, b_id, c_id = lb.new_id(), lb.new_id(), lb.new_id()
        await c_bus.set_job_trigger(_true("c"), [a_id, b_id], site=c_site, job_id=c_id, trigger_id=f"t-{c_id}")
        await a_bus.submit(_true("a"), site=a_site, job_id=a_id)
        await b_bus.submit(_true("b"), site=b_site, job_id=b_id)

        await wait_state(c_bus, c_id, JobState.COMPLETE, timeout=60)
        fired = [
            e
            for e in await _stored(c_bus, f"lwfm.{c_site}.trigger.*.t-{c_id}.*")
            if isinstance(e, lb.TriggerFiredEvent)
        ]
        assert len(fired) == 1
        assert {e.data.job_id for e in await _stored(c_bus, "lwfm.*.job.*.*.COMPLETE")} >= {a_id, b_id, c_id}


# --------------------------------------------------------------------------- permissions


async def test_a_leaf_cannot_publish_as_another_site(tmp_path: Path) -> None:
    async with running_federation(tmp_path) as federation:
        await _a_leaf_cannot_publish_as_another_site(federation)


async def _a_leaf_cannot_publish_as_another_site(federation: Federation) -> None:
    alpha, beta, hub = federation["alpha"], federation["beta"], federation["hub"]
    forged_id, honest_id = lb.new_id(), lb.new_id()

    # Through its own bus: alpha's stream captures only alpha's names, so the publish is refused.
    forged = _status(forged_id, "beta")
    with pytest.raises(lb.PublishError, match="publishes events only for its own site names"):
        await alpha.publish(forged)

    # Raw, past the library: a client of alpha's server publishes on beta's subjects.
    # The hub's server drops it (alpha's leaf credentials allow only lwfm.alpha.> and
    # lwfm.alpha-hpc.>), so no stream and no core subscriber beyond alpha ever sees it.
    async with _raw(hub, federation) as spy, _raw(alpha) as rogue:
        # Exact site tokens: interest broader than alpha's permissions is not forwarded to it.
        forged_sub = await spy.subscribe(f"lwfm.beta.job.*.{forged_id}.*")
        honest_sub = await spy.subscribe(f"lwfm.alpha.job.*.{honest_id}.*")
        await spy.flush()
        await _until_flowing(rogue, honest_sub, lambda: _status(honest_id, "alpha"))
        await rogue.publish(forged.nats_subject(), lb.encode_event(forged, 1 << 20))
        last = _status(honest_id, "alpha")
        await rogue.publish(last.nats_subject(), lb.encode_event(last, 1 << 20))
        await rogue.flush()
        # Both went down the same link in this order: once the second is here, the
        # forged one would be too, had the hub let it through.
        while lb.decode_event((await honest_sub.next_msg(timeout=30)).data).id != last.id:
            pass
        assert forged_sub.pending_msgs == 0
    await _arrival(beta, last.nats_subject())  # a barrier: sourced from alpha's stream after the forgery
    for bus in (hub, beta):
        assert await _stored(bus, f"lwfm.*.*.*.{forged_id}.*") == []


async def test_private_local_events_stay_on_their_site(tmp_path: Path) -> None:
    async with running_federation(tmp_path) as federation:
        hub, alpha = federation["hub"], federation["alpha"]
        private, public = lb.new_id(), lb.new_id()
        async with _raw(alpha) as watcher, _raw(hub, federation) as sender:
            leak = await watcher.subscribe(f"lwfm.local.job.*.{private}.*")
            seen = await watcher.subscribe(f"lwfm.hub.job.*.{public}.*")
            await watcher.flush()
            await _until_flowing(sender, seen, lambda: _status(public, "hub"))
            await hub.publish(_status(private, "local"))  # stored at the hub: its own private job
            last = _status(public, "hub")
            await sender.publish(last.nats_subject(), lb.encode_event(last, 1 << 20))
            while lb.decode_event((await seen.next_msg(timeout=30)).data).id != last.id:
                pass
            assert leak.pending_msgs == 0
        await _arrival(alpha, f"lwfm.hub.job.*.{public}.*")
        assert await _stored(alpha, f"lwfm.local.job.*.{private}.*") == []
        assert len(await _stored(hub, f"lwfm.local.job.*.{private}.*")) == 1


def _status(job_id: str, site: str) -> lb.Event:
    return lb.make_event(lb.JobStatus(job_id=job_id, site=site, state=JobState.RUNNING), source="/test")


@asynccontextmanager
async def _raw(bus: lb.Bus, federation: Federation | None = None) -> AsyncIterator[nats.NATS]:
    """A plain NATS client of the same server as ``bus`` (the hub wants its login)."""
    login = {"user": "hub", "password": _secret(federation, "hub")} if federation else {}
    nc = await nats.connect(bus.connected_url, **login)
    try:
        yield nc
    finally:
        await nc.close()


async def _until_flowing(sender: nats.NATS, sub: Subscription, make: Callable[[], lb.Event]) -> None:
    """Interest crosses leaf links asynchronously: send real events until one arrives."""
    for _ in range(150):
        event = make()
        await sender.publish(event.nats_subject(), lb.encode_event(event, 1 << 20))
        try:
            await sub.next_msg(timeout=0.2)
            return
        except nats.errors.TimeoutError:
            continue
    raise AssertionError("events never crossed the link")


def _secret(federation: Federation, site: str) -> str:
    return (federation.root / "secrets" / f"{site}.secret").read_text().strip()


# --------------------------------------------------------------------------- partition


async def test_events_made_during_a_partition_arrive_after_healing_and_fire_once(tmp_path: Path) -> None:
    async with running_federation(tmp_path) as federation:
        await _events_made_during_a_partition_arrive_after_healing_and_fire_once(federation)


async def _events_made_during_a_partition_arrive_after_healing_and_fire_once(federation: Federation) -> None:
    alpha, beta = federation["alpha"], federation["beta"]
    assert federation.proxy is not None
    upstream_id, downstream_id = lb.new_id(), lb.new_id()
    await beta.set_job_trigger(_true("b"), upstream_id, site="beta", job_id=downstream_id)
    # The job runs (blocked reading a FIFO) and its RUNNING event reaches beta: the link works.
    gate = federation.root / "gate"
    os.mkfifo(gate)
    blocked = lb.JobDefn.of([sys.executable, "-c", f"open({str(gate)!r}).read()"], name="a")
    job = await alpha.submit(blocked, site="alpha", job_id=upstream_id)
    await _arrival(beta, f"lwfm.alpha.job.*.{upstream_id}.RUNNING")

    federation.proxy.partition()  # cut while the job runs; it then ends on the far side of the cut
    await asyncio.to_thread(gate.write_text, "go")
    await job.wait(timeout=60)  # alpha works alone: its own bus, engine and site
    # Alpha has it; beta cannot have it: there is no link.
    assert await _stored(alpha, f"lwfm.alpha.job.*.{upstream_id}.COMPLETE")
    assert await _stored(beta, f"lwfm.alpha.job.*.{upstream_id}.COMPLETE") == []

    federation.proxy.heal()
    await wait_state(beta, downstream_id, JobState.COMPLETE, timeout=90)
    # A marker published after the job reaches beta only after everything before it
    # (sourcing keeps order), so the counts below are final, not early.
    marker = await alpha.submit(_true("marker"), site="alpha")
    await _arrival(beta, f"lwfm.alpha.job.*.{marker.job_id}.COMPLETE", timeout=90)
    completes = await _stored(beta, f"lwfm.alpha.job.*.{upstream_id}.COMPLETE")
    assert len(completes) == 1
    fired = [e for e in await _stored(beta, "lwfm.beta.trigger.>") if isinstance(e, lb.TriggerFiredEvent)]
    assert len(fired) == 1
    runs = await _stored(beta, f"lwfm.beta.job.*.{downstream_id}.RUNNING")
    assert len(runs) == 1


def test_the_compose_file_describes_the_tested_topology() -> None:
    import yaml

    compose = yaml.safe_load((Path(__file__).parents[2] / "docker" / "federation.compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"hub", "alpha", "beta"}
    for name, service in services.items():
        assert service["command"] == ["--site", name, "up"]
        assert f"./fed/secrets/{name}.secret:/etc/lwfm-bus/site.secret:ro" in service["volumes"]
        assert service["environment"]["LWFM_BUS_FEDERATION"] == "/etc/lwfm-bus/federation.toml"
    assert services["hub"]["ports"] == ["7422:7422"]


async def test_an_event_that_claims_another_site_than_its_subject_is_parked_not_judged(tmp_path: Path) -> None:
    async with running_federation(tmp_path) as federation:
        alpha, beta = federation["alpha"], federation["beta"]
        victim, downstream = lb.new_id(), lb.new_id()
        await alpha.set_job_trigger(_true("b"), victim, site="alpha", job_id=downstream, trigger_id=f"t-{victim}")
        # beta may publish under lwfm.beta.> only; it says "alpha's job completed" there.
        claim = lb.make_event(lb.JobStatus(job_id=victim, site="alpha", state=JobState.COMPLETE), source="/rogue")
        forged_subject = f"lwfm.beta.job._.{victim}.COMPLETE"
        await beta.jetstream.publish(forged_subject, lb.encode_event(claim, 1 << 20), stream="LWFM")

        async def parked() -> lb.DeadLetter:
            async for letter in alpha.dead_letters(follow=True):
                if letter.subject == forged_subject:
                    return letter
            raise AssertionError("a followed iteration ended")  # pragma: no cover

        letter = await asyncio.wait_for(parked(), 60)  # sourced to alpha, and refused there
        assert letter.reason == "wrong-subject"
        record = await alpha.trigger(f"t-{victim}")
        assert record is not None and record.state == "active"  # not fired by the forgery


async def test_a_pipeline_runs_on_a_federated_site_and_its_jobs_speak_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lwfm_bus._pipeline import load_pipeline
    from lwfm_bus._pipeline._run import run_pipeline

    # As after `LWFM_BUS_FEDERATION=federation.toml lwfm-bus --site alpha up`: jobs inherit the
    # environment of the process that launches them.
    monkeypatch.setenv("LWFM_BUS_FEDERATION", "federation.toml")
    path = tmp_path / "p.yaml"
    path.write_text(
        "pipeline: 1\nname: fed\nsite: alpha\nsteps:\n"
        "  make:\n    run: [python3, -c, \"open('made.txt', 'w').write('x')\"]\n    outputs: {out: made.txt}\n"
        '  use:\n    after: make\n    run: [python3, -c, "pass"]\n'
    )
    async with running_federation(tmp_path) as federation:
        alpha, beta = federation["alpha"], federation["beta"]
        report = await run_pipeline(alpha, load_pipeline(path), lambda _: None)
        assert report.ok, report.failures
        # The step runner's notation is alpha's, and beta sees it: sourced like alpha's jobs.
        made = await alpha.find({"lwfm_step": "make"})
        assert [r.site for r in made.records] == ["alpha"]
        await _arrival(beta, f"lwfm.alpha.data.{report.workflow_id}.>")


async def test_a_singleton_home_that_becomes_the_hub_keeps_its_history(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with lb.connect(BusConfig(home=home, autostart="process")) as alone:
        job = await alone.submit(_true("before"))
        await job.wait(timeout=60)
    root = tmp_path / "fed"
    await asyncio.to_thread(_init, root)
    async with lb.connect(_config(root, root / "federation.toml", "hub", home)) as hub:
        assert (await hub.status(job.job_id)).state is JobState.COMPLETE
        assert await _stored(hub, f"lwfm.local.job.*.{job.job_id}.COMPLETE")


def test_server_configuration_keeps_non_ascii_text_and_refuses_control_characters(tmp_path: Path) -> None:
    from lwfm_bus._bus._server import render_config

    text = render_config(lb.EmbeddedServerConfig(), tmp_path / "Jürgen" / "js", "lwfm-ü")
    assert "Jürgen" in text and "\\u00fc" not in text  # nats-server rejects \\u escapes
    with pytest.raises(lb.ConfigError, match="control characters"):
        render_config(lb.EmbeddedServerConfig(), tmp_path / "a\tb", "lwfm")
