#!/usr/bin/python3
"""Drives a memcached server (or memroute) with python-memcached (Debian python3-memcache,
the `memcache` module), text protocol. Usage: python_memcached.py HOST:PORT [...]
Exits 0 when every check passed, 1 at the first mismatch (with the reason), 3 when the
library is missing."""

import time

import clientlib as lib
from clientlib import check, check_value

try:
    import memcache
except ImportError:
    lib.missing_module("memcache", "python3-memcache")

LOG = []


def _log(self, msg):
    LOG.append(str(msg).strip())


# The library reports dead servers and unexpected replies only through debuglog; keep
# them for the failure message.
memcache.Client.debuglog = _log
memcache._Host.debuglog = _log


def client(servers, **kw):
    return memcache.Client(servers, debug=1, socket_timeout=10, dead_retry=0, **kw)


def body(report, servers, with_stats):
    mc = client(servers, cache_cas=True)
    other = client(servers)
    pfx = lib.prefix("pymc")

    def k(name):
        return f"{pfx}:{name}"

    # touch, first: its effect is checked at the end, after the data set's round trip.
    check(mc.set(k("touch-keep"), b"keep", time=2), "set with ttl 2 failed")
    check(mc.touch(k("touch-keep"), 0) == 1, "touch of an existing key failed")
    check(mc.set(k("touch-expire"), b"expire"), "set failed")
    check(mc.touch(k("touch-expire"), 1) == 1, "touch of an existing key failed")
    check(mc.touch(k("touch-missing"), 1) == 0, "touch of a missing key succeeded")
    check(mc.set(k("nr-touch"), b"t", time=2), "set with ttl 2 failed")
    check(mc.touch(k("nr-touch"), 0, noreply=True) == 1, "touch noreply")
    check(mc.set(k("nr-touch-expire"), b"t"), "set failed")
    check(mc.touch(k("nr-touch-expire"), 1, noreply=True) == 1, "touch noreply")
    touched_at = time.monotonic()

    # The data set: set_multi (one pipelined send per server), get_multi (one get line).
    data, _, _ = lib.check_data_set(report, pfx, mc, "set_multi", "get_multi")

    # Single-key get of a large and a small value.
    for key, value in (data[7], data[2]):
        check_value("get", key, mc.get(key), value)

    # add / replace, append / prepend: the library answers True or False, or 0 when the
    # server is unreachable, so success and refusal are read as true and false.
    lib.check_add_replace(mc, k, done=bool, refused=lib.is_falsy)
    lib.check_append_prepend(mc, k, done=bool, refused=lib.is_falsy)

    # cas: gets + cas succeeds; a cas whose token went stale (another client wrote in
    # between) fails and leaves the other client's value.
    check(mc.set(k("cas"), b"v1"), "set failed")
    check_value("gets", k("cas"), mc.gets(k("cas")), b"v1")
    check(mc.cas(k("cas"), b"v2") is True, "cas with a fresh token failed")
    check_value("get after cas", k("cas"), mc.get(k("cas")), b"v2")
    check_value("gets", k("cas"), mc.gets(k("cas")), b"v2")
    check(other.set(k("cas"), b"other"), "set by the other client failed")
    check(mc.cas(k("cas"), b"v3") is False, "cas with a stale token succeeded")
    check_value("get after stale cas", k("cas"), mc.get(k("cas")), b"other")

    # incr / decr (a missing key answers None).
    lib.check_incr_decr(mc, k, lib.returns_none)

    # delete (the library answers 1 for DELETED and NOT_FOUND alike; get tells).
    check(mc.delete(k("add")) == 1, "delete failed")
    check(mc.get(k("add")) is None, "deleted key still there")

    # noreply writes, then reads on the same connection that prove they happened.
    nr = lib.noreply_batch(k)
    check(mc.set_multi(nr, noreply=True) == [], "set_multi noreply")
    check(mc.set(k("nr-set"), b"s", noreply=True), "set noreply")
    check(mc.add(k("nr-add"), b"a", noreply=True), "add noreply")
    check(mc.set(k("nr-rep"), b"r0"), "set failed")
    check(mc.replace(k("nr-rep"), b"r1", noreply=True), "replace noreply")
    check(mc.set(k("nr-ap"), b"m"), "set failed")
    check(mc.append(k("nr-ap"), b">", noreply=True), "append noreply")
    check(mc.prepend(k("nr-ap"), b"<", noreply=True), "prepend noreply")
    check(mc.set(k("nr-n"), b"100"), "set failed")
    mc.incr(k("nr-n"), 11, noreply=True)
    mc.decr(k("nr-n"), 1, noreply=True)
    check(mc.set(k("nr-del"), b"d"), "set failed")
    check(mc.delete(k("nr-del"), noreply=True) == 1, "delete noreply")
    mc.delete_multi([k("nr-0"), k("nr-1")], noreply=True)
    lib.check_noreply_applied(mc, "get_multi", k, nr)
    report.note("noreply set/add/replace/append/prepend/incr/decr/delete applied")

    # stats (python-memcached has no version call; `stats` carries the version).
    if with_stats:
        lib.check_get_stats(report, mc, servers)

    # touch's effect, once the ttls have run out.
    lib.check_touch_effect(report, mc, k, touched_at)


def main():
    servers, with_stats = lib.parse_args("python_memcached.py")

    def wrapped(report):
        report.note(f"python-memcached {memcache.__version__} against {' '.join(servers)}")
        try:
            body(report, servers, with_stats)
        except lib.Failure as e:
            if LOG:
                raise lib.Failure(f"{e}; library log: {LOG[-5:]}")
            raise

    lib.run("python-memcached", wrapped)


main()
