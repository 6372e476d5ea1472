"""Per-requirement-set Python environments: real venvs, real uv and pip, real ``lwfm-bus env`` processes, no
network beyond 127.0.0.1.

The packages come from wheels written here with ``zipfile`` (building them would need setuptools from an
index), installed with ``--no-index --find-links``.  uv builds in a fraction of a second, pip in a few, so the
module builds few with pip: ``v1`` (uv) once for the module, after which its wheels are taken away, so every
later use of that set proves that no installer ran again.  uv comes with the test extra.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from lwfm_bus._errors import ConfigError, EnvBuildError
from lwfm_bus._pyenv import (
    MANIFEST,
    UV_CACHE,
    EnvInfo,
    Installer,
    Tool,
    _pip_settings,
    _redact_text,
    _uv_sources,
    ensure_env,
    env_key,
    find_uv,
    list_envs,
    normalise,
    remove_env,
)
from tests._helpers import write_wheel as write_package

CLI = [sys.executable, "-m", "lwfm_bus"]
PKG = "lwfmtestpkg"
SHOW = "import os, sys, lwfmtestpkg; print(lwfmtestpkg.__version__, sys.prefix, os.getpid(), sep='|', flush=True)"


def write_wheel(directory: Path, version: str) -> Path:
    """A minimal pure-Python wheel of the test package (see :func:`tests._helpers.write_wheel`)."""
    return write_package(directory, PKG, version)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any user bus setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")} | extra


def without_pip_config(**extra: str) -> dict[str, str]:
    """Nor pip's own configuration (files or variables): what ``auto`` picks no longer depends on the machine."""
    bare = {k: v for k, v in clean_env().items() if not k.startswith("PIP_")}
    return bare | {"PIP_CONFIG_FILE": os.devnull} | extra


