"""The shell scripts remote adapters run on a site: constants, never built from data.

Each is run as ``/bin/sh -c SCRIPT NAME ARG...``: job ids, paths and argv arrive as
positional parameters (quoted with :func:`shlex.quote` on the way through SSH) and are
only ever expanded inside double quotes, so no value is re-parsed by a shell.

A job's directory ``<root>/jobs/<job_id>/`` holds ``env`` (0600, sourced by the
wrapper), ``stdout``, ``stderr``, ``pid`` (the job's session and process-group
leader), ``exit_code`` (written atomically by the wrapper when the command ends) and
``cancel_requested``.  Submitting is idempotent: the launch is claimed with an atomic
``mkdir``, so a retried or duplicated submit never starts a job twice.
"""

from __future__ import annotations

__all__ = [
    "JOB_FILES",
    "MARK_CANCELLED",
    "RESOLVE_DIR",
    "SLURM_SUBMIT",
    "SSH_CANCEL",
    "SSH_STATUS",
    "SSH_SUBMIT",
    "WRAPPER",
]

# Runs the job as "$@" in its directory's environment and records how it ended.  With
# LWFM_CALLBACK=1 the job reaches the bus itself: it reports RUNNING and its end.
WRAPPER = r"""
d=$1; shift
set -a; . "$d/env"; set +a
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && [ -f "$d/ids" ]; then
    # one element of an array: its identity and input are line N of ids / inputs, and
    # DIR/N leads to its own job directory
    n=$((SLURM_ARRAY_TASK_ID + 1))
    LWFM_ARRAY_INDEX=$SLURM_ARRAY_TASK_ID
    LWFM_JOB_ID=$(sed -n "${n}p" "$d/ids")
    export LWFM_ARRAY_INDEX LWFM_JOB_ID
    if [ -f "$d/inputs" ]; then
        LWFM_INPUT=$(sed -n "${n}p" "$d/inputs")
        export LWFM_INPUT
    fi
    d=$(cd "$d/$SLURM_ARRAY_TASK_ID" && pwd -P) || exit 125
fi
LWFM_JOB_DIR=$d; export LWFM_JOB_DIR
if [ "${LWFM_CALLBACK:-0}" = 1 ]; then
    "$LWFM_PYTHON" -m adapters._callback running >>"$d/callback.log" 2>&1
fi
"$@"; rc=$?
printf '%s' "$rc" > "$d/exit_code.tmp" && mv -f "$d/exit_code.tmp" "$d/exit_code"
if [ "${LWFM_CALLBACK:-0}" = 1 ]; then
    "$LWFM_PYTHON" -m adapters._callback exit "$rc" >>"$d/callback.log" 2>&1
fi
exit $rc
"""

# Args: WRAPPER ROOT JOB_ID CWD LIMIT_S GRACE_TENTHS ARGV...; stdin: the env file.  Prints
# one line: "started PID", "exists PID|-", "cancelled -" or "failed MESSAGE".  A LIMIT_S
# (empty: none) starts a timer on the host beside the job, which outlives this connection
# and any agent: at the limit it marks the job timed_out, SIGTERMs its process group and
# SIGKILLs what is left after the grace -- unless the job has ended by then.
SSH_SUBMIT = r"""
w=$1 root=$2 id=$3 cwd=$4 limit=$5 tenths=$6; shift 6
umask 077
d=$root/jobs/$id
mkdir -p "$d" || { echo "failed cannot create the job directory $d"; exit 0; }
d=$(cd "$d" && pwd -P) || { echo "failed cannot enter the job directory"; exit 0; }
if [ -f "$d/pid" ]; then echo "exists $(cat "$d/pid")"; exit 0; fi
{ cat > "$d/env.tmp" && mv -f "$d/env.tmp" "$d/env"; } || { echo "failed cannot write $d/env"; exit 0; }
if ! mkdir "$d/launched" 2>/dev/null; then echo "exists -"; exit 0; fi
if [ -e "$d/cancel_requested" ]; then echo "cancelled -"; exit 0; fi
if ! command -v setsid >/dev/null 2>&1; then
    echo "lwfm-bus: setsid (util-linux) is not installed on this host" >>"$d/stderr"
    printf 127 > "$d/exit_code"; echo "failed setsid is not installed on the host"; exit 0
fi
if ! cd "${cwd:-$d}" 2>/dev/null; then
    echo "lwfm-bus: cannot change to the working directory $cwd" >>"$d/stderr"
    printf 126 > "$d/exit_code"; echo "failed cannot change to the working directory"; exit 0
fi
setsid /bin/sh -c "$w" lwfm-job "$d" "$@" </dev/null >>"$d/stdout" 2>>"$d/stderr" &
pid=$!
printf '%s' "$pid" > "$d/pid.tmp" && mv -f "$d/pid.tmp" "$d/pid"
if [ -n "$limit" ]; then
    setsid /bin/sh -c '
        d=$1 pid=$2 limit=$3 tenths=$4
        sleep "$limit"
        [ -f "$d/exit_code" ] && exit 0
        printf "%s" "$limit" > "$d/timed_out"
        kill -TERM "-$pid" 2>/dev/null
        n=0
        while kill -0 "-$pid" 2>/dev/null && [ "$n" -lt "$tenths" ]; do sleep 0.1; n=$((n + 1)); done
        kill -KILL "-$pid" 2>/dev/null
    ' lwfm-limit "$d" "$pid" "$limit" "$tenths" </dev/null >/dev/null 2>&1 &
fi
echo "started $pid"
"""

