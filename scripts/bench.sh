#!/usr/bin/env bash
# Side-by-side benchmark: memcached direct vs twemproxy vs memroute, and
# memcached vs memroute's embedded cache.
#
# Usage (from the repo root): scripts/bench.sh [--quick] [--reps N] [--duration S]
#                                              [--workloads a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,t]
#   a  get90, 50 conns, depth 1          d  set-heavy (10% gets), 4 KiB values
#   b  get90, 50 conns, depth 16         e  1 conn, depth 1 (added latency)
#   c  10-key multiget, 50 conns         f  proxy RSS holding N idle connections
#   m  get90, a new connection per request, 50 clients (short-lived, PHP-style)
#   n  get90, 100 KB values, 20 conns    o  get90, 1 MB values, 10 conns
#  g-i: memcached (direct, -t 1) vs memroute --embedded --threads 1, no proxying:
#   g  get90, 50 conns, depth 1          i  set-heavy (10% gets), 50 conns, depth 1
#   h  get90, 50 conns, depth 16
#  j-k: meta protocol, memcached direct vs memroute (twemproxy has no meta: n/a):
#   j  quiet gets: batches of 16 `mg <key> v q k` + `mn`, 50 conns
#   k  `ms <key> <len> T0 F<flags>` / `mg <key> v`, 10% writes, 50 conns, depth 1
#  l: binary protocol, memcached direct vs memroute (twemproxy has no binary: n/a):
#   l  Get / Set packets (opaques checked), 10% sets, 50 conns, depth 1
#  t: TLS clients:
#   t  get90, 50 conns, depth 1, 100-byte values: memcached -Z direct (its own process)
#      vs memroute with a TLS listener (plaintext upstream) vs memroute plaintext;
#      throwaway CA and certificate (openssl) in the results dir, handshakes done first
# Server side (3 memcached backends + proxies + embedded memroute; for t also the TLS
# memcached and memroute) is pinned to CPU 0, the load generator to CPU 1. Runs are
# interleaved (for rep: for target) so drift hits every target alike. Results land in
# bench-results/<timestamp>/.
# Env: MEMROUTE_BIN, LOADGEN_BIN use prebuilt binaries instead of cargo.
# Exits non-zero on any verification/connection error or crash, never on
# performance numbers.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=5
DUR=10
WARM=1
IDLE=10000
WORKLOADS=a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,t
QUICK=0
CMDLINE="$0 $*"

usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1; REPS=1; DUR=2; WARM=0.5; IDLE=1000 ;;
    --reps) REPS="$2"; shift ;;
    --duration) DUR="$2"; shift ;;
    --warmup) WARM="$2"; shift ;;
    --idle) IDLE="$2"; shift ;;
    --workloads) WORKLOADS="$2"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { echo "[bench] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- prerequisites ----------------------------------------------------------
WANT_TLS=0
[[ ",$WORKLOADS," == *,t,* ]] && WANT_TLS=1
missing=()
command -v memcached >/dev/null || missing+=(memcached)
[ $WANT_TLS = 0 ] || command -v openssl >/dev/null || missing+=(openssl)
command -v nutcracker >/dev/null || [ -x /usr/sbin/nutcracker ] || missing+=(nutcracker)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "need root to install: ${missing[*]}"
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NUTCRACKER=$(command -v nutcracker || echo /usr/sbin/nutcracker)
command -v python3 >/dev/null || die "python3 is required for the report"
command -v taskset >/dev/null || die "taskset (util-linux) is required"

# --- binaries ---------------------------------------------------------------
is_memroute_repo=0
grep -qs '^name = "memroute"' Cargo.toml && is_memroute_repo=1
build=()
[ -z "${LOADGEN_BIN:-}" ] && build+=(--example loadgen)
[ -z "${MEMROUTE_BIN:-}" ] && [ $is_memroute_repo = 1 ] && build+=(--bin memroute)
if [ ${#build[@]} -gt 0 ]; then
    [ $is_memroute_repo = 1 ] || die "run from the memroute repo root or set LOADGEN_BIN"
    log "cargo build --release ${build[*]}"
    cargo build --release "${build[@]}"
fi
LOADGEN=${LOADGEN_BIN:-target/release/examples/loadgen}
MEMROUTE=${MEMROUTE_BIN:-target/release/memroute}
[ -x "$LOADGEN" ] || die "loadgen binary not found: $LOADGEN"
TARGETS=(direct twemproxy memroute)
if [ ! -x "$MEMROUTE" ]; then
    log "NOTE: no memroute binary ($MEMROUTE): memroute and embedded rows skipped"
    TARGETS=(direct twemproxy)
    MEMROUTE=""
fi

# Idle-connection runs need ~IDLE descriptors in the proxy and in loadgen;
# children inherit this limit.
want=$((IDLE + 1024))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then want=$hard; fi
ulimit -n "$want" || true
[ "$(ulimit -n)" -ge $((IDLE + 100)) ] || log "WARNING: ulimit -n $(ulimit -n) is low for $IDLE idle connections"

# --- output -----------------------------------------------------------------
TS=$(date +%Y%m%d-%H%M%S)
OUT=bench-results/$TS
mkdir -p "$OUT/runs" "$OUT/logs"
{
    echo "date: $(date -Is)"
    echo "command: $CMDLINE"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo none)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "memcached: $(memcached -V 2>&1 | head -1)"
    echo "nutcracker: $("$NUTCRACKER" -V 2>&1 | head -1)"
    echo "memroute: $([ -n "$MEMROUTE" ] && "$MEMROUTE" --version 2>&1 | head -1 || echo skipped)"
    echo "loadgen: $LOADGEN"
    echo "reps: $REPS  duration: ${DUR}s  warmup: ${WARM}s  idle: $IDLE  quick: $QUICK"
    [ $WANT_TLS = 0 ] || echo "openssl: $(openssl version 2>&1 | head -1)"
    echo "kernel: $(uname -r)  cpus: $(nproc)"
} >"$OUT/meta.txt"
cat "$OUT/meta.txt" >&2

# --- processes --------------------------------------------------------------
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_ports, wait_port.
. scripts/lib.sh # (the working directory is the repo root)

read -r B1 B2 B3 TW_PORT TW_STATS MR_PORT EM_PORT MCT_PORT MRT_PORT <<<"$(free_ports 9)"
BACKENDS=("$B1" "$B2" "$B3")
BPIDS=()
mc_user=()
[ "$(id -u)" = 0 ] && mc_user=(-u root) # memcached refuses root without -u
for p in "${BACKENDS[@]}"; do
    taskset -c 0 memcached "${mc_user[@]}" -p "$p" -t 1 -U 0 -l 127.0.0.1 -m 256 \
        >"$OUT/logs/memcached-$p.log" 2>&1 &
    BPIDS+=($!)
    PIDS+=($!)
done
for i in 0 1 2; do wait_port "${BPIDS[$i]}" "${BACKENDS[$i]}"; done

cat >"$OUT/twemproxy.yml" <<EOF
memroute_bench:
  listen: 127.0.0.1:$TW_PORT
  hash: fnv1a_64
  distribution: ketama
  timeout: 2000
  server_connections: 1
  auto_eject_hosts: false
  servers:
   - 127.0.0.1:$B1:1
   - 127.0.0.1:$B2:1
   - 127.0.0.1:$B3:1
EOF
taskset -c 0 "$NUTCRACKER" -c "$OUT/twemproxy.yml" -s "$TW_STATS" -a 127.0.0.1 \
    -o "$OUT/logs/twemproxy.log" &
TW_PID=$!
PIDS+=($TW_PID)
wait_port $TW_PID "$TW_PORT"

MR_PID=""
if [ -n "$MEMROUTE" ]; then
    taskset -c 0 "$MEMROUTE" --listen "127.0.0.1:$MR_PORT" \
        --server "127.0.0.1:$B1:1" --server "127.0.0.1:$B2:1" --server "127.0.0.1:$B3:1" \
        --hash fnv1a_64 --distribution ketama --threads 1 >"$OUT/logs/memroute.log" 2>&1 &
    MR_PID=$!
    PIDS+=($MR_PID)
    wait_port "$MR_PID" "$MR_PORT"
fi

# memroute's embedded cache: a memcached replacement in its own right, compared
# with one memcached -t 1 (the "direct" target) in workloads g-i.
EM_PID=""
if [ -n "$MEMROUTE" ]; then
    taskset -c 0 "$MEMROUTE" --listen "127.0.0.1:$EM_PORT" --embedded --memory 256mb \
        --threads 1 >"$OUT/logs/embedded.log" 2>&1 &
    EM_PID=$!
    PIDS+=($EM_PID)
    wait_port "$EM_PID" "$EM_PORT"
fi

# Workload t (TLS clients): a throwaway CA and a certificate for localhost and 127.0.0.1,
# served by memcached -Z (a fourth memcached of its own, so the plaintext backends stay
# plaintext) and by a second memroute whose pool listener has tls_cert/tls_key, in front
# of the same three plaintext backends as the plaintext memroute.
MCT_PID=""
MRT_PID=""
TLS_DIR="$PWD/$OUT/tls" # absolute: it goes into memcached's and memroute's settings
if [ $WANT_TLS = 1 ]; then
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj "/CN=memroute bench CA" -keyout ca.key -out ca.pem
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=localhost" -keyout key.pem -out server.csr
        printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
            "keyUsage=digitalSignature" "extendedKeyUsage=serverAuth" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out cert.pem
        cat cert.pem ca.pem >chain.pem
        openssl verify -CAfile ca.pem cert.pem
    ) >"$OUT/logs/openssl.log" 2>&1 || die "openssl could not make the test certificates (see $OUT/logs/openssl.log)"

    taskset -c 0 memcached "${mc_user[@]}" -p "$MCT_PORT" -t 1 -U 0 -l 127.0.0.1 -m 256 \
        -Z -o "ssl_chain_cert=$TLS_DIR/chain.pem,ssl_key=$TLS_DIR/key.pem" \
        >"$OUT/logs/memcached-tls-$MCT_PORT.log" 2>&1 &
    MCT_PID=$!
    PIDS+=($MCT_PID)
    wait_port "$MCT_PID" "$MCT_PORT"

    if [ -n "$MEMROUTE" ]; then
        # The plaintext memroute's flags, as a file (a TLS listener needs one).
        cat >"$OUT/memroute-tls.toml" <<EOF
threads = 1

[pools.bench]
listen = "127.0.0.1:$MRT_PORT"
hash = "fnv1a_64"
distribution = "ketama"
servers = ["127.0.0.1:$B1:1", "127.0.0.1:$B2:1", "127.0.0.1:$B3:1"]
tls_cert = "$TLS_DIR/chain.pem"
tls_key = "$TLS_DIR/key.pem"
EOF
        "$MEMROUTE" --config "$OUT/memroute-tls.toml" --check >"$OUT/logs/memroute-tls-check.log" 2>&1 ||
            die "memroute refuses a TLS listener (tls_cert/tls_key): $(head -3 "$OUT/logs/memroute-tls-check.log")"
        taskset -c 0 "$MEMROUTE" --config "$OUT/memroute-tls.toml" \
            >"$OUT/logs/memroute-tls.log" 2>&1 &
        MRT_PID=$!
        PIDS+=($MRT_PID)
        wait_port "$MRT_PID" "$MRT_PORT"
    fi
fi

target_port() {
    case $1 in
    direct) echo "$B1" ;; # one backend: the no-proxy reference
    twemproxy) echo "$TW_PORT" ;;
    memroute) echo "$MR_PORT" ;;
    embedded) echo "$EM_PORT" ;;
    direct-tls) echo "$MCT_PORT" ;;
    memroute-tls) echo "$MRT_PORT" ;;
    esac
}
# Extra loadgen options of a target: TLS targets trust the test CA.
target_args() {
    case $1 in
    direct-tls | memroute-tls) echo "--tls-ca $TLS_DIR/ca.pem --tls-name localhost" ;;
    esac
}
proxy_pid() {
    case $1 in
    twemproxy) echo "$TW_PID" ;;
    memroute) echo "$MR_PID" ;;
    memroute-tls) echo "$MRT_PID" ;;
    *) echo "" ;;
    esac
}
# Targets of a workload: g-i compare the cache servers themselves; j-k (meta protocol) and
# l (binary protocol), which twemproxy does not speak, memcached direct and memroute.
workload_targets() {
    case $1 in
    g | h | i) echo direct ${EM_PID:+embedded} ;;
    j | k | l) echo direct ${MR_PID:+memroute} ;;
    t) echo direct-tls ${MRT_PID:+memroute-tls} ${MR_PID:+memroute} ;;
    *) echo "${TARGETS[@]}" ;;
    esac
}
# Processes whose CPU counts as server side. a-e, j-l: proxy + all backends;
# g-i: the serving process alone (memcached B1 for direct, memroute for embedded);
# t: memcached -Z alone for direct-tls, else proxy + all backends.
server_pids() { # workload target
    [ "$2" = direct-tls ] && { echo "$MCT_PID"; return; }
    case $1 in
    g | h | i)
        case $2 in
        direct) echo "${BPIDS[0]}" ;;
        embedded) echo "$EM_PID" ;;
        esac
        ;;
    *) echo "$(proxy_pid "$2")" "${BPIDS[@]}" ;;
    esac
}

