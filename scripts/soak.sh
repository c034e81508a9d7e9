#!/usr/bin/env bash
# Soak test: no loss and no misrouting under backend faults. Not part of CI.
#
# Usage (from the repo root): bash scripts/soak.sh [--duration S] [--backends N]
#     [--volatile I] [--connections N] [--depth N] [--rate OPS] [--keys N] [--threads N]
#     [--up S] [--down S,S,...] [--tail S] [--timeout MS] [--retrieval-failure miss|error]
#     [--no-faults] [--replicated [--read miss_failover|failover]]
#
# Builds release binaries, starts N real memcached backends (default 4) and memroute over
# them (ketama, fnv1a_64, auto_eject_hosts off, --timeout 500 ms, 2 worker threads, 2 server
# connections, retrieval_failure miss unless told), and runs examples/loadgen/ in soak
# mode (--soak-config) against memroute for --duration seconds (default 180):
# 20 connections, pipelined (depth 16), 80% gets of 1-4 keys, 20% sets, paced at --rate
# ops/s (default 25000; 0: as fast as it goes, which on a small host starves processes into
# timeouts), each connection reading and writing only its own keys. Meanwhile backend I
# (default 2, the "volatile" one) is SIGKILLed every --up seconds (default 12), kept down
# for --down seconds (cycling through 2,4,6) and restarted on the same port; the last
# restart is at least --tail seconds (default 25) before the end. --no-faults: the same
# run without kills (a baseline).
#
# Fails (non-zero exit) unless: zero wrong values (a value of another key, corrupted,
# a version never written, a malformed or misordered reply); zero lost writes on the other
# backends (after STORED every later get returns that version or a newer one: never a miss,
# an older version or an error); zero error replies for their keys; zero misplaced keys and
# zero lost acknowledged writes when every backend is read directly at the end; zero
# connection errors; and the faults were felt (volatile errors seen) and recovered from
# (no volatile error but timeouts later than a few seconds after the last restart). Misses
# and SERVER_ERROR for the volatile backend's keys are expected and reported separately.
# Stable-key timeouts usually mean an overloaded host (see monitor.tsv: load, memroute CPU,
# descriptors, RSS every 5 s). Output: target/soak-results/<timestamp>/ (loadgen.json,
# monitor.tsv, logs). Env: MEMROUTE_BIN, LOADGEN_BIN use prebuilt binaries, not cargo.
#
# --replicated: memroute serves a replicated route (write = "all_sync") over two pools,
# copy A = backends 1..N/2 (the designated copy, read first) and copy B = the rest; the
# route listens, the pools do not; retrieval_failure is error unless told. Backend I is
# killed and restarted as above (default 2: in copy A with 4 backends) and comes back
# empty. --read sets the route's read policy, default miss_failover: a restarted memcached
# is a cold copy, and with plain "failover" a miss is an answer, so reads of the keys it
# owns miss until rewritten although the other copy holds them; `--read failover` FAILS
# (lost writes: misses after a write) by design, showing that the checks bite. Volatile
# keys are then those with a copy on backend I. Besides the above, the run fails unless:
# no read fails, misses a key after a version was acknowledged or seen, or returns an
# older version, for any key, whichever backend is down (only writes to volatile keys may
# fail while it is down, all_sync answering the worst reply; such a write may or may not
# have landed on the live copy, so either version may be read until the key's next
# acknowledged write; a read failing over to the other copy asks it once the first has
# answered, so it may return a write the connection pipelined after the get: newer,
# allowed, counted); at the end every key is read on its owner in each copy (memroute's
# rings): nothing misplaced in either pool, every version acknowledged or seen held on
# backends that never restarted, and on the restarted one every version acknowledged by a
# write sent after its last restart (keys written before it came back may be missing:
# reported); the loadgen's probes saw one restart per kill; and, the volatile backend in
# copy A, reads failed over to copy B (stats routes: failovers > 0).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=180
NBACKENDS=4
VOLATILE=2
CONNS=20
DEPTH=16
RATE=25000
KEYS=20000
THREADS=2
UP=12
DOWNS=2,4,6
TAIL=25
RFAIL=""
FAULTS=1
REPLICATED=0
READ=""
TIMEOUT=500
RECOVERY=5 # seconds after the last restart by which volatile errors must have stopped

usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }
while [ $# -gt 0 ]; do
    case "$1" in
    --duration) DURATION="$2"; shift ;;
    --backends) NBACKENDS="$2"; shift ;;
    --volatile) VOLATILE="$2"; shift ;;
    --connections) CONNS="$2"; shift ;;
    --depth) DEPTH="$2"; shift ;;
    --rate) RATE="$2"; shift ;;
    --keys) KEYS="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --up) UP="$2"; shift ;;
    --down) DOWNS="$2"; shift ;;
    --tail) TAIL="$2"; shift ;;
    --retrieval-failure) RFAIL="$2"; shift ;;
    --timeout) TIMEOUT="$2"; shift ;;
    --no-faults) FAULTS=0 ;;
    --replicated) REPLICATED=1 ;;
    --read) READ="$2"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { echo "[soak $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$NBACKENDS" -ge 2 ] || die "--backends must be at least 2"
[ "$VOLATILE" -ge 1 ] && [ "$VOLATILE" -le "$NBACKENDS" ] || die "--volatile must be in 1..$NBACKENDS"
[ "${DURATION%.*}" -ge $((TAIL + 15)) ] || die "--duration must be at least --tail + 15 s"
if [ "$REPLICATED" = 1 ]; then
    READ=${READ:-miss_failover}
    RFAIL=${RFAIL:-error}
    case "$READ" in miss_failover | failover) ;; *) die "--read must be miss_failover or failover" ;; esac
    NA=$((NBACKENDS / 2)) # copy A: backends 1..NA; copy B: NA+1..NBACKENDS
else
    [ -z "$READ" ] || die "--read needs --replicated"
    RFAIL=${RFAIL:-miss}
fi

# --- prerequisites ----------------------------------------------------------
if ! command -v memcached >/dev/null; then
    [ "$(id -u)" = 0 ] || die "need root to install memcached (apt-get install memcached)"
    log "installing memcached"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >/dev/null
fi
command -v python3 >/dev/null || die "python3 is required"

