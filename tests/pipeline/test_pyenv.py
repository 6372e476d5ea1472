"""Per-requirement-set Python environments: real venvs, real pip, real ``lwfm-bus env`` processes, no network.

The packages come from wheels written here with ``zipfile`` (building them would need setuptools from an
index), installed with ``--no-index --find-links``.  Each environment costs a few seconds, so the module builds
few: ``v1`` once for the module, after which its wheels are taken away, so every later use of that set proves
that pip did not run again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lwfm_bus._errors import ConfigError, EnvBuildError
from lwfm_bus._pyenv import MANIFEST, EnvInfo, Installer, ensure_env, env_key, list_envs, normalise, remove_env

CLI = [sys.executable, "-m", "lwfm_bus"]
PKG = "lwfmtestpkg"
SHOW = "import os, sys, lwfmtestpkg; print(lwfmtestpkg.__version__, sys.prefix, os.getpid(), sep='|', flush=True)"


def write_wheel(directory: Path, version: str) -> Path:
    """A minimal pure-Python wheel: a module, METADATA, WHEEL and a RECORD with real hashes."""
    dist = f"{PKG}-{version}.dist-info"
    files = {
        f"{PKG}/__init__.py": f'__version__ = "{version}"\n',
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {PKG}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: lwfm-bus-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{PKG}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)
    return path


def cli(home: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")}
    return subprocess.run(
        [*CLI, "--home", str(home), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def popen(home: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")}
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
    info = ensure_env([f"{PKG}>=1,<2"], root, find_links=[str(drained)], no_index=True)
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
    assert f"{PKG}==1.0" in manifest["freeze"]


@pytest.mark.slow
def test_the_same_set_respelled_is_reused_without_pip(v1: tuple[EnvInfo, Path], home: Path, root: Path) -> None:
    info, drained = v1  # drained holds no wheel: a pip run would fail
    stamp = (info.path / MANIFEST).stat().st_mtime_ns
    again = ensure_env(["LWFMTESTPKG<2", "lwfmtestpkg >= 1"], root, find_links=[str(drained)], no_index=True)
    assert again.reused and again.path == info.path
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
def test_an_uninstallable_requirement_fails_with_pips_words(home: Path, root: Path, links: Path) -> None:
    done = cli(home, "env", "exec", *offline(links), "-r", f"{PKG}>=99", "--", "python", "-c", "print('ran')")
    assert done.returncode == 3
    assert "ran" not in done.stdout
    assert "No matching distribution found for lwfmtestpkg>=99" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"lwfm-bus env: could not install {PKG}>=99: ")
    key = env_key([f"{PKG}>=99"], Installer(find_links=(str(links),), no_index=True))
    assert not (root / key).exists()
    with pytest.raises(EnvBuildError, match="could not install") as caught:
        ensure_env([f"{PKG}>=99"], root, find_links=[str(links)], no_index=True)
    assert any("No matching distribution" in line for line in caught.value.output)
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


@pytest.mark.slow
def test_sigterm_during_a_build_leaves_nothing(home: Path, tmp_path: Path, links: Path) -> None:
    root = tmp_path / "envs"
    proc = popen(home, "env", "exec", "--root", str(root), *offline(links), "-r", f"{PKG}<2", "--", "true")
    assert proc.stderr is not None
    assert "building environment" in proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []


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
    assert run("rm", "--all").returncode == 0
    assert list_envs(tmp_path) == []
    assert list(os.listdir(tmp_path)) == []