# utime+stime in clock ticks (fields 14, 15; strip "pid (comm)" first).
ticks() {
    local t=0 p
    for p in "$@"; do
        [ -n "$p" ] || continue
        t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo $t
}

check_alive() {
    local p
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || die "server process $p died (see $OUT/logs)"; done
}

workload_args() {
    case $1 in
    a) echo "--connections 50 --depth 1 --get-ratio 0.9" ;;
    b) echo "--connections 50 --depth 16 --get-ratio 0.9" ;;
    c) echo "--connections 50 --depth 1 --get-ratio 1 --multiget 10" ;;
    d) echo "--connections 50 --depth 1 --get-ratio 0.1 --value-size 4096" ;;
    e) echo "--connections 1 --depth 1 --get-ratio 0.9" ;;
    m) echo "--connections 50 --depth 1 --get-ratio 0.9 --reconnect" ;;
    # Few keys: every value fits the backends' memory (3 x 256 MB) at once.
    n) echo "--connections 20 --depth 1 --get-ratio 0.9 --value-size 102400 --keys 1000" ;;
    o) echo "--connections 10 --depth 1 --get-ratio 0.9 --value-size 1000000 --keys 100" ;;
    g) echo "--connections 50 --depth 1 --get-ratio 0.9" ;;
    h) echo "--connections 50 --depth 16 --get-ratio 0.9" ;;
    i) echo "--connections 50 --depth 1 --get-ratio 0.1" ;;
    # A batch of --depth quiet mg ends with mn; each mg counts as one op.
    j) echo "--protocol meta --meta-quiet --connections 50 --depth 16 --get-ratio 1" ;;
    k) echo "--protocol meta --connections 50 --depth 1 --get-ratio 0.9" ;;
    l) echo "--protocol binary --connections 50 --depth 1 --get-ratio 0.9" ;;
    t) echo "--connections 50 --depth 1 --get-ratio 0.9 --value-size 100" ;;
    esac
}

