<?php
// Drives a memcached server (or memroute) with PHP's Memcached extension (Debian
// php-memcached, over libmemcached), text protocol, or with --binary the binary protocol
// (Memcached::OPT_BINARY_PROTOCOL). Usage:
//   php php_memcached.php [--no-stats] [--binary] [--backends=H:P,...] HOST:PORT [...]
// With --backends (the servers behind a proxy at HOST:PORT) the data set is also read from
// the backends directly: every key on exactly one of them, byte for byte, and where
// libmemcached's weighted ketama (OPT_LIBKETAMA_COMPATIBLE: md5) over them puts it.
// Exits 0 when every check passed, 1 at the first mismatch (with the reason), 3 when the
// extension is missing. The data set is the one described in README.md.

const N_KEYS = 2000;
const TOUCH_WAIT = 3.2;

$report = [];
$started = microtime(true);

// "php-memcached", or "php-memcached-binary" with --binary.
$name = 'php-memcached';

function note($line) { global $report; $report[] = $line; }

function dump_report() {
    global $report, $name;
    foreach ($report as $line) {
        echo "$name: $line\n";
    }
}

function fail($msg) {
    global $name;
    dump_report();
    fwrite(STDERR, "FAIL $name: $msg\n");
    exit(1);
}

function check($cond, $msg) { if (!$cond) fail($msg); }

function describe($v) {
    if (!is_string($v)) return var_export($v, true);
    if (strlen($v) > 40) return strlen($v) . " bytes";
    return '"' . addcslashes($v, "\0..\37\177..\377") . '"';
}

// A key for messages: long ones cut to their start and length.
function short($key) {
    return strlen($key) <= 60 ? $key : substr($key, 0, 48) . "...(" . strlen($key) . " bytes)";
}

function check_value($what, $key, $got, $want) {
    if ($got === $want) return;
    $detail = '';
    if (is_string($got)) {
        $n = min(strlen($got), strlen($want));
        $i = 0;
        while ($i < $n && $got[$i] === $want[$i]) $i++;
        $detail = " (lengths " . strlen($got) . " vs " . strlen($want) . ", first difference at byte $i)";
    }
    fail("$what: key " . short($key) . ": got " . describe($got) . ", want " . describe($want) . $detail);
}

// The last result of $m, for failure messages.
function result($m) { return $m->getResultCode() . " " . $m->getResultMessage(); }

// Every key of $data (key => value) with its exact value, none of $missing, nothing else.
function check_multi_get($what, $got, $data, $missing) {
    check(is_array($got), "$what: returned " . describe($got));
    $absent = array_values(array_diff(array_keys($data), array_keys($got)));
    if ($absent) {
        fail("$what: " . count($absent) . " of " . count($data) . " keys missing from the reply"
            . " (got " . count($got) . "), e.g. " . short($absent[0]));
    }
    foreach ($data as $k => $v) check_value($what, $k, $got[$k], $v);
    foreach ($missing as $k) check(!array_key_exists($k, $got), "$what: key never written came back: " . short($k));
    check(count($got) == count($data), "$what: unexpected keys in the reply");
}

function value_size($i) {
    if ($i % 80 == 7) return 100000 + ($i * 7919) % 500000;
    if ($i % 500 == 1) return 0;
    if ($i % 10 == 3) return 1024 + ($i * 31) % 9217;
    return 1 + ($i * 13) % 200;
}

function client($servers, $options = []) {
    global $binary;
    $m = new Memcached();
    $m->setOptions([
        Memcached::OPT_BINARY_PROTOCOL => $binary,
        // Values as they are: no compression (append and prepend refuse it anyway).
        Memcached::OPT_COMPRESSION => false,
        Memcached::OPT_TCP_NODELAY => true,
        Memcached::OPT_CONNECT_TIMEOUT => 5000,
        Memcached::OPT_POLL_TIMEOUT => 10000,
    ] + $options);
    foreach ($servers as $s) {
        $i = strrpos($s, ':');
        check($m->addServer(substr($s, 0, $i), (int) substr($s, $i + 1)), "addServer $s");
    }
    return $m;
}

