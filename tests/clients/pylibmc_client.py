#!/usr/bin/python3
"""Drives a memcached server (or memroute) with pylibmc (Debian python3-pylibmc, over
libmemcached), text protocol, or with --binary the binary protocol.
Usage: pylibmc_client.py [--no-stats] [--binary] [--backends=H:P,...] HOST:PORT [...]
With --backends (the servers behind a proxy at HOST:PORT), the data set is also read from
the backends directly: every key on exactly one of them, byte for byte, and where
libmemcached's weighted ketama (md5) over them puts it.
Exits 0 when every check passed, 1 at the first mismatch (with the reason), 3 when the
library is missing."""

import time

import clientlib as lib
from clientlib import check, check_value

try:
    import pylibmc
except ImportError:
    lib.missing_module("pylibmc", "python3-pylibmc")

# Set from --binary.
BINARY = False


def client(servers, **behaviors):
    b = {"tcp_nodelay": True, "_poll_timeout": 10000, "connect_timeout": 5000}
    if len(servers) > 1:
        b["ketama"] = True
    b.update(behaviors)
    return pylibmc.Client(servers, binary=BINARY, behaviors=b)


def raises(exc, f):
    try:
        f()
    except exc:
        return True
    return False


def raises_not_found(f):
    return raises(pylibmc.NotFound, f)


def check_binary_extras(report, mc, k):
    """What only the binary protocol reports: a non-numeric incr fails (status 6) and
    leaves the value; a value over 1 MiB is refused (Too large) and the connection
    goes on; a quiet multi-get (GetKQ + Noop) of only misses answers nothing."""
    check(mc.set(k("text"), b"abc"), "set failed")
    check(raises(pylibmc.Error, lambda: mc.incr(k("text"), 1)), "incr of a non-number")
    check_value("get after a failed incr", k("text"), mc.get(k("text")), b"abc")
    huge = b"x" * (1024 * 1024 + 10)
    check(raises(pylibmc.TooBig, lambda: mc.set(k("huge"), huge)), "set of 1 MiB + 10")
    check(mc.get(k("huge")) is None, "a refused value was stored")
    check_value("get after a refused value", k("text"), mc.get(k("text")), b"abc")
    got = mc.get_multi([k("none-%d" % i) for i in range(30)])
    check(got == {}, f"get_multi of missing keys: {got!r}")
    report.note("binary: non-numeric incr refused, 1 MiB + 10 refused, misses-only get_multi")


def check_on_backends(report, backends, data, missing):
    """Reads the data set from the backends directly: each key is on exactly one backend
    with its exact value, and a libmemcached client with weighted ketama (md5, as the
    proxy's pool is configured) over the same backends finds every key."""
    keys = [key for key, _ in data] + missing
    found = {}
    for b in backends:
        direct = pylibmc.Client([b], binary=BINARY, behaviors={"_poll_timeout": 10000})
        got = direct.get_multi(keys)
        twice = [key for key in got if key in found]
        check(not twice, f"keys on two backends: {[lib.short(x) for x in twice[:3]]}")
        found.update(got)
        report.note(f"backend {b} holds {len(got)} of the data set's keys")
    lib.check_multi_get("the backends read directly", found, data, missing)
    ketama = pylibmc.Client(
        backends,
        binary=BINARY,
        behaviors={"ketama_weighted": True, "_poll_timeout": 10000},
    )
    got = ketama.get_multi(keys)
    lib.check_multi_get("get_multi over the backends with weighted ketama", got, data, missing)
    report.note("the data set is on the backends, where libmemcached's weighted ketama puts it")