FAILED=0
RUNS="$OUT/runs.tsv"
printf 'workload\trep\ttarget\tjson\trc\tproxy_cpu_s\tserver_cpu_s\n' >"$RUNS"
CLK_TCK=$(getconf CLK_TCK)

# Idle connections first, on fresh proxies: after the workloads the memory their buffers
# freed is still mapped, idle connections reuse it, and the cost per connection would
# read as a few bytes.
IDLE_TSV="$OUT/idle.tsv"
printf 'target\tconnections\trss_before_kb\trss_kb\trc\n' >"$IDLE_TSV"
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
if [[ ",$WORKLOADS," == *,f,* ]]; then
    for t in "${TARGETS[@]}"; do
        [ "$t" = direct ] && continue
        pp=$(proxy_pid "$t")
        before=$(rss_kb "$pp")
        out="$OUT/logs/idle-$t.out"
        taskset -c 1 "$LOADGEN" --target "127.0.0.1:$(target_port "$t")" \
            --idle-connections "$IDLE" --duration 2 --json "$OUT/runs/idle-$t.json" \
            >"$out" 2>"$OUT/logs/idle-$t.err" &
        lg=$!
        for _ in $(seq 1 1200); do
            grep -q '^READY' "$out" 2>/dev/null && break
            kill -0 $lg 2>/dev/null || break
            sleep 0.05
        done
        after=$(rss_kb "$pp")
        rc=0
        wait $lg || rc=$?
        check_alive
        if [ $rc != 0 ]; then
            FAILED=1
            log "FAIL: idle connections on $t exited $rc:"
            head -5 "$OUT/logs/idle-$t.err" >&2
        fi
        printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$IDLE" "$before" "$after" "$rc" >>"$IDLE_TSV"
        log "idle $t: RSS ${before} kB -> ${after} kB with $IDLE connections (rc=$rc)"
    done
