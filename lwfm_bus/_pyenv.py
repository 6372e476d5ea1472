"""Isolated Python environments, one per distinct requirement set, prepared on the site that runs the step.

A step declares requirements such as ``numpy>=1.24,<3``; ``lwfm-bus env exec -r ... -- CMD`` runs *inside the
job*, so the same code serves local, SSH and Slurm sites wherever lwfm-bus is installed.  It normalises the set,
derives a key from it, the interpreter and the installer options, finds or builds ``<root>/<key>/`` and then
``exec``\\s the command with that environment activated, so the job's pid and exit code are the command's.

Two builders, one result: uv when it is installed and can be given the sources pip would use, a stdlib
``venv`` filled by its own ``pip`` otherwise (:mod:`lwfm_bus._pyenv_uv` chooses, and explains why).  The
builder is not part of the key: both resolve the same requirement set from the same sources.  The manifest
records which one built the environment.  Installer steps run through :mod:`lwfm_bus._pyenv_proc`, which stops
a step and every process it started before a failed or interrupted build's directory is removed.

Why the environment is built at its final path, not in a staging directory renamed into place: virtual
environments are not relocatable (``pyvenv.cfg``, the ``bin/`` shebangs and ``activate`` hold absolute paths),
so a rename would leave scripts pointing into a directory that no longer exists.  Atomicity comes instead from
two rules: the manifest ``lwfm-env.json`` is written last (through a temporary file and ``os.replace``), and
only a directory with a manifest is ever used.  A build that fails, or is interrupted by an exception or a
signal, removes its directory; one killed outright leaves a directory without manifest, which the next preparer
deletes and rebuilds.

Locking, on ``<root>/<key>.lock`` with ``flock`` (on NFS, Linux emulates it with POSIX locks, which the server
arbitrates, so nodes sharing a home directory still agree):

* a user holds a *shared* lock from the readiness check until its command ends: ``exec`` hands the descriptor to
  the command, so ``env rm`` (which needs the *exclusive* lock and never waits for it) cannot pull an environment
  from under a running step;
* a builder drops its shared lock and takes the exclusive one, checks readiness again (someone else may have
  built it meanwhile: then it is reused, not rebuilt), builds, releases, and starts over at the shared step.
  Lock conversion in ``flock`` is not atomic anyway, and releasing explicitly avoids the upgrade deadlock of two
  shared holders under NFS's POSIX emulation;
* ``env rm`` deletes the lock file too, so every locker checks after locking that the file it holds is still the
  one at the path, and reopens otherwise.

The key is a digest, so one directory can only ever hold one requirement set; the manifest keeps the full
digest and a mismatch (a truncated-key collision or a tampered manifest) is refused rather than shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import sys
import sysconfig
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NoReturn

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import Specifier, SpecifierSet
from packaging.utils import canonicalize_name, canonicalize_version

from ._errors import ConfigError, EnvBuildError

# ``X as X``: moved below, and still imported from here by the CLI, bench/envbuild.py and the tests.
from ._pyenv_proc import _redact, _run, terminate_on_signal
from ._pyenv_proc import _redact_text as _redact_text
from ._pyenv_uv import TOOLS as TOOLS
from ._pyenv_uv import UV_CACHE as UV_CACHE
from ._pyenv_uv import Installer, Tool, _absolute_link, _choose, _UvFailed, _with_uv, find_uv
from ._pyenv_uv import _pip_settings as _pip_settings
from ._pyenv_uv import _uv_sources as _uv_sources

__all__ = [
    "EnvInfo",
    "EnvRecord",
    "Installer",
    "Tool",
    "activated_environ",
    "ensure_env",
    "env_key",
    "find_uv",
    "list_envs",
    "normalise",
    "remove_all",
    "remove_env",
    "run_in_env",
    "terminate_on_signal",
]

log = logging.getLogger(__name__)

MANIFEST = "lwfm-env.json"
_FORMAT = 1  # bump when the layout or the key material changes: old environments are then simply not found
_KEY_CHARS = 16  # 64 bits of the digest: short paths (shebang limits), the manifest keeps the full digest
_KEY_RE = re.compile(rf"[0-9a-f]{{{_KEY_CHARS}}}")
_ATTEMPTS = 5


@dataclass(frozen=True)
class EnvInfo:
    """A ready environment: ``reused`` is False only for the call that built it."""

    key: str
    path: Path
    python: Path
    requirements: tuple[str, ...]
    reused: bool


@dataclass(frozen=True)
class EnvRecord:
    """One directory under the root, as ``env ls`` shows it; ``ready`` is False for a partial build."""

    key: str
    path: Path
    requirements: tuple[str, ...]
    created: str | None
    size: int
    ready: bool
    tool: str | None = None
    """``uv`` or ``pip``: what built it (manifests written before uv was supported say nothing: pip)."""


def normalise(requirements: Iterable[str]) -> tuple[str, ...]:
    """Canonical, sorted, merged requirement strings: equal sets spell the same, whatever the order or case.

    Requirements on one project with the same marker and no URL are merged (``a>=1`` and ``A<3`` become
    ``a<3,>=1``), so splitting a range over two entries does not make a second environment; versions are
    spelled canonically where PEP 440 says they compare equal (``>=1.0`` is ``>=1``).
    """
    merged: dict[tuple[str, str, str], Requirement] = {}
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise ConfigError(f"invalid requirement {text!r}: {str(exc).splitlines()[0]}") from None
        req.name = canonicalize_name(req.name)
        req.extras = {canonicalize_name(e) for e in req.extras}
        req.specifier = SpecifierSet(",".join(_canonical(spec) for spec in req.specifier))
        group = (req.name, str(req.marker or ""), req.url or "")
        seen = merged.get(group)
        if seen is None or req.url:
            merged[group] = req
        else:
            seen.specifier &= req.specifier
            seen.extras |= req.extras
    return tuple(sorted({str(r) for r in merged.values()}))


def _canonical(spec: Specifier) -> str:
    if spec.operator == "===" or spec.version.endswith(".*"):
        return str(spec)  # arbitrary equality and prefixes compare as written
    # Comparisons pad release segments with zeros, except ~= whose length sets the prefix it allows.
    return spec.operator + canonicalize_version(spec.version, strip_trailing_zero=spec.operator != "~=")


def _material(requirements: Sequence[str], installer: Installer) -> dict[str, object]:
    return {
        "format": _FORMAT,
        "requirements": list(requirements),
        "python": {
            "implementation": sys.implementation.name,
            "version": platform.python_version(),
            "abi": sysconfig.get_config_var("SOABI"),
            "platform": sysconfig.get_platform(),
            "base_prefix": sys.base_prefix,  # a venv links to its base interpreter
        },
        "installer": {
            "index_url": installer.index_url,
            "find_links": list(installer.find_links),
            "no_index": installer.no_index,
        },
    }


def _digest(material: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def env_key(requirements: Iterable[str], installer: Installer | None = None) -> str:
    """The directory name for this set on this interpreter with these installer options."""
    return _digest(_material(normalise(requirements), _absolute(installer or Installer())))[:_KEY_CHARS]


def _absolute(installer: Installer) -> Installer:
    # A relative --find-links means the job's directory: resolve it, or two jobs in different
    # directories would share a key while installing from different places.
    return replace(installer, find_links=tuple(_absolute_link(link) for link in installer.find_links))


def ensure_env(
    requirements: Iterable[str],
    root: Path,
    *,
    index_url: str | None = None,
    find_links: Iterable[str] = (),
    no_index: bool = False,
    tool: Tool = "auto",
) -> EnvInfo:
    """Find or build the environment for ``requirements`` under ``root``; :class:`EnvBuildError` if that fails."""
    with _prepared(requirements, root, Installer(index_url, tuple(find_links), no_index, tool)) as (info, _fd):
        return info


def run_in_env(
    argv: Sequence[str], requirements: Iterable[str], root: Path, installer: Installer | None = None
) -> NoReturn:
    """Prepare the environment and replace this process by ``argv`` running in it.

    Only returns by raising: :class:`EnvBuildError`, or the ``OSError`` of a command that cannot be executed.
    """
    with _prepared(requirements, root, installer or Installer()) as (info, fd):
        os.set_inheritable(fd, True)  # the command keeps the shared lock: `env rm` sees the env in use
        sys.stdout.flush()
        sys.stderr.flush()
        # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: give the command the defaults.
        for name in ("SIGPIPE", "SIGXFSZ"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        os.execvpe(argv[0], list(argv), activated_environ(info.path))  # noqa: S606 - argv, never a shell
    raise AssertionError("unreachable")  # pragma: no cover - execvpe returns only by raising


def activated_environ(path: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: ours) as ``activate`` would leave it, minus the user's site directory."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(path)
    env["PATH"] = os.pathsep.join([str(path / "bin"), env.get("PATH") or os.defpath])
    env["PYTHONNOUSERSITE"] = "1"
    return env


@contextlib.contextmanager
def _prepared(requirements: Iterable[str], root: Path, installer: Installer) -> Iterator[tuple[EnvInfo, int]]:
    """Yield a ready environment and the descriptor holding its shared lock (closed on exit)."""
    reqs = normalise(requirements)
    installer = _absolute(installer)
    material = _material(reqs, installer)
    digest = _digest(material)
    key = digest[:_KEY_CHARS]
    root = root.absolute()  # VIRTUAL_ENV, PATH and the venv's own files want absolute paths
    root.mkdir(parents=True, exist_ok=True)
    path, lock = root / key, root / f"{key}.lock"
    built = False
    for _ in range(_ATTEMPTS):
        fd = _lock(lock, fcntl.LOCK_SH)
        try:
            if _ready(path, digest):
                yield EnvInfo(key, path, path / "bin" / "python", reqs, reused=not built), fd
                return
        finally:
            os.close(fd)
        fd = _lock(lock, fcntl.LOCK_EX)
        try:
            if not _ready(path, digest):
                _build(path, reqs, installer, digest)
                built = True
        finally:
            os.close(fd)
    raise EnvBuildError(f"environment {key} was removed {_ATTEMPTS} times while being prepared", [])


def _lock(path: Path, mode: int) -> int:
    """Open and ``flock`` ``path``, reopening if ``env rm`` replaced the file while we waited."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            held = os.fstat(fd)
            with contextlib.suppress(FileNotFoundError):
                now = os.stat(path)
                if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _read_manifest(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _ready(path: Path, digest: str) -> bool:
    manifest = _read_manifest(path)
    if manifest is None or not (path / "bin" / "python").exists():  # dangling if the base Python went away
        return False
    if manifest.get("digest") != digest:
        raise EnvBuildError(f"{path} holds a different requirement set (its manifest does not match); remove it", [])
    return True


def _build(path: Path, reqs: tuple[str, ...], installer: Installer, digest: str) -> None:
    if path.exists():  # a build that was killed outright: never trust it
        log.info("removing incomplete environment %s", path)
        shutil.rmtree(path)
    uv, why = _choose(installer)
    tool = "uv" if uv else "pip"
    log.info("building environment %s for %s with %s%s", path.name, " ".join(reqs) or "(no requirements)", tool, why)
    started = time.monotonic()
    try:
        freeze: list[str] | None = None
        if uv is not None:
            try:
                freeze = _with_uv(uv, path, reqs)
            except _UvFailed as exc:
                if installer.tool == "uv":
                    raise
                log.warning("uv could not build environment %s (%s); building it with pip", path.name, exc)
                for line in exc.output[-5:]:
                    log.warning("  uv: %s", line)
                shutil.rmtree(path, ignore_errors=True)
                tool = "pip"
        if freeze is None:
            freeze = _with_pip(path, reqs, installer)
        manifest = {
            "key": path.name,
            "digest": digest,
            "requirements": list(reqs),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": sys.version.split()[0],
            "installer": [_redact(arg) for arg in installer.pip_args()],
            "tool": tool,
            "freeze": freeze,
        }
        tmp = path / f".{MANIFEST}.tmp"
        with tmp.open("w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path / MANIFEST)  # last: from here on the environment is ready
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    log.info("environment %s ready in %.1f s (%s)", path.name, time.monotonic() - started, tool)


def _with_pip(path: Path, reqs: tuple[str, ...], installer: Installer) -> list[str]:
    """A stdlib venv, its own pip installing ``reqs``; returns ``pip freeze``."""
    _run([sys.executable, "-m", "venv", str(path)], f"could not create a virtual environment at {path}")
    python = str(path / "bin" / "python")
    pip = [python, "-m", "pip", "--no-input", "--disable-pip-version-check"]
    if reqs:
        _run([*pip, "install", *installer.pip_args(), *reqs], f"could not install {' '.join(reqs)}")
    return _run([*pip, "freeze"], "could not list the installed packages").splitlines()


def list_envs(root: Path) -> list[EnvRecord]:
    """Every environment directory under ``root``, ready or not, by key."""
    records = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not (path.is_dir() and _KEY_RE.fullmatch(path.name)):
            continue
        manifest = _read_manifest(path) or {}
        reqs = manifest.get("requirements")
        created = manifest.get("created")
        tool = manifest.get("tool", "pip")  # written before uv was supported: pip built it
        records.append(
            EnvRecord(
                key=path.name,
                path=path,
                requirements=tuple(str(r) for r in reqs) if isinstance(reqs, list) else (),
                created=created if isinstance(created, str) else None,
                size=_size(path),
                ready=bool(manifest),
                tool=tool if manifest and isinstance(tool, str) else None,
            )
        )
    return records


def _size(path: Path) -> int:
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_size
    return total


def remove_env(root: Path, key: str) -> Literal["removed", "absent", "busy"]:
    """Delete one environment unless a step is running in it or it is being built (``"busy"``; never waits)."""
    if not _KEY_RE.fullmatch(key):
        raise ConfigError(f"{key!r} is not an environment key ({_KEY_CHARS} hex digits, see `lwfm-bus env ls`)")
    lock = root / f"{key}.lock"
    if not (root / key).exists() and not lock.exists():
        return "absent"
    try:
        fd = _lock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "busy"
    try:
        found = (root / key).exists()
        shutil.rmtree(root / key, ignore_errors=True)
        lock.unlink(missing_ok=True)  # waiters notice the replaced file in _lock and reopen
    finally:
        os.close(fd)
    return "removed" if found else "absent"


def remove_all(root: Path) -> dict[str, Literal["removed", "absent", "busy"]]:
    """:func:`remove_env` for every environment under ``root``, and the lock files failed builds leave.

    The uv cache (``<root>/.uv-cache``) stays: builds running meanwhile read it, and it is what makes the next
    build fast.  ``uv cache clean --cache-dir <root>/.uv-cache`` empties it.
    """
    if not root.is_dir():
        return {}
    keys = {p.name for p in root.iterdir() if p.is_dir()} | {p.stem for p in root.glob("*.lock")}
    return {key: remove_env(root, key) for key in sorted(keys) if _KEY_RE.fullmatch(key)}
