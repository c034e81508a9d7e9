#!/usr/bin/python3
"""Drives memroute's TLS listener with pymemcache (Debian python3-pymemcache) over Python's
ssl module: pymemcache.client.base.Client((host, port), tls_context=ctx).

Usage: tls_client.py HOST:PORT CAFILE PREFIX [CERTFILE KEYFILE]

The context trusts only CAFILE and checks the server certificate for HOST (an IP address
is matched against the certificate's IP SANs); CERTFILE/KEYFILE, when given, are presented
as the client certificate. Writes 200 keys `PREFIX:<i>` (set, then set_many for the odd
ones), reads each back with get, then all of them with one get_many, and checks the version
line. The values are the ones tests/tls.rs computes (`py_value`): `PREFIX-<i>-` followed by
(i*37)%400 bytes (100000+i for i%50 == 3) where byte j is (i*31 + j*7) % 256.

Exit status: 0 when every check passed (prints `ok <keys>`), 1 at the first mismatch,
2 on bad usage, 3 when pymemcache is missing, 4 when the TLS connection failed (a
certificate that does not verify, a refused handshake).
"""

import socket
import ssl
import sys

try:
    from pymemcache.client.base import Client
except ImportError:
    print(
        "FAIL: python module pymemcache is missing for /usr/bin/python3 (Debian package"
        " python3-pymemcache): run scripts/test.sh, which installs it",
        file=sys.stderr,
    )
    sys.exit(3)

N_KEYS = 200


def value(prefix, i):
    n = 100_000 + i if i % 50 == 3 else (i * 37) % 400
    return f"{prefix}-{i}-".encode() + bytes((i * 31 + j * 7) % 256 for j in range(n))


def fail(msg):
    print(f"FAIL tls_client: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    args = sys.argv[1:]
    if len(args) not in (3, 5) or ":" not in args[0]:
        print(__doc__.splitlines()[3], file=sys.stderr)
        sys.exit(2)
    host, port = args[0].rsplit(":", 1)
    cafile, prefix = args[1], args[2]
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if len(args) == 5:
        ctx.load_cert_chain(args[3], args[4])
    mc = Client(
        (host, int(port)),
        tls_context=ctx,
        connect_timeout=5,
        timeout=10,
        default_noreply=False,
    )
    keys = [f"{prefix}:{i}" for i in range(N_KEYS)]
    want = {k: value(prefix, i) for i, k in enumerate(keys)}
    try:
        # Even keys one by one, odd keys in one set_many (all the sets in one send).
        for i, k in enumerate(keys):
            if i % 2 == 0 and mc.set(k, want[k]) is not True:
                fail(f"set {k} was not stored")
        failed = mc.set_many({k: want[k] for i, k in enumerate(keys) if i % 2 == 1})
        if failed:
            fail(f"set_many did not store {failed[:5]}")
        for k in keys[::7]:
            got = mc.get(k)
            if got != want[k]:
                fail(f"get {k}: {got!r:.80} != {want[k]!r:.80}")
        got = mc.get_many(keys + [f"{prefix}:missing"])
        if set(got) != set(keys):
            fail(f"get_many returned {len(got)} keys, missing {sorted(set(keys) - set(got))[:5]}")
        for k in keys:
            if got[k] != want[k]:
                fail(f"get_many {k}: {got[k]!r:.80} != {want[k]!r:.80}")
        version = mc.version()
        if not version.startswith(b"1.6"):
            fail(f"version {version!r}")
    except (ssl.SSLError, ssl.CertificateError, ConnectionError, socket.timeout) as e:
        print(f"TLS FAIL tls_client: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(4)
    mc.close()
    print(f"ok {len(keys)}")


if __name__ == "__main__":
    main()