fi


for w in ${WORKLOADS//,/ }; do
    [ "$w" = f ] && continue
    args=$(workload_args "$w")
    [ -n "$args" ] || die "unknown workload $w"
    read -r -a wtargets <<<"$(workload_targets "$w")"
    # Prefill once per target so every measured get should hit.
    for t in "${wtargets[@]}"; do
        # shellcheck disable=SC2086
        taskset -c 1 "$LOADGEN" --target "127.0.0.1:$(target_port "$t")" $args $(target_args "$t") \
            --prefill --duration 0 --warmup 0 --quiet --json "$OUT/runs/prefill-$w-$t.json" ||
            { log "prefill $w/$t failed"; FAILED=1; }
    done
    for rep in $(seq 1 "$REPS"); do
        for t in "${wtargets[@]}"; do
            json="$OUT/runs/$w-$t-$rep.json"
            pp=$(proxy_pid "$t")
            read -r -a sp <<<"$(server_pids "$w" "$t")"
            # shellcheck disable=SC2086
            taskset -c 1 "$LOADGEN" --target "127.0.0.1:$(target_port "$t")" $args $(target_args "$t") \
                --duration "$DUR" --warmup "$WARM" --expect-hits --quiet --json "$json" \
                2>"$OUT/logs/$w-$t-$rep.err" &
            lg=$!
            # CPU is sampled over the measured window only (after warm-up).
            sleep "$WARM"
            p0=$(ticks "$pp")
            s0=$(ticks "${sp[@]}")
            rc=0
            wait $lg || rc=$?
            p1=$(ticks "$pp")
            s1=$(ticks "${sp[@]}")
            check_alive
            if [ $rc != 0 ]; then
                FAILED=1
                log "FAIL: workload $w target $t rep $rep exited $rc:"
                cat "$OUT/logs/$w-$t-$rep.err" >&2
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$rep" "$t" "$json" "$rc" \
                "$(awk -v a="$p0" -v b="$p1" -v h="$CLK_TCK" 'BEGIN{print (b-a)/h}')" \
                "$(awk -v a="$s0" -v b="$s1" -v h="$CLK_TCK" 'BEGIN{print (b-a)/h}')" >>"$RUNS"
            log "$w rep $rep $t: rc=$rc $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f ops/s p50 %dus errors %d" % (d["ops_per_sec"], d["p50_us"], d["verification_errors"]))' "$json" 2>/dev/null || echo 'no json')"
        done
    done