if (!extension_loaded('memcached')) {
    fwrite(STDERR, "FAIL: the PHP extension memcached is missing (Debian packages php-cli,"
        . " php-memcached): run scripts/test.sh, which installs it\n");
    exit(3);
}
// --no-stats skips getStats (twemproxy closes the connection on `stats`); --binary speaks
// the binary protocol; --backends=H:P,... names the servers behind a proxy.
$args = array_slice($argv, 1);
$flags = array_values(array_filter($args, function ($a) { return $a[0] === '-'; }));
$servers = array_values(array_diff($args, $flags));
$backends = [];
foreach ($flags as $f) {
    if (strncmp($f, '--backends=', 11) === 0) {
        $backends = array_values(array_filter(explode(',', substr($f, 11))));
    }
}
$bad_flags = array_filter($flags, function ($f) {
    return !in_array($f, ['--no-stats', '--binary']) && strncmp($f, '--backends=', 11) !== 0;
});
if (!$servers || $bad_flags) {
    fwrite(STDERR, "usage: php php_memcached.php [--no-stats] [--binary] [--backends=H:P,...]"
        . " HOST:PORT [HOST:PORT ...]\n");
    exit(2);
}
$with_stats = !in_array('--no-stats', $flags);
$binary = in_array('--binary', $flags);
if ($binary) $name = 'php-memcached-binary';
// What a refused add and replace report: the text protocol says NOT_STORED for both; the
// binary protocol why (the key exists, the key is not found).
$add_refused = $binary ? Memcached::RES_DATA_EXISTS : Memcached::RES_NOTSTORED;
$replace_refused = $binary ? Memcached::RES_NOTFOUND : Memcached::RES_NOTSTORED;

$mc = client($servers);
$other = client($servers);
$pfx = "rc-" . bin2hex(random_bytes(8)) . ($binary ? "-php-binary" : "-php");
$k = function ($name) use ($pfx) { return "$pfx:$name"; };
note("php-memcached " . phpversion('memcached') . " (PHP " . PHP_VERSION . ", libmemcached "
    . Memcached::LIBMEMCACHED_VERSION_HEX . ") " . ($binary ? "binary" : "text")
    . " protocol against " . implode(' ', $servers));

// touch, first: its effect is checked at the end, after the data set's round trip.
check($mc->set($k('touch-keep'), 'keep', 2), "set with ttl 2 failed: " . result($mc));
check($mc->touch($k('touch-keep'), 0), "touch of an existing key failed: " . result($mc));
check($mc->set($k('touch-expire'), 'expire'), "set failed");
check($mc->touch($k('touch-expire'), 1), "touch of an existing key failed: " . result($mc));
check(!$mc->touch($k('touch-missing'), 1) && $mc->getResultCode() == Memcached::RES_NOTFOUND,
    "touch of a missing key: " . result($mc));
// The same through a client with OPT_NOREPLY.
$nr = client($servers, [Memcached::OPT_NOREPLY => true]);
check($mc->set($k('nr-touch'), 't', 2), "set with ttl 2 failed");
$nr->touch($k('nr-touch'), 0);
check($mc->set($k('nr-touch-expire'), 't'), "set failed");
$nr->touch($k('nr-touch-expire'), 1);
$touched_at = microtime(true);

