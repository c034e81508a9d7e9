#!/usr/bin/ruby
# frozen_string_literal: true

# Drives a memcached server (or memroute) with Dalli 3.0 (Debian ruby-dalli), which speaks
# only the binary protocol. Usage:
#   ruby dalli_client.rb [--no-stats] [--backends=H:P,...] [--no-spaced-keys] HOST:PORT [...]
# With --backends (the servers behind a proxy at HOST:PORT) the data set is also read from
# each backend directly: every key on exactly one of them, byte for byte (Dalli's own ring
# is not libmemcached's, so where each key lands is not checked). --no-spaced-keys skips the
# keys that only the binary protocol can carry (a space, CR LF, a tab, a DEL byte).
# Exits 0 when every check passed, 1 at the first mismatch (with the reason), 2 on bad usage,
# 3 when the library is missing. The data set is the one described in README.md.

begin
  require 'dalli'
rescue LoadError
  warn 'FAIL: the Ruby library dalli is missing (Debian packages ruby, ruby-dalli): run ' \
       'scripts/test.sh, which installs it'
  exit 3
end
require 'logger'
require 'securerandom'

N_KEYS = 2000
TOUCH_WAIT = 3.2
NAME = 'dalli'

# The run's report, printed at the end (or before the failure).
REPORT = []
STARTED = Process.clock_gettime(Process::CLOCK_MONOTONIC)

def now
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

def note(line)
  REPORT << line
end

def dump_report
  REPORT.each { |line| puts "#{NAME}: #{line}" }
  $stdout.flush
end

class Failure < StandardError; end

def check(cond, msg)
  raise Failure, msg unless cond
end

def short(key)
  key.bytesize <= 60 ? key.inspect : "#{key.byteslice(0, 48).inspect}...(#{key.bytesize} bytes)"
end

def describe(v)
  return v.inspect unless v.is_a?(String)
  return "#{v.bytesize} bytes #{v.byteslice(0, 40).inspect}..." if v.bytesize > 40

  v.inspect
end

def check_value(what, key, got, want)
  return if got.is_a?(String) && got.b == want.b

  detail = ''
  if got.is_a?(String)
    g = got.b
    w = want.b
    first = (0...[g.bytesize, w.bytesize].min).find { |i| g.getbyte(i) != w.getbyte(i) } ||
            [g.bytesize, w.bytesize].min
    detail = " (lengths #{g.bytesize} vs #{w.bytesize}, first difference at byte #{first})"
  end
  raise Failure, "#{what}: key #{short(key)}: got #{describe(got)}, want #{describe(want)}#{detail}"
end

# Every key of `data` (key => value, binary strings) with its exact value, none of
# `missing`, nothing else.
def check_multi_get(what, got, data, missing)
  check(got.is_a?(Hash), "#{what}: returned #{got.class}")
  got = got.transform_keys(&:b)
  absent = data.keys.reject { |k| got.key?(k) }
  unless absent.empty?
    raise Failure, "#{what}: #{absent.size} of #{data.size} keys missing from the reply " \
                   "(got #{got.size}), e.g. #{absent.first(3).map { |k| short(k) }}"
  end
  data.each { |k, v| check_value(what, k, got[k], v) }
  extra = missing.select { |k| got.key?(k) }
  check(extra.empty?, "#{what}: keys never written came back: #{extra.first(3).map { |k| short(k) }}")
  check(got.size == data.size, "#{what}: unexpected keys in the reply")
end

def value_size(i)
  return 100_000 + (i * 7919) % 500_000 if i % 80 == 7
  return 0 if i % 500 == 1
  return 1024 + (i * 31) % 9217 if i % 10 == 3

  1 + (i * 13) % 200
end

def client(servers, **options)
  # Values as they are (raw, uncompressed) so the backends hold the same bytes; a socket
  # timeout that covers reading the whole data set in one get_multi.
  Dalli::Client.new(servers, { socket_timeout: 10, compress: false, failover: false }.merge(options))
end

def timed(label)
  t = now
  out = yield
  note(format('%s: %.2f s', label, now - t))
  out
end

