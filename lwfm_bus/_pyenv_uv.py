"""The installer options, and uv: finding it, choosing it or pip, and building an environment with it.

Two builders, one result.  ``uv`` (an optional dependency: the ``fast-env`` extra) builds in a fraction of pip's
time, from a cache shared by every environment of the root (``<root>/.uv-cache``, on the same file system, so
it hard-links instead of copying); a stdlib ``venv`` filled by its own ``pip`` (``_with_pip`` in
:mod:`lwfm_bus._pyenv`) needs nothing beyond the standard library.  ``auto`` uses uv when it is installed
beside this interpreter or on ``PATH`` and can be given the sources pip would use, and pip otherwise.  uv does
not read pip's configuration, so it is read here the way pip merges it and translated into uv's arguments; a
setting that has no translation makes ``auto`` choose pip rather than install from other sources than pip
would.  A uv failure of uv's own making (its cache, the interpreter, a crash) falls back to pip; uv's verdict
that the requirements cannot be met does not, since pip would only say the same more slowly.  The builder is
not part of the key: both resolve the same requirement set from the same sources, with pip's index strategy.
A uv-built environment holds no ``pip`` unless it is asked for.

The installer options (:class:`Installer`) live here, below :mod:`lwfm_bus._pyenv` which keys and builds
environments with them, because choosing the tool and translating the sources read them too.
"""

from __future__ import annotations

import configparser
import contextlib
import logging
import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from ._errors import EnvBuildError
from ._pyenv_proc import _INSTALLER_UNSET, _run, _StepFailed

__all__ = ["TOOLS", "UV_CACHE", "Installer", "Tool", "find_uv"]

# The builders' one logger, whichever module logs: `env exec` raises it to INFO for the job's log.
log = logging.getLogger("lwfm_bus._pyenv")

UV_CACHE = ".uv-cache"  # under the root, never a key: `env ls` and `env rm` pass it by
Tool = Literal["auto", "uv", "pip"]
TOOLS: tuple[Tool, ...] = get_args(Tool)


@dataclass(frozen=True)
class Installer:
    """The installer options.

    All but ``tool`` change what gets installed, and so are part of the key.  ``tool`` only changes how fast
    it is installed (see the module docstring), so environments built by uv and by pip are shared.
    """

    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    tool: Tool = "auto"

    def pip_args(self) -> list[str]:
        args = ["--index-url", self.index_url] if self.index_url else []
        for link in self.find_links:
            args += ["--find-links", link]
        return [*args, "--no-index"] if self.no_index else args


def _absolute_link(link: str) -> str:
    """A ``--find-links`` or constraint path, made absolute: relative, it would mean the job's directory."""
    return link if "://" in link else os.path.abspath(link)


class _UvFailed(EnvBuildError):
    """uv failed for a reason of its own (its cache, the interpreter, a crash): the requirements were not judged."""


@dataclass(frozen=True)
class _Uv:
    """The uv executable, and the arguments and variables that give it the sources pip would use."""

    exe: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


