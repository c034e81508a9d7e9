#!/usr/bin/python3
"""Drives a memcached server (or memroute) with pymemcache (Debian python3-pymemcache),
text protocol. Usage: pymemcache_client.py HOST:PORT [...] (one address: base.Client;
several: HashClient). Exits 0 when every check passed, 1 at the first mismatch (with the
reason), 3 when the library is missing."""

import time

import clientlib as lib
from clientlib import check, check_value

try:
    import pymemcache
    from pymemcache.client.base import Client
    from pymemcache.client.hash import HashClient
except ImportError:
    lib.missing_module("pymemcache", "python3-pymemcache")


def client(servers):
    # default_noreply=False: pymemcache's own default sends every write with noreply.
    opts = dict(connect_timeout=5, timeout=10, default_noreply=False)
    if len(servers) == 1:
        host, port = servers[0].rsplit(":", 1)
        return Client((host, int(port)), **opts)
    addrs = [(h, int(p)) for h, p in (s.rsplit(":", 1) for s in servers)]
    return HashClient(addrs, ignore_exc=False, **opts)


def body(report, servers, with_stats):
    mc = client(servers)
    other = client(servers)
    pfx = lib.prefix("pymemcache")

    def k(name):
        return f"{pfx}:{name}"

    # touch, first: its effect is checked at the end, after the data set's round trip.
    check(mc.set(k("touch-keep"), b"keep", expire=2), "set with ttl 2 failed")
    check(mc.touch(k("touch-keep"), 0) is True, "touch of an existing key failed")
    check(mc.set(k("touch-expire"), b"expire"), "set failed")
    check(mc.touch(k("touch-expire"), 1) is True, "touch of an existing key failed")
    check(mc.touch(k("touch-missing"), 1) is False, "touch of a missing key succeeded")
    check(mc.set(k("nr-touch"), b"t", expire=2), "set with ttl 2 failed")
    mc.touch(k("nr-touch"), 0, noreply=True)
    check(mc.set(k("nr-touch-expire"), b"t"), "set failed")
    mc.touch(k("nr-touch-expire"), 1, noreply=True)
    touched_at = time.monotonic()

    # The data set: set_many (every set in one send, then the replies), get_many (one
    # get line).
    data, missing, asked = lib.check_data_set(report, pfx, mc, "set_many", "get_many")
    # gets_many: the same keys with cas uniques (a `gets` line).
    got = report.timed("gets_many of the same keys", lambda: mc.gets_many(asked))
    check(all(isinstance(c, bytes) and c.isdigit() for _, c in got.values()), "cas uniques")
    lib.check_multi_get("gets_many", {key: v for key, (v, _) in got.items()}, data, missing)

    for key, value in (data[7], data[2]):
        check_value("get", key, mc.get(key), value)

    # add / replace, append / prepend (True or False).
    lib.check_add_replace(mc, k)
    lib.check_append_prepend(mc, k)

    # cas with tokens; cas of a missing key is NOT_FOUND (None).
    token = lib.check_cas_tokens(mc, other, k)
    check(mc.cas(k("cas-missing"), b"x", token) is None, "cas of a missing key")

    # incr / decr (a missing key answers None), delete.
    lib.check_incr_decr(mc, k, lib.returns_none)
    lib.check_delete(mc, k)

    # noreply writes, then reads on the same connection that prove they happened.
    nr = lib.noreply_batch(k)
    mc.set_many(nr, noreply=True)
    mc.set(k("nr-set"), b"s", noreply=True)
    mc.add(k("nr-add"), b"a", noreply=True)
    check(mc.set(k("nr-rep"), b"r0"), "set failed")
    mc.replace(k("nr-rep"), b"r1", noreply=True)
    check(mc.set(k("nr-ap"), b"m"), "set failed")
    mc.append(k("nr-ap"), b">", noreply=True)
    mc.prepend(k("nr-ap"), b"<", noreply=True)
    check(mc.set(k("nr-n"), b"100"), "set failed")
    mc.incr(k("nr-n"), 11, noreply=True)
    mc.decr(k("nr-n"), 1, noreply=True)
    check(mc.set(k("nr-cas"), b"c0"), "set failed")
    _, token = mc.gets(k("nr-cas"))
    mc.cas(k("nr-cas"), b"c1", token, noreply=True)
    check(mc.set(k("nr-del"), b"d"), "set failed")
    mc.delete(k("nr-del"), noreply=True)
    mc.delete_many([k("nr-0"), k("nr-1")], noreply=True)
    lib.check_noreply_applied(mc, "get_many", k, nr, {k("nr-cas"): b"c1"})
    report.note("noreply set/add/replace/append/prepend/incr/decr/cas/delete applied")

    # version and stats.
    if len(servers) == 1:
        version = mc.version()
        check(isinstance(version, bytes) and version, f"version: {version!r}")
        report.note(f"version() = {version!r}")
    if len(servers) == 1 and with_stats:
        stats = mc.stats()
        check(stats, "stats: empty")
        report.note(
            f"stats(): {len(stats)} stats, version={stats.get(b'version')!r},"
            f" curr_connections={stats.get(b'curr_connections')!r}"
        )

    # touch's effect, once the ttls have run out.
    lib.check_touch_effect(report, mc, k, touched_at)


def main():
    servers, with_stats = lib.parse_args("pymemcache_client.py")

    def wrapped(report):
        report.note(f"pymemcache {pymemcache.__version__} against {' '.join(servers)}")
        body(report, servers, with_stats)

    lib.run("pymemcache", wrapped)


main()
