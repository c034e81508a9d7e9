"""Shared by the Python drivers in this folder: the data set every driver writes and
reads back, checks that stop at the first mismatch, and the command line.

The data set (the same in the Perl and PHP drivers, see README.md): 2,000 keys under a
random per-run prefix, every 25th one long (up to 250 bytes); values of random bytes
(every byte value, \\r\\n included), mostly 1-200 bytes, every 10th 1-10 KiB, every 80th
100-600 KB (25 keys), every 500th empty.
"""

import random
import sys
import time

N_KEYS = 2000
MAX_KEY = 250


class Failure(Exception):
    pass


def fail(msg):
    raise Failure(msg)


def check(cond, msg):
    if not cond:
        fail(msg)


def missing_module(module, package):
    print(
        f"FAIL: python module {module} is missing for /usr/bin/python3 (Debian package"
        f" {package}): run scripts/test.sh, which installs it",
        file=sys.stderr,
    )
    sys.exit(3)


class Options:
    """A driver's command line: the server addresses, whether to call stats, and for the
    drivers that take them, `--binary` (speak the binary protocol) and
    `--backends=HOST:PORT,...` (the servers behind a proxy, read directly to verify the
    data landed where libmemcached's weighted ketama puts it)."""

    def __init__(self, servers, with_stats, binary, backends):
        self.servers = servers
        self.with_stats = with_stats
        self.binary = binary
        self.backends = backends


def parse_options(usage, binary=False):
    """Reads the command line; `binary`: the driver also takes `--binary` and
    `--backends=...`. Exits 2 on bad usage."""
    args = sys.argv[1:]
    flags = [a for a in args if a.startswith("-")]
    servers = [a for a in args if not a.startswith("-")]
    allowed = {"--no-stats"} | ({"--binary"} if binary else set())
    backends = []
    for f in flags:
        if binary and f.startswith("--backends="):
            backends = [b for b in f[len("--backends="):].split(",") if b]
            allowed.add(f)
    extra = " [--binary] [--backends=HOST:PORT,...]" if binary else ""
    if (
        not servers
        or any(":" not in s for s in servers + backends)
        or set(flags) - allowed
    ):
        print(f"usage: {usage} [--no-stats]{extra} HOST:PORT [HOST:PORT ...]", file=sys.stderr)
        sys.exit(2)
    return Options(servers, "--no-stats" not in flags, "--binary" in flags, backends)


def parse_args(usage):
    """The server addresses (host:port) from the command line, and whether `--no-stats`
    was given (skip the stats calls: twemproxy closes the connection on `stats`)."""
    o = parse_options(usage)
    return o.servers, o.with_stats


def prefix(lib):
    """A key prefix unique to this run, so parallel runs never share keys."""
    return "rc-%016x-%s" % (random.getrandbits(64), lib)


def value_size(i):
    if i % 80 == 7:
        return 100_000 + (i * 7919) % 500_000
    if i % 500 == 1:
        return 0
    if i % 10 == 3:
        return 1024 + (i * 31) % 9217
    return 1 + (i * 13) % 200


def dataset(pfx, n=N_KEYS):
    """[(key, value)] in order: `n` keys of the sizes above, random bytes."""
    rng = random.Random()
    out = []
    for i in range(n):
        key = "%s:%d" % (pfx, i)
        if i % 25 == 0:
            key += ":" + "k" * (120 + i % 90)
        check(len(key) <= MAX_KEY, f"test bug: key of {len(key)} bytes")
        out.append((key, rng.randbytes(value_size(i))))
    return out


def misses(pfx, n=20):
    return ["%s:missing:%d" % (pfx, i) for i in range(n)]