build=()
[ -z "${LOADGEN_BIN:-}" ] && build+=(--example loadgen)
[ -z "${MEMROUTE_BIN:-}" ] && build+=(--bin memroute)
if [ ${#build[@]} -gt 0 ]; then
    log "cargo build --release ${build[*]}"
    cargo build --release "${build[@]}"
fi
LOADGEN=${LOADGEN_BIN:-target/release/examples/loadgen}
MEMROUTE=${MEMROUTE_BIN:-target/release/memroute}
[ -x "$LOADGEN" ] || die "loadgen binary not found: $LOADGEN"
[ -x "$MEMROUTE" ] || die "memroute binary not found: $MEMROUTE"

OUT=target/soak-results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT/logs"

# --- processes --------------------------------------------------------------
declare -A BPID # backend index -> pid of its current memcached
MR_PID=""
LG_PID=""
MON_PID=""
cleanup() {
    local p
    for p in $MON_PID "${BPID[@]}" $MR_PID $LG_PID; do kill "$p" 2>/dev/null || true; done
    for p in $MON_PID "${BPID[@]}" $MR_PID $LG_PID; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_ports, wait_port.
. scripts/lib.sh # (the working directory is the repo root)

read -r -a PORTS <<<"$(free_ports $((NBACKENDS + 1)))"
MR_PORT=${PORTS[$NBACKENDS]}
mc_user=()
[ "$(id -u)" = 0 ] && mc_user=(-u root) # memcached refuses root without -u

start_backend() { # index (1-based)
    local port=${PORTS[$(($1 - 1))]}
    memcached "${mc_user[@]}" -t 1 -p "$port" -l 127.0.0.1 -U 0 -m 64 \
        >>"$OUT/logs/memcached-$1.log" 2>&1 &
    BPID[$1]=$!
    wait_port "${BPID[$1]}" "$port"
}
for i in $(seq 1 "$NBACKENDS"); do start_backend "$i"; done

CONFIG=$OUT/memroute.toml
pool() { # name listen-address-or-empty first-backend last-backend
    echo "[pools.$1]"
    [ -z "$2" ] || echo "listen = \"$2\""
    echo 'hash = "fnv1a_64"'
    echo 'distribution = "ketama"'
    echo "timeout = $TIMEOUT"
    echo 'connect_timeout = 500'
    echo 'server_connections = 2'
    echo 'auto_eject_hosts = false'
    echo "retrieval_failure = \"$RFAIL\""
    echo 'servers = ['
    for i in $(seq "$3" "$4"); do echo "    \"127.0.0.1:${PORTS[$((i - 1))]}:1\","; done
    echo ']'
}
{
    echo "threads = $THREADS"
    echo
    if [ "$REPLICATED" = 1 ]; then
        pool soak_a "" 1 "$NA"
        echo
        pool soak_b "" $((NA + 1)) "$NBACKENDS"
        echo
        echo "[routes.soak]"
        echo 'type = "replicated"'
        echo "listen = \"127.0.0.1:$MR_PORT\""
        echo 'copies = ["soak_a", "soak_b"]'
        echo 'write = "all_sync"'
        echo "read = \"$READ\""
    else
        pool soak "127.0.0.1:$MR_PORT" 1 "$NBACKENDS"
    fi
} >"$CONFIG"
"$MEMROUTE" --config "$CONFIG" --check >"$OUT/logs/check.txt" || die "memroute --check failed"
"$MEMROUTE" --config "$CONFIG" >"$OUT/logs/memroute.log" 2>&1 &
MR_PID=$!
wait_port "$MR_PID" "$MR_PORT"
VOL_ADDR=127.0.0.1:${PORTS[$((VOLATILE - 1))]}
log "backends ${PORTS[*]:0:$NBACKENDS}; memroute on $MR_PORT; volatile backend $VOLATILE ($VOL_ADDR); ${DURATION}s; output $OUT"
if [ "$REPLICATED" = 1 ]; then
    COPY_OF_VOLATILE=B
    [ "$VOLATILE" -gt "$NA" ] || COPY_OF_VOLATILE=A
    log "replicated route (write all_sync, read $READ, retrieval_failure $RFAIL): copy A = backends 1..$NA, copy B = backends $((NA + 1))..$NBACKENDS; the volatile backend is in copy $COPY_OF_VOLATILE"
fi

# --- load -------------------------------------------------------------------
T0=$(date +%s.%N)
# Every 5 s: host load, memroute's CPU share, descriptors, RSS (leaks across kill cycles?).
monitor() {
    local clk prev now t
    clk=$(getconf CLK_TCK)
    prev=$(sed 's/^.*) //' "/proc/$MR_PID/stat" | awk '{print $12 + $13}')
    printf 'elapsed_s\tload1\tmemroute_cpu_pct\tmemroute_fds\tmemroute_rss_kb\n'
    while sleep 5; do
        [ -d "/proc/$MR_PID" ] || break
        now=$(sed 's/^.*) //' "/proc/$MR_PID/stat" | awk '{print $12 + $13}')
        t=$(python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.0f}')" "$(date +%s.%N)" "$T0")
        printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$(cut -d' ' -f1 /proc/loadavg)" \
            "$(((now - prev) * 100 / clk / 5))" "$(ls "/proc/$MR_PID/fd" | wc -l)" \
            "$(awk '/^VmRSS:/ {print $2}' "/proc/$MR_PID/status")"
        prev=$now
    done
}
monitor >"$OUT/monitor.tsv" 2>/dev/null &
MON_PID=$!
vol_args=(--volatile "$VOL_ADDR")
[ "$FAULTS" = 1 ] || vol_args=() # a baseline: every key is held to the strict rules
"$LOADGEN" --target "127.0.0.1:$MR_PORT" --soak-config "$CONFIG" "${vol_args[@]}" \
    --connections "$CONNS" --depth "$DEPTH" --rate "$RATE" --get-ratio 0.8 --multiget 4 --keys "$KEYS" \
    --duration "$DURATION" --json "$OUT/loadgen.json" \
    > >(tee "$OUT/logs/loadgen.out") 2> >(tee "$OUT/logs/loadgen.err" >&2) &
LG_PID=$!

# Sleeps $1 seconds, or less if the load generator exits meanwhile.
nap() {
    local until
    until=$(python3 -c "import sys, time; print(time.time() + float(sys.argv[1]))" "$1")
    while kill -0 "$LG_PID" 2>/dev/null &&
        python3 -c "import sys, time; sys.exit(0 if time.time() < float(sys.argv[1]) else 1)" "$until"; do
        sleep 0.2
    done
}
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.1f}')" "$(date +%s.%N)" "$T0"; }
before() { # true if at least $1 more seconds remain before the run's end (minus the tail)
    python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) - float(sys.argv[2]) + float(sys.argv[3]) + float(sys.argv[4]) <= float(sys.argv[5]) else 1)" \
        "$(date +%s.%N)" "$T0" "$1" "$TAIL" "$DURATION"
}