// The data set: setMulti, then getMulti (memcached_mget: one get line per server).
$data = [];
$total = 0;
for ($i = 0; $i < N_KEYS; $i++) {
    $key = "$pfx:$i";
    if ($i % 25 == 0) $key .= ':' . str_repeat('k', 120 + $i % 90);
    check(strlen($key) <= 250, "test bug: key of " . strlen($key) . " bytes");
    $n = value_size($i);
    $data[$key] = $n > 0 ? random_bytes($n) : '';
    $total += $n;
}
$missing = [];
for ($i = 0; $i < 20; $i++) $missing[] = "$pfx:missing:$i";
$t = microtime(true);
$ok = $mc->setMulti($data);
note(sprintf("setMulti of %d keys, %d bytes: %.2f s", count($data), $total, microtime(true) - $t));
check($ok, "setMulti failed: " . result($mc));
$asked = array_keys($data);
$step = intdiv(count($asked), count($missing) + 1);
foreach ($missing as $j => $key) array_splice($asked, ($j + 1) * $step + $j, 0, [$key]);
$t = microtime(true);
$got = $mc->getMulti($asked);
note(sprintf("getMulti of %d keys (%d missing): %.2f s", count($asked), count($missing),
    microtime(true) - $t));
check($got !== false, "getMulti failed: " . result($mc));
check_multi_get('getMulti', $got, $data, $missing);
// With GET_EXTENDED libmemcached sends `gets` and returns each value with its cas.
$t = microtime(true);
$got = $mc->getMulti($asked, Memcached::GET_EXTENDED);
note(sprintf("getMulti(GET_EXTENDED) of the same keys (a gets line): %.2f s", microtime(true) - $t));
check($got !== false, "getMulti(GET_EXTENDED) failed: " . result($mc));
foreach ($got as $key => $item) check($item['cas'] > 0, "getMulti(GET_EXTENDED): no cas for $key");
check_multi_get('getMulti(GET_EXTENDED)', array_map(function ($item) { return $item['value']; }, $got),
    $data, $missing);

// The data set read from the backends directly: each key on exactly one, byte for byte,
// and a client with weighted ketama over them (as the proxy's pool: md5, ketama) finds all.
if ($backends) {
    $found = [];
    foreach ($backends as $b) {
        $got = client([$b])->getMulti($asked);
        check($got !== false, "getMulti on backend $b failed");
        $twice = array_intersect_key($got, $found);
        check(!$twice, "keys on two backends, e.g. " . short((string) array_key_first($twice)));
        $found += $got;
        note("backend $b holds " . count($got) . " of the data set's keys");
    }
    check_multi_get('the backends read directly', $found, $data, $missing);
    $ketama = client($backends, [Memcached::OPT_LIBKETAMA_COMPATIBLE => true]);
    check_multi_get('getMulti over the backends with weighted ketama', $ketama->getMulti($asked),
        $data, $missing);
    note("the data set is on the backends, where libmemcached's weighted ketama puts it");
}

$keys = array_keys($data);
foreach ([7, 2] as $i) check_value('get', $keys[$i], $mc->get($keys[$i]), $data[$keys[$i]]);

// add / replace.
check($mc->add($k('add'), 'first'), "add of a new key failed: " . result($mc));
check(!$mc->add($k('add'), 'second') && $mc->getResultCode() == $add_refused,
    "add of an existing key: " . result($mc));
check_value('get after add', $k('add'), $mc->get($k('add')), 'first');
check(!$mc->replace($k('replace'), 'x') && $mc->getResultCode() == $replace_refused,
    "replace of a missing key: " . result($mc));
check($mc->get($k('replace')) === false && $mc->getResultCode() == Memcached::RES_NOTFOUND,
    "replace of a missing key stored it");
check($mc->set($k('replace'), 'old'), "set failed");
check($mc->replace($k('replace'), 'new'), "replace of an existing key failed: " . result($mc));
check_value('get after replace', $k('replace'), $mc->get($k('replace')), 'new');

// append / prepend.
check($mc->set($k('ap'), 'mid'), "set failed");
check($mc->append($k('ap'), '-end'), "append failed: " . result($mc));
check($mc->prepend($k('ap'), 'start-'), "prepend failed: " . result($mc));
check_value('get after append/prepend', $k('ap'), $mc->get($k('ap')), 'start-mid-end');
check(!$mc->append($k('ap-missing'), 'x') && $mc->getResultCode() == Memcached::RES_NOTSTORED,
    "append to a missing key: " . result($mc));
