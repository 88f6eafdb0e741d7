#!/usr/bin/env bash
# A local Ray head for `ray job submit` (make cluster-up / make cluster-down).
#
#   scripts/cluster.sh up [--num-cpus N] [--port 6379] [--dashboard-port 8265] [--temp-dir DIR] [-- RAY_START_ARGS...]
#   scripts/cluster.sh down [--port 6379] [--all]
#   scripts/cluster.sh status [--port 6379]
#
# up:     `ray start --head` with the venv's ray (.venv/bin/ray, else `ray` on PATH), token
#         authentication on (RAY_AUTH_MODE=token; the token is ~/.ray/auth_token, created if
#         missing, or $RAY_AUTH_TOKEN_PATH / $RAY_AUTH_TOKEN) and the dashboard / job API on
#         127.0.0.1 only. Prints the `export` and `ray job submit` lines for the submitting shell.
#         Arguments after `--` go to `ray start` as they are (e.g. --ray-client-server-port).
# down:   stops only the head whose GCS listens on --port (and every process of its session:
#         raylet, dashboard, workers, running jobs); other Ray clusters on this machine (a test
#         session's, another head) keep running. `down --all` is `ray stop`: every Ray process.
# status: `ray status` of the head on --port.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
    exit 2
}

die() {
    printf 'cluster.sh: %s\n' "$*" >&2
    exit 1
}

# The venv's ray when there is one, else ray on PATH; the python beside it runs the jobs.
if [[ -x "$ROOT/.venv/bin/ray" ]]; then
    RAY="$ROOT/.venv/bin/ray"
elif RAY="$(command -v ray)"; then
    :
else
    die "no ray: run 'make install' (creates .venv) or put ray on PATH"
fi
RAY_DIR="$(cd "$(dirname "$RAY")" && pwd)"
RAY="$RAY_DIR/$(basename "$RAY")"
if [[ -x "$RAY_DIR/python" ]]; then
    PY="$RAY_DIR/python"
elif PY="$(command -v python3)"; then
    :
else
    die "no python beside $RAY and no python3 on PATH"
fi

# Every ray command here talks to a token-authenticated cluster.
export RAY_AUTH_MODE=token

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

check_port() {  # name value
    is_uint "$2" && (( 10#$2 >= 1 && 10#$2 <= 65535 )) || die "$1 must be a port number (1-65535), got '$2'"
}

free_port() {  # a port free now, from the ephemeral range (clear of Ray's worker ports 10002-19999)
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1]); s.close()'
}

has_option() {  # name args...: is --name or --name=... among args
    local name="$1" a
    shift
    for a in "$@"; do
        [[ "$a" == "$name" || "$a" == "$name="* ]] && return 0
    done
    return 1
}

need_value() {  # option remaining-arg-count
    (( $2 >= 2 )) || die "$1 needs a value"
}

