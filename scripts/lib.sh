# Helpers shared by scripts/bench.sh and scripts/soak.sh (sourced; they define `die`).

# Prints N free loopback ports, below the kernel's ephemeral range (32768+) so that no
# outgoing connection (our own readiness probes included) can be holding one when a server
# binds it.
free_ports() {
    python3 - "$1" <<'PY'
import random, socket, sys
socks, port = [], random.randrange(20000, 30000)
while len(socks) < int(sys.argv[1]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        socks.append(s)
    except OSError:
        s.close()
    port += 1
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# wait_port PID PORT: waits until PORT accepts connections (10 s at most) while PID lives.
wait_port() {
    local i
    for i in $(seq 1 200); do
        kill -0 "$1" 2>/dev/null || die "process $1 exited before listening on $2"
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    die "nothing listening on port $2 after 10 s"
}
