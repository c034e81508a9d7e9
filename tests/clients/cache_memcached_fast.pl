#!/usr/bin/perl
# Drives a memcached server (or memroute) with Cache::Memcached::Fast (Debian
# libcache-memcached-fast-perl), text protocol. Usage: cache_memcached_fast.pl HOST:PORT [...]
# Exits 0 when every check passed, 1 at the first mismatch (with the reason), 3 when the
# library is missing. The data set is the one described in README.md.
use strict;
use warnings;
use Time::HiRes qw(time sleep);

BEGIN {
    unless (eval { require Cache::Memcached::Fast; 1 }) {
        print STDERR "FAIL: perl module Cache::Memcached::Fast is missing (Debian package"
          . " libcache-memcached-fast-perl): run scripts/test.sh, which installs it\n";
        exit 3;
    }
}

# --no-stats is accepted for symmetry with the other drivers: this library has no stats
# call (its version call, server_versions, is always made).
my @servers = grep { !/^-/ } @ARGV;
my @flags   = grep { /^-/ } @ARGV;
if (!@servers || (grep { !/:/ } @servers) || (grep { $_ ne '--no-stats' } @flags)) {
    print STDERR "usage: cache_memcached_fast.pl [--no-stats] HOST:PORT [HOST:PORT ...]\n";
    exit 2;
}

my $N_KEYS     = 2000;
my $TOUCH_WAIT = 3.2;
my @report;
my $started = time;

sub note { push @report, $_[0] }

sub dump_report {
    print "Cache::Memcached::Fast: $_\n" for @report;
}

sub fail {
    my ($msg) = @_;
    dump_report();
    print STDERR "FAIL Cache::Memcached::Fast: $msg\n";
    exit 1;
}

sub check { fail($_[1]) unless $_[0] }

sub describe {
    my ($v) = @_;
    return 'undef' unless defined $v;
    return length($v) . " bytes" if length($v) > 40;
    (my $s = $v) =~ s/([^\x20-\x7e])/sprintf("\\x%02x", ord $1)/ge;
    return "\"$s\"";
}

# A key for messages: long ones cut to their start and length.
sub short {
    my ($key) = @_;
    return length($key) <= 60 ? $key : substr($key, 0, 48) . "...(" . length($key) . " bytes)";
}

sub check_value {
    my ($what, $key, $got, $want) = @_;
    return if defined $got && $got eq $want;
    my $detail = '';
    if (defined $got) {
        my $n = length($got) < length($want) ? length($got) : length($want);
        my $i = 0;
        $i++ while $i < $n && substr($got, $i, 1) eq substr($want, $i, 1);
        $detail = " (lengths " . length($got) . " vs " . length($want)
          . ", first difference at byte $i)";
    }
    fail("$what: key " . short($key) . ": got " . describe($got) . ", want " . describe($want) . $detail);
}

sub random_hex {
    open(my $fh, '<:raw', '/dev/urandom') or die "urandom: $!";
    read($fh, my $bytes, 8) == 8 or die "urandom: short read";
    close $fh;
    return unpack('H*', $bytes);
}

# Values are slices of a 1 MiB pool of random bytes at random offsets.
my $POOL = pack('L*', map { int(rand(4294967296)) } 1 .. 262144);

sub random_bytes {
    my ($n) = @_;
    return substr($POOL, int(rand(length($POOL) - $n + 1)), $n);
}

sub value_size {
    my ($i) = @_;
    return 100_000 + ($i * 7919) % 500_000 if $i % 80 == 7;
    return 0 if $i % 500 == 1;
    return 1024 + ($i * 31) % 9217 if $i % 10 == 3;
    return 1 + ($i * 13) % 200;
}

sub client {
    my (%opt) = @_;
    my $noreply = delete $opt{noreply};
    return Cache::Memcached::Fast->new({
        servers => [map { { address => $_, noreply => $noreply ? 1 : 0 } } @servers],
        io_timeout      => 10,
        connect_timeout => 5,
        close_on_error  => 1,
        utf8            => 0,
        max_size        => 1024 * 1024,
        %opt,
    });
}

# Every key of @$data (pairs) with its exact value, none of @$missing, nothing else.
sub check_multi_get {
    my ($what, $got, $data, $missing) = @_;
    check(ref($got) eq 'HASH', "$what: returned " . (ref($got) || 'a scalar') . ", not a hash");
    my @absent = grep { !exists $got->{ $_->[0] } } @$data;
    if (@absent) {
        fail("$what: " . scalar(@absent) . " of " . scalar(@$data)
              . " keys missing from the reply (got " . scalar(keys %$got)
              . "), e.g. " . short($absent[0][0]));
    }
    check_value($what, $_->[0], $got->{ $_->[0] }, $_->[1]) for @$data;
    my @extra = grep { exists $got->{$_} } @$missing;
    fail("$what: keys never written came back, e.g. " . short($extra[0])) if @extra;
    check(scalar(keys %$got) == scalar(@$data), "$what: unexpected keys in the reply");
}