done

# --- report -----------------------------------------------------------------
report_rc=0
python3 - "$RUNS" "$IDLE_TSV" <<'EOF' | tee "$OUT/table.txt" || report_rc=$?
import csv, json, statistics, sys

runs = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
idle = list(csv.DictReader(open(sys.argv[2]), delimiter="\t"))
names = {"a": "a) get90 depth 1, 50 conns", "b": "b) get90 depth 16, 50 conns",
         "c": "c) 10-key multiget, 50 conns", "d": "d) set-heavy (10% get), 4 KiB values",
         "e": "e) 1 conn depth 1",
         "m": "m) get90, a new connection per request, 50 clients",
         "n": "n) get90 depth 1, 100 KB values, 20 conns",
         "o": "o) get90 depth 1, 1 MB values, 10 conns",
         "g": "g) embedded vs memcached: get90 depth 1, 50 conns",
         "h": "h) embedded vs memcached: get90 depth 16, 50 conns",
         "i": "i) embedded vs memcached: set-heavy (10% get), 50 conns",
         "j": "j) meta: quiet gets, batches of 16 `mg <key> v q k` + `mn`, 50 conns",
         "k": "k) meta: `ms`/`mg`, 10% writes, depth 1, 50 conns",
         "l": "l) binary: Get/Set, 10% sets, depth 1, 50 conns",
         "t": "t) TLS clients: get90 depth 1, 50 conns, 100 B values"}
# g-i compare memroute's embedded cache with one memcached; a-e compare proxies; j-k
# (meta protocol) and l (binary protocol), which twemproxy does not speak, compare memroute
# with memcached direct.
EMBEDDED_WL = {"g", "h", "i"}
META_WL = {"j", "k", "l"}
BINARY_WL = {"l"}
# t: TLS clients; memcached -Z direct and memroute with a TLS listener, against memroute
# plaintext. Two ratios: memroute TLS / plaintext and memroute TLS / memcached TLS.
TLS_WL = {"t"}
TLS_TARGETS = ["direct-tls", "memroute-tls", "memroute"]
# Each table's last column is the ratio its header names.
RATIO = {"proxy": "mr/tw", "meta": "mr/direct", "embedded": "emb/mc"}
proxy_runs = [r for r in runs if r["workload"] not in EMBEDDED_WL | META_WL | TLS_WL]
targets = [t for t in ("direct", "twemproxy", "memroute") if any(r["target"] == t for r in proxy_runs)] \
    or ["twemproxy", "memroute"]
embedded_targets = [t for t in ("direct", "embedded")
                    if any(r["target"] == t for r in runs if r["workload"] in EMBEDDED_WL)] \
    or ["direct", "embedded"]

def load(r):
    try:
        d = json.load(open(r["json"]))
    except (OSError, ValueError):
        return None
    ops = d["ops"]
    d["proxy_cpu_us"] = float(r["proxy_cpu_s"]) * 1e6 / ops \
        if ops and r["target"] not in ("direct", "direct-tls") else None
    d["server_cpu_us"] = float(r["server_cpu_s"]) * 1e6 / ops if ops else None
    return d

def fmt(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.2f}"

def cell(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-", None
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m), m
    return f"{fmt(m)} ({fmt(min(vals))}-{fmt(max(vals))})", m

def show(table, ratios=1):
    """Prints rows of cells, each column at least as wide as before and 2 wider than
    its widest cell (medians above a million overflowed a fixed width); the last
    `ratios` columns are ratios."""
    widths = [max([24 if i == 0 else 28 if i < len(table[0]) - ratios else 10]
                  + [len(r[i]) + 2 for r in table]) for i in range(len(table[0]))]
    for r in table:
        print("".join(c.ljust(x) for c, x in zip(r, widths)).rstrip())

