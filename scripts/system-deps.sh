#!/usr/bin/env bash
# System packages for the tests, all from Debian's packages: a real OpenSSH server and a real
# single-node Slurm (with munge) for the remote-site tests, and chromium, which the dashboard
# tests drive headless through Playwright (never `playwright install`: no browser downloads).
# The tests start their own daemons on loopback with state under a temporary directory;
# nothing installed here is started.
#
# Idempotent and quick: when every program is already there it only says so.  Runs
# non-interactively (CI=true, no stdin) as root, or through sudo when one is available.
set -euo pipefail

PACKAGES=(openssh-server slurmctld slurmd slurm-client munge chromium)
PROGRAMS=(sshd slurmctld slurmd sbatch squeue scontrol scancel munged mungekey chromium)

missing=()
for prog in "${PROGRAMS[@]}"; do
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$prog" >/dev/null 2>&1; then
        missing+=("$prog")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "system-deps: sshd, Slurm, munge and chromium already installed"
    exit 0
fi
echo "system-deps: missing ${missing[*]}; installing ${PACKAGES[*]}"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: apt-get not found: install ${PACKAGES[*]} by hand (the SSH/Slurm and dashboard tests will skip)" >&2
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "system-deps: not root and no password-less sudo: install ${PACKAGES[*]} by hand (the SSH/Slurm and dashboard tests will skip)" >&2
        exit 0
    fi
fi

# Packages must not start their services (sshd on port 22, a system slurmctld): the tests
# run their own.  A policy-rc.d that refuses every start does that; an existing one is kept.
POLICY=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    added_policy=1
fi
cleanup() {
    if [ "$added_policy" = 1 ]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt_install() {
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${PACKAGES[@]}" </dev/null
}
# The package lists may be missing or stale on a fresh machine: update once, then retry.
if ! apt_install; then
    "${SUDO[@]}" apt-get update -q </dev/null
    apt_install
fi
echo "system-deps: installed ${PACKAGES[*]}"
