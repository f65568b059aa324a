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
# The standalone server also opens its internal ports (etcd, coordinators); they are moved
# by PORT's offset from 19530 so that two servers can run side by side.
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

start() {
    local kind=$1 port=$2 data="$ROOT/data-$1-$2" log="$ROOT/$1-$2.log"
    mkdir -p "$data"
    if [ -f "$data/pid" ] && kill -0 "$(cat "$data/pid")" 2>/dev/null; then
        cat "$data/pid"; return 0
    fi
    case "$kind" in
        server)
            local o=$((port - 19530))
            # setsid: the server's own children (etcd) go with it on stop.
            setsid "$(venv server)/bin/milvus-server" --data "$data" --proxy-port "$port" \
                --etcd-port $((2379 + o)) --root-coord-port $((53100 + o)) \
                --proxy-internal-port $((19529 + 2 * o + 100)) --query-coord-port $((19531 + 2 * o + 100)) \
                --query-node-port $((21123 + o)) --index-coord-port $((31000 + o)) --index-node-port $((21121 + o)) \
                --data-coord-port $((13333 + o)) --data-node-port $((21124 + o)) \
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
            # The standalone server listens before its coordinators are ready.
            [ "$kind" = server ] && sleep 5
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
