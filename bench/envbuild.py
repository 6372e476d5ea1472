"""Building a step's Python environment (``lwfm-bus env exec``): uv, cold and warm, against venv + pip.

Every build goes into a fresh root, so nothing is reused; what differs is the cache:

* cold: a fresh root, so a fresh uv cache (``<root>/.uv-cache``); pip gets a fresh ``PIP_CACHE_DIR``;
* warm: a fresh root given the uv cache an earlier build of the same set filled (moved in: one file system,
  as a root's cache always is); pip keeps its ``PIP_CACHE_DIR`` from the cold build.

The baseline is the stdlib ``venv`` filled by its own pip (``installer = pip``), measured in the same run;
the ratio is uv's time over pip's.  Sets: one small local wheel (``--no-index --find-links``, as the tests
install), and in the full run numpy too when this machine's pip configuration points at a local copy of it
(a ``file://`` index or a find-links directory): the bench never downloads.

    .venv/bin/python -m bench.envbuild [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from bench._common import Figure, figure, log, not_available
from lwfm_bus._pyenv import UV_CACHE, Installer, Tool, _pip_settings, ensure_env, find_uv
from tests._helpers import write_wheel as write_package

ITEM = "envbuild"
PKG = "lwfmbenchpkg"


def write_wheel(directory: Path, version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (what tests/pipeline/test_pyenv.py installs too): a module and its metadata."""
    return write_package(directory, PKG, version, generator="lwfm-bus-bench")


def local_numpy() -> Installer | None:
    """Installer options that reach numpy on this machine's disk only, or None."""
    settings = _pip_settings(os.environ)
    for url in (settings.get("index-url", "") + " " + settings.get("extra-index-url", "")).split():
        parts = urlsplit(url)
        if parts.scheme == "file" and Path(url2pathname(parts.path), "numpy").is_dir():
            return Installer(index_url=url)
    for link in settings.get("find-links", "").split():
        if "://" not in link and any(Path(link).glob("numpy-*.whl")):
            return Installer(find_links=(link,), no_index=True)
    return None


class Builds:
    """Times builds of one set into fresh roots under ``tmp``, keeping the caches between cold and warm."""

    def __init__(self, tmp: Path, reqs: list[str], installer: Installer) -> None:
        self.tmp, self.reqs, self.installer = tmp, reqs, installer
        self.count = 0

    def _root(self) -> Path:
        self.count += 1
        return self.tmp / f"root{self.count}"

    def _build(self, root: Path, tool: Tool) -> float:
        t0 = time.perf_counter()
        info = ensure_env(
            self.reqs,
            root,
            index_url=self.installer.index_url,
            find_links=self.installer.find_links,
            no_index=self.installer.no_index,
            tool=tool,
        )
        elapsed = time.perf_counter() - t0
        if info.reused:
            raise RuntimeError(f"{root}: an environment was reused, the build was not timed")
        manifest = json.loads((info.path / "lwfm-env.json").read_text())
        if manifest.get("tool") != tool:
            raise RuntimeError(f"asked for {tool}, built by {manifest.get('tool')}: {root}")
        return elapsed

    def uv(self) -> tuple[float, float]:
        """(cold, warm) seconds: a fresh root, then a fresh root given the first one's cache."""
        first, second = self._root(), self._root()
        cold = self._build(first, "uv")
        second.mkdir()
        (first / UV_CACHE).rename(second / UV_CACHE)
        warm = self._build(second, "uv")
        shutil.rmtree(first)
        shutil.rmtree(second)
        return cold, warm

    def pip(self, warm_too: bool) -> tuple[float, float | None]:
        """(cold, warm) seconds with a fresh ``PIP_CACHE_DIR`` kept from cold to warm."""
        cache = self._root()
        os.environ["PIP_CACHE_DIR"] = str(cache)  # read by the pip that ensure_env starts
        try:
            first = self._root()
            cold = self._build(first, "pip")
            shutil.rmtree(first)
            warm = None
            if warm_too:
                second = self._root()
                warm = self._build(second, "pip")
                shutil.rmtree(second)
        finally:
            del os.environ["PIP_CACHE_DIR"]
            shutil.rmtree(cache, ignore_errors=True)
        return cold, warm