cmd_up() {
    local num_cpus="" port=6379 dash_port=8265 temp_dir=""
    local -a extra=()
    while (( $# )); do
        case "$1" in
            --num-cpus) need_value "$1" $#; num_cpus="$2"; shift 2 ;;
            --port) need_value "$1" $#; port="$2"; shift 2 ;;
            --dashboard-port) need_value "$1" $#; dash_port="$2"; shift 2 ;;
            --temp-dir) need_value "$1" $#; temp_dir="$2"; shift 2 ;;
            --) shift; extra=("$@"); break ;;
            -h|--help) usage ;;
            *) die "up: unknown option '$1' (see scripts/cluster.sh --help)" ;;
        esac
    done
    if [[ -z "$num_cpus" ]]; then
        num_cpus="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
    fi
    is_uint "$num_cpus" && (( 10#$num_cpus >= 1 )) || die "--num-cpus must be a positive integer, got '$num_cpus'"
    check_port --port "$port"
    check_port --dashboard-port "$dash_port"

    local -a args=(start --head --num-cpus "$num_cpus" --port "$port"
                   --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$dash_port"
                   --disable-usage-stats)
    if [[ -n "$temp_dir" ]]; then
        mkdir -p -- "$temp_dir"
        temp_dir="$(cd -- "$temp_dir" && pwd)"
        # <temp>/session_<date>_<pid>/sockets/plasma_store must fit a unix socket path (107 bytes).
        (( ${#temp_dir} <= 40 )) || die "--temp-dir '$temp_dir' is too long for Ray's unix sockets (40 characters at most; try a directory made by mktemp -d /tmp/rayXXXX)"
        args+=(--temp-dir "$temp_dir")
    fi

    # Ports. The GCS and dashboard ports must be free (a head already running there is not touched).
    # Ray also binds two fixed defaults that another Ray on this machine (a test session's ray.init(),
    # a second head) may hold, and then the head never finishes starting: the dashboard agent's 52365
    # and the Ray Client server's 10001. Unless given after `--`, those move to a free port.
    local -a busy
    mapfile -t busy < <("$PY" - "$port" "$dash_port" 52365 10001 <<'PYEOF'
import socket
import sys

for port in sys.argv[1:]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Ray checks: TIME_WAIT is free
        try:
            s.bind(("", int(port)))
        except OSError:
            print(port)
PYEOF
    )
    local b
    for b in "${busy[@]}"; do
        [[ "$b" == "$port" ]] && die "port $port is taken (a Ray head already up? scripts/cluster.sh status --port $port); choose another with --port"
        [[ "$b" == "$dash_port" ]] && die "dashboard port $dash_port is taken (another Ray's dashboard?); choose another with --dashboard-port"
    done
    if [[ " ${busy[*]} " == *" 52365 "* ]] && ! has_option --dashboard-agent-listen-port "${extra[@]}"; then
        args+=(--dashboard-agent-listen-port "$(free_port)")
    fi
    if [[ " ${busy[*]} " == *" 10001 "* ]] && ! has_option --ray-client-server-port "${extra[@]}"; then
        args+=(--ray-client-server-port "$(free_port)")
    fi

    # The token: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token (made here).
    if [[ -z "${RAY_AUTH_TOKEN:-}" && -n "${RAY_AUTH_TOKEN_PATH:-}" && ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
        die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is not a token file: create it (one random line) or unset it"
    fi
    "$RAY" get-auth-token --generate >/dev/null 2>&1 || die "could not create an auth token ($RAY get-auth-token --generate)"
    if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" && -f "$HOME/.ray/auth_token" ]]; then
        chmod go-rwx "$HOME/.ray/auth_token" || true  # Ray writes it world-readable
    fi

    # Ray's own clients inside the cluster (Train's placement-group cleaner uses the state API) find
    # the cluster from this instead of scanning the machine, which fails when a second one runs here.
    export RAY_API_SERVER_ADDRESS="http://127.0.0.1:$dash_port"

    if ! "$RAY" "${args[@]}" "${extra[@]}"; then
        # The port was free before: whatever now serves it is this half-started head.
        stop_head "$port" 5 >&2 || true
        die "ray start failed (its messages above); nothing of it is left running"
    fi

    local url="http://127.0.0.1:$dash_port"
    echo
    echo "Ray head is up (--num-cpus $num_cpus, GCS port $port): dashboard and job API at $url (token auth)."
    echo "In the shell that submits jobs:"
    echo
    echo "  export RAY_AUTH_MODE=token"
    if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        printf '  export RAY_AUTH_TOKEN_PATH=%q\n' "$RAY_AUTH_TOKEN_PATH"
    elif [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        echo "  export RAY_AUTH_TOKEN=...   # the same token this head was started with"
    fi
    echo
    echo "then, from the repository root (every path absolute: the job runs in an uploaded copy of '.'):"
    echo
    printf '  %q job submit --address %s --working-dir . -- %q -m jobs.train --config tiny --data-root /abs/W --out /abs/O --smoke-test\n' \
        "$RAY" "$url" "$PY"
    echo
    printf '  %q job status|logs|stop <submission id> --address %s\n' "$RAY" "$url"
    echo
    if [[ "$port" == 6379 ]]; then
        echo "Stop it with: make cluster-down   (scripts/cluster.sh down)"
    else
        echo "Stop it with: scripts/cluster.sh down --port $port"
    fi
}

# Stop the processes of the head whose GCS listens on PORT: the gcs_server, every process that names
# its session directory or its GCS address, and all their descendants (workers, jobs' drivers).
# Linux /proc only; no psutil needed. SIGTERM, then SIGKILL after GRACE seconds.
stop_head() {  # port grace
    "$PY" - "$1" "$2" <<'PYEOF'
import os
import signal
import sys
import time

port, grace = sys.argv[1], float(sys.argv[2])
if not os.path.isdir("/proc"):
    sys.exit("cluster.sh down: needs Linux /proc; use 'scripts/cluster.sh down --all' (ray stop)")


def table():
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != os.getuid():
                continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(name)] = (int(fields[1]), fields[0], args)  # ppid, state, argv
    return procs


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


procs = table()
gcs = [pid for pid, (_, _, args) in procs.items()
       if args and os.path.basename(args[0]) == "gcs_server" and f"--gcs_server_port={port}" in args]
if not gcs:
    print(f"no Ray head with GCS port {port} is running here (scripts/cluster.sh down --all stops every Ray process)")
    sys.exit(0)
sessions = {a.split("=", 1)[1] for pid in gcs for a in procs[pid][2] if a.startswith("--session-dir=")}
sessions.discard("")
hosts = {"127.0.0.1", "localhost"} | {a.split("=", 1)[1] for pid in gcs for a in procs[pid][2]
                                      if a.startswith("--node-ip-address=")}
addresses = {f"{host}:{port}" for host in hosts}


def belongs(args):
    for a in args:
        value = a.split("=", 1)[1] if a.startswith("--") and "=" in a else a
        if any(value == s or value.startswith(s + "/") for s in sessions):
            return True
        if a.startswith(("--address=", "--gcs-address=", "--gcs_address=")) and value in addresses:
            return True
    return False


keep = set()
pid = os.getpid()
while pid > 1:  # never this process or its callers
    keep.add(pid)
    pid = procs.get(pid, (1,))[0]
targets = set(gcs) | {p for p, (_, _, args) in procs.items() if belongs(args)}
children = {}
for p, (ppid, _, _) in procs.items():
    children.setdefault(ppid, []).append(p)
todo = list(targets)
while todo:
    for child in children.get(todo.pop(), []):
        if child not in targets:
            targets.add(child)
            todo.append(child)
targets -= keep


def name(p):
    args = procs[p][2]
    return os.path.basename(args[0]) if args else str(p)


def terminate(group, seconds):
    """SIGTERM, then SIGKILL whatever still runs after ``seconds``; the names of those killed."""
    for p in group:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in group):
        time.sleep(0.1)
    left = [p for p in group if alive(p)]
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return [name(p) for p in left]


# As `ray stop` does: the raylet first (it stops its workers), then the rest, the GCS last.
raylets = {p for p in targets if name(p) == "raylet"}
killed = terminate(raylets, grace)
killed += terminate({p for p in targets - raylets - set(gcs) if alive(p)}, grace)
killed += terminate(set(gcs) & targets, grace)
for session in sessions:  # `ray status` / ray.init("auto") must not find the stopped head
    marker = os.path.join(os.path.dirname(session), "ray_current_cluster")
    try:
        with open(marker) as f:
            if f.read().strip() in addresses:
                os.remove(marker)
    except OSError:
        pass
print(f"stopped the Ray head on GCS port {port}: {len(targets)} processes"
      + (f" ({len(killed)} killed after {grace:g} s: {', '.join(sorted(set(killed)))})" if killed else "")
      + (f", session {', '.join(sorted(sessions))}" if sessions else ""))
PYEOF
}

cmd_down() {
    local port=6379 all=0
    while (( $# )); do
        case "$1" in
            --port) need_value "$1" $#; port="$2"; shift 2 ;;
            --all) all=1; shift ;;
            -h|--help) usage ;;
            *) die "down: unknown option '$1' (see scripts/cluster.sh --help)" ;;
        esac
    done
    if (( all )); then
        "$RAY" stop
        return
    fi
    check_port --port "$port"
    stop_head "$port" 10
}

cmd_status() {
    local port=6379
    while (( $# )); do
        case "$1" in
            --port) need_value "$1" $#; port="$2"; shift 2 ;;
            -h|--help) usage ;;
            *) die "status: unknown option '$1' (see scripts/cluster.sh --help)" ;;
        esac
    done
    check_port --port "$port"
    "$RAY" status --address "127.0.0.1:$port"
}

(( $# )) || usage
command="$1"
shift
case "$command" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    -h|--help|help) usage ;;
    *) die "unknown command '$command' (up, down or status)" ;;
esac