metrics = [("throughput ops/s", "ops_per_sec"), ("keys/s", "keys_per_sec"),
           ("p50 us", "p50_us"), ("p99 us", "p99_us"), ("p99.9 us", "p999_us"),
           ("proxy CPU-us/req", "proxy_cpu_us"), ("server-side CPU-us/req", "server_cpu_us")]
# g-i: server CPU is the serving process alone (memcached, or memroute --embedded);
# the ratio (embedded / memcached) is given for throughput and CPU only.
embedded_metrics = [("throughput ops/s", "ops_per_sec", True), ("p50 us", "p50_us", False),
                    ("p99 us", "p99_us", False), ("server CPU-us/req", "server_cpu_us", True)]
bad = []
medians = {}
print("medians over reps, (min-max); last column: the ratio its header names, "
      "mr/tw = memroute / twemproxy, mr/direct = memroute / memcached direct, "
      "emb/mc = memroute --embedded / memcached"
      + ("; t: mr-tls/mr = memroute TLS / plaintext, mr-tls/mc-tls = memroute TLS / memcached TLS"
         if any(r["workload"] in TLS_WL for r in runs) else ""))
for w in sorted({r["workload"] for r in runs}):
    rows = [r for r in runs if r["workload"] == w]
    emb = w in EMBEDDED_WL
    meta = w in META_WL
    tls = w in TLS_WL
    # Meta rows keep twemproxy's column, as n/a, to line up with a-e.
    wtargets = embedded_targets if emb else TLS_TARGETS if tls \
        else ["direct", "twemproxy", "memroute"] if meta else targets
    ran = {r["target"] for r in rows}
    data = {t: [] for t in wtargets}
    for r in rows:
        d = load(r)
        # Meta and binary: every key was prefilled, so a quiet read that went unanswered
        # (which loadgen can only count as a miss), or any miss, fails the run too.
        unexpected = meta and d is not None and d["unexpected_misses"]
        if d is None or r["rc"] != "0" or d["verification_errors"] or d["connection_errors"] \
                or unexpected:
            bad.append(f'{w}/{r["target"]}/rep{r["rep"]}: rc={r["rc"]} '
                       f'verification_errors={d and d["verification_errors"]} '
                       f'connection_errors={d and d["connection_errors"]}'
                       + (f' unexpected_misses={d["unexpected_misses"]}' if meta and d else ''))
        if d is not None:
            data[r["target"]].append(d)
    print()
    print(f"{names.get(w, w)}   [{len(rows) // max(len(ran), 1)} reps]")
    head = ["metric"] + wtargets + [RATIO["embedded" if emb else "meta" if meta else "proxy"]]
    if emb:
        print("direct = one memcached -t 1; embedded = memroute --embedded --threads 1; "
              "ratio = embedded / memcached")
        table = [head]
        for label, key, with_ratio in embedded_metrics:
            cells, med = [], {}
            for t in wtargets:
                c, m = cell([d[key] for d in data[t]])
                cells.append(c)
                med[t] = m
            medians[(w, key)] = med
            mc, em = med.get("direct"), med.get("embedded")
            ratio = f"{em / mc:.2f}" if with_ratio and mc and em is not None else "-"
            table.append([label] + cells + [ratio])
        show(table)
        errs = sum(d["verification_errors"] + d["connection_errors"] for t in wtargets for d in data[t])
        print(f"errors (must be 0): {errs}")
        continue
    if tls:
        print("direct-tls = memcached -Z -t 1 (server CPU: itself alone); memroute-tls = memroute "
              "--threads 1 with a TLS listener, plaintext upstream; memroute = plaintext")
        table = [["metric"] + wtargets + ["mr-tls/mr", "mr-tls/mc-tls"]]
        for label, key in metrics:
            if key == "keys_per_sec":
                continue
            cells, med = [], {}
            for t in wtargets:
                c, m = cell([d[key] for d in data[t]])
                cells.append(c)
                med[t] = m
            medians[(w, key)] = med
            mt, mp, mc = med.get("memroute-tls"), med.get("memroute"), med.get("direct-tls")
            table.append([label] + cells
                         + [f"{mt / mp:.2f}" if mp and mt is not None else "-",
                            f"{mt / mc:.2f}" if mc and mt is not None else "-"])
        show(table, ratios=2)
        mt, mp = (medians[(w, "proxy_cpu_us")].get(t) for t in ("memroute-tls", "memroute"))
        if mt is not None and mp is not None:
            print(f"memroute CPU-us/req for TLS: {mt - mp:+.2f} over plaintext ({mt:.2f} vs {mp:.2f})")
        sessions = {t: sorted({d["tls_session"] for d in data[t] if d.get("tls_session")})
                    for t in wtargets if t != "memroute"}
        print("TLS negotiated: " + "; ".join(f"{t} {', '.join(v) or '-'}" for t, v in sessions.items()))
        errs = sum(d["verification_errors"] + d["connection_errors"] for t in wtargets for d in data[t])
        print(f"errors (must be 0): {errs}")
        continue
    if meta:
        print("twemproxy does not speak the %s protocol; mr/direct = memroute / memcached direct"
              % ("binary" if w in BINARY_WL else "meta"))
    table = [head]
    for label, key in metrics:
        if key == "keys_per_sec" and w != "c":
            continue
        cells, med = [], {}
        for t in wtargets:
            s, m = cell([d[key] for d in data[t]])
            cells.append("n/a" if meta and t == "twemproxy" else s)
            med[t] = m
        medians[(w, key)] = med
        base, mr = med.get("direct" if meta else "twemproxy"), med.get("memroute")
        ratio = f"{mr / base:.2f}" if base and mr is not None else "-"
        table.append([label] + cells + [ratio])
    show(table)
    errs = sum(d["verification_errors"] + d["connection_errors"] for t in wtargets for d in data[t])
    if meta:
        miss = sum(d["unexpected_misses"] for t in wtargets for d in data[t])
        print(f"errors (must be 0): {errs}, unexpected misses (must be 0): {miss}")
    else:
        print(f"errors (must be 0): {errs}")