def with_misses(keys, missing):
    """`keys` with the missing keys spread among them."""
    out = list(keys)
    step = max(1, len(out) // (len(missing) + 1))
    for j, m in enumerate(missing):
        out.insert(min(len(out), (j + 1) * step + j), m)
    return out


def short(key):
    """A key for messages: long ones cut to their start and length."""
    return key if len(key) <= 60 else "%s...(%d bytes)" % (key[:48], len(key))


def describe(v):
    if v is None:
        return "None"
    if isinstance(v, (bytes, bytearray)) and len(v) > 40:
        return "%d bytes %r..." % (len(v), bytes(v[:40]))
    return repr(v)


def check_value(what, key, got, want):
    if got != want:
        detail = ""
        if isinstance(got, (bytes, bytearray)) and isinstance(want, (bytes, bytearray)):
            first = next(
                (i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                min(len(got), len(want)),
            )
            detail = f" (lengths {len(got)} vs {len(want)}, first difference at byte {first})"
        fail(f"{what}: key {short(key)}: got {describe(got)}, want {describe(want)}{detail}")


def check_multi_get(what, got, data, missing):
    """`got` (key -> value) must hold every key of `data` with its exact value and none
    of `missing`."""
    check(isinstance(got, dict), f"{what}: returned {type(got).__name__}, not a dict")
    absent = [k for k, _ in data if k not in got]
    if absent:
        fail(
            f"{what}: {len(absent)} of {len(data)} keys missing from the reply"
            f" (got {len(got)}), e.g. {[short(k) for k in absent[:3]]}"
        )
    for k, v in data:
        check_value(what, k, got[k], v)
    extra = [k for k in missing if k in got]
    check(not extra, f"{what}: keys never written came back: {[short(k) for k in extra[:3]]}")
    extra = set(got) - {k for k, _ in data}
    check(not extra, f"{what}: unexpected keys in the reply: {[short(k) for k in sorted(extra)[:3]]}")


class Report:
    """Collects one line per step; printed at the end (or before the failure)."""

    def __init__(self, lib):
        self.lib = lib
        self.lines = []
        self.start = time.monotonic()

    def note(self, line):
        self.lines.append(line)

    def timed(self, label, f):
        t = time.monotonic()
        out = f()
        self.note("%s: %.2f s" % (label, time.monotonic() - t))
        return out

    def dump(self, stream=sys.stdout):
        for line in self.lines:
            print(f"{self.lib}: {line}", file=stream)
        stream.flush()


def run(lib, body):
    """Runs `body(report)`; exit 0 when it returns, 1 with the reason at the first
    mismatch or exception."""
    report = Report(lib)
    try:
        body(report)
    except Failure as e:
        report.dump()
        print(f"FAIL {lib}: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # a library exception is a failure too, with its type
        report.dump()
        import traceback

        traceback.print_exc()
        print(f"FAIL {lib}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    report.note("OK in %.2f s" % (time.monotonic() - report.start))
    report.dump()


def looks_like_version(v):
    """A version string that parses as memcached's `major.minor.patch` with major >= 1
    (libmemcached refuses a major version of 0)."""
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    parts = v.split(".")
    if len(parts) < 3:
        return False
    try:
        major = int(parts[0])
        int(parts[1])
        int("".join(c for c in parts[2] if c.isdigit()) or "x")
    except ValueError:
        return False
    return major >= 1


TOUCH_WAIT = 3.2


# The checks below are the ones every Python driver makes alike; `mc` is the library's
# client, `k(name)` the run's key for `name`. What the libraries answer differs, so the
# drivers pass how to read an answer: pymemcache and pylibmc answer a store with True or
# False, python-memcached with something true or false (0 when the server is unreachable).


def is_true(r):
    return r is True


def is_false(r):
    return r is False


def is_falsy(r):
    return not r


def returns_none(f):
    """Whether `f()` answered None: how python-memcached and pymemcache report a missing
    key to incr and decr (pylibmc raises NotFound)."""
    return f() is None


def check_data_set(report, pfx, mc, set_multi, get_multi):
    """Writes the data set with the library's multi-set (its method named `set_multi`) and
    reads it all back with its multi-get (`get_multi`) in one call, the never-written keys
    spread among them. Returns (data, missing, asked) for further reads."""
    data = dataset(pfx)
    missing = misses(pfx)
    total = sum(len(v) for _, v in data)
    failed = report.timed(
        f"{set_multi} of {len(data)} keys, {total} bytes",
        lambda: getattr(mc, set_multi)(dict(data)),
    )
    # Every library answers a list of the keys not stored.
    check(failed == [], f"{set_multi}: {len(failed)} keys not stored, e.g. {failed[:3]}")
    asked = with_misses([key for key, _ in data], missing)
    got = report.timed(
        f"{get_multi} of {len(asked)} keys ({len(missing)} missing)",
        lambda: getattr(mc, get_multi)(asked),
    )
    check_multi_get(get_multi, got, data, missing)
    return data, missing, asked


def check_add_replace(mc, k, done=is_true, refused=is_false, replace_refused=None):
    """add and replace, each succeeding and refused. `replace_refused(call)`: whether the
    replace of a missing key that `call()` makes was refused (default: `refused` of its
    answer; pylibmc over the binary protocol raises NotFound instead)."""
    check(done(mc.add(k("add"), b"first")), "add of a new key failed")
    check(refused(mc.add(k("add"), b"second")), "add of an existing key succeeded")
    check_value("get after add", k("add"), mc.get(k("add")), b"first")
    replace_refused = replace_refused or (lambda call: refused(call()))
    check(
        replace_refused(lambda: mc.replace(k("replace"), b"x")),
        "replace of a missing key succeeded",
    )
    check(mc.get(k("replace")) is None, "replace of a missing key stored it")
    check(mc.set(k("replace"), b"old"), "set failed")
    check(done(mc.replace(k("replace"), b"new")), "replace of an existing key failed")
    check_value("get after replace", k("replace"), mc.get(k("replace")), b"new")


def check_append_prepend(mc, k, done=is_true, refused=is_false):
    """append and prepend, also to a missing key (refused)."""
    check(mc.set(k("ap"), b"mid"), "set failed")
    check(done(mc.append(k("ap"), b"-end")), "append failed")
    check(done(mc.prepend(k("ap"), b"start-")), "prepend failed")
    check_value("get after append/prepend", k("ap"), mc.get(k("ap")), b"start-mid-end")
    check(refused(mc.append(k("ap-missing"), b"x")), "append to a missing key succeeded")
    check(refused(mc.prepend(k("ap-missing"), b"x")), "prepend to a missing key succeeded")


def check_cas_tokens(mc, other, k):
    """cas with explicit tokens (pymemcache, pylibmc): gets + cas succeeds; the used token
    and a token gone stale (`other` wrote in between) fail and leave `other`'s value.
    Returns the stale token, for the driver's cas of a missing key."""
    check(mc.set(k("cas"), b"v1"), "set failed")
    value, token = mc.gets(k("cas"))
    check_value("gets", k("cas"), value, b"v1")
    check(mc.cas(k("cas"), b"v2", token) is True, "cas with a fresh token failed")
    check_value("get after cas", k("cas"), mc.get(k("cas")), b"v2")
    check(mc.cas(k("cas"), b"v3", token) is False, "cas with a used token succeeded")
    value, token = mc.gets(k("cas"))
    check(other.set(k("cas"), b"other"), "set by the other client failed")
    check(mc.cas(k("cas"), b"v3", token) is False, "cas with a stale token succeeded")
    check_value("get after stale cas", k("cas"), mc.get(k("cas")), b"other")
    return token


def check_incr_decr(mc, k, not_found):
    """incr and decr: decr below 0 clamps to 0, incr of 2**64-1 wraps to 0; of a missing
    key `not_found(call)` must hold (the libraries report it differently)."""
    check(mc.set(k("n"), b"10"), "set failed")
    check(mc.incr(k("n"), 5) == 15, "incr 10 + 5")
    check(mc.decr(k("n"), 3) == 12, "decr 15 - 3")
    got = mc.decr(k("n"), 100)
    check(got == 0, f"decr 12 - 100 should clamp to 0, got {got!r}")
    # memcached shrinks a number in place, padding with spaces: "12" decremented to 0
    # reads back "0 ".
    got = mc.get(k("n"))
    check(got is not None and int(got) == 0, f"get after decr: {got!r}")
    check(not_found(lambda: mc.incr(k("n-missing"), 1)), "incr of a missing key")
    check(not_found(lambda: mc.decr(k("n-missing"), 1)), "decr of a missing key")
    check(mc.set(k("big"), b"18446744073709551615"), "set failed")
    got = mc.incr(k("big"), 1)
    check(got == 0, f"incr of 2**64-1 should wrap to 0, got {got!r}")


def check_delete(mc, k):
    """delete of an existing and a missing key (pymemcache, pylibmc: True / False)."""
    check(mc.delete(k("add")) is True, "delete of an existing key failed")
    check(mc.get(k("add")) is None, "deleted key still there")
    check(mc.delete(k("add")) is False, "delete of a missing key succeeded")


def noreply_batch(k):
    """The keys the drivers multi-set with noreply (nr-0 and nr-1 then multi-deleted)."""
    return {k("nr-%d" % i): b"noreply-%d" % i for i in range(50)}


def check_noreply_applied(mc, get_multi, k, nr, extra=None):
    """After the driver's noreply writes (`nr` multi-set, nr-0 and nr-1 multi-deleted,
    nr-set set, nr-add added, nr-rep r0 replaced by r1, nr-ap m appended > and prepended <,
    nr-n 100 incremented by 11 and decremented by 1, nr-del deleted, and `extra`): one
    multi-get (the method named `get_multi`) on the same client proves each happened."""
    want = dict(nr)
    del want[k("nr-0")], want[k("nr-1")]
    want.update(
        {
            k("nr-set"): b"s",
            k("nr-add"): b"a",
            k("nr-rep"): b"r1",
            k("nr-ap"): b"<m>",
            k("nr-n"): b"110",
        }
    )
    want.update(extra or {})
    gone = [k("nr-0"), k("nr-1"), k("nr-del")]
    got = getattr(mc, get_multi)(list(want) + gone)
    check_multi_get(f"{get_multi} after noreply writes", got, list(want.items()), gone)


def check_get_stats(report, mc, servers, show=str):
    """get_stats (python-memcached, pylibmc): every server answers, none empty; notes each
    server's version (neither library has a version call), its name written by `show`."""
    stats = mc.get_stats()
    check(len(stats) == len(servers), f"get_stats: {len(stats)} servers answered")
    for name, s in stats:
        check(s, f"get_stats: empty stats from {name}")
        report.note(
            f"get_stats {show(name)}: {len(s)} stats, version={s.get('version')!r},"
            f" curr_connections={s.get('curr_connections')!r}"
        )


def check_touch_effect(report, mc, k, touched_at):
    """Once TOUCH_WAIT has passed since `touched_at`: the key touched to 0 outlived its ttl
    of 2 s, the key touched to 1 s expired (likewise the ones touched with noreply)."""
    time.sleep(max(0.0, touched_at + TOUCH_WAIT - time.monotonic()))
    check_value("get after touch 0", k("touch-keep"), mc.get(k("touch-keep")), b"keep")
    check(mc.get(k("touch-expire")) is None, "key touched with ttl 1 did not expire")
    check(mc.get(k("nr-touch")) == b"t", "key touched to 0 with noreply expired")
    check(mc.get(k("nr-touch-expire")) is None, "key touched to 1 with noreply did not expire")
    report.note("touch (and touch noreply) extended and shortened ttls")