# --- faults -----------------------------------------------------------------
IFS=, read -r -a DOWN_LIST <<<"$DOWNS"
KILLS=0
LAST_RESTART=""
RESTARTS="$OUT/restarts.tsv"
printf 'cycle\tkilled_s\trestarted_s\tdown_s\n' >"$RESTARTS"
nap "$UP"
while [ "$FAULTS" = 1 ] && kill -0 "$LG_PID" 2>/dev/null; do
    down=${DOWN_LIST[$((KILLS % ${#DOWN_LIST[@]}))]}
    before "$down" || break
    kill -KILL "${BPID[$VOLATILE]}"
    wait "${BPID[$VOLATILE]}" 2>/dev/null || true
    killed=$(elapsed)
    KILLS=$((KILLS + 1))
    log "cycle $KILLS: SIGKILL backend $VOLATILE at ${killed}s, down ${down}s"
    sleep "$down" # the full time, even if the load generator is gone: it must restart
    start_backend "$VOLATILE"
    LAST_RESTART=$(elapsed)
    log "cycle $KILLS: backend $VOLATILE restarted at ${LAST_RESTART}s"
    printf '%s\t%s\t%s\t%s\n' "$KILLS" "$killed" "$LAST_RESTART" "$down" >>"$RESTARTS"
    nap "$UP"
done

rc=0
wait "$LG_PID" || rc=$?
LG_PID=""
kill "$MON_PID" 2>/dev/null || true
wait "$MON_PID" 2>/dev/null || true
MON_PID=""
log "loadgen exited $rc after $KILLS kill/restart cycles"

# --- verdict ----------------------------------------------------------------
FAILED=0
[ "$rc" = 0 ] || { log "FAIL: loadgen reported failures (exit $rc)"; FAILED=1; }
for i in $(seq 1 "$NBACKENDS"); do
    kill -0 "${BPID[$i]}" 2>/dev/null || { log "FAIL: backend $i is not running"; FAILED=1; }
done
mr_stats() { # memroute's `stats $1`
    python3 - "$MR_PORT" "$1" <<'EOF' || true
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"stats " + sys.argv[2].encode() + b"\r\n")
buf = b""
while not buf.endswith(b"END\r\n"):
    d = s.recv(65536)
    if not d:
        break
    buf += d
sys.stdout.write(buf.decode(errors="replace"))
EOF
}
FAILOVERS=""
if kill -0 "$MR_PID" 2>/dev/null; then
    mr_stats backends >"$OUT/logs/stats-backends.txt"
    if [ "$REPLICATED" = 1 ]; then
        mr_stats routes >"$OUT/logs/stats-routes.txt"
        FAILOVERS=$(awk '$2 == "soak:failovers" { print $3 }' "$OUT/logs/stats-routes.txt" | tr -d '\r')
    fi
else
    log "FAIL: memroute died (see $OUT/logs/memroute.log)"
    FAILED=1
fi
if grep -qiE 'panic' "$OUT/logs/memroute.log"; then
    log "FAIL: memroute logged a panic:"
    grep -iE -m5 'panic' "$OUT/logs/memroute.log" >&2
    FAILED=1
fi
[ "$KILLS" -ge 1 ] || [ "$FAULTS" = 0 ] || { log "FAIL: no kill/restart cycle fitted in ${DURATION}s"; FAILED=1; }

REPLICA_ARGS=()
if [ "$REPLICATED" = 1 ]; then
    REPLICA_ARGS=("$KILLS" "$COPY_OF_VOLATILE" "$FAILOVERS" "$READ")
fi
python3 - "$OUT/loadgen.json" "${LAST_RESTART:-}" "$RECOVERY" "$OUT/monitor.tsv" "$(nproc)" "$TIMEOUT" \
    "${REPLICA_ARGS[@]}" <<'EOF' || FAILED=1
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    print(f"FAIL: no loadgen report: {e}")
    sys.exit(1)
last_restart = float(sys.argv[2]) if sys.argv[2] else None
recovery = float(sys.argv[3])
bad = []
for k in ("wrong_values", "lost_writes", "stable_errors", "misplaced", "final_lost",
          "connection_errors"):
    if d[k]:
        bad.append(f"{k} = {d[k]}")
vol_errors = d["volatile_get_errors"] + d["volatile_set_errors"]
if last_restart is not None and vol_errors == 0 and d["volatile_misses"] == 0:
    bad.append("the volatile backend's faults were not felt (no volatile errors or misses)")
if d["stable_hits"] == 0 or (d["volatile"] and d["volatile_hits"] == 0):
    bad.append("no hits on stable or on volatile keys")
last = d.get("volatile_unavailable_last_s")
if last is not None and last_restart is not None and last > last_restart + recovery:
    bad.append(f"volatile errors went on until {last:.1f}s, after the last restart at "
               f"{last_restart:.1f}s (+{recovery:.0f}s allowed): memroute did not recover")
if d["final_volatile_unreachable"]:
    bad.append("the volatile backend could not be read at the end")
rep = d.get("replicated")
if len(sys.argv) > 7 and not rep:
    bad.append("--replicated, but the loadgen did not find the replicated route in the config")
if rep:
    kills, vol_copy, failovers, read = sys.argv[7], sys.argv[8], sys.argv[9], sys.argv[10]
    if d["volatile_read_errors"]:
        bad.append(f"volatile_read_errors = {d['volatile_read_errors']}: reads failed "
                   "although the other copy was up")
    if d["volatile"] and last_restart is not None and d["volatile_set_errors"] == 0:
        bad.append("no write to a volatile key failed: the kills were not felt")
    if d["volatile"]:
        seen = d["restarts_detected"].get(d["volatile"])
        if seen != int(kills):
            bad.append(f"the loadgen's probes saw {seen} restarts of the volatile backend, "
                       f"but it was killed and restarted {kills} times")
    if d["volatile"] and int(kills) > 0 and vol_copy == "A" and failovers in ("", "0"):
        bad.append(f"no read failed over to copy B (stats routes soak:failovers = "
                   f"{failovers or 'unknown'}) although copy A's backend was down and cold")
print(f"ops {d['ops']} ({d['ops_per_sec']:.0f}/s), stable get keys {d['stable_get_keys']}, "
      f"volatile get keys {d['volatile_get_keys']}")
print(f"volatile: misses {d['volatile_misses']}, get errors {d['volatile_get_errors']}, "
      f"set errors {d['volatile_set_errors']} (timeouts {d['volatile_timeouts']}), "
      f"stale {d['volatile_stale']}; last non-timeout error at "
      f"{last if last is None else round(last, 1)}s, last restart at {last_restart}s")
print(f"failures: wrong values {d['wrong_values']}, lost writes {d['lost_writes']} "
      f"(misses {d['stable_misses_after_write'] + d.get('volatile_misses_after_write', 0)}, "
      f"stale {d['stable_stale_reads'] + d.get('volatile_stale_reads', 0)}), "
      f"stable-key errors {d['stable_errors']} (timeouts {d['stable_timeouts']}), "
      f"misplaced {d['misplaced']}, lost in final read {d['final_lost']}, "
      f"connection errors {d['connection_errors']}")
if rep:
    copies = "; ".join(f"{c['pool']}: {', '.join(c['servers'])}" for c in rep["copies"])
    print(f"replicated route {rep['route']} (write {rep['write']}, read {rep['read']}): {copies}")
    print(f"replicated: volatile-key read errors {d['volatile_read_errors']}, misses after a "
          f"write {d['volatile_misses_after_write']}, stale {d['volatile_stale_reads']} "
          f"(must be 0); errored writes read back {d['errored_writes_read']}; reads answered "
          f"with a write pipelined after them {d['later_writes_read']}; failovers "
          f"{failovers or 'unknown'}; restarts seen by the probes {d['restarts_detected']}")
    print(f"final (per copy): {d['final_copies_checked']} copies checked, "
          f"{d['final_copies_on_steady_backends']} on backends that never restarted; on the "
          f"restarted backend {d['final_since_restart']} acknowledged since its restart (held), "
          f"{d['final_before_restart_present']} others present, "
          f"{d['final_before_restart_missing']} missing (allowed: it came back empty)")
try:
    import csv
    mon = list(csv.DictReader(open(sys.argv[4]), delimiter="\t"))
except OSError:
    mon = []
if mon:
    loads = [float(r["load1"]) for r in mon]
    print(f"host: load1 max {max(loads):.1f} (median {sorted(loads)[len(loads) // 2]:.1f}) "
          f"on {sys.argv[5]} cpus; memroute fds {mon[0]['memroute_fds']} -> "
          f"{mon[-1]['memroute_fds']}, RSS {mon[0]['memroute_rss_kb']} -> "
          f"{mon[-1]['memroute_rss_kb']} kB")
# Healthy backends time out when the whole host stalls (other processes hog the CPUs):
# line each second with failures up with the stalls the load generator measured.
timeout_s = float(sys.argv[6]) / 1000
stalls = d.get("host_stalls", [])
for sec, n in d.get("failure_seconds", {}).items():
    sec = int(sec)
    near = [s for s in stalls if sec - 2 <= s["at_s"] <= sec + 1]
    worst = max((s["ms"] for s in near), default=0)
    why = (f"host stall of {worst} ms around it" if worst >= timeout_s * 1000 * 0.5
           else f"no host stall near it (worst {worst} ms)")
    print(f"  failures in second {sec}: {n}; {why}")
if d["stable_timeouts"] or d["volatile_timeouts"]:
    print("NOTE: backend timeouts: with retrieval_failure = miss a timed-out get is a miss, "
          "so stable misses may be timeouts; check the host load in monitor.tsv")
for b in bad:
    print("FAIL: " + b)
sys.exit(1 if bad else 0)
EOF

log "results in $OUT"
[ "$FAILED" = 0 ] || die "soak FAILED"
if [ "$REPLICATED" = 1 ]; then
    log "soak PASSED (replicated, read $READ): $KILLS kill/restart cycles of backend $VOLATILE (copy $COPY_OF_VOLATILE), no failed or missed read, no stale value, no loss, no misrouting"
else
    log "soak PASSED: $KILLS kill/restart cycles of backend $VOLATILE, no loss, no misrouting"
fi
