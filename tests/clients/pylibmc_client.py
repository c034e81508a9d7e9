#!/usr/bin/python3
"""Drives a memcached server (or memroute) with pylibmc (Debian python3-pylibmc, over
libmemcached), text protocol. Usage: pylibmc_client.py HOST:PORT [...]
Exits 0 when every check passed, 1 at the first mismatch (with the reason), 3 when the
library is missing."""

import time

import clientlib as lib
from clientlib import check, check_value

try:
    import pylibmc
except ImportError:
    lib.missing_module("pylibmc", "python3-pylibmc")


def client(servers, **behaviors):
    b = {"tcp_nodelay": True, "_poll_timeout": 10000, "connect_timeout": 5000}
    if len(servers) > 1:
        b["ketama"] = True
    b.update(behaviors)
    return pylibmc.Client(servers, binary=False, behaviors=b)


def raises_not_found(f):
    try:
        f()
    except pylibmc.NotFound:
        return True
    return False


def body(report, servers, with_stats):
    mc = client(servers)
    # With the cas behaviour libmemcached sends `gets` for every retrieval.
    casc = client(servers, cas=True)
    other = client(servers)
    pfx = lib.prefix("pylibmc")

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

    # The data set: set_multi, then get_multi (memcached_mget: one get line per server).
    data, missing, asked = lib.check_data_set(report, pfx, mc, "set_multi", "get_multi")
    got = report.timed(
        "get_multi of the same keys with the cas behaviour (a gets line)",
        lambda: casc.get_multi(asked),
    )
    lib.check_multi_get("get_multi (cas)", got, data, missing)

    for key, value in (data[7], data[2]):
        check_value("get", key, mc.get(key), value)

    # add / replace, append / prepend (True or False).
    lib.check_add_replace(mc, k)
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

    # noreply writes (libmemcached's noreply behaviour), then reads on the same client
    # that prove they happened.
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
    if with_stats:
        lib.check_get_stats(report, mc, servers, show=repr)

    # touch's effect, once the ttls have run out.
    lib.check_touch_effect(report, mc, k, touched_at)


def main():
    servers, with_stats = lib.parse_args("pylibmc_client.py")

    def wrapped(report):
        report.note(
            f"pylibmc {pylibmc.__version__} (libmemcached {pylibmc.libmemcached_version})"
            f" against {' '.join(servers)}"
        )
        body(report, servers, with_stats)

    lib.run("pylibmc", wrapped)


main()
