"""Drives a memcached server (or memroute) with meta-memcache (PyPI `meta-memcache`, pinned
in requirements.txt beside this file), a client that speaks only the meta protocol (mg,
ms, md, ma, mn). Usage: meta_memcache_client.py HOST:PORT [...] (several: the library's
own hash ring). Run it with the python of the venv scripts/test.sh makes
(target/pyenv/bin/python3). Exits 0 when every check passed, 1 at the first mismatch
(with the reason), 3 when the library is missing."""

import logging
import sys
import time

import clientlib as lib
from clientlib import check, check_value, fail

try:
    import meta_memcache
    from meta_memcache import (
        CacheClient,
        Key,
        LeasePolicy,
        MemcacheServerError,
        MetaCommand,
        RecachePolicy,
        RequestFlags,
        ServerAddress,
        SetMode,
        StalePolicy,
        Value,
        connection_pool_factory_builder,
    )
    from meta_memcache.protocol import Conflict, Miss, NotStored, Success, ValueContainer
except ImportError:
    print(
        "FAIL: python module meta_memcache is missing (PyPI meta-memcache, see"
        " tests/clients/requirements.txt): run scripts/test.sh, which installs it into"
        " target/pyenv",
        file=sys.stderr,
    )
    sys.exit(3)


def client(servers):
    # read_buffer_size: with the default 4 KB, reading a 600 KB value takes the library
    # about 15 s (against memcached itself); 64 KB reads it in milliseconds.
    addrs = [ServerAddress(host=h, port=int(p)) for h, p in (s.rsplit(":", 1) for s in servers)]
    return CacheClient.cache_client_from_servers(
        servers=addrs,
        connection_pool_factory_fn=connection_pool_factory_builder(
            connection_timeout=5, recv_timeout=10, read_buffer_size=65536
        ),
    )


def no_wait(_seconds):
    """Lease retries without sleeping: the test decides when the winner writes."""


