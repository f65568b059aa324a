#!/usr/bin/env bash
# Test servers for the Milvus store, both from PyPI, in a virtual environment under
# .milvus/ (gitignored):
#   scripts/milvus.sh install              installs milvus==2.3.5 (the real standalone
#                                           server) and milvus-lite==3.2.2 (a pure-Python
#                                           server of the newer API)
#   scripts/milvus.sh start KIND PORT      starts KIND (server | lite) on 127.0.0.1:PORT with
#                                           its data in .milvus/data-KIND-PORT, waits until it
#                                           answers, and prints its pid
#   scripts/milvus.sh stop KIND PORT       stops it (the data stays)
#   scripts/milvus.sh wipe KIND PORT       stops it and deletes its data
#   scripts/milvus.sh restart KIND PORT    stops it and starts it again on its data (the
#                                           tests' "server restarted mid-run")
# The standalone server also opens its internal ports (coordinators); they are moved by
# PORT's offset from 19530, but its embedded etcd (2379) and metrics (9091) ports stay where
# they are whatever the flags say: run one standalone server at a time (a lite server
# beside it is fine; a second standalone one never answers).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=.milvus
PY=${PYTHON:-python3}

venv() { echo "$ROOT/venv-$1"; }

install() {
    mkdir -p "$ROOT"
    if [ ! -x "$(venv server)/bin/milvus-server" ]; then
        "$PY" -m venv "$(venv server)"
        "$(venv server)/bin/pip" install -q milvus==2.3.5
    fi
    if ! "$(venv lite)/bin/python" -c 'import milvus_lite, pymilvus' 2>/dev/null; then
        "$PY" -m venv "$(venv lite)"
        # milvus-lite imports pymilvus' generated gRPC code without declaring it.
        "$(venv lite)/bin/pip" install -q milvus-lite==3.2.2 pymilvus==3.0.2
    fi
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits (up to 90 s) until every port can be bound the way the standalone server's launcher
# binds it (no SO_REUSEADDR, so a port in TIME_WAIT counts as taken).
free_ports() {
    "$PY" - "$@" <<'PY'
import socket, sys, time
ports = [int(p) for p in sys.argv[1:]]
deadline = time.time() + 90
while True:
    taken = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            taken.append(port)
        finally:
            s.close()
    if not taken:
        sys.exit(0)
    if time.time() > deadline:
        sys.exit(f"ports {taken} are still taken after 90 s: stop what holds them (ss -ltnp)")
    time.sleep(1)
PY
}

start() {
    local kind=$1 port=$2 data="$ROOT/data-$1-$2" log="$ROOT/$1-$2.log"
    mkdir -p "$data"
    if [ -f "$data/pid" ] && kill -0 "$(cat "$data/pid")" 2>/dev/null; then
        cat "$data/pid"; return 0
    fi
    case "$kind" in
        server)
            local o=$((port - 19530))
            local ports=("$port" $((2379 + o)) $((53100 + o)) $((19529 + 2 * o + 100)) $((19531 + 2 * o + 100))
                         $((21123 + o)) $((31000 + o)) $((21121 + o)) $((13333 + o)) $((21124 + o)))
            # Its launcher silently moves to the next free port when one is taken, and the
            # ports of a server just stopped stay taken (TIME_WAIT) for up to a minute.
            free_ports "${ports[@]}"
            rm -f "$data/logs/milvus-stdout.log" # read below for the proxy's start
            # setsid: the server's own children (etcd) go with it on stop.
            # A time tick of 20 ms instead of the server's 200 (CAPMATCH_MILVUS_TICK_MS): a
            # strongly consistent read waits for the next tick, and the tests make thousands.
            setsid "$(venv server)/bin/milvus-server" --data "$data" --proxy-port "${ports[0]}" \
                --extra-config "proxy.timeTickInterval=${CAPMATCH_MILVUS_TICK_MS:-20}" \
                --etcd-port "${ports[1]}" --root-coord-port "${ports[2]}" \
                --proxy-internal-port "${ports[3]}" --query-coord-port "${ports[4]}" \
                --query-node-port "${ports[5]}" --index-coord-port "${ports[6]}" --index-node-port "${ports[7]}" \
                --data-coord-port "${ports[8]}" --data-node-port "${ports[9]}" \
                >"$log" 2>&1 < /dev/null &
            ;;
        lite)
            # One worker: concurrent writes to one collection lose rows otherwise.
            setsid "$(venv lite)/bin/python" -m milvus_lite server --data-dir "$data" \
                --host 127.0.0.1 --port "$port" --max-workers 1 >"$log" 2>&1 < /dev/null &
            ;;
        *) echo "unknown server kind $kind (server or lite)" >&2; exit 2 ;;
    esac
    local pid=$!
    echo "$pid" > "$data/pid"
    for _ in $(seq 1 240); do
        if answers "$port"; then
            if [ "$kind" = server ]; then
                # Its launcher listens on the ports while it checks them, and the server
                # listens before its coordinators are ready: wait for the proxy's own word.
                if ! grep -q "Proxy successfully started" "$data/logs/milvus-stdout.log" 2>/dev/null; then
                    sleep 0.5; continue
                fi
                local bound
                bound=$(awk '/^proxy:/ {p = 1; next} /^[a-z]/ {p = 0} p && /^  port:/ {print $2; exit}' "$data/configs/milvus.yaml")
                if [ "$bound" != "$port" ]; then
                    echo "the server took port $bound instead of $port (was $port taken?)" >&2; stop "$kind" "$port"; exit 1
                fi
                sleep 1
            fi
            echo "$pid"; return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "the $kind server exited; its log ($log):" >&2; tail -30 "$log" >&2; exit 1
        fi
        sleep 0.5
    done
    echo "the $kind server did not answer on port $port within 120 s; its log ($log):" >&2
    tail -30 "$log" >&2
    exit 1
}

stop() {
    local data="$ROOT/data-$1-$2"
    [ -f "$data/pid" ] || return 0
    local pid; pid=$(cat "$data/pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$data/pid"
}

case "${1:-}" in
    install) install ;;
    start) start "$2" "$3" ;;
    stop) stop "$2" "$3" ;;
    wipe) stop "$2" "$3"; rm -rf "$ROOT/data-$2-$3" ;;
    restart) stop "$2" "$3"; start "$2" "$3" >/dev/null ;;
    *) sed -n 2,15p "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
