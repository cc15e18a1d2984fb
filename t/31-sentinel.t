# Redis Sentinel (sse_redis_url redis-sentinel://...): nginx follows the
# master that Sentinel names, across failovers, without a silent hole.
#   1. nginx -t accepts redis-sentinel:// URLs and refuses bad ones, naming
#      sse_redis_url (no service, bad port, unknown query parameter, ...).
#   2. A master, one replica and three Sentinels on loopback; nginx (2
#      workers, sse_history on) on the Sentinel URL: the workers connect to
#      the master Sentinel names (not the replica), streams get the events
#      published there with FCALL sse_publish, with their ids.
#   3. 100 history streams over 4 channels while a publisher sends with FCALL
#      sse_publish and, like a Sentinel-aware client, asks a Sentinel for the
#      master again whenever a call fails (and every 0.25 s). Replication is
#      cut half a second before the master is killed (SIGKILL), so that the
#      new master lacks what the old one acknowledged last, as with a lagging
#      replica. Measured: time from the kill until the streams get events
#      again. Checked: every stream stays open (the module keeps
#      streams open across a Redis loss, so no reconnection is expected);
#      every acknowledged message reaches every stream of its channel once,
#      or the stream got an sse-gap naming that channel between its last
#      event before the message and its first one after it, or heading the
#      replay of a connection that went past it (no silent hole); no id
#      twice; no id for two payloads; the ids the new master
#      issues are in a new epoch (>= 10^12), announced to each stream by an
#      sse-gap on all its channels; error.log names the switch.
#   5. A client that left before the kill and comes back after it with its
#      Last-Event-ID gets everything after that id that the new master holds,
#      in id order, with an sse-gap naming every channel that has new-epoch
#      events before the first of them, and nothing acknowledged (including
#      what the new master lacks) is skipped silently. Resuming from a lost
#      id gives sse-gap on every channel, then the new-epoch events.
#   4. The old master comes back as a replica; SENTINEL FAILOVER (manual, the
#      old master alive) promotes it again: the workers follow +switch-master
#      (log line), their data connections (subscriber and commands) all go to
#      the new master, the open streams go on receiving what the publisher
#      sends there (a third epoch, after an sse-gap), with the same
#      no-silent-hole checks; a new stream resuming with Last-Event-ID is
#      replayed the new master's history.
#   6. Master with requirepass (replica masterauth, Sentinels auth-pass):
#      redis-sentinel://:password@.../mymaster connects and streams work.
#
# Sentinels are redis-server --sentinel processes started with the harness's
# process helpers (killed at the end of the file even when it dies); the
# publisher is a child of this file (start_publisher_process), killed by the
# harness at the end too.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use List::Util qw(max min sum0 first);
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

our $TODO;
my $EPOCH   = 1_000_000_000_000;

# Part 5 once found a silent hole: a resume compared only the first replayed
# entry's prev with the resume id, not the chain after it (now
# history::plan_resume checks every link).
my $SERVICE = 'mymaster';
my $WORKERS = 2;
my @CHANS   = qw(fo:a fo:b fo:c fo:d);
my $CLIENTS = 100;
my $RATE    = 100;    # messages per second, all channels together

# ---------------------------------------------------------------------------
# Helpers of this file: Sentinels, a Sentinel-aware publisher, the delivery
# checks.
# ---------------------------------------------------------------------------

# Three Sentinels monitoring the master on $master_port (quorum 2, down after
# 1 s). Each is { port, pid, dir }.
sub start_sentinels {
    my (%o) = @_;
    my @sentinels;
    for (1 .. ($o{count} || 3)) {
        my $port = free_port();
        my $dir  = SSETest::_tempdir('sentinel');
        my $conf = "$dir/sentinel.conf";    # Sentinel rewrites it: its own, writable
        open my $fh, '>', $conf or die "cannot write $conf: $!";
        print {$fh} join "\n",
            "port $port", 'bind 127.0.0.1', 'daemonize no', "dir $dir", "logfile $dir/sentinel.log",
            "sentinel monitor $SERVICE 127.0.0.1 $o{master_port} 2",
            "sentinel down-after-milliseconds $SERVICE " . ($o{down_after} || 1000),
            "sentinel failover-timeout $SERVICE 5000",
            (defined $o{auth_pass} ? "sentinel auth-pass $SERVICE $o{auth_pass}" : ()), '';
        close $fh or die "cannot write $conf: $!";
        my $pid = SSETest::_spawn("$dir/sentinel.out", $SSETest::REDIS_BIN, $conf, '--sentinel');
        push @sentinels, { port => $port, pid => $pid, dir => $dir };
    }
    for my $s (@sentinels) {
        wait_until(sub { my $p = eval { redis_cmd($s->{port}, 'PING') }; defined $p && $p eq 'PONG' }, 10)
            or die "sentinel on port $s->{port} does not answer PING:\n" . slurp("$s->{dir}/sentinel.log")
                . slurp("$s->{dir}/sentinel.out");
    }
    return @sentinels;
}

sub stop_sentinels { SSETest::_stop_group($_->{pid}, 'TERM', 5) for grep { $_->{pid} } @_; delete $_->{pid} for @_ }

# SENTINEL replies listing instances: arrays of flat name/value lists.
sub sentinel_list {
    my ($port, $what) = @_;
    my $r = eval { redis_cmd($port, SENTINEL => $what, $SERVICE) };
    return () unless ref $r eq 'ARRAY';
    return map { ref $_ eq 'ARRAY' ? {@$_} : () } @$r;
}

sub master_of {
    my ($port) = @_;
    my $r = eval { redis_cmd($port, SENTINEL => 'get-master-addr-by-name', $SERVICE) };
    return ref $r eq 'ARRAY' && @$r == 2 ? "$r->[0]:$r->[1]" : '';
}