def measure(tmp: Path, reqs: list[str], installer: Installer, runs: int, pip_warm: bool) -> dict[str, Any]:
    builds = Builds(tmp, reqs, installer)
    uv_cold, uv_warm, pip_cold, pip_warm_s = [], [], [], []
    for i in range(runs):
        log(f"{' '.join(reqs)}: run {i + 1} of {runs}")
        c, w = builds.uv()
        uv_cold.append(c)
        uv_warm.append(w)
        pc, pw = builds.pip(pip_warm)
        pip_cold.append(pc)
        if pw is not None:
            pip_warm_s.append(pw)
    return {
        "requirements": reqs,
        "runs": runs,
        "uv_cold_s": [round(x, 3) for x in uv_cold],
        "uv_warm_s": [round(x, 3) for x in uv_warm],
        "pip_cold_s": [round(x, 3) for x in pip_cold],
        "pip_warm_s": [round(x, 3) for x in pip_warm_s],
        "uv_cold": statistics.median(uv_cold),
        "uv_warm": statistics.median(uv_warm),
        "pip_cold": statistics.median(pip_cold),
        "pip_warm": statistics.median(pip_warm_s) if pip_warm_s else None,
    }


def _figures(label: str, r: dict[str, Any], quick: bool) -> list[Figure]:
    n = f"median of {r['runs']}" if r["runs"] > 1 else "one run"
    pip_warm = r["pip_warm"] if r["pip_warm"] is not None else r["pip_cold"]
    warm_label = (
        "venv + pip, warm pip cache"
        if r["pip_warm"] is not None
        else "venv + pip (one build: its cache holds nothing for a local wheel)"
    )
    return [
        figure(
            ITEM, f"env build, {label}, uv cold: fresh root and cache ({n})", round(r["uv_cold"], 3), "s",
            baseline=round(r["pip_cold"], 3), baseline_label="venv + pip, fresh pip cache",
            ratio=round(r["uv_cold"] / r["pip_cold"], 3), ratio_label="of pip's time", quick=quick,
        ),
        figure(
            ITEM, f"env build, {label}, uv warm: fresh root, filled uv cache ({n})", round(r["uv_warm"], 3), "s",
            baseline=round(pip_warm, 3), baseline_label=warm_label,
            ratio=round(r["uv_warm"] / pip_warm, 3), ratio_label="of pip's time", quick=quick,
        ),
    ]  # fmt: skip


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    if find_uv() is None:
        why = "uv is not installed (pip install uv, or the fast-env extra)"
        return [not_available(ITEM, "env build, uv cold and warm", why)], {}
    links = tmp / "wheels"
    write_wheel(links)
    tiny = Installer(find_links=(str(links),), no_index=True)
    details: dict[str, Any] = {}
    details["wheel"] = measure(tmp / "wheel", [PKG], tiny, 1 if quick else 3, pip_warm=not quick)
    figs = _figures("1 local wheel", details["wheel"], quick)
    if not quick:
        numpy = local_numpy()
        if numpy is None:
            figs.append(not_available(ITEM, "env build, numpy", "no local copy of numpy in pip's configuration"))
        else:
            details["numpy"] = measure(tmp / "numpy", ["numpy"], numpy, 2, pip_warm=True)
            figs += _figures("numpy", details["numpy"], quick)
    return figs, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--numpy", action="store_true", help="also numpy, if a local copy is configured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        links = Path(tmp, "wheels")
        write_wheel(links)
        tiny = Installer(find_links=(str(links),), no_index=True)
        out = {"wheel": measure(Path(tmp, "wheel"), [PKG], tiny, args.runs, pip_warm=True)}
        numpy = local_numpy() if args.numpy else None
        if numpy is not None:
            out["numpy"] = measure(Path(tmp, "numpy"), ["numpy"], numpy, args.runs, pip_warm=True)
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