my $mc    = client();
my $other = client();
my $pfx   = "rc-" . random_hex() . "-cmf";
sub k { "$pfx:$_[0]" }
note("Cache::Memcached::Fast $Cache::Memcached::Fast::VERSION against @servers");

# touch, first: its effect is checked at the end, after the data set's round trip.
check($mc->set(k('touch-keep'), 'keep', 2), "set with ttl 2 failed");
check($mc->touch(k('touch-keep'), 0), "touch of an existing key failed");
check($mc->set(k('touch-expire'), 'expire'), "set failed");
check($mc->touch(k('touch-expire'), 1), "touch of an existing key failed");
my $r = $mc->touch(k('touch-missing'), 1);
check(defined $r && !$r, "touch of a missing key: " . describe($r));
# The same through a client whose servers have noreply => 1 (commands in void context).
my $nr = client(noreply => 1);
check($mc->set(k('nr-touch'), 't', 2), "set with ttl 2 failed");
$nr->touch(k('nr-touch'), 0);
check($mc->set(k('nr-touch-expire'), 't'), "set failed");
$nr->touch(k('nr-touch-expire'), 1);
my $touched_at = time;

# The data set: set_multi, then get_multi (one call).
my @data;
my $total = 0;
for my $i (0 .. $N_KEYS - 1) {
    my $key = "$pfx:$i";
    $key .= ':' . ('k' x (120 + $i % 90)) if $i % 25 == 0;
    check(length($key) <= 250, "test bug: key of " . length($key) . " bytes");
    my $v = random_bytes(value_size($i));
    $total += length $v;
    push @data, [$key, $v];
}
my @missing = map { "$pfx:missing:$_" } 0 .. 19;
my $t = time;
my @results = $mc->set_multi(map { [$_->[0], $_->[1]] } @data);
note(sprintf("set_multi of %d keys, %d bytes: %.2f s", scalar @data, $total, time - $t));
my @failed = grep { !$results[$_] } 0 .. $#data;
check(!@failed, scalar(@failed) . " keys not stored by set_multi, e.g. "
      . (@failed ? $data[ $failed[0] ][0] : ''));
my @asked = map { $_->[0] } @data;
my $step = int(@asked / (@missing + 1));
splice(@asked, ($_ + 1) * $step + $_, 0, $missing[$_]) for 0 .. $#missing;
$t = time;
my $got = $mc->get_multi(@asked);
note(sprintf("get_multi of %d keys (%d missing): %.2f s", scalar @asked, scalar @missing,
    time - $t));
check_multi_get('get_multi', $got, \@data, \@missing);
$t = time;
$got = $mc->gets_multi(@asked);
note(sprintf("gets_multi of the same keys: %.2f s", time - $t));
check(ref($got) eq 'HASH', "gets_multi: not a hash");
check_multi_get('gets_multi', { map { $_ => $got->{$_}[1] } keys %$got }, \@data, \@missing);

check_value('get', $_->[0], scalar $mc->get($_->[0]), $_->[1]) for @data[7, 2];

# add / replace.
check($mc->add(k('add'), 'first'), "add of a new key failed");
$r = $mc->add(k('add'), 'second');
check(defined $r && !$r, "add of an existing key: " . describe($r));
check_value('get after add', k('add'), scalar $mc->get(k('add')), 'first');
$r = $mc->replace(k('replace'), 'x');
check(defined $r && !$r, "replace of a missing key: " . describe($r));
check(!defined $mc->get(k('replace')), "replace of a missing key stored it");
check($mc->set(k('replace'), 'old'), "set failed");
check($mc->replace(k('replace'), 'new'), "replace of an existing key failed");
check_value('get after replace', k('replace'), scalar $mc->get(k('replace')), 'new');

# append / prepend.
check($mc->set(k('ap'), 'mid'), "set failed");
check($mc->append(k('ap'), '-end'), "append failed");
check($mc->prepend(k('ap'), 'start-'), "prepend failed");
check_value('get after append/prepend', k('ap'), scalar $mc->get(k('ap')), 'start-mid-end');
$r = $mc->append(k('ap-missing'), 'x');
check(defined $r && !$r, "append to a missing key: " . describe($r));
$r = $mc->prepend(k('ap-missing'), 'x');
check(defined $r && !$r, "prepend to a missing key: " . describe($r));