if ("e", "p50_us") in medians:
    med = medians[("e", "p50_us")]
    print()
    print("added latency, p50 of (e) minus direct p50:")
    added = {}
    for t in ("twemproxy", "memroute"):
        if med.get(t) is not None and med.get("direct") is not None:
            added[t] = med[t] - med["direct"]
            print(f"  {t:10s} {added[t]:+.0f} us")
    if len(added) == 2:
        print(f"  ratio memroute / twemproxy: {added['memroute'] / added['twemproxy']:.2f}"
              if added["twemproxy"] else "  ratio: -")

if idle:
    print()
    print("RSS holding idle client connections:")
    rss = {}
    for r in idle:
        if r["rc"] != "0":
            bad.append(f'idle/{r["target"]}: rc={r["rc"]}')
        n = int(r["connections"])
        before, after = int(r["rss_before_kb"] or 0), int(r["rss_kb"] or 0)
        rss[r["target"]] = after
        print(f"  {r['target']:10s} {after / 1024:8.1f} MiB at {n} conns "
              f"(before {before / 1024:.1f} MiB, {(after - before) * 1024 / n:,.0f} B/conn)")
    if "twemproxy" in rss and "memroute" in rss and rss["twemproxy"]:
        print(f"  ratio memroute / twemproxy: {rss['memroute'] / rss['twemproxy']:.2f}")

print()
if bad:
    print("FAILED RUNS (errors must be 0):")
    for b in bad:
        print("  " + b)
    sys.exit(1)
print("all runs: verification errors 0, connection errors 0")
EOF
log "results in $OUT"
[ "$FAILED" = 0 ] && [ "$report_rc" = 0 ] || die "some runs failed (see above)"