def body(report, servers):
    mc = client(servers)
    other = client(servers)
    pfx = lib.prefix("meta")

    def k(name):
        return f"{pfx}:{name}"

    # ---- The data set: one pipelined write per server (the router's multi-exec of ms),
    # then one pipelined multi-get (mg per key) of all of it with the missing keys spread
    # among them. Values are bytes: the library's serializer stores them as they are
    # (flag 16), compressing those over 128 bytes (flag 24).
    data = lib.dataset(pfx)
    missing = lib.misses(pfx)
    total = sum(len(v) for _, v in data)
    keys = [Key(key) for key, _ in data]

    def multi_set():
        return mc.router.exec_multi(
            command=MetaCommand.META_SET,
            keys=keys,
            values=[ValueContainer(v) for _, v in data],
            flags=RequestFlags(cache_ttl=0),
        )

    results = report.timed(f"pipelined ms of {len(data)} keys, {total} bytes", multi_set)
    failed = [key.key for key, r in results.items() if not isinstance(r, Success)]
    check(not failed, f"multi-set: {len(failed)} keys not stored, e.g. {failed[:3]}")
    asked = lib.with_misses([key for key, _ in data], missing)
    got = report.timed(
        f"multi_get of {len(asked)} keys ({len(missing)} missing)",
        lambda: mc.multi_get([Key(a) for a in asked]),
    )
    got = {key.key: v for key, v in got.items() if v is not None}
    lib.check_multi_get("multi_get", got, data, missing)
    # multi_get_cas: the same keys with their cas tokens.
    got = report.timed(
        "multi_get_cas of the same keys", lambda: mc.multi_get_cas(keys)
    )
    check(all(isinstance(c, int) and c > 0 for _, c in got.values()), "cas tokens")
    lib.check_multi_get(
        "multi_get_cas", {key.key: v for key, (v, _) in got.items()}, data, []
    )
    for key, value in (data[7], data[2], data[0]):
        check_value("get", key, mc.get(key), value)

    # ---- Keys the library sends base64 (`b`): with spaces, beyond ASCII, and over 250
    # bytes (which it hashes first).
    odd = {
        k("with space"): "spaced",
        k("caf\u00e9 \u2615"): "unicode",
        k("long-" + "x" * 400): "hashed",
        k("tab\there"): 12345,
        k("pickled"): {"a": [1, 2, 3]},
    }
    for key, value in odd.items():
        check(mc.set(key, value, ttl=0), f"set of {key!r}")
    got = mc.multi_get(list(odd))
    for key, value in odd.items():
        check_value("multi_get of an odd key", key, got.get(Key(key)), value)
        check_value("get of an odd key", key, mc.get(key), value)
    check(mc.delete(k("with space")), "delete of a key with a space")
    check(mc.get(k("with space")) is None, "deleted key with a space still there")
    report.note("base64 keys (space, unicode, tab, hashed long key) set, read, deleted")

    # ---- Write modes: refill (add), append, prepend, replace.
    check(mc.refill(k("add"), b"first", ttl=0), "refill (add) of a new key failed")
    check(not mc.refill(k("add"), b"second", ttl=0), "refill (add) of an existing key")
    check_value("get after refill", k("add"), mc.get(k("add")), b"first")
    check(not mc.set(k("rep"), b"x", ttl=0, set_mode=SetMode.REPLACE), "replace of a missing key")
    check(mc.get(k("rep")) is None, "replace of a missing key stored it")
    check(mc.set(k("rep"), b"old", ttl=0), "set failed")
    check(mc.set(k("rep"), b"new", ttl=0, set_mode=SetMode.REPLACE), "replace failed")
    check_value("get after replace", k("rep"), mc.get(k("rep")), b"new")
    check(mc.set(k("ap"), b"mid", ttl=0), "set failed")
    check(mc.set(k("ap"), b"-end", ttl=0, set_mode=SetMode.APPEND), "append failed")
    check(mc.set(k("ap"), b"start-", ttl=0, set_mode=SetMode.PREPEND), "prepend failed")
    check_value("get after append/prepend", k("ap"), mc.get(k("ap")), b"start-mid-end")
    check(not mc.set(k("ap-missing"), b"x", ttl=0, set_mode=SetMode.APPEND), "append to a missing key")

    # ---- cas: set_cas and get_cas tokens, a stale one refused, a missing key.
    token = mc.set_cas(k("cas"), b"v1", ttl=0)
    check(isinstance(token, int) and token > 0, f"set_cas token {token!r}")
    value, token2 = mc.get_cas(k("cas"))
    check_value("get_cas", k("cas"), value, b"v1")
    check(token2 == token, f"get_cas token {token2} is not set_cas's {token}")
    check(mc.set(k("cas"), b"v2", ttl=0, cas_token=token), "set with a fresh cas token failed")
    check(not mc.set(k("cas"), b"v3", ttl=0, cas_token=token), "set with a used cas token")
    _, token = mc.get_cas(k("cas"))
    check(other.set(k("cas"), b"other", ttl=0), "set by the other client failed")
    check(not mc.set(k("cas"), b"v3", ttl=0, cas_token=token), "set with a stale cas token")
    check_value("get after stale cas", k("cas"), mc.get(k("cas")), b"other")
    r = mc.meta_set(Key(k("cas-missing")), b"x", RequestFlags(cas_token=token))
    check(isinstance(r, Miss), f"cas set of a missing key: {r!r}")
    check(not mc.delete(k("cas"), cas_token=1), "delete with a wrong cas token")
    _, token = mc.get_cas(k("cas"))
    check(mc.delete(k("cas"), cas_token=token), "delete with the right cas token")
    report.note("cas: set_cas/get_cas tokens, fresh token stored, used and stale refused")

    # ---- Counters: delta, delta_and_get, initialize, decrement clamps at 0, wraps.
    check(mc.set(k("n"), 10, ttl=0), "set failed")
    check(mc.delta(k("n"), 5), "delta +5 failed")
    check(mc.delta_and_get(k("n"), -3) == 12, "delta_and_get 15 - 3")
    got = mc.delta_and_get(k("n"), -100)
    check(got == 0, f"decrement of 12 by 100 should clamp to 0, got {got!r}")
    check(not mc.delta(k("n-missing"), 1), "delta of a missing key succeeded")
    check(mc.delta_and_get(k("n-missing"), 1) is None, "delta_and_get of a missing key")
    got = mc.delta_initialize_and_get(k("n-new"), 1, initial_value=40, initial_ttl=0)
    check(got == 40, f"delta_initialize_and_get of a new key: {got!r}")
    got = mc.delta_initialize_and_get(k("n-new"), 2, initial_value=40, initial_ttl=0)
    check(got == 42, f"delta_initialize_and_get of an existing key: {got!r}")
    # A new counter starts at the initial value, not incremented.
    check(mc.delta_initialize(k("n-new2"), 1, initial_value=7, initial_ttl=0), "delta_initialize")
    # ma's autovivified item has client flags 0, which the serializer reads as a str.
    check_value("get of an autovivified counter", k("n-new2"), mc.get(k("n-new2")), "7")
    check(mc.set(k("big"), 18446744073709551615, ttl=0), "set failed")
    got = mc.delta_and_get(k("big"), 1)
    check(got == 0, f"increment of 2**64-1 should wrap to 0, got {got!r}")
    check(mc.set(k("text"), "abc", ttl=0), "set failed")
    # memcached's CLIENT_ERROR for it: the library raises (and logs it, silenced here).
    logging.disable(logging.CRITICAL)
    try:
        r = mc.delta(k("text"), 1)
        fail(f"delta of a non-numeric value answered {r!r}")
    except MemcacheServerError:
        pass
    finally:
        logging.disable(logging.NOTSET)
    report.note("counters: delta, delta_and_get, initialize (N/J), clamp, wrap")

    # ---- delete and invalidate.
    check(mc.delete(k("add")) is True, "delete of an existing key failed")
    check(mc.get(k("add")) is None, "deleted key still there")
    check(mc.delete(k("add")) is False, "delete of a missing key succeeded")
    check(mc.invalidate(k("add")) is True, "invalidate of a missing key")

    # ---- ttls: touch, and the ttl and flags the server reports (mg t f).
    check(mc.set(k("ttl"), b"t", ttl=100), "set with ttl failed")
    r = mc.meta_get(Key(k("ttl")), RequestFlags(return_ttl=True, return_client_flag=True))
    check(isinstance(r, Success) and r.flags.ttl in (99, 100), f"ttl of a new key: {r!r}")
    check(r.flags.client_flag == 16, f"client flag: {r.flags.client_flag!r}")
    check(mc.touch(k("ttl"), 0), "touch of an existing key failed")
    r = mc.meta_get(Key(k("ttl")), RequestFlags(return_ttl=True))
    check(r.flags.ttl == -1, f"ttl after touch to 0: {r.flags.ttl!r}")
    check(not mc.touch(k("ttl-missing"), 10), "touch of a missing key succeeded")
    check(mc.set(k("touch-expire"), b"expire", ttl=0), "set failed")
    check(mc.touch(k("touch-expire"), 1), "touch of an existing key failed")
    check(mc.set(k("get-touch"), b"g", ttl=0), "set failed")
    check_value("get with touch_ttl", k("get-touch"), mc.get(k("get-touch"), touch_ttl=1), b"g")
    touched_at = time.monotonic()

    # ---- Herd control: leases on a miss (N), recache (R), stale on deletion (I T).
    policy = LeasePolicy(ttl=30, miss_retries=2, miss_retry_wait=0.01)
    value, lease = mc.get_or_lease_cas(k("lease"), policy, lease_wait_fn=no_wait)
    check(value is None and isinstance(lease, int), f"lease winner got {value!r}, {lease!r}")
    value = other.get_or_lease(k("lease"), policy, lease_wait_fn=no_wait)
    check(value is None, f"the lease loser got {value!r}")
    check(mc.set(k("lease"), b"leased", ttl=0, cas_token=lease), "the lease winner's write")
    check_value("lease loser after the write", k("lease"), other.get_or_lease(k("lease"), policy, lease_wait_fn=no_wait), b"leased")
    check(mc.set(k("recache"), b"r", ttl=10), "set failed")
    recache = RecachePolicy(ttl=30)
    check(mc.get(k("recache"), recache_policy=recache) is None, "the recache winner sees a miss")
    check_value("recache loser", k("recache"), other.get(k("recache"), recache_policy=recache), b"r")
    stale = StalePolicy(mark_stale_on_deletion_ttl=30)
    check(mc.set(k("stale"), b"s", ttl=0), "set failed")
    check(mc.delete(k("stale"), stale_policy=stale), "delete marking stale")
    check(mc.get(k("stale")) is None, "the first reader of a stale item wins (a miss)")
    check_value("second reader of a stale item", k("stale"), other.get(k("stale")), b"s")
    report.note("leases (N), recache (R), stale on deletion (I T)")

    # ---- no_reply writes (sent with q, then mn), then reads on the same client.
    nr = {k("nr-%d" % i): b"noreply-%d" % i for i in range(50)}
    results = mc.router.exec_multi(
        command=MetaCommand.META_SET,
        keys=[Key(key) for key in nr],
        values=[ValueContainer(v) for v in nr.values()],
        flags=RequestFlags(no_reply=True, cache_ttl=0),
    )
    check(all(isinstance(r, Success) for r in results.values()), "quiet multi-set")
    mc.set(k("nr-set"), b"s", ttl=0, no_reply=True)
    mc.refill(k("nr-add"), b"a", ttl=0, no_reply=True)
    mc.refill(k("nr-add"), b"b", ttl=0, no_reply=True)
    check(mc.set(k("nr-n"), 100, ttl=0), "set failed")
    mc.delta(k("nr-n"), 11, no_reply=True)
    mc.delta(k("nr-n"), -1, no_reply=True)
    mc.delta(k("nr-missing"), 1, no_reply=True)
    check(mc.set(k("nr-del"), b"d", ttl=0), "set failed")
    mc.delete(k("nr-del"), no_reply=True)
    mc.delete(k("nr-never"), no_reply=True)
    mc.touch(k("nr-set"), 0, no_reply=True)
    want = dict(nr)
    want.update({k("nr-set"): b"s", k("nr-add"): b"a", k("nr-n"): 110})
    gone = [k("nr-del"), k("nr-missing"), k("nr-never")]
    got = mc.multi_get(list(want) + gone)
    got = {key.key: v for key, v in got.items() if v is not None}
    lib.check_multi_get("multi_get after quiet writes", got, list(want.items()), gone)
    report.note("quiet (no_reply) ms/md/ma/mg applied, misses and NS quiet too")

    # ---- Raw meta lines on one of the library's own connections: mn and me.
    pool = mc.router.pool_provider.get_pool(Key(k("n")))
    with pool.get_connection() as conn:
        noop = conn.raw_cmd(b"mn")
        check(noop == b"MN", f"mn answered {noop!r}")
        debug = conn.raw_cmd(b"me " + k("n").encode())
        check(debug.startswith(b"ME " + k("n").encode() + b" exp=-1 "), f"me answered {debug!r}")
    report.note("raw mn and me")

    # ---- touch's effect, once the ttls have run out.
    time.sleep(max(0.0, touched_at + 2.2 - time.monotonic()))
    check(mc.get(k("touch-expire")) is None, "key touched to 1 s did not expire")
    check(mc.get(k("get-touch")) is None, "key read with touch_ttl 1 did not expire")
    check_value("key touched to 0", k("ttl"), mc.get(k("ttl")), b"t")
    report.note("touch and get-with-touch shortened ttls")


def main():
    servers, _ = lib.parse_args("meta_memcache_client.py")

    def wrapped(report):
        report.note(f"meta-memcache {meta_memcache.__version__} against {' '.join(servers)}")
        body(report, servers)

    lib.run("meta-memcache", wrapped)


main()