check(!$mc->prepend($k('ap-missing'), 'x') && $mc->getResultCode() == Memcached::RES_NOTSTORED,
    "prepend to a missing key: " . result($mc));

// cas: gets + cas succeeds; a stale token fails (RES_DATA_EXISTS) and leaves the other
// client's value; cas of a missing key is RES_NOTFOUND.
check($mc->set($k('cas'), 'v1'), "set failed");
$item = $mc->get($k('cas'), null, Memcached::GET_EXTENDED);
check(is_array($item), "get(GET_EXTENDED): " . result($mc));
check_value('get(GET_EXTENDED)', $k('cas'), $item['value'], 'v1');
check($mc->cas($item['cas'], $k('cas'), 'v2'), "cas with a fresh token failed: " . result($mc));
check_value('get after cas', $k('cas'), $mc->get($k('cas')), 'v2');
check(!$mc->cas($item['cas'], $k('cas'), 'v3') && $mc->getResultCode() == Memcached::RES_DATA_EXISTS,
    "cas with a used token: " . result($mc));
$item = $mc->get($k('cas'), null, Memcached::GET_EXTENDED);
check($other->set($k('cas'), 'other'), "set by the other client failed");
check(!$mc->cas($item['cas'], $k('cas'), 'v3') && $mc->getResultCode() == Memcached::RES_DATA_EXISTS,
    "cas with a stale token: " . result($mc));
check_value('get after stale cas', $k('cas'), $mc->get($k('cas')), 'other');
check(!$mc->cas($item['cas'], $k('cas-missing'), 'x') && $mc->getResultCode() == Memcached::RES_NOTFOUND,
    "cas of a missing key: " . result($mc));

// increment / decrement (decrement below 0 clamps to 0).
check($mc->set($k('n'), '10'), "set failed");
check($mc->increment($k('n'), 5) === 15, "increment 10 + 5: " . result($mc));
check($mc->decrement($k('n'), 3) === 12, "decrement 15 - 3: " . result($mc));
$r = $mc->decrement($k('n'), 100);
check($r === 0, "decrement 12 - 100 should clamp to 0, got " . describe($r) . ": " . result($mc));
$r = $mc->get($k('n'));
check(is_string($r) && rtrim($r, ' ') === '0', "get after decrement: " . describe($r));
check($mc->increment($k('n-missing'), 1) === false && $mc->getResultCode() == Memcached::RES_NOTFOUND,
    "increment of a missing key: " . result($mc));
check($mc->decrement($k('n-missing'), 1) === false && $mc->getResultCode() == Memcached::RES_NOTFOUND,
    "decrement of a missing key: " . result($mc));

// delete.
check($mc->delete($k('add')), "delete of an existing key failed: " . result($mc));
check($mc->get($k('add')) === false && $mc->getResultCode() == Memcached::RES_NOTFOUND,
    "deleted key still there");
check(!$mc->delete($k('add')) && $mc->getResultCode() == Memcached::RES_NOTFOUND,
    "delete of a missing key: " . result($mc));

if ($binary) {
    // What only the binary protocol reports: a non-numeric increment fails and leaves the
    // value; a value over 1 MiB is refused (E2BIG) and the connection goes on; getMulti of
    // only missing keys (GetKQ + Noop) answers nothing.
    check($mc->set($k('text'), 'abc'), "set failed");
    check($mc->increment($k('text'), 1) === false, "increment of a non-number: " . result($mc));
    check_value('get after a failed increment', $k('text'), $mc->get($k('text')), 'abc');
    check(!$mc->set($k('huge'), str_repeat('x', 1024 * 1024 + 10)), "set of 1 MiB + 10 succeeded");
    note("set of 1 MiB + 10: " . result($mc));
    check($mc->get($k('huge')) === false && $mc->getResultCode() == Memcached::RES_NOTFOUND,
        "a refused value was stored: " . result($mc));
    check_value('get after a refused value', $k('text'), $mc->get($k('text')), 'abc');
    $none = [];
    for ($i = 0; $i < 30; $i++) $none[] = $k("none-$i");
    $got = $mc->getMulti($none);
    check($got === [], "getMulti of missing keys: " . describe($got) . ": " . result($mc));
    note("binary: non-numeric increment refused, 1 MiB + 10 refused, misses-only getMulti");
}