def cli(
    home: Path, *args: str, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = clean_env() if env is None else env
    return subprocess.run(
        [*CLI, "--home", str(home), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def popen(home: Path, *args: str) -> subprocess.Popen[str]:
    env = clean_env()
    return subprocess.Popen(
        [*CLI, "--home", str(home), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def shown(stdout: str) -> tuple[str, str, int]:
    version, prefix, pid = stdout.strip().splitlines()[-1].split("|")
    return version, prefix, int(pid)


def offline(links: Path) -> list[str]:
    return ["--no-index", "--find-links", str(links)]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def root(home: Path) -> Path:
    return home / "envs"  # the CLI's default under --home


@pytest.fixture(scope="module")
def links(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both versions, for the sets that are built on purpose."""
    path = tmp_path_factory.mktemp("links")
    write_wheel(path, "1.0")
    write_wheel(path, "2.0")
    return path


@pytest.fixture(scope="module")
def v1(root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[EnvInfo, Path]:
    """``lwfmtestpkg>=1,<2`` built once; then its find-links directory is emptied."""
    drained = tmp_path_factory.mktemp("drained")
    wheel = write_wheel(drained, "1.0")
    info = ensure_env([f"{PKG}>=1,<2"], root, find_links=[str(drained)], no_index=True, tool="uv")
    assert not info.reused
    wheel.unlink()
    return info, drained


def test_normalise_is_order_case_and_split_blind() -> None:
    a = normalise(["Requests", "NumPy >= 1.24, <3", "numpy>=1.24,<3"])
    assert a == ("numpy<3,>=1.24", "requests")
    assert normalise(["numpy<3.0", "requests", "NUMPY>=1.24.0"]) == a
    assert normalise(["a~=1.0", "b==1.0.*", "c===1.0", "d!=1.0rc1"]) == ("a~=1.0", "b==1.0.*", "c===1.0", "d!=1rc1")
    assert normalise(["Foo.Bar_baz[Socks,Security]"]) == ("foo-bar-baz[security,socks]",)
    assert env_key(["requests", "NumPy>=1.24,<3"]) == env_key(["numpy<3,>=1.24", "REQUESTS"])
    assert env_key(["requests"]) != env_key(["requests"], Installer(no_index=True))
    assert env_key(["requests"]) != env_key(["requests>=2"])
    # uv and pip build the same environment from the same options: one key for both.
    assert env_key(["requests"], Installer(tool="uv")) == env_key(["requests"], Installer(tool="pip"))


@pytest.mark.parametrize("bad", ["numpy>>1", "-e .", "", "numpy==1.0; os_name=="])
def test_invalid_requirement_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid requirement"):
        normalise(["requests", bad])


@pytest.mark.slow
def test_the_env_holds_the_set_and_a_manifest(v1: tuple[EnvInfo, Path]) -> None:
    info, _ = v1
    out = subprocess.run([str(info.python), "-c", SHOW], capture_output=True, text=True, check=True)
    version, prefix, _pid = shown(out.stdout)
    assert version == "1.0"
    assert Path(prefix) == info.path
    manifest = json.loads((info.path / MANIFEST).read_text())
    assert manifest["requirements"] == ["lwfmtestpkg<2,>=1"]
    assert manifest["key"] == info.key == info.path.name
    assert manifest["tool"] == "uv"
    assert f"{PKG}==1.0" in manifest["freeze"]
    assert (info.path.parent / UV_CACHE).is_dir()  # the root's shared cache, not the user's
    assert [r.tool for r in list_envs(info.path.parent) if r.key == info.key] == ["uv"]


@pytest.mark.slow
def test_the_same_set_respelled_is_reused_without_pip(v1: tuple[EnvInfo, Path], home: Path, root: Path) -> None:
    info, drained = v1  # drained holds no wheel: a pip run would fail
    stamp = (info.path / MANIFEST).stat().st_mtime_ns
    again = ensure_env(["LWFMTESTPKG<2", "lwfmtestpkg >= 1"], root, find_links=[str(drained)], no_index=True)
    assert again.reused and again.path == info.path
    # Built by uv, and what a caller that wants pip gets too: the installer is not part of the key.
    as_pip = ensure_env([f"{PKG}<2,>=1"], root, find_links=[str(drained)], no_index=True, tool="pip")
    assert as_pip.reused and as_pip.path == info.path
    proc = popen(
        home, "env", "exec", *offline(drained), "-r", "LwfmTestPkg<2", "-r", f"{PKG}>=1.0", "--", "python", "-c", SHOW
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    version, prefix, pid = shown(out)
    assert (version, Path(prefix)) == ("1.0", info.path)
    assert pid == proc.pid  # exec, not a child: the site's pid is the step's
    assert "building" not in err
    assert (info.path / MANIFEST).stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_the_command_sees_an_activated_env_and_its_exit_code_propagates(v1: tuple[EnvInfo, Path], home: Path) -> None:
    info, drained = v1
    probe = (
        "import os, sys; print(os.environ['VIRTUAL_ENV'], os.environ['PYTHONNOUSERSITE'], "
        "os.environ['PATH'].split(os.pathsep)[0], sep='|'); sys.exit(7)"
    )
    done = cli(home, "env", "exec", *offline(drained), "-r", f"{PKG}>=1,<2", "--", "python", "-c", probe)
    assert done.returncode == 7, done.stderr
    assert done.stdout.strip().split("|") == [str(info.path), "1", str(info.path / "bin")]
    missing = cli(home, "env", "exec", *offline(drained), "-r", f"{PKG}>=1,<2", "--", "no-such-command-lwfm")
    assert missing.returncode == 127
    assert "no-such-command-lwfm" in missing.stderr


@pytest.mark.slow
def test_a_changed_set_gets_its_own_env(v1: tuple[EnvInfo, Path], home: Path, root: Path, links: Path) -> None:
    done = cli(home, "env", "exec", *offline(links), "-r", f"{PKG}==2.0", "--", "python", "-c", SHOW)
    assert done.returncode == 0, done.stderr
    version, prefix, _ = shown(done.stdout)
    assert version == "2.0"
    assert Path(prefix) != v1[0].path
    assert Path(prefix).parent == root
    assert "building environment" in done.stderr
    assert (v1[0].path / MANIFEST).exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tool", "words"),
    [("uv", "we can conclude that your requirements are unsatisfiable"), ("pip", "No matching distribution found")],
)
def test_an_uninstallable_requirement_fails_with_the_installers_words(
    home: Path, root: Path, links: Path, tool: Tool, words: str
) -> None:
    run = [
        "env",
        "exec",
        "--installer",
        tool,
        *offline(links),
        "-r",
        f"{PKG}>=99",
        "--",
        "python",
        "-c",
        "print('ran')",
    ]
    done = cli(home, *run, env=without_pip_config())  # auto would pick uv too: nothing steers it to pip
    assert done.returncode == 3
    assert "ran" not in done.stdout
    assert words in done.stderr
    assert "building it with pip" not in done.stderr  # uv's verdict on the requirements is final
    assert done.stderr.strip().splitlines()[-1].startswith(f"lwfm-bus env: could not install {PKG}>=99: ")
    key = env_key([f"{PKG}>=99"], Installer(find_links=(str(links),), no_index=True))
    assert not (root / key).exists()
    with pytest.raises(EnvBuildError, match="could not install") as caught:
        ensure_env([f"{PKG}>=99"], root, find_links=[str(links)], no_index=True, tool=tool)
    assert any(words in line for line in caught.value.output)
    assert not (root / key).exists()


@pytest.mark.slow
def test_concurrent_preparers_build_once(home: Path, root: Path, links: Path) -> None:
    args = ["env", "exec", *offline(links), "-r", f"{PKG}==1.0", "--", "python", "-c", SHOW]
    procs = [popen(home, *args) for _ in range(2)]
    results = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    prefixes = {shown(out)[1] for out, _ in results}
    assert len(prefixes) == 1
    assert sum("building environment" in err for _, err in results) == 1
    assert [shown(out)[0] for out, _ in results] == ["1.0", "1.0"]


@pytest.mark.slow
def test_a_killed_build_is_rebuilt_and_rm_spares_envs_in_use(home: Path, tmp_path: Path, links: Path) -> None:
    root = tmp_path / "envs"
    reqs = [f"{PKG}>=2"]
    key = env_key(reqs, Installer(find_links=(str(links),), no_index=True))
    (root / key / "bin").mkdir(parents=True)  # what a SIGKILLed build leaves: no manifest
    (root / key / "junk").write_text("half")
    assert [(r.key, r.ready) for r in list_envs(root)] == [(key, False)]

    info = ensure_env(reqs, root, find_links=[str(links)], no_index=True)
    assert (info.key, info.reused) == (key, False)
    assert not (root / key / "junk").exists()
    listed = cli(home, "env", "ls", "--root", str(root))
    assert key in listed.stdout and "lwfmtestpkg>=2" in listed.stdout and "incomplete" not in listed.stdout

    # A running step holds the env: rm refuses, then succeeds once the step ended.
    step = popen(
        home, "env", "exec", "--root", str(root), *offline(links), "-r", *reqs, "--", "python", "-c", f"{SHOW}; input()"
    )
    assert step.stdout is not None and step.stdin is not None
    assert shown(step.stdout.readline())[0] == "2.0"
    busy = cli(home, "env", "rm", "--root", str(root), key)
    assert busy.returncode == 1 and "in use" in busy.stderr
    step.communicate(input="\n", timeout=30)
    assert step.returncode == 0
    assert remove_env(root, key) == "removed"
    assert list_envs(root) == []
    assert remove_env(root, key) == "absent"


@pytest.fixture
def silent_index() -> Iterator[socket.socket]:
    """A package index on 127.0.0.1 that accepts connections and never answers: a build that reaches it hangs."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)  # bounds the wait for the installer to connect
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_sigterm_during_a_build_leaves_nothing(
    home: Path, tmp_path: Path, silent_index: socket.socket, tool: str
) -> None:
    root = tmp_path / "envs"
    index = f"http://127.0.0.1:{silent_index.getsockname()[1]}/simple"
    proc = popen(
        home, "env", "exec", "--root", str(root), "--installer", tool, "--index-url", index, "-r", PKG, "--", "true"
    )
    try:
        conn, _ = silent_index.accept()  # the installer is asking the index: the build is under way
    except TimeoutError:
        proc.kill()
        pytest.fail(f"the installer never asked the index: {proc.communicate(timeout=30)[1][-2000:]}")
    with conn:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        conn.settimeout(10)
        for _ in range(100):  # the request, then the end of the stream: the installer is gone too
            if not conn.recv(65536):
                break
        else:
            pytest.fail("the installer still holds its connection")
    assert proc.returncode == 128 + signal.SIGTERM
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock") and p.name != UV_CACHE] == []


@pytest.mark.slow
def test_uvs_own_failure_falls_back_to_pip_unless_uv_was_chosen(home: Path, tmp_path: Path, links: Path) -> None:
    root = tmp_path / "envs"
    root.mkdir()
    (root / UV_CACHE).write_text("not a directory")  # uv cannot open its cache: its failure, not the set's
    run = ["env", "exec", "--root", str(root), *offline(links), "-r", f"{PKG}>=2"]
    chosen = cli(home, *run, "--installer", "uv", "--", "true", env=without_pip_config())
    assert chosen.returncode == 3
    assert "[uv exit status 2]" in chosen.stderr.strip().splitlines()[-1]
    assert list_envs(root) == []

    done = cli(home, *run, "--", "python", "-c", SHOW, env=without_pip_config())
    assert done.returncode == 0, done.stderr
    assert "with uv" in done.stderr and "building it with pip" in done.stderr
    assert shown(done.stdout)[0] == "2.0"
    manifest = json.loads((Path(shown(done.stdout)[1]) / MANIFEST).read_text())
    assert manifest["tool"] == "pip"
    assert f"{PKG}==2.0" in manifest["freeze"]
    assert (root / UV_CACHE).read_text() == "not a directory"


@pytest.mark.slow
def test_auto_uses_pip_where_pips_configuration_says_more_than_uv_is_told(
    home: Path, tmp_path: Path, links: Path
) -> None:
    root = tmp_path / "envs"
    env = without_pip_config(PIP_PRE="1")  # pre-releases: a pip setting passed on to no uv option
    done = cli(home, "env", "exec", "--root", str(root), *offline(links), "-r", f"{PKG}<2", "--", "true", env=env)
    assert done.returncode == 0, done.stderr
    assert "with pip (pip's configuration sets pre, which uv would not honour)" in done.stderr
    listed = cli(home, "env", "ls", "--root", str(root))
    assert "  pip  lwfmtestpkg<2" in listed.stdout
    bad = cli(
        home, "env", "exec", "--root", str(root), "-r", "x", "--", "true", env=clean_env(LWFM_BUS_ENV_INSTALLER="fast")
    )
    assert bad.returncode == 2
    assert "LWFM_BUS_ENV_INSTALLER='fast': choose one of auto, uv, pip" in bad.stderr


@pytest.mark.slow
def test_without_uv_auto_builds_with_pip_and_choosing_uv_fails(home: Path, tmp_path: Path, links: Path) -> None:
    # A Python with lwfm-bus importable but no uv beside it, and a PATH without one either.
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    site_dir = subprocess.run(
        [str(bare / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    ours = sysconfig.get_path("purelib")
    Path(site_dir, "lwfm-bus-test.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not Path(d, "uv").exists())
    env = without_pip_config(PATH=path)
    root = tmp_path / "envs"
    run = [str(bare / "bin" / "python"), "-m", "lwfm_bus", "--home", str(home), "env", "exec", "--root", str(root)]
    run += [*offline(links), "-r", f"{PKG}>=2"]

    chosen = subprocess.run(
        [*run, "--installer", "uv", "--", "true"], capture_output=True, text=True, env=env, timeout=60
    )
    assert chosen.returncode == 3
    assert "installer uv was chosen but no uv is installed" in chosen.stderr

    done = subprocess.run([*run, "--", "python", "-c", SHOW], capture_output=True, text=True, env=env, timeout=90)
    assert done.returncode == 0, done.stderr
    assert f"for {PKG}>=2 with pip\n" in done.stderr
    assert [(r.tool, r.requirements) for r in list_envs(root)] == [("pip", (f"{PKG}>=2",))]


def test_uv_is_given_the_sources_pip_would_use(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nindex-url = https://mirror.example/simple\nfind-links = wheels\n"
        "extra-index-url = https://a.example/simple https://b.example/simple\n"
        "[install]\nno-index = yes\nconstraint = /etc/c.txt\n"
    )
    env = {"HOME": str(tmp_path), "PIP_CONFIG_FILE": str(conf), "PIP_TRUSTED_HOST": "a.example", "PIP_CERT": "/ca.pem"}
    settings = _pip_settings(env)
    args, uv_env, ignored = _uv_sources(Installer(find_links=("/w",)), settings)
    assert args[args.index("--index-url") + 1] == "https://mirror.example/simple"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--extra-index-url"][-2:] == [
        "https://a.example/simple",
        "https://b.example/simple",
    ]
    links = [args[i + 1] for i, a in enumerate(args) if a == "--find-links"]
    assert links[-2:] == [os.path.abspath("wheels"), "/w"]  # pip's configuration first, then the options
    assert "--no-index" in args and "/etc/c.txt" in args and "a.example" in args
    assert uv_env == {"SSL_CERT_FILE": "/ca.pem"}
    assert ignored == []
    explicit = _uv_sources(Installer(index_url="https://own.example/simple"), settings)[0]
    assert explicit[explicit.index("--index-url") + 1] == "https://own.example/simple"
    assert _uv_sources(Installer(), _pip_settings({"PIP_CONFIG_FILE": os.devnull, "PIP_NO_BINARY": ":all:"}))[2] == [
        "no-binary"
    ]
    assert _pip_settings({"PIP_CONFIG_FILE": os.devnull}) == {}


def test_credentials_never_reach_the_log(home: Path, tmp_path: Path) -> None:
    assert _redact_text("GET https://bob:s3cret@host/simple/x/ failed") == "GET https://***@host/simple/x/ failed"
    assert find_uv() is not None, "uv comes with the test extra"
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    index = f"http://bob:s3cret@127.0.0.1:{port}/simple"
    run = ["env", "exec", "--root", str(tmp_path), "--installer", "uv", "--index-url", index, "-r", PKG, "--", "true"]
    done = cli(home, *run, env=without_pip_config(UV_HTTP_RETRIES="0"))
    assert done.returncode == 3
    assert "127.0.0.1" in done.stderr
    assert "s3cret" not in done.stderr


def test_cli_refusals(home: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(home, "env", *args, "--root", str(tmp_path))

    bad = cli(home, "env", "exec", "--root", str(tmp_path), "-r", "numpy>>1", "--", "true")
    assert bad.returncode == 2
    assert "invalid requirement 'numpy>>1'" in bad.stderr
    nothing = cli(home, "env", "exec", "--root", str(tmp_path), "-r", "numpy")
    assert nothing.returncode == 2 and "give the command" in nothing.stderr
    assert run("rm", "../etc").returncode == 2
    assert run("rm", "0123456789abcdef").returncode == 1
    for key in ("0123456789abcdef", "fedcba9876543210"):
        (tmp_path / key).mkdir()  # partial builds, never ready
    (tmp_path / "aaaaaaaaaaaaaaaa.lock").touch()  # what a failed build leaves
    (tmp_path / UV_CACHE).mkdir()  # kept on purpose: see remove_all
    assert run("rm", "--all").returncode == 0
    assert list_envs(tmp_path) == []
    assert list(os.listdir(tmp_path)) == [UV_CACHE]