# A store's answer: Dalli answers the new cas (an Integer > 0) on success, false when the
# key exists (add) or the cas does not match, 0 when the key is not found (replace, cas).
def stored?(r)
  r.is_a?(Integer) && r.positive?
end

def raises_dalli_error(pattern)
  yield
  false
rescue Dalli::DalliError => e
  e.message.match?(pattern)
end

args = ARGV.dup
flags, servers = args.partition { |a| a.start_with?('-') }
backends = []
bad = flags.reject do |f|
  if f.start_with?('--backends=')
    backends = f.delete_prefix('--backends=').split(',').reject(&:empty?)
    true
  else
    ['--no-stats', '--no-spaced-keys'].include?(f)
  end
end
if servers.empty? || !bad.empty? || (servers + backends).any? { |s| !s.include?(':') }
  warn 'usage: ruby dalli_client.rb [--no-stats] [--backends=H:P,...] [--no-spaced-keys] ' \
       'HOST:PORT [HOST:PORT ...]'
  exit 2
end
with_stats = !flags.include?('--no-stats')
spaced_keys = !flags.include?('--no-spaced-keys')

Dalli.logger = Logger.new($stderr)
Dalli.logger.level = Logger::WARN

begin
  dc = client(servers)
  other = client(servers)
  pfx = "rc-#{SecureRandom.hex(8)}-dalli"
  k = ->(name) { "#{pfx}:#{name}".b }
  raw = { raw: true }
  note("dalli #{Dalli::VERSION} (Ruby #{RUBY_VERSION}, binary protocol) against #{servers.join(' ')}")

  # touch and gat, first: their effect is checked at the end, after the data set's round trip.
  check(stored?(dc.set(k['touch-keep'], 'keep', 2, raw)), 'set with ttl 2 failed')
  check(dc.touch(k['touch-keep'], 0) == true, 'touch of an existing key failed')
  check(stored?(dc.set(k['touch-expire'], 'expire', 0, raw)), 'set failed')
  check(dc.touch(k['touch-expire'], 1) == true, 'touch of an existing key failed')
  check(dc.touch(k['touch-missing'], 1).nil?, 'touch of a missing key succeeded')
  check(stored?(dc.set(k['gat-keep'], 'g', 2, raw)), 'set with ttl 2 failed')
  check_value('gat', k['gat-keep'], dc.gat(k['gat-keep'], 0), 'g')
  check(stored?(dc.set(k['gat-expire'], 'g', 0, raw)), 'set failed')
  check_value('gat', k['gat-expire'], dc.gat(k['gat-expire'], 1), 'g')
  check(dc.gat(k['gat-missing'], 1).nil?, 'gat of a missing key returned a value')
  # incr of a missing key with an initial value and a ttl of 1 s: created, then expires.
  check(dc.incr(k['n-init-expire'], 1, 1, 40) == 40, 'incr with an initial value')
  touched_at = now

  # The data set, written inside `multi` (SetQ for every key, then a Noop), read back
  # with get_multi (GetKQ for every key, then a Noop) and get_multi_cas.
  data = {}
  N_KEYS.times do |i|
    key = "#{pfx}:#{i}"
    key += ":#{'k' * (120 + i % 90)}" if (i % 25).zero?
    check(key.bytesize <= 250, "test bug: key of #{key.bytesize} bytes")
    data[key.b] = Random.bytes(value_size(i)).b
  end
  missing = (0...20).map { |i| "#{pfx}:missing:#{i}".b }
  asked = data.keys
  step = asked.size / (missing.size + 1)
  missing.each_with_index { |m, j| asked.insert((j + 1) * step + j, m) }
  total = data.values.sum(&:bytesize)
  timed("multi { set } of #{data.size} keys, #{total} bytes (SetQ + Noop)") do
    dc.multi { data.each { |key, v| dc.set(key, v, 0, raw) } }
  end
  got = timed("get_multi of #{asked.size} keys (#{missing.size} missing)") { dc.get_multi(asked) }
  check_multi_get('get_multi', got, data, missing)
  got = timed('get_multi_cas of the same keys') { dc.get_multi_cas(asked) }
  check(got.values.all? { |_, cas| cas.is_a?(Integer) && cas.positive? }, 'get_multi_cas: a cas of 0')
  check_multi_get('get_multi_cas', got.transform_values(&:first), data, missing)
  [7, 2].each { |i| check_value('get', data.keys[i], dc.get(data.keys[i]), data.values[i]) }

  # The data set on the backends, read directly: each key on exactly one.
  unless backends.empty?
    found = {}
    backends.each do |b|
      got = client([b]).get_multi(asked).transform_keys(&:b)
      twice = got.keys.select { |key| found.key?(key) }
      check(twice.empty?, "keys on two backends: #{twice.first(3).map { |key| short(key) }}")
      found.merge!(got)
      note("backend #{b} holds #{got.size} of the data set's keys")
    end
    check_multi_get('the backends read directly', found, data, missing)
    note('the data set is on the backends, each key on one, byte for byte')
  end

  # add / replace: Dalli answers the cas, false (the key exists) or 0 (not found).
  check(stored?(dc.add(k['add'], 'first', 0, raw)), 'add of a new key failed')
  check(dc.add(k['add'], 'second', 0, raw) == false, 'add of an existing key succeeded')
  check_value('get after add', k['add'], dc.get(k['add']), 'first')
  check(dc.replace(k['replace'], 'x', 0, raw) == 0, 'replace of a missing key succeeded')
  check(dc.get(k['replace']).nil?, 'replace of a missing key stored it')
  check(stored?(dc.set(k['replace'], 'old', 0, raw)), 'set failed')
  check(stored?(dc.replace(k['replace'], 'new', 0, raw)), 'replace of an existing key failed')
  check_value('get after replace', k['replace'], dc.get(k['replace']), 'new')

  # append / prepend (also to a missing key: false).
  check(stored?(dc.set(k['ap'], 'mid', 0, raw)), 'set failed')
  check(dc.append(k['ap'], '-end') == true, 'append failed')
  check(dc.prepend(k['ap'], 'start-') == true, 'prepend failed')
  check_value('get after append/prepend', k['ap'], dc.get(k['ap']), 'start-mid-end')
  check(dc.append(k['ap-missing'], 'x') == false, 'append to a missing key succeeded')
  check(dc.prepend(k['ap-missing'], 'x') == false, 'prepend to a missing key succeeded')

  # cas: get_cas + set_cas succeeds; the used token and a stale one (another client wrote)
  # fail and leave the value; a missing key is 0; delete_cas; the cas block.
  check(stored?(dc.set(k['cas'], 'v1', 0, raw)), 'set failed')
  value, token = dc.get_cas(k['cas'])
  check_value('get_cas', k['cas'], value, 'v1')
  check(token.is_a?(Integer) && token.positive?, "get_cas: cas #{token.inspect}")
  check(stored?(dc.set_cas(k['cas'], 'v2', token, 0, raw)), 'set_cas with a fresh token failed')
  check_value('get after set_cas', k['cas'], dc.get(k['cas']), 'v2')
  check(dc.set_cas(k['cas'], 'v3', token, 0, raw) == false, 'set_cas with a used token succeeded')
  _, token = dc.get_cas(k['cas'])
  check(stored?(other.set(k['cas'], 'other', 0, raw)), 'set by the other client failed')
  check(dc.set_cas(k['cas'], 'v3', token, 0, raw) == false, 'set_cas with a stale token succeeded')
  check(dc.replace_cas(k['cas'], 'v3', token, 0, raw) == false, 'replace_cas with a stale token')
  check_value('get after stale set_cas', k['cas'], dc.get(k['cas']), 'other')
  check(dc.set_cas(k['cas-missing'], 'x', token, 0, raw) == 0, 'set_cas of a missing key')
  check(dc.get_cas(k['cas-missing']) == [nil, 0], 'get_cas of a missing key')
  _, token = dc.get_cas(k['cas'])
  check(dc.delete_cas(k['cas'], token + 1) == false, 'delete_cas with a wrong token succeeded')
  check(dc.delete_cas(k['cas'], token) == true, 'delete_cas with the token failed')
  check(dc.get(k['cas']).nil?, 'key deleted with delete_cas still there')
  check(stored?(dc.set(k['cas-block'], '1', 0, raw)), 'set failed')
  check(stored?(dc.cas(k['cas-block'], 0, raw) { |v| "#{v}2" }), 'the cas block failed')
  check_value('get after the cas block', k['cas-block'], dc.get(k['cas-block']), '12')
  check(dc.cas(k['cas-block-missing']) { 'x' }.nil?, 'the cas block of a missing key')
  check(dc.get(k['cas-block-missing']).nil?, 'the cas block stored a missing key')
  check(stored?(dc.cas!(k['cas-block-missing'], 0, raw) { |v| "new#{v.inspect}" }), 'cas! failed')
  check_value('get after cas!', k['cas-block-missing'], dc.get(k['cas-block-missing']), 'newnil')

  # incr / decr: decr below 0 clamps to 0, incr of 2**64-1 wraps to 0; a missing key is
  # nil without an initial value, created with one (Increment's initial and expiration);
  # a non-numeric value is refused (status 6) and stays.
  check(stored?(dc.set(k['n'], '10', 0, raw)), 'set failed')
  check(dc.incr(k['n'], 5) == 15, 'incr 10 + 5')
  check(dc.decr(k['n'], 3) == 12, 'decr 15 - 3')
  got = dc.decr(k['n'], 100)
  check(got.zero?, "decr 12 - 100 should clamp to 0, got #{got.inspect}")
  # memcached shrinks a number in place, padding with spaces: "12" decremented reads "0 ".
  got = dc.get(k['n'])
  check(got.is_a?(String) && got.rstrip == '0', "get after decr: #{got.inspect}")
  check(dc.incr(k['n-missing'], 1).nil?, 'incr of a missing key')
  check(dc.decr(k['n-missing'], 1).nil?, 'decr of a missing key')
  check(dc.get(k['n-missing']).nil?, 'incr without an initial value created the key')
  check(dc.incr(k['n-init'], 5, 0, 100) == 100, 'incr of a missing key with initial 100')
  check(dc.incr(k['n-init'], 5, 0, 100) == 105, 'incr 100 + 5')
  check(dc.decr(k['d-init'], 5, 0, 7) == 7, 'decr of a missing key with initial 7')
  check_value('get of a counter made by incr', k['n-init'], dc.get(k['n-init']), '105')
  check(stored?(dc.set(k['big'], '18446744073709551615', 0, raw)), 'set failed')
  got = dc.incr(k['big'], 1)
  check(got.zero?, "incr of 2**64-1 should wrap to 0, got #{got.inspect}")
  check(stored?(dc.set(k['text'], 'abc', 0, raw)), 'set failed')
  check(raises_dalli_error(/Response error 6/) { dc.incr(k['text'], 1) }, 'incr of a non-number')
  check_value('get after a failed incr', k['text'], dc.get(k['text']), 'abc')

  # delete (true, then nil: not found).
  check(dc.delete(k['add']) == true, 'delete of an existing key failed')
  check(dc.get(k['add']).nil?, 'deleted key still there')
  check(dc.delete(k['add']).nil?, 'delete of a missing key succeeded')

  # A value over 1 MiB (Dalli's own limit raised): Too large (status 3), nothing stored,
  # and the connection goes on.
  big = client(servers, value_max_bytes: 4 << 20)
  check(raises_dalli_error(/Response error 3/) { big.set(k['huge'], 'x' * ((1 << 20) + 10), 0, raw) },
        'set of 1 MiB + 10 was not refused as too large')
  check(big.get(k['huge']).nil?, 'a refused value was stored')
  check_value('get after a refused value', k['text'], big.get(k['text']), 'abc')

  # Quiet writes inside `multi` (SetQ, AddQ, ReplaceQ, DeleteQ, then a Noop): the refused
  # ones (add of an existing key, replace of a missing one, delete of a missing one) are
  # answered and skipped; a get_multi proves what happened.
  check(stored?(dc.set(k['q-rep'], 'r0', 0, raw)), 'set failed')
  check(stored?(dc.set(k['q-del'], 'd', 0, raw)), 'set failed')
  check(stored?(dc.set(k['q-exists'], 'e0', 0, raw)), 'set failed')
  quiet = (0...50).to_h { |i| [k["q-#{i}"], "quiet-#{i}".b] }
  dc.multi do
    quiet.each { |key, v| dc.set(key, v, 0, raw) }
    dc.add(k['q-add'], 'a', 0, raw)
    dc.add(k['q-exists'], 'e1', 0, raw)
    dc.replace(k['q-rep'], 'r1', 0, raw)
    dc.replace(k['q-rep-missing'], 'x', 0, raw)
    dc.delete(k['q-del'])
    dc.delete(k['q-del-missing'])
    dc.delete(k['q-0'])
  end
  want = quiet.reject { |key, _| key == k['q-0'] }
  want.merge!(k['q-add'] => 'a'.b, k['q-exists'] => 'e0'.b, k['q-rep'] => 'r1'.b)
  gone = [k['q-0'], k['q-del'], k['q-del-missing'], k['q-rep-missing']]
  check_multi_get('get_multi after quiet writes', dc.get_multi(want.keys + gone), want, gone)
  note('quiet set/add/replace/delete (multi) applied, refusals skipped')

  # Keys only the binary protocol can carry (the text protocol splits on them).
  if spaced_keys
    odd = ["#{pfx}:a space", "#{pfx}:cr\r\nlf", "#{pfx}:tab\there", "#{pfx}:del\x7f",
           "#{pfx}:\u00e9t\u00e9 \u2713"].map(&:b)
    odd.each_with_index do |key, i|
      check(stored?(dc.set(key, "odd-#{i}", 0, raw)), "set of key #{short(key)} failed")
      check_value('get', key, dc.get(key), "odd-#{i}")
    end
    check_multi_get('get_multi of spaced keys', dc.get_multi(odd + [k['odd missing']]),
                    odd.each_with_index.to_h { |key, i| [key, "odd-#{i}".b] }, [k['odd missing']])
    check(dc.incr(odd[0] + ' n', 1, 0, 5) == 5, 'incr of a spaced key with an initial value')
    check(dc.touch(odd[1], 100) == true, 'touch of a spaced key')
    check(dc.delete(odd[2]) == true, 'delete of a spaced key')
    check(dc.get(odd[2]).nil?, 'deleted spaced key still there')
    note("keys with a space, CR LF, a tab, DEL and UTF-8: set, get, get_multi, incr, touch, delete")
  end

  # version and stats.
  versions = dc.version
  check(versions.size == servers.size, "version: #{versions.inspect}")
  versions.each do |s, v|
    note("version #{s} = #{v.inspect}")
    check(v.is_a?(String) && v.match?(/\A[1-9][0-9]*\.[0-9]+\.[0-9]+/), "version of #{s}: #{v.inspect}")
  end
  if with_stats
    dc.stats.each do |s, st|
      check(st.is_a?(Hash) && !st.empty?, "stats: none from #{s}")
      note("stats #{s}: #{st.size} stats, version=#{st['version'].inspect}, " \
           "curr_connections=#{st['curr_connections'].inspect}")
    end
    dc.stats(:settings).each do |s, st|
      check(st.is_a?(Hash) && !st.empty?, "stats settings: none from #{s}")
    end
  end

  # touch's and gat's effect: the keys touched to 0 outlived their ttl of 2 s, the keys
  # touched to 1 s expired, as did the counter created with a ttl of 1 s.
  wait = touched_at + TOUCH_WAIT - now
  sleep(wait) if wait.positive?
  check_value('get after touch 0', k['touch-keep'], dc.get(k['touch-keep']), 'keep')
  check(dc.get(k['touch-expire']).nil?, 'key touched with ttl 1 did not expire')
  check_value('get after gat 0', k['gat-keep'], dc.get(k['gat-keep']), 'g')
  check(dc.get(k['gat-expire']).nil?, 'key read with gat and ttl 1 did not expire')
  check(dc.get(k['n-init-expire']).nil?, 'counter created with ttl 1 did not expire')
  note('touch and gat extended and shortened ttls')
rescue Failure => e
  dump_report
  warn "FAIL #{NAME}: #{e.message}"
  exit 1
rescue StandardError => e
  dump_report
  warn e.full_message
  warn "FAIL #{NAME}: #{e.class}: #{e.message}"
  exit 1
end

note(format('OK in %.2f s', now - STARTED))
dump_report
exit 0