// noreply writes (OPT_NOREPLY; binary: the quiet opcodes), then reads on the same client that prove they happened.
foreach (['nr-rep' => 'r0', 'nr-ap' => 'm', 'nr-n' => '100', 'nr-del' => 'd'] as $key => $v) {
    $nr->set($k($key), $v);
}
$want = [];
for ($i = 0; $i < 50; $i++) $want[$k("nr-$i")] = "noreply-$i";
$nr->setMulti($want);
$nr->set($k('nr-set'), 's');
$nr->add($k('nr-add'), 'a');
$nr->replace($k('nr-rep'), 'r1');
$nr->append($k('nr-ap'), '>');
$nr->prepend($k('nr-ap'), '<');
// With noreply libmemcached returns no real result for increment/decrement.
$nr->increment($k('nr-n'), 11);
$nr->decrement($k('nr-n'), 1);
$nr->delete($k('nr-del'));
$nr->deleteMulti([$k('nr-0'), $k('nr-1')]);
unset($want[$k('nr-0')], $want[$k('nr-1')]);
$want += [$k('nr-set') => 's', $k('nr-add') => 'a', $k('nr-rep') => 'r1', $k('nr-ap') => '<m>',
    $k('nr-n') => '110'];
$gone = [$k('nr-0'), $k('nr-1'), $k('nr-del')];
$got = $nr->getMulti(array_merge(array_keys($want), $gone));
check($got !== false, "getMulti after noreply writes failed: " . result($nr));
check_multi_get('getMulti after noreply writes', $got, $want, $gone);
note("noreply set/add/replace/append/prepend/increment/decrement/delete applied");

// getVersion: libmemcached must parse each server's version (it answers 255.255.255
// when it cannot, and refuses a major version of 0).
$versions = $mc->getVersion();
check(is_array($versions) && count($versions) == count($servers),
    "getVersion: " . describe($versions) . ": " . result($mc));
foreach ($versions as $s => $v) {
    note("getVersion $s = \"$v\"");
    check(preg_match('/^[1-9][0-9]*\.[0-9]+\.[0-9]+/', $v) && $v !== '255.255.255',
        "getVersion: libmemcached could not parse the version of $s (\"$v\")");
}
if ($with_stats) {
    $stats = $mc->getStats();
    check(is_array($stats) && count($stats) == count($servers),
        "getStats: " . describe($stats) . ": " . result($mc));
    foreach ($stats as $s => $st) {
        check(is_array($st) && $st, "getStats: none from $s");
        note("getStats $s: " . count($st) . " stats, version=" . describe($st['version'] ?? null)
            . ", curr_connections=" . describe($st['curr_connections'] ?? null));
    }
}

// touch's effect: the key touched to 0 outlived its ttl of 2 s, the key touched to 1 s
// expired.
$wait = $touched_at + TOUCH_WAIT - microtime(true);
if ($wait > 0) usleep((int) ($wait * 1e6));
check_value('get after touch 0', $k('touch-keep'), $mc->get($k('touch-keep')), 'keep');
check($mc->get($k('touch-expire')) === false && $mc->getResultCode() == Memcached::RES_NOTFOUND,
    "key touched with ttl 1 did not expire");
check_value('get after noreply touch 0', $k('nr-touch'), $mc->get($k('nr-touch')), 't');
check($mc->get($k('nr-touch-expire')) === false && $mc->getResultCode() == Memcached::RES_NOTFOUND,
    "key touched to 1 with noreply did not expire");
note("touch (and touch noreply) extended and shortened ttls");

note(sprintf("OK in %.2f s", microtime(true) - $started));
dump_report();
exit(0);