# Until every Sentinel names $master, knows the two others, and sees the
# replica on $replica_port up and linked: only then can they agree on a
# failover.
sub wait_topology {
    my ($sentinels, $master, $replica, $timeout) = @_;
    return wait_until(sub {
        for my $s (@$sentinels) {
            return 0 unless master_of($s->{port}) eq "127.0.0.1:$master";
            return 0 unless sentinel_list($s->{port}, 'sentinels') == @$sentinels - 1;
            my @ok = grep { $_->{port} == $replica && $_->{flags} !~ /down|disconnected/
                    && ($_->{'master-link-status'} // '') eq 'ok' } sentinel_list($s->{port}, 'replicas');
            return 0 unless @ok;
        }
        1;
    }, $timeout, 0.2);
}

# Established connections from each worker of $nginx to 127.0.0.1:$port:
# { worker pid => count } (every worker listed, 0 included).
sub worker_links {
    my ($nginx, $port) = @_;
    my %inodes;    # socket inode => 1, for connections to the port
    for my $file ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $fh, '<', $file or next;
        <$fh>;
        while (<$fh>) {
            my @f = split ' ';
            next unless $f[3] eq '01';    # ESTABLISHED
            my ($rport) = $f[2] =~ /:([0-9A-F]{4})$/ or next;
            $inodes{ $f[9] } = 1 if hex($rport) == $port && $f[9];
        }
    }
    my %links;
    for my $pid ($nginx->worker_pids) {
        $links{$pid} = 0;
        opendir my $dh, "/proc/$pid/fd" or next;
        for my $fd (readdir $dh) {
            my $link = readlink "/proc/$pid/fd/$fd" // next;
            $links{$pid}++ if $link =~ /^socket:\[(\d+)\]$/ && $inodes{$1};
        }
    }
    return \%links;
}

# Lines of $text matching $re.
sub lines_like { my ($text, $re) = @_; return grep { /$re/ } split /\n/, $text }

# A publisher like a service with a Sentinel-aware Redis client: asks the
# Sentinels (in turn, the next after a failure) for the master, publishes
# with FCALL sse_publish at $rate messages/s round robin over the channels
# (payload "<channel> <tag>#<n>", n from 1 per channel), and retries a
# message whose call failed (error reply such as READONLY, no connection, or
# a connection lost before the reply: then it may have been run, and the
# retry may publish it twice) after asking for the master again; also asks
# every 0.25 s and moves when the answer changes. Log lines:
#   A <ch> <n> <id> <time> <addr>     acknowledged
#   U <ch> <n> - <time> <addr> <why>  sent, no reply (maybe run): retried
#   F <ch> <n> - <time> <addr> <why>  certainly not run: retried
#   M <time> <addr>                   the master it publishes to from now on
# The test's sockets (streams) do not stay open in the publisher (close_fds).
sub start_failover_publisher {
    my (%o) = @_;
    return start_publisher_process('FailoverPublisher', \&publisher_loop, \%o, close_fds => 1);
}

sub publisher_loop {
    my ($dir, %o) = @_;
    my @sentinels = @{ $o{sentinels} };
    my @channels  = @{ $o{channels} };
    my $rate      = $o{rate} || 100;
    my $tag       = $o{tag} // '';
    open my $log, '>>', "$dir/log" or die "cannot write $dir/log: $!\n";
    $log->autoflush(1);
    my ($si, $conn, $addr, $asked) = (0, undef, '-', 0);
    my $ask = sub {    # the master's address from a Sentinel, or undef
        for (1 .. @sentinels) {
            my $port = $sentinels[$si];
            my $r = eval {
                my $sc = SSETest::RedisConn->new($port, timeout => 1) or die "connect\n";
                my $reply = $sc->cmd(SENTINEL => 'get-master-addr-by-name', $o{service});
                $sc->close;
                $reply;
            };
            return "$r->[0]:$r->[1]" if ref $r eq 'ARRAY' && @$r == 2;
            $si = ($si + 1) % @sentinels;
        }
        return;
    };
    my (%n, $pending);
    my $k = 0;
    my $next = time;
    while (!-e "$dir/stop") {
        my $left = $next - time;
        sleep $left if $left > 0;
        $next = time if time - $next > 0.2;    # far behind (a failover): no burst
        if ($conn && time - $asked > 0.25) {   # Sentinel may have moved the master
            $asked = time;
            my $now = $ask->();
            if (defined $now && $now ne $addr) { $conn->close; undef $conn; }
        }
        $pending //= do { my $ch = $channels[ $k % @channels ]; [ $ch, ($n{$ch} // 0) + 1 ] };
        my ($ch, $n) = @$pending;
        my $sent  = 0;
        my $reply = eval {
            if (!$conn) {
                $asked = time;
                my $master = $ask->() // die "no Sentinel answers\n";
                my ($ip, $port) = split /:/, $master;
                die "master $master is not on loopback\n" unless $ip eq '127.0.0.1';
                $conn = SSETest::RedisConn->new($port, timeout => 2) or die "connect $master: $!\n";
                if ($addr ne $master) {
                    $addr = $master;
                    printf {$log} "M %.3f %s\n", time, $addr;
                }
                if (defined $o{password}) {
                    my $ok = $conn->cmd(AUTH => $o{password});
                    die "AUTH: $ok\n" unless defined $ok && !ref $ok && $ok eq 'OK';
                }
            }
            $conn->send_cmd(FCALL => sse_publish => 0, $ch, "$ch $tag#$n");
            $sent = 1;
            $conn->read_reply;
        };
        my $t = sprintf '%.3f', time;
        if (defined $reply && !ref $reply && $reply =~ /^\d+$/) {
            print {$log} "A $ch $n $reply $t $addr\n";
            $n{$ch} = $n;
            $k++;
            undef $pending;
            $next += 1 / $rate;
            next;
        }
        my $why = defined $reply ? "$reply" : $@;
        $why =~ s/\s+/ /g;
        print {$log} +($sent && !defined $reply ? 'U' : 'F') . " $ch $n - $t $addr $why\n";
        $conn->close if $conn;
        undef $conn;    # ask Sentinel again, then retry the same message
        $next = time + 0.05;
    }
    close $log;
}

package FailoverPublisher;

# stop() (and DESTROY) come from SSETest::Publisher; results() reads this
# publisher's log.
use parent -norequire, 'SSETest::Publisher';

# { acked => [ { ch, payload, id, t, addr } ...] (publish order),
#   maybe => { payload => 1 } (sent without a reply: may have been run),
#   failures, first_failure, masters => [ [time, addr] ... ] }
sub results {
    my ($self) = @_;
    my %r = (acked => [], maybe => {}, failures => 0, first_failure => undef, masters => []);
    for my $line (split /\n/, SSETest::slurp("$self->{dir}/log")) {
        my @f = split / /, $line;
        if ($f[0] eq 'M' && @f >= 3) { push @{ $r{masters} }, [ $f[1], $f[2] ]; next }
        my ($kind, $ch, $n, $id, $t, $addr) = @f;
        next unless defined $addr;    # a line being written
        my $payload = "$ch $self->{tag}#$n";
        if ($kind eq 'A') {
            push @{ $r{acked} }, { ch => $ch, payload => $payload, id => $id, t => $t, addr => $addr };
        } else {
            $r{maybe}{$payload} = 1 if $kind eq 'U';
            $r{failures}++;
            $r{first_failure} //= $t;
        }
    }
    return \%r;
}

package main;

# The events of a stream that count (warm-up messages left out).
sub events_of { grep { $_->{data} ne 'warmup' } @{ $_[0] } }

# Checks the events of some streams against what the publishers had
# acknowledged. $streams: [ { name, chans => [...], events => [...], from =>
# id (acknowledged messages above it count) } ]. $acked: as
# FailoverPublisher::results; $maybe: payloads sent without a reply.
# $ids: id => "channel|payload" seen anywhere so far (filled in, so that an
# id given to two payloads is found across checks). Returns a summary.
sub check_delivery {
    my ($label, $streams, $acked, $maybe, $ids, %opt) = @_;
    my %acked_by_id = map { ($_->{id} => $_) } @$acked;
    my (@foreign, @no_id, @dup_ids, @disorder, @silent, @twice, @nowhere, @reused);
    my ($gapped, $delivered) = (0, 0);
    my $note_id = sub {
        my ($id, $what, $where) = @_;
        if (!exists $ids->{$id}) { $ids->{$id} = $what; return }
        push @reused, "id $id: $ids->{$id} and $what ($where)" if $ids->{$id} ne $what;
    };
    $note_id->($_->{id}, "$_->{ch}|$_->{payload}", 'acknowledged') for @$acked;
    for my $s (@$streams) {
        my %mine = map { $_ => 1 } @{ $s->{chans} };
        my @ev = events_of($s->{events});
        my (@ids, @pos, %count, %gap_at, %opening);    # ids and positions of the data events, in arrival order
        my ($conn, $data_in_conn) = (-1, 0);
        for my $i (0 .. $#ev) {
            my $e = $ev[$i];
            ($conn, $data_in_conn) = ($e->{conn} // 0, 0) if ($e->{conn} // 0) != $conn;
            if ($e->{event} eq 'sse-gap') {
                $gap_at{$i} = { map { $_ => 1 } split /,/, $e->{data} };
                $opening{$i} = 1 unless $data_in_conn;    # heads the replay of a (re)connection
                next;
            }
            $data_in_conn++;
            push @foreign, "$s->{name}: $e->{event}" unless $mine{ $e->{event} };
            my $id = $e->{own_id};
            if (!defined $id || $id !~ /^\d+$/) { push @no_id, "$s->{name}: $e->{event} $e->{data}"; next }
            push @dup_ids, "$s->{name}: id $id" if $count{$id}++;
            push @disorder, "$s->{name}: $id after $ids[-1]" if @ids && $id <= $ids[-1];
            push @ids, $id;
            push @pos, $i;
            $note_id->($id, "$e->{event}|$e->{data}", $s->{name});
            push @nowhere, "$s->{name}: $id $e->{event} '$e->{data}'"
                unless ($acked_by_id{$id} && $acked_by_id{$id}{payload} eq $e->{data}) || $maybe->{ $e->{data} };
        }
        my %got = map { ("$ev[$_]{own_id}|$ev[$_]{event}|$ev[$_]{data}" => ($count{ $ev[$_]{own_id} } // 0)) } @pos;
        for my $m (@$acked) {
            next unless $mine{ $m->{ch} } && $m->{id} > ($s->{from} // 0);
            my $n = $got{"$m->{id}|$m->{ch}|$m->{payload}"} // 0;
            if ($n == 1) { $delivered++; next }
            if ($n > 1) { push @twice, "$s->{name}: $m->{id} $m->{payload}"; next }
            # Not delivered: an sse-gap naming its channel must come after the
            # stream's last event before it and before its first one after it
            # (or head the replay of the connection that went past it: a
            # replay starts with its sse-gap, then sends what is held).
            my $before = first { $ids[$_] > $m->{id} } 0 .. $#ids;
            my $hi = defined $before ? $pos[$before] : scalar @ev;
            my $after = first { $ids[$_] < $m->{id} } reverse 0 .. $#ids;
            my $lo = defined $after ? $pos[$after] : -1;
            if (grep { ($_ > $lo || $opening{$_}) && $_ < $hi && $gap_at{$_}{ $m->{ch} } } keys %gap_at) { $gapped++; next }
            push @silent, "$s->{name}: $m->{id} $m->{ch} '$m->{payload}'";
        }
    }
    is scalar(@foreign), 0, "$label: no event on a channel the stream did not ask for" or diag first_lines(@foreign);
    is scalar(@no_id), 0, "$label: every event carries an id" or diag first_lines(@no_id);
    is scalar(@dup_ids), 0, "$label: no id delivered twice to a stream" or diag first_lines(@dup_ids);
    is scalar(@disorder), 0, "$label: ids increase on every stream" or diag first_lines(@disorder);
    is scalar(@twice), 0, "$label: no acknowledged message twice" or diag first_lines(@twice);
    {
        local $TODO = $opt{todo_silent};
        is scalar(@silent), 0, "$label: every acknowledged message reached every stream of its channel, "
            . "or an sse-gap naming the channel took its place ($delivered deliveries, $gapped announced by sse-gap)"
            or diag first_lines(@silent);
    }
    is scalar(@nowhere), 0, "$label: every event delivered was published (acknowledged, or sent without a reply)"
        or diag first_lines(@nowhere);
    is scalar(@reused), 0, "$label: no id stands for two different messages" or diag first_lines(@reused);
    return { delivered => $delivered, gapped => $gapped };
}

# A Redis Stream history on $port as "id|channel|payload" strings, by id.
sub history_of {
    my ($port, @chans) = @_;
    my @all;
    for my $ch (@chans) {
        my $entries = redis_cmd($port, XRANGE => "sse:h:$ch", '-', '+');
        next unless ref $entries eq 'ARRAY';
        for (@$entries) {
            my ($id, $fields) = @$_;
            my %f = @$fields;
            $id =~ s/-0$//;
            push @all, { id => $id, ch => $ch, payload => $f{d} };
        }
    }
    return sort { $a->{id} <=> $b->{id} } @all;
}

# The first event in @$events with an id of epoch $n or later: (index,
# event), or the empty list.
sub first_of_epoch {
    my ($events, $n) = @_;
    for my $i (0 .. $#$events) {
        my $id = $events->[$i]{own_id};
        return ($i, $events->[$i]) if defined $id && $id =~ /^\d+$/ && $id >= $n * $EPOCH;
    }
    return;
}

# Whether the stream $es has received an event of epoch $n or later (scans
# each event once).
sub has_epoch {
    my ($es, $n) = @_;
    my $ev = $es->{events};
    my $i = $es->{scanned}{$n} //= 0;
    for (; $i < @$ev; $i++) {
        my $id = $ev->[$i]{own_id};
        if (defined $id && $id =~ /^\d+$/ && $id >= $n * $EPOCH) { $es->{scanned}{$n} = $i; return 1 }
    }
    $es->{scanned}{$n} = $i;
    return 0;
}

# Whether the event just before the first event of epoch $n on each stream is
# an sse-gap naming all the stream's channels. Returns the streams where not.
sub epoch_gaps_missing {
    my ($streams, $n) = @_;
    my @bad;
    for my $s (@$streams) {
        my @ev = events_of($s->{events});
        my ($i) = first_of_epoch(\@ev, $n);
        next unless defined $i;
        my $prev = $i > 0 ? $ev[ $i - 1 ] : undef;
        my %named = $prev && $prev->{event} eq 'sse-gap' ? map { $_ => 1 } split /,/, $prev->{data} : ();
        push @bad, "$s->{name}: before id $ev[$i]{own_id}: "
            . ($prev ? "$prev->{event} '$prev->{data}'" : 'nothing')
            if grep { !$named{$_} } @{ $s->{chans} };
    }
    return @bad;
}

# ---------------------------------------------------------------------------
# 1. nginx -t
# ---------------------------------------------------------------------------

subtest 'nginx -t: redis-sentinel URLs' => sub {
    my $loc = 'location = /events { sse_channel $arg_channels; sse_history on; }';
    for my $url ('redis-sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/mymaster',
        'redis-sentinel://127.0.0.1/mymaster',
        'redis-sentinel://:s3cr3t@127.0.0.1:26379,127.0.0.1:26380/mymaster/2',
        'redis-sentinel://app:pw@127.0.0.1:26379/my%2Dmaster?sentinel_username=watch&sentinel_password=s%40',
        'redis-sentinel://127.0.0.1:26379/mymaster?sentinel_password=only') {
        my ($rc, $out) = nginx_test_conf(redis_url => $url, server => $loc);
        is $rc, 0, "accepted: $url" or diag $out;
    }
    for my $case (
        [ 'redis-sentinel://127.0.0.1:26379',                        qr/names no Sentinel service/, 'no service' ],
        [ 'redis-sentinel://127.0.0.1:26379,127.0.0.1:26380/',       qr/names no Sentinel service/, 'empty service' ],
        [ 'redis-sentinel://127.0.0.1:26379,127.0.0.1:0/mymaster',   qr/invalid port "0"/,          'port 0' ],
        [ 'redis-sentinel://127.0.0.1:99999/mymaster',               qr/invalid port "99999"/,      'port out of range' ],
        [ 'redis-sentinel://127.0.0.1:sentinel/mymaster',            qr/invalid port "sentinel"/,   'port not a number' ],
        [ 'redis-sentinel://127.0.0.1:26379/mymaster?timeout=1',     qr/unsupported query parameter "timeout=1"/,
            'unknown query parameter' ],
        [ 'redis-sentinel://127.0.0.1:26379/mymaster?sentinel_password=x&db=2', qr/unsupported query parameter "db=2"/,
            'unknown query parameter after a known one' ],
        [ 'redis-sentinel://127.0.0.1:26379,/mymaster',              qr/has no host/,               'empty host in the list' ],
        [ 'redis-sentinel://127.0.0.1:26379/mymaster/db',            qr/invalid database number "db"/, 'database not a number' ],
        [ 'redis-sentinels://127.0.0.1:26379/mymaster',              qr/must start with/,           'misspelt scheme' ],
    ) {
        my ($url, $why, $what) = @$case;
        my ($rc, $out) = nginx_test_conf(redis_url => $url, server => $loc);
        isnt $rc, 0, "refused: $what ($url)";
        like $out, qr/"sse_redis_url".*\Q$url\E.*$why|sse_redis_url.*$why/, '... naming sse_redis_url and the reason'
            or diag $out;
    }
};

# ---------------------------------------------------------------------------
# 2. Topology: master, replica, three Sentinels; nginx on the Sentinel URL
# ---------------------------------------------------------------------------

my $master  = start_redis();
my $M       = $master->port;
my $replica = start_redis(args => [ '--replicaof', '127.0.0.1', $M ]);
my $R       = $replica->port;
ok wait_until(sub { (eval { redis_info($R, 'replication')->{master_link_status} } // '') eq 'up' }, 10),
    "replica on port $R is in sync with the master on port $M";
my @sentinels = start_sentinels(master_port => $M);
my @SP = map { $_->{port} } @sentinels;
my $t_topo = time;
ok wait_topology(\@sentinels, $M, $R, 30), 'the three Sentinels name the master, know each other and the replica'
    or BAIL_OUT('Sentinel topology not ready: ' . join ' / ', map { slurp("$_->{dir}/sentinel.log") } @sentinels);
note sprintf 'Sentinels ready after %.1f s', time - $t_topo;

my $url   = 'redis-sentinel://' . join(',', map { "127.0.0.1:$_" } @SP) . "/$SERVICE";
my $nginx = start_nginx(redis_url => $url, workers => $WORKERS, listen => 'reuseport', server => q{
        location = /events { sse_channel $arg_channels; sse_history on; sse_retry 1s; }
});
my $port = $nginx->port;

subtest 'nginx follows the master Sentinel names' => sub {
    ok wait_until(sub { lines_like($nginx->error_log, qr/sse: redis master is 127\.0\.0\.1:$M \(was none\)/) == $WORKERS }, 10),
        "each worker logs: redis master is 127.0.0.1:$M (was none)"
        or diag $nginx->error_log;
    ok wait_until(sub { my $l = worker_links($nginx, $M); !grep { $_ != 2 } values %$l }, 10),
        'each worker has its subscriber and commands connections on the master'
        or diag explain worker_links($nginx, $M);
    my $on_replica = worker_links($nginx, $R);
    is sum0(values %$on_replica), 0, '... and none on the replica';
    ok wait_until(sub { my $l = worker_links($nginx, $SP[0]); !grep { $_ != 1 } values %$l }, 5),
        '... and one connection to the first Sentinel';
    ok wait_until(sub { reply_text(eval { redis_cmd($M, FUNCTION => 'LIST') }) =~ /nginx_sse/ }, 10),
        'the workers loaded the nginx_sse functions on the master';

    my $c = sse_connect($port, '/events?channels=fo:a,fo:b');
    is $c->status, 200, 'a stream opens';
    ok wait_subscribed($M, $_, 1, 5), "$_ subscribed on the master" for qw(fo:a fo:b);
    is numsub($R, 'fo:a')->{'fo:a'}, 0, 'not on the replica';
    my @ids = map { sse_publish($M, @$_) } [ 'fo:a', 'first' ], [ 'fo:b', 'second' ];
    ok !grep({ ref $_ || !/^\d+$/ } @ids), "FCALL sse_publish on the master: ids @ids";
    ok $ids[0] < $EPOCH, '... of the first epoch';
    my @got = $c->events_until(2, 5);
    is_deeply [ map { "$_->{event}|$_->{data}|" . ($_->{own_id} // '-') } @got ],
        [ "fo:a|first|$ids[0]", "fo:b|second|$ids[1]" ], 'the stream gets both events, with their ids';
    $c->close;
};

# ---------------------------------------------------------------------------
# 3. Failover under load: the master is killed
# ---------------------------------------------------------------------------

my @SETS = ([qw(fo:a)], [qw(fo:b)], [qw(fo:c)], [qw(fo:d)], [qw(fo:a fo:b)], [qw(fo:c fo:d)], [qw(fo:a fo:d)], [@CHANS]);
my @clients = map {
    my $set = $SETS[ $_ % @SETS ];
    my $es = event_source($port, '/events?channels=' . join(',', @$set), retry_ms => 500);
    $es->{chans} = $set;
    $es;
} 0 .. $CLIENTS - 1;
# The client of part 5: reads all channels, leaves before the kill.
my $leaver = sse_connect($port, '/events?channels=' . join(',', @CHANS));
$leaver->{chans} = [@CHANS];
is warm_up_sources($M, \@clients, \@CHANS, 20), $CLIENTS, "$CLIENTS streams open and receiving";
ok wait_until(sub { (numsub($M, @CHANS)->{'fo:a'} // 0) == $WORKERS }, 5), 'both workers subscribed';

my $pub = start_failover_publisher(sentinels => \@SP, service => $SERVICE, channels => \@CHANS, rate => $RATE, tag => 'k');
wait_sources(\@clients, sub { 0 }, 2);
$leaver->drain(0.1);
$leaver->close;    # gone: it resumes in part 5
my ($leaver_last) = map { $_->{own_id} } grep { defined $_->{own_id} } reverse $leaver->all_events;
ok defined $leaver_last && $leaver_last > 0, "a client read up to id " . ($leaver_last // 'none') . ' and left';
wait_sources(\@clients, sub { 0 }, 1);
my $before = $pub->results;
ok @{ $before->{acked} } >= $RATE, scalar(@{ $before->{acked} }) . ' messages acknowledged by the master in the first 3 s';

# Replication stops half a second before the kill, as with a lagging
# replica: the replica can no longer authenticate to resync (a wrong
# masterauth), so what the master acknowledges meanwhile dies with it. The
# streams still get those messages live; the new master never has them.
# What was acknowledged before the cut reached the replica (replication is
# asynchronous: wait for it, so that only later messages can be lost).
my $cut_at = $pub->results->{acked}[-1]{id};
ok wait_until(sub { (eval { redis_cmd($R, GET => 'sse:seq') } // 0) >= $cut_at }, 2),
    "the replica has every message up to id $cut_at";
redis_cmd($R, CONFIG => SET => masterauth => 'not-the-password');
redis_cmd($M, CLIENT => KILL => TYPE => 'replica');
ok wait_until(sub { (eval { redis_info($R, 'replication')->{master_link_status} } // '') eq 'down' }, 2),
    'replication cut';
wait_sources(\@clients, sub { 0 }, 0.5);

my $mpid = redis_info($M, 'server')->{process_id};
is $mpid, $master->pid, "master process $mpid";
my $mark   = $nginx->error_log_mark;
my $killed = time;
kill 'KILL', $mpid;
my $resumed = wait_sources(\@clients, sub { has_epoch($_[0], 1) }, 30);
is $resumed, $CLIENTS, 'after the kill, every stream gets events again, of a new epoch';
my @resume_after = map { my (undef, $e) = first_of_epoch($_->{events}, 1); $e ? $e->{time} - $killed : () } @clients;
my $first_ack = first { $_->{id} >= $EPOCH } @{ $pub->results->{acked} };
redis_cmd($R, CONFIG => SET => masterauth => '');    # a master now; as a replica again (part 4) it needs none
diag sprintf 'kill -9 of the master -> new master acknowledges its first publish: %s; streams get new events: %s',
    $first_ack ? sprintf('%.2f s', $first_ack->{t} - $killed) : 'never', quantiles(@resume_after);
# Some more traffic on the new master, then stop.
wait_sources(\@clients, sub { 0 }, 1.5);
my $res = $pub->stop;
my @acked = @{ $res->{acked} };
note sprintf '%d acknowledged (%d by the new master), %d failed attempts, %d sent without a reply; masters: %s',
    scalar(@acked), scalar(grep { $_->{addr} eq "127.0.0.1:$R" } @acked), $res->{failures},
    scalar(keys %{ $res->{maybe} }), join(', ', map { "$_->[1] at +" . sprintf('%.2f s', $_->[0] - $killed) } @{ $res->{masters} });

subtest 'failover: the new master and the switch' => sub {
    is master_of($SP[0]), "127.0.0.1:$R", "Sentinel names the replica (port $R) as the master now";
    is((eval { redis_info($R, 'replication')->{role} } // ''), 'master', '... which is a master');
    my @switch = lines_like($nginx->error_log_since($mark), qr/sse: redis master is 127\.0\.0\.1:$R \(was 127\.0\.0\.1:$M\)/);
    is scalar(@switch), $WORKERS, 'each worker logs: redis master is the new one (was the old one)'
        or diag $nginx->error_log_since($mark);
    ok scalar(lines_like($nginx->error_log_since($mark), qr/reconnected to redis at 127\.0\.0\.1:$R/)) >= $WORKERS,
        'and that it reconnected there';
    ok wait_until(sub { my $l = worker_links($nginx, $R); !grep { $_ != 2 } values %$l }, 5),
        'each worker has its subscriber and commands connections on the new master'
        or diag explain worker_links($nginx, $R);
    ok $res->{failures} > 0, "the publisher saw the master go ($res->{failures} failed attempts)";
    my @old = grep { $_->{addr} eq "127.0.0.1:$M" } @acked;
    my @new = grep { $_->{addr} eq "127.0.0.1:$R" } @acked;
    ok @new > 50, scalar(@new) . ' messages acknowledged by the new master';
    is scalar(grep { $_->{id} >= $EPOCH } @old), 0, 'ids of the old master: below 10^12';
    is scalar(grep { $_->{id} < $EPOCH || $_->{id} >= 2 * $EPOCH } @new), 0,
        'ids of the new master: a new epoch (10^12 and up)' or diag join ' ', map { $_->{id} } @new[0 .. min($#new, 5)];
    ok $new[0] && $new[0]{id} == $EPOCH + 1, 'the new epoch starts at 10^12 + 1' or diag $new[0] && $new[0]{id};
};

# Wait until each stream has the last acknowledged message of its channels
# (the new master's), then check everything it received.
my %last_on = map { my $ch = $_; ($ch => max(0, map { $_->{id} } grep { $_->{ch} eq $ch } @acked)) } @CHANS;
my $complete = wait_sources(\@clients, sub { my $es = $_[0];
        ($es->{last_id} // 0) >= max(map { $last_on{$_} } @{ $es->{chans} }) }, 15);
wait_sources(\@clients, sub { 0 }, 0.3);
is $complete, $CLIENTS, 'every stream received up to the last acknowledged message of its channels';

my %IDS;    # id => "channel|payload", across the whole file
my @history_r = history_of($R, @CHANS);
my %in_r = map { ("$_->{id}|$_->{ch}|$_->{payload}" => 1) } @history_r;
my @lost = grep { !$in_r{"$_->{id}|$_->{ch}|$_->{payload}"} } @acked;
ok @lost >= 10, scalar(@lost) . ' messages acknowledged by the old master are not on the new one (replication was cut '
    . 'before the kill): ids ' . (@lost ? "$lost[0]{id} to $lost[-1]{id}" : 'none');
is scalar(grep { $_->{id} <= $cut_at } @lost), 0, '... only messages acknowledged after the cut';
$IDS{ $_->{id} } //= "$_->{ch}|$_->{payload}" for @history_r;
my @streams = map { { name => "client $_", chans => $clients[$_]{chans}, events => $clients[$_]{events} } } 0 .. $#clients;
{
    my %maybe = %{ $res->{maybe} };
    check_delivery('failover by kill', \@streams, \@acked, \%maybe, \%IDS);
    is scalar(grep { $_->reconnections } @clients), 0, 'no stream was ended: all stayed connected through the failover'
        or diag join "\n", map { my $es = $_; map { "$_->{ended} $_->{end_reason}" } grep { $_->{ended} } $es->connections }
            grep { $_->reconnections } @clients;
    my @bad = epoch_gaps_missing(\@streams, 1);
    is scalar(@bad), 0, 'on each stream the first event of the new epoch comes right after an sse-gap naming all its channels'
        or diag join "\n", @bad[0 .. min($#bad, 9)];
}

# ---------------------------------------------------------------------------
# 5. Resume across the failover with an old Last-Event-ID
# ---------------------------------------------------------------------------

subtest 'resume across the failover with the Last-Event-ID of the old master' => sub {
    my $c = sse_connect($port, '/events?channels=' . join(',', @CHANS), headers => { 'Last-Event-ID' => $leaver_last });
    is $c->status, 200, "GET with Last-Event-ID: $leaver_last (old epoch)";
    my @want = grep { $_->{id} > $leaver_last } @history_r;
    my $last = $want[-1]{id};
    $c->wait_for(sub { grep { ($_->{own_id} // 0) == $last } $c->all_events }, 10);
    $c->drain(0.3);
    my @ev   = $c->all_events;
    my @data = grep { $_->{event} ne 'sse-gap' } @ev;
    is_deeply [ map { "$_->{own_id}|$_->{event}|$_->{data}" } @data ],
        [ map { "$_->{id}|$_->{ch}|$_->{payload}" } @want ],
        scalar(@want) . ' events: all the new master holds after that id, in id order (old epoch, then new)';
    my ($i) = first_of_epoch(\@ev, 1);
    my %gapped = map { $_ => 1 } map { split /,/, $_->{data} } grep { $_->{event} eq 'sse-gap' } @ev[0 .. ($i // 0) - 1];
    my @with_new = grep { my $ch = $_; grep { $_->{ch} eq $ch && $_->{id} >= $EPOCH } @history_r } @CHANS;
    ok defined $i, 'it reaches the new epoch';
    {
        is_deeply [ grep { !$gapped{$_} } @with_new ], [], 'before it, an sse-gap names every channel with new-epoch events ('
            . join(',', @with_new) . ')'
            or diag sprintf "%d sse-gap events among the %d events before the first new-epoch one; the first ones and those around it:\n%s",
                scalar(grep { $_->{event} eq 'sse-gap' } @ev[0 .. ($i // 0) - 1]), $i // 0,
                join "\n", map { '  ' . ($_->{own_id} // '-') . " $_->{event} '$_->{data}'" }
                    @ev[0 .. min(2, $#ev)], ($i ? @ev[ max(0, $i - 2) .. $i ] : ());
    }
    # And against what was acknowledged: the connection before leaving plus
    # this one never skip a message silently.
    my %maybe = %{ $res->{maybe} };
    check_delivery('resume across the failover (old connection + resumed one)',
        [ { name => 'returning client', chans => [@CHANS],
            events => [ (map { +{ %$_, conn => 0 } } $leaver->all_events), map { +{ %$_, conn => 1 } } @ev ] } ],
        \@acked, \%maybe, \%IDS);
    $c->close;

    # From the last id the old master acknowledged, which the new one never
    # had: only new-epoch events follow it.
    my $from = $lost[-1] ? $lost[-1]{id} : $acked[-1]{id};
    my $c2 = sse_connect($port, '/events?channels=' . join(',', @CHANS), headers => { 'Last-Event-ID' => $from });
    is $c2->status, 200, "GET with Last-Event-ID: $from (acknowledged by the old master, lost)";
    my @want2 = grep { $_->{id} > $from } @history_r;
    $c2->wait_for(sub { grep { ($_->{own_id} // 0) == $want2[-1]{id} } $c2->all_events }, 10);
    $c2->drain(0.3);
    my @ev2 = $c2->all_events;
    my %named = map { $_ => 1 } map { split /,/, $_->{data} } grep { $_->{event} eq 'sse-gap' } @ev2;
    is $ev2[0] && $ev2[0]{event}, 'sse-gap', 'it starts with an sse-gap';
    is_deeply [ grep { !$named{$_} } @CHANS ], [], '... naming every channel';
    is_deeply [ map { "$_->{own_id}|$_->{event}|$_->{data}" } grep { $_->{event} ne 'sse-gap' } @ev2 ],
        [ map { "$_->{id}|$_->{ch}|$_->{payload}" } @want2 ], 'then the ' . scalar(@want2) . ' new-epoch events, in order';
    $c2->close;
};

# ---------------------------------------------------------------------------
# 4. Manual failover: SENTINEL FAILOVER, the old master alive
# ---------------------------------------------------------------------------

subtest 'manual failover (SENTINEL FAILOVER), the old master alive' => sub {
    # The old master comes back (empty, no persistence) as a replica of the
    # new one.
    $master->stop;
    my $back = SSETest::Redis->new(port => $M, args => [ '--replicaof', '127.0.0.1', $R ])->start;
    ok wait_until(sub { (eval { redis_info($M, 'replication')->{master_link_status} } // '') eq 'up' }, 10),
        "the old master (port $M) is back, as a replica of the new one, in sync";
    my $t0 = time;
    ok wait_topology(\@sentinels, $R, $M, 30), 'the Sentinels see it as a replica'
        or diag join "\n", map { explain [ sentinel_list($_, 'replicas') ] } @SP;
    note sprintf 'seen after %.1f s', time - $t0;

    my $pub2 = start_failover_publisher(sentinels => \@SP, service => $SERVICE, channels => \@CHANS, rate => $RATE, tag => 'm');
    wait_sources(\@clients, sub { 0 }, 1);
    my $mark2 = $nginx->error_log_mark;
    my $asked = time;
    my $reply;
    wait_until(sub { $reply = eval { redis_cmd($SP[1], SENTINEL => 'FAILOVER', $SERVICE) }; defined $reply && !ref $reply }, 15, 0.5);
    is $reply // 'no answer', 'OK', 'SENTINEL FAILOVER mymaster answers OK';
    my $switched = wait_sources(\@clients, sub { has_epoch($_[0], 2) }, 30);
    is $switched, $CLIENTS, 'every open stream goes on receiving: events of the new master (a third epoch)';
    my @after = map { my (undef, $e) = first_of_epoch($_->{events}, 2); $e ? $e->{time} - $asked : () } @clients;
    diag 'SENTINEL FAILOVER -> streams get events of the new master: ' . quantiles(@after);
    wait_sources(\@clients, sub { 0 }, 1);
    my $res2 = $pub2->stop;
    my @acked2 = @{ $res2->{acked} };
    note sprintf '%d acknowledged (%d by the old master %s after the failover began, %d by the new one), %d failed attempts',
        scalar(@acked2), scalar(grep { $_->{addr} eq "127.0.0.1:$R" && $_->{t} > $asked } @acked2), $R,
        scalar(grep { $_->{addr} eq "127.0.0.1:$M" } @acked2), $res2->{failures};

    my %on_m = map { ("$_->{id}|$_->{ch}|$_->{payload}" => 1) } history_of($M, @CHANS);
    my @lost2 = grep { $_->{addr} eq "127.0.0.1:$R" && !$on_m{"$_->{id}|$_->{ch}|$_->{payload}"} } @acked2;
    note scalar(@lost2) . ' messages acknowledged by the old master after the new one was promoted, not on the new one (the streams got them live before nginx left, or an sse-gap)';
    is master_of($SP[0]), "127.0.0.1:$M", "Sentinel names port $M as the master again";
    my $log = $nginx->error_log_since($mark2);
    is scalar(lines_like($log, qr/sse: redis master is 127\.0\.0\.1:$M \(was 127\.0\.0\.1:$R\)/)), $WORKERS,
        'each worker logs the switch back' or diag $log;
    ok wait_until(sub { my $l = worker_links($nginx, $M); !grep { $_ != 2 } values %$l }, 5),
        'each worker has its subscriber and commands connections on the new master'
        or diag explain worker_links($nginx, $M);
    is sum0(values %{ worker_links($nginx, $R) }), 0, 'none left on the demoted one';
    like(reply_text(eval { redis_cmd($M, FUNCTION => 'LIST') }), qr/nginx_sse/, 'the nginx_sse functions are on the new master');
    my @new = grep { $_->{addr} eq "127.0.0.1:$M" } @acked2;
    ok @new > 20, scalar(@new) . ' messages acknowledged by the new master';
    is scalar(grep { $_->{id} < 2 * $EPOCH } @new), 0, 'all in the third epoch (2 * 10^12 and up)';

    my %last2 = map { my $ch = $_; ($ch => max(0, map { $_->{id} } grep { $_->{ch} eq $ch } @acked2)) } @CHANS;
    my $done = wait_sources(\@clients, sub { my $es = $_[0];
            ($es->{last_id} // 0) >= max(map { $last2{$_} } @{ $es->{chans} }) }, 15);
    wait_sources(\@clients, sub { 0 }, 0.3);
    is $done, $CLIENTS, 'every stream received up to the last acknowledged message of its channels';
    my %maybe = (%{ $res->{maybe} }, %{ $res2->{maybe} });
    $IDS{ $_->{id} } //= "$_->{ch}|$_->{payload}" for history_of($M, @CHANS);
    check_delivery('both failovers', \@streams, [ @acked, @acked2 ], \%maybe, \%IDS);
    is scalar(grep { $_->reconnections } @clients), 0, 'no stream was ended';
    my @bad = epoch_gaps_missing(\@streams, 2);
    is scalar(@bad), 0, 'the first event of the third epoch comes right after an sse-gap naming all channels'
        or diag join "\n", @bad[0 .. min($#bad, 9)];

    # A new stream resuming from an id of the new master is replayed its
    # history (read by the commands connection, now on the new master).
    my @hist = history_of($M, @CHANS);
    my @third = grep { $_->{id} >= 2 * $EPOCH } @hist;
    my $from = $third[ @third / 2 ]{id};
    my @want = grep { $_->{id} > $from } @hist;
    my $c = sse_connect($port, '/events?channels=' . join(',', @CHANS), headers => { 'Last-Event-ID' => $from });
    is $c->status, 200, "a new stream with Last-Event-ID: $from";
    $c->wait_for(sub { grep { ($_->{own_id} // 0) == $want[-1]{id} } $c->all_events }, 10);
    $c->drain(0.2);
    is_deeply [ map { "$_->{own_id}|$_->{event}|$_->{data}" } $c->all_events ],
        [ map { "$_->{id}|$_->{ch}|$_->{payload}" } @want ],
        'is replayed the ' . scalar(@want) . ' later events of the new master, in order, without a gap';
    $c->close;
    $_->close for @clients;
    $back->stop;
};

$nginx->stop;
$replica->stop;
stop_sentinels(@sentinels);

# ---------------------------------------------------------------------------
# 6. Master with a password
# ---------------------------------------------------------------------------

subtest 'master with requirepass, Sentinels with auth-pass' => sub {
    my $pw = 'm@ster%pw';    # escaped in the URL
    my $m  = SSETest::Redis->new(password => $pw, args => [ '--masterauth', $pw ])->start;
    my $r  = SSETest::Redis->new(password => $pw, args => [ '--masterauth', $pw, '--replicaof', '127.0.0.1', $m->port ])->start;
    my @s  = start_sentinels(master_port => $m->port, auth_pass => $pw);
    ok wait_until(sub { !grep { master_of($_->{port}) ne '127.0.0.1:' . $m->port } @s }, 10), 'the Sentinels name the master';
    my $n = start_nginx(workers => 1,
        redis_url => 'redis-sentinel://:m%40ster%25pw@' . join(',', map { "127.0.0.1:$_->{port}" } @s) . "/$SERVICE",
        server => q{ location = /events { sse_channel $arg_channels; sse_history on; } });
    my $c = sse_connect($n->port, '/events?channels=auth:a');
    is $c->status, 200, 'a stream opens';
    ok wait_subscribed($m, 'auth:a', 1, 10), 'the worker authenticated on the master and subscribed'
        or diag $n->error_log;
    ok wait_until(sub { reply_text(eval { redis_cmd($m, FUNCTION => 'LIST') }) =~ /nginx_sse/ }, 10),
        'its commands connection loaded the functions';
    my $id = sse_publish($m, 'auth:a', 'with a password');
    ok !ref $id && $id =~ /^\d+$/, "FCALL sse_publish: id $id";
    my $e = $c->next_event(5);
    is $e && "$e->{event}|$e->{data}|" . ($e->{own_id} // '-'), "auth:a|with a password|$id", 'the stream gets it';
    unlike $n->error_log, qr/NOAUTH|WRONGPASS|invalid password|AUTH.*called without/i, 'no authentication error logged';
    $c->close;
    $n->stop;
    $r->stop;
    $m->stop;
    stop_sentinels(@s);
};

# ---------------------------------------------------------------------------
# 7. A Sentinel that names a replica (a stale view: it has not learnt of a
#    failover yet, or the watch missed the announcement); no +switch-master
#    will come
# ---------------------------------------------------------------------------

subtest 'a Sentinel that names a replica: nginx checks ROLE and asks again' => sub {
    my $m = start_redis();
    my $r = start_redis(args => [ '--replicaof', '127.0.0.1', $m->port ]);
    ok wait_until(sub { (eval { redis_info($r->port, 'replication')->{master_link_status} } // '') eq 'up' }, 10),
        'a master and its replica';
    # One Sentinel (quorum 2: it can never fail over) told the replica is
    # the master.
    my ($s) = start_sentinels(master_port => $r->port, count => 1, down_after => 60_000);
    is master_of($s->{port}), '127.0.0.1:' . $r->port, 'the Sentinel names the replica';
    my $n = start_nginx(workers => 1,
        redis_url => "redis-sentinel://127.0.0.1:$s->{port}/$SERVICE",
        server => q{ location = /events { sse_channel $arg_channels; sse_history on; } });
    my $rp = $r->port;
    ok wait_until(sub { $n->error_log =~ /127\.0\.0\.1:$rp is a slave, not the master Sentinel named; asking Sentinel again/ }, 10),
        'the commands connection finds a replica (ROLE) and says so'
        or diag $n->error_log;
    unlike $n->error_log, qr/refused to load the sse_publish function/, '... before loading functions on it';
    my $c = sse_connect($n->port, '/events?channels=st:a');
    is $c->status, 200, 'streams open meanwhile';

    # The Sentinel now names the master, without announcing a switch.
    redis_cmd($s->{port}, SENTINEL => 'REMOVE', $SERVICE);
    redis_cmd($s->{port}, SENTINEL => 'MONITOR', $SERVICE, '127.0.0.1', $m->port, 2);
    is master_of($s->{port}), '127.0.0.1:' . $m->port, 'the Sentinel names the master (no +switch-master)';
    my $mp = $m->port;
    ok wait_until(sub { $n->error_log =~ /sse: redis master is 127\.0\.0\.1:$mp \(was 127\.0\.0\.1:$rp\)/ }, 15),
        'asked again, the worker follows the master'
        or diag $n->error_log;
    ok wait_until(sub { reply_text(eval { redis_cmd($mp, FUNCTION => 'LIST') }) =~ /nginx_sse/ }, 10),
        '... its commands connection loads the functions there';
    ok wait_subscribed($m, 'st:a', 1, 10), '... and the stream is subscribed on the master';
    my @ids = map { sse_publish($m, 'st:a', "e$_") } 1 .. 3;
    my @got = $c->events_until(3, 5);
    is_deeply [ map { $_->{data} } @got ], [qw(e1 e2 e3)], 'the stream gets the events';
    $c->close;
    my $again = sse_connect($n->port, '/events?channels=st:a', headers => { 'Last-Event-ID' => $ids[0] });
    is_deeply [ map { $_->{data} } $again->events_until(2, 5) ], [qw(e2 e3)], 'a resume is read from the master';
    $again->close;
    $n->stop;
    stop_sentinels($s);
    $r->stop;
    $m->stop;
};

# ---------------------------------------------------------------------------
# 8. An ACL user that may not run ROLE: the check is skipped, with a warning
# ---------------------------------------------------------------------------

subtest 'an ACL user without ROLE: a warning, and Sentinel is trusted' => sub {
    my $m = start_redis();
    redis_cmd($m->port, ACL => SETUSER => 'sse', 'on', '>sse-pw', '~*', '&*', '+@all', '-role');
    my ($s) = start_sentinels(master_port => $m->port, count => 1, down_after => 60_000);
    my $n = start_nginx(workers => 1,
        redis_url => "redis-sentinel://sse:sse-pw\@127.0.0.1:$s->{port}/$SERVICE",
        server => q{ location = /events { sse_channel $arg_channels; sse_history on; } });
    ok wait_until(sub { $n->error_log =~ /redis did not answer ROLE \(NOPERM[^)]*\); cannot check/ }, 10),
        'the worker warns that it cannot check the role' or diag $n->error_log;
    my $c = sse_connect($n->port, '/events?channels=acl:a');
    ok wait_subscribed($m, 'acl:a', 1, 10), 'the stream is subscribed on the master';
    ok wait_until(sub { reply_text(eval { redis_cmd($m->port, FUNCTION => 'LIST') }) =~ /nginx_sse/ }, 10),
        'the commands connection went on and loaded the functions';
    my $id = sse_publish($m, 'acl:a', 'hello');
    my $e = $c->next_event(5);
    is $e && "$e->{data}|$e->{own_id}", "hello|$id", 'the stream gets the event with its id';
    is scalar(() = $n->error_log =~ /did not answer ROLE/g), 1, 'the warning is logged once';
    unlike $n->error_log, qr/asking Sentinel again/, 'and the master is not refused';
    $c->close;
    $n->stop;
    stop_sentinels($s);
    $m->stop;
};

done_testing;
