#!/usr/bin/env bash
# The whole test suite: installs what the tests need when it is missing, then runs every
# unit and integration test (against real memcached and twemproxy processes).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v memcached >/dev/null 2>&1 || [ -x /usr/bin/memcached ] || need+=(memcached)
[ -x /usr/sbin/nutcracker ] || need+=(nutcracker)
# systemd-analyze verifies config/memroute.service (tests/packaging.rs); openssl and curl
# are TLS clients in tests/tls.rs.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The real client libraries tests/real_clients.rs drives (tests/clients/): libmemcached's
# tools, PHP's Memcached, Perl's Cache::Memcached::Fast, python-memcached, pymemcache and
# pylibmc for the Debian python at /usr/bin/python3, and Ruby's Dalli (binary protocol;
# ruby-dalli does not pull in ruby itself).
# python3-venv: the venv below, for the PyPI libraries.
for pkg in libmemcached-tools php-cli php-memcached libcache-memcached-fast-perl \
    python3-pylibmc python3-memcache python3-pymemcache python3-venv ruby ruby-dalli; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" = installed ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing ${need[*]}: run as root or install them (apt-get install ${need[*]})" >&2
        exit 1
    fi
    echo "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts the packaged services on install; the tests start their own on free ports.
systemctl stop memcached nutcracker >/dev/null 2>&1 || true
# The PyPI client libraries (meta-memcache), pinned in tests/clients/requirements.txt, in a
# venv of the Debian python; made anew when the pins change.
pyenv=target/pyenv
if ! cmp -s tests/clients/requirements.txt "$pyenv/requirements.txt"; then
    echo "installing the PyPI client libraries into $pyenv"
    rm -rf "$pyenv"
    /usr/bin/python3 -m venv "$pyenv"
    "$pyenv/bin/pip" install --quiet --disable-pip-version-check --no-input \
        -r tests/clients/requirements.txt
    cp tests/clients/requirements.txt "$pyenv/requirements.txt"
fi

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets "$@"
# The fuzz targets must keep building (stable toolchain; running them is in fuzz/README.md).
# Their crash inputs are replayed by `cargo test` above (fuzz_regressions_replay).
cargo build --quiet --manifest-path fuzz/Cargo.toml --bins
# The benchmark's quick pass: proves the bench script and load generator still work and that
# every reply through memroute verifies; it never fails on performance numbers.
bash scripts/bench.sh --quick