# A process counts as alive unless it is gone or a zombie (pid 1 may never reap it).
_ALIVE = r"""
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [ -r "/proc/$1/stat" ] || return 0
    read -r l < "/proc/$1/stat" || return 1
    s=${l##*) }; s=${s%% *}
    [ "$s" != Z ] && [ "$s" != X ]
}
"""

# Args: ROOT JOB_ID...  One line per job: "ID STATE DETAIL ENDED_BY", then "end".
# STATE: unknown | pending | running (DETAIL=pid) | exited (DETAIL=code) | gone (DETAIL=pid).
# ENDED_BY: 0, 1 (a cancel was asked) or 2 (its time limit was reached).
SSH_STATUS = (
    _ALIVE
    + r"""
root=$1; shift
for id in "$@"; do
    d=$root/jobs/$id
    c=0; [ -e "$d/timed_out" ] && c=2; [ -e "$d/cancel_requested" ] && c=1
    if [ ! -d "$d" ]; then echo "$id unknown - $c"; continue; fi
    if [ -f "$d/exit_code" ]; then echo "$id exited $(cat "$d/exit_code") $c"; continue; fi
    if [ ! -f "$d/pid" ]; then echo "$id pending - $c"; continue; fi
    pid=$(cat "$d/pid")
    if alive "$pid"; then echo "$id running $pid $c"; continue; fi
    if [ -f "$d/exit_code" ]; then echo "$id exited $(cat "$d/exit_code") $c"; continue; fi
    echo "$id gone $pid $c"
done
echo end
"""
)

# Args: ROOT JOB_ID GRACE_TENTHS.  SIGTERM to the job's process group, SIGKILL after the
# grace period (and always, for stragglers).  Prints: unknown | notstarted | gone | stopped.
SSH_CANCEL = (
    _ALIVE
    + r"""
root=$1 id=$2 tenths=$3
d=$root/jobs/$id
[ -d "$d" ] || { echo unknown; exit 0; }
: > "$d/cancel_requested"
[ -f "$d/pid" ] || { echo notstarted; exit 0; }
pid=$(cat "$d/pid")
alive "$pid" || { kill -KILL "-$pid" 2>/dev/null; echo gone; exit 0; }
kill -TERM "-$pid" 2>/dev/null
n=0
while alive "$pid" && [ "$n" -lt "$tenths" ]; do sleep 0.1; n=$((n + 1)); done
kill -KILL "-$pid" 2>/dev/null
echo stopped
"""
)

# Args: DIR N SBATCH_ARGV...  DIR already holds env (and, for an array of N > 0 elements,
# ids and inputs); each element i gets DIR/i -> its own job directory.  The submission is
# claimed with mkdir, so a retried or duplicated submit never reaches sbatch twice.
# Prints "submitted OUTPUT", "exists NATIVE|-", "cancelled -" or "failed RC" (sbatch's
# own error on stderr).
SLURM_SUBMIT = r"""
d=$1 n=$2; shift 2
umask 077
cd "$d" || { echo "failed cannot enter $d"; exit 0; }
i=0
while [ "$i" -lt "$n" ]; do
    id=$(sed -n "$((i + 1))p" ids)
    mkdir -p "../../jobs/$id" && ln -sfn "../../jobs/$id" "$i" || { echo "failed cannot create element $i"; exit 0; }
    i=$((i + 1))
done
if ! mkdir submitted 2>/dev/null; then
    if [ -f native_id ]; then echo "exists $(cat native_id)"; else echo "exists -"; fi
    exit 0
fi
if [ -e cancel_requested ]; then echo "cancelled -"; exit 0; fi
out=$("$@" 2>sbatch.err); rc=$?
if [ "$rc" -ne 0 ]; then
    rmdir submitted
    cat sbatch.err >&2
    echo "failed $rc"
    exit 0
fi
printf '%s\n' "$out" > native_id.tmp && mv -f native_id.tmp native_id
echo "submitted $out"
"""

# Args: DIR...  For each job directory: "INDEX EXIT_CODE|- CANCELLED(0|1)", then "end".
JOB_FILES = r"""
i=0
for d in "$@"; do
    c=0; [ -e "$d/timed_out" ] && c=2; [ -e "$d/cancel_requested" ] && c=1
    if [ -f "$d/exit_code" ]; then echo "$i $(cat "$d/exit_code") $c"; else echo "$i - $c"; fi
    i=$((i + 1))
done
echo end
"""

# Args: DIR.  Leaves the cancel marker that the wrapper, the submit script and the
# watcher all look at; prints "marked".
MARK_CANCELLED = r"""
mkdir -p "$1" && : > "$1/cancel_requested" && echo marked
"""

# Args: DIR.  Creates it (0700) and prints its absolute, symlink-free path.
RESOLVE_DIR = r"""
umask 077
mkdir -p "$1" && cd "$1" && pwd -P
"""