def body(report, opts):
    servers = opts.servers
    mc = client(servers)
    # With the cas behaviour libmemcached sends `gets` for every retrieval.
    casc = client(servers, cas=True)
    other = client(servers)
    pfx = lib.prefix("pylibmc-binary" if BINARY else "pylibmc")

    def k(name):
        return f"{pfx}:{name}"

    # touch, first: its effect is checked at the end, after the data set's round trip.
    check(mc.set(k("touch-keep"), b"keep", time=2), "set with ttl 2 failed")
    check(mc.touch(k("touch-keep"), 0) is True, "touch of an existing key failed")
    check(mc.set(k("touch-expire"), b"expire"), "set failed")
    check(mc.touch(k("touch-expire"), 1) is True, "touch of an existing key failed")
    check(mc.touch(k("touch-missing"), 1) is False, "touch of a missing key succeeded")
    # The same through a client with libmemcached's noreply behaviour.
    nrc = client(servers, _noreply=True)
    check(mc.set(k("nr-touch"), b"t", time=2), "set with ttl 2 failed")
    nrc.touch(k("nr-touch"), 0)
    check(mc.set(k("nr-touch-expire"), b"t"), "set failed")
    nrc.touch(k("nr-touch-expire"), 1)
    touched_at = time.monotonic()

    # The data set: set_multi, then get_multi (memcached_mget: one get line per server;
    # binary: a GetKQ per key, then a Noop).
    data, missing, asked = lib.check_data_set(report, pfx, mc, "set_multi", "get_multi")
    got = report.timed(
        "get_multi of the same keys with the cas behaviour (a gets line)",
        lambda: casc.get_multi(asked),
    )
    lib.check_multi_get("get_multi (cas)", got, data, missing)
    if opts.backends:
        check_on_backends(report, opts.backends, data, missing)

    for key, value in (data[7], data[2]):
        check_value("get", key, mc.get(key), value)

    # add / replace (True or False; binary: a replace of a missing key raises NotFound),
    # append / prepend (True or False).
    lib.check_add_replace(
        mc, k, replace_refused=raises_not_found if BINARY else None
    )
    lib.check_append_prepend(mc, k)

    # cas with tokens (through the cas client); cas of a missing key raises NotFound.
    token = lib.check_cas_tokens(casc, other, k)
    check(
        raises_not_found(lambda: casc.cas(k("cas-missing"), b"x", token)),
        "cas of a missing key did not raise NotFound",
    )

    # incr / decr (a missing key raises NotFound), delete.
    lib.check_incr_decr(mc, k, raises_not_found)
    lib.check_delete(mc, k)
    if BINARY:
        check_binary_extras(report, mc, k)

    # noreply writes (libmemcached's noreply behaviour; binary: the quiet opcodes), then
    # reads on the same client that prove they happened.
    check(nrc.set(k("nr-rep"), b"r0"), "set failed")
    check(nrc.set(k("nr-ap"), b"m"), "set failed")
    check(nrc.set(k("nr-n"), b"100"), "set failed")
    check(nrc.set(k("nr-del"), b"d"), "set failed")
    nr = lib.noreply_batch(k)
    nrc.set_multi(nr)
    nrc.set(k("nr-set"), b"s")
    nrc.add(k("nr-add"), b"a")
    nrc.replace(k("nr-rep"), b"r1")
    nrc.append(k("nr-ap"), b">")
    nrc.prepend(k("nr-ap"), b"<")
    # With noreply libmemcached returns no real result for incr/decr (2**64-1).
    nrc.incr(k("nr-n"), 11)
    nrc.decr(k("nr-n"), 1)
    nrc.delete(k("nr-del"))
    nrc.delete_multi([k("nr-0"), k("nr-1")])
    lib.check_noreply_applied(nrc, "get_multi", k, nr)
    report.note("noreply set/add/replace/append/prepend/incr/decr/delete applied")

    # stats (pylibmc has no version call; libmemcached's stats carry the version).
    if opts.with_stats:
        lib.check_get_stats(report, mc, servers, show=repr)

    # touch's effect, once the ttls have run out.
    lib.check_touch_effect(report, mc, k, touched_at)


def main():
    global BINARY
    opts = lib.parse_options("pylibmc_client.py", binary=True)
    BINARY = opts.binary
    name = "pylibmc-binary" if BINARY else "pylibmc"

    def wrapped(report):
        report.note(
            f"pylibmc {pylibmc.__version__} (libmemcached {pylibmc.libmemcached_version})"
            f" {'binary' if BINARY else 'text'} protocol against {' '.join(opts.servers)}"
        )
        body(report, opts)

    lib.run(name, wrapped)


main()