def find_uv() -> str | None:
    """The ``uv`` executable beside this interpreter (where the ``uv`` wheel puts it) or on ``PATH``."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, "uv")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("uv")


def _choose(installer: Installer) -> tuple[_Uv | None, str]:
    """uv (or None for pip), and why pip when uv was wanted: the tail of the "building" log line."""
    if installer.tool == "pip":
        return None, ""
    exe = find_uv()
    if exe is None:
        if installer.tool == "uv":
            raise EnvBuildError("installer uv was chosen but no uv is installed beside this Python or on PATH")
        return None, ""
    args, env, ignored = _uv_sources(installer, _pip_settings(os.environ))
    if ignored and installer.tool == "auto":
        return None, f" (pip's configuration sets {', '.join(ignored)}, which uv would not honour)"
    if ignored:
        log.warning("uv was chosen: pip's settings %s are not passed on to it", ", ".join(ignored))
    return _Uv(exe, tuple(args), tuple(env.items())), ""


def _with_uv(uv: _Uv, path: Path, reqs: tuple[str, ...]) -> list[str]:
    """``uv venv`` then ``uv pip install`` with the shared cache; returns ``uv pip freeze``.

    uv runs in the root, not in the job's directory, so that no ``pyproject.toml`` or ``uv.toml`` there
    changes what goes into an environment other jobs share (user and system uv settings still apply, as
    pip's do).  Every path it is given is absolute.
    """
    cache = ["--cache-dir", str(path.parent / UV_CACHE)]
    python = ["--python", str(path / "bin" / "python")]
    venv = [uv.exe, "venv", "--no-project", "--python", sys.executable, *cache, str(path)]
    _uv_step(venv, f"could not create a virtual environment at {path}", uv, path.parent, judges=False)
    if reqs:
        # pip's index strategy (the best version across every source), not uv's first-index default:
        # the same set must give the same environment whichever tool built it.
        install = [uv.exe, "pip", "install", *python, *cache, "--index-strategy", "unsafe-best-match", *uv.args]
        _uv_step([*install, *reqs], f"could not install {' '.join(reqs)}", uv, path.parent, judges=True)
    freeze = [uv.exe, "pip", "freeze", *python, *cache]
    return _uv_step(freeze, "could not list the installed packages", uv, path.parent, judges=False).splitlines()


def _uv_step(argv: list[str], headline: str, uv: _Uv, cwd: Path, *, judges: bool) -> str:
    """Run a uv step; :class:`_UvFailed` unless uv judged the requirements (``judges`` and exit status 1).

    uv exits 1 when it diagnosed the packages (no solution, a failed build or download) and 2 on errors of
    its own (uv 0.13; an unreadable cache, an unusable interpreter); killed by a signal it has no status.
    """
    try:
        return _run(argv, headline, cwd=cwd, extra=dict(uv.env))
    except _StepFailed as exc:
        if judges and exc.returncode == 1:
            raise EnvBuildError(str(exc), exc.output) from None
        raise _UvFailed(f"{exc} [uv exit status {exc.returncode}]", exc.output) from None
    except OSError as exc:
        raise _UvFailed(f"{uv.exe}: {exc.strerror or exc}") from None


# pip settings that uv is given (the sources), and those that change nothing uv installs.
_PIP_SOURCES = frozenset(
    {"index-url", "extra-index-url", "find-links", "no-index", "trusted-host", "cert", "constraint"}
)
_PIP_HARMLESS = frozenset(
    {
        "timeout", "default-timeout", "retries", "disable-pip-version-check", "no-input", "progress-bar",
        "quiet", "verbose", "no-color", "log", "require-virtualenv", "root-user-action", "no-cache-dir",
        "cache-dir", "exists-action", "break-system-packages", "user", "python", "isolated",
    }
)  # fmt: skip


def _uv_sources(installer: Installer, pip: Mapping[str, str]) -> tuple[list[str], dict[str, str], list[str]]:
    """uv's arguments and variables for the sources pip would use, and the pip settings uv cannot be given.

    pip's configuration supplies defaults the explicit options override (index URL) or extend (find-links),
    as pip itself merges them.
    """
    args: list[str] = []
    index = installer.index_url or pip.get("index-url")
    if index:
        args += ["--index-url", index]
    for url in pip.get("extra-index-url", "").split():
        args += ["--extra-index-url", url]
    for link in (*(_absolute_link(link) for link in pip.get("find-links", "").split()), *installer.find_links):
        args += ["--find-links", link]
    for constraint in pip.get("constraint", "").split():
        args += ["--constraint", _absolute_link(constraint)]
    for host in pip.get("trusted-host", "").split():
        args += ["--allow-insecure-host", host]
    if installer.no_index or _true(pip.get("no-index", "")):
        args.append("--no-index")
    env = {"SSL_CERT_FILE": pip["cert"]} if pip.get("cert") else {}
    ignored = sorted(set(pip) - _PIP_SOURCES - _PIP_HARMLESS)
    return args, env, ignored


def _true(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on", "y", "t"}


def _pip_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """pip's settings for ``pip install``, merged the way pip merges them: configuration files (site-wide, then
    the user's, then ``PIP_CONFIG_FILE``), their ``[global]`` then ``[install]`` sections, then ``PIP_*``
    variables; ``PIP_CONFIG_FILE=/dev/null`` reads no file.
    """
    sections: dict[str, dict[str, str]] = {"global": {}, "install": {}}
    chosen = environ.get("PIP_CONFIG_FILE")
    if chosen != os.devnull:
        home = Path(environ.get("HOME") or Path.home())
        dirs = (environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(os.pathsep)
        files = [Path(d, "pip", "pip.conf") for d in dirs if d] + [Path("/etc/pip.conf")]
        if not (chosen and os.path.exists(chosen)):
            user = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
            mac = home / "Library" / "Application Support" / "pip" / "pip.conf"
            files += [home / ".pip" / "pip.conf", mac, user / "pip" / "pip.conf"]
        files += [Path(chosen)] if chosen else []
        for file in files:
            parser = configparser.RawConfigParser()
            with contextlib.suppress(OSError, configparser.Error, UnicodeDecodeError):
                parser.read(file, encoding="utf-8")
            for name, values in sections.items():
                if parser.has_section(name):
                    values.update({_pip_key(k): v for k, v in parser.items(name)})
    merged = {**sections["global"], **sections["install"]}
    ours = {"PIP_NO_INPUT", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_CONFIG_FILE", *_INSTALLER_UNSET}
    merged.update({_pip_key(k[4:]): v for k, v in environ.items() if k.startswith("PIP_") and k not in ours})
    return {k: v for k, v in merged.items() if v.strip()}


def _pip_key(name: str) -> str:
    return name.lower().replace("_", "-")