# cas: gets + cas succeeds; a stale token fails and leaves the other client's value.
check($mc->set(k('cas'), 'v1'), "set failed");
my $cv = $mc->gets(k('cas'));
check(ref($cv) eq 'ARRAY', "gets: " . describe($cv));
check_value('gets', k('cas'), $cv->[1], 'v1');
check($mc->cas(k('cas'), $cv->[0], 'v2'), "cas with a fresh token failed");
check_value('get after cas', k('cas'), scalar $mc->get(k('cas')), 'v2');
$r = $mc->cas(k('cas'), $cv->[0], 'v3');
check(defined $r && !$r, "cas with a used token: " . describe($r));
$cv = $mc->gets(k('cas'));
check($other->set(k('cas'), 'other'), "set by the other client failed");
$r = $mc->cas(k('cas'), $cv->[0], 'v3');
check(defined $r && !$r, "cas with a stale token: " . describe($r));
check_value('get after stale cas', k('cas'), scalar $mc->get(k('cas')), 'other');
$r = $mc->cas(k('cas-missing'), $cv->[0], 'x');
check(defined $r && !$r, "cas of a missing key: " . describe($r));

# incr / decr (decr below 0 clamps to 0, returned as "0E0").
check($mc->set(k('n'), '10'), "set failed");
check(($mc->incr(k('n'), 5) // -1) == 15, "incr 10 + 5");
check(($mc->decr(k('n'), 3) // -1) == 12, "decr 15 - 3");
$r = $mc->decr(k('n'), 100);
check(defined $r && $r == 0, "decr 12 - 100 should clamp to 0, got " . describe($r));
$r = $mc->get(k('n'));
check(defined $r && $r =~ /^0 *$/, "get after decr: " . describe($r));
$r = $mc->incr(k('n-missing'), 1);
check(defined $r && !$r, "incr of a missing key: " . describe($r));
$r = $mc->decr(k('n-missing'), 1);
check(defined $r && !$r, "decr of a missing key: " . describe($r));

# delete.
check($mc->delete(k('add')), "delete of an existing key failed");
check(!defined $mc->get(k('add')), "deleted key still there");
$r = $mc->delete(k('add'));
check(defined $r && !$r, "delete of a missing key: " . describe($r));

# noreply writes (servers with noreply => 1; commands in void context), then reads on
# the same client that prove they happened.
check($nr->set(k('nr-rep'), 'r0'), "set failed");
check($nr->set(k('nr-ap'), 'm'), "set failed");
check($nr->set(k('nr-n'), '100'), "set failed");
check($nr->set(k('nr-del'), 'd'), "set failed");
my %want = map { (k("nr-$_") => "noreply-$_") } 0 .. 49;
$nr->set_multi(map { [$_, $want{$_}] } sort keys %want);
$nr->set(k('nr-set'), 's');
$nr->add(k('nr-add'), 'a');
$nr->replace(k('nr-rep'), 'r1');
$nr->append(k('nr-ap'), '>');
$nr->prepend(k('nr-ap'), '<');
$nr->incr(k('nr-n'), 11);
$nr->decr(k('nr-n'), 1);
$nr->delete(k('nr-del'));
$nr->delete_multi(k('nr-0'), k('nr-1'));
delete @want{ k('nr-0'), k('nr-1') };
%want = (%want, k('nr-set') => 's', k('nr-add') => 'a', k('nr-rep') => 'r1',
    k('nr-ap') => '<m>', k('nr-n') => '110');
my @gone = (k('nr-0'), k('nr-1'), k('nr-del'));
$got = $nr->get_multi(keys %want, @gone);
check_multi_get('get_multi after noreply writes', $got,
    [map { [$_, $want{$_}] } sort keys %want], \@gone);
note("noreply set/add/replace/append/prepend/incr/decr/delete applied");

# server_versions (Cache::Memcached::Fast has no stats call).
my $versions = $mc->server_versions;
check(ref($versions) eq 'HASH' && scalar(keys %$versions) == scalar(@servers),
    "server_versions: " . join(', ', %{ $versions || {} }));
for my $s (sort keys %$versions) {
    check(defined $versions->{$s} && length $versions->{$s}, "server_versions: none from $s");
    note("server_versions $s = \"$versions->{$s}\"");
}

# touch's effect: the key touched to 0 outlived its ttl of 2 s, the key touched to 1 s
# expired.
my $wait = $touched_at + $TOUCH_WAIT - time;
sleep($wait) if $wait > 0;
check_value('get after touch 0', k('touch-keep'), scalar $mc->get(k('touch-keep')), 'keep');
check(!defined $mc->get(k('touch-expire')), "key touched with ttl 1 did not expire");
check_value('get after noreply touch 0', k('nr-touch'), scalar $mc->get(k('nr-touch')), 't');
check(!defined $mc->get(k('nr-touch-expire')), "key touched to 1 with noreply did not expire");
note("touch (and touch noreply) extended and shortened ttls");

note(sprintf("OK in %.2f s", time - $started));
dump_report();
exit 0;
