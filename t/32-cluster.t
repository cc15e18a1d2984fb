# Redis Cluster (sse_redis_url redis-cluster://...): live streams over
# sharded pub/sub, across failover and resharding.
#   1. nginx -t accepts redis-cluster:// URLs (and sse_history on with one);
#      a database other than 0 is refused naming sse_redis_url.
#   2. A cluster of 3 masters and 3 replicas on loopback; nginx (2 workers)
#      given two of the six nodes as seeds finds all three masters (log).
#   3. Fan-out: channels whose slots land on each master; 9 streams (placed
#      on both workers) multiplexing channels of all three shards receive
#      every SPUBLISHed message once, in per-channel order, and nothing
#      else. PUBSUB SHARDNUMSUB on the owning master counts one subscription
#      per worker with a reader of the channel (none elsewhere), and drops to
#      0 when the readers leave. Plain PUBLISH (sent to a replica) reaches a
#      channel's streams once (fallback); a pattern stream (x:*) gets plainly
#      published messages, once each, in order.
#   4. PUBLISH sse:control "revoke u1" (sent to a replica) ends u1's streams
#      cleanly within 1 s, u2's stream goes on; a live change POSTed to the
#      other worker adds a channel on another shard (sse-channels, then its
#      SPUBLISHed messages; SHARDNUMSUB there 1), a second one removes the
#      first channel (its subscription leaves its master, its messages stop).
#   5. Failover: streams on channels of all shards, a cluster-aware publisher
#      SPUBLISHes continuously (follows MOVED, re-reads CLUSTER SLOTS and
#      retries when a node fails); the first seed, master of shard 0 (and
#      the node the workers' plain connections use), is killed with SIGKILL.
#      Streams stay open; the other shards' channels get every message, in
#      order, with no pause; the failed shard's channels resume (time from
#      the kill printed), keep order, and from their first message published
#      after the kill miss nothing; error.log names the new masters; no
#      [alert]. Then new streams work and "revoke" still ends them.
#   6. Resharding: the slot of a subscribed channel moves to another master
#      (IMPORTING / MIGRATING / SETSLOT NODE) while it is SPUBLISHed to:
#      delivery resumes within a second (time printed), everything published
#      before the move and after the workers re-subscribed on the new owner
#      arrives exactly once, other channels are untouched, and error.log gets
#      only a few lines.
#
# The cluster (six redis-server processes) and the cluster-aware publisher
# come from SSETest::Cluster (t/lib/SSETest/Cluster.pm); the harness kills
# them at the end of the file, also when it dies.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use List::Util qw(max min first sum0);
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;
use SSETest::Cluster;

my $WORKERS = 2;
my $RATE    = 120;    # publisher messages per second, all channels together

# Sharded pub/sub (SSUBSCRIBE, SPUBLISH) needs Redis 7; the cluster is made
# with redis-cli.
my $MISSING = cluster_tools_missing();

# ---------------------------------------------------------------------------
# 1. nginx -t
# ---------------------------------------------------------------------------

subtest 'nginx -t: redis-cluster URLs' => sub {
    my $loc = 'location = /events { sse_channel $arg_channels; }';
    my ($p1, $p2, $p3) = (free_port(), free_port(), free_port());
    for my $url ("redis-cluster://127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3",
        "redis-cluster://127.0.0.1:$p1",
        "redis-cluster://:s3cr3t\@127.0.0.1:$p1,127.0.0.1:$p2/0",
        "redis-cluster://app:pw\@127.0.0.1:$p1,127.0.0.1") {
        my ($rc, $out) = nginx_test_conf(redis_url => $url, server => $loc);
        is $rc, 0, "accepted: $url" or diag $out;
    }
    for my $url ("redis-cluster://127.0.0.1:$p1/1", "redis-cluster://127.0.0.1:$p1,127.0.0.1:$p2/3") {
        my ($rc, $out) = nginx_test_conf(redis_url => $url, server => $loc);
        isnt $rc, 0, "refused: a database in a cluster URL ($url)";
        like $out, qr/\[emerg\].*sse_redis_url/, '... naming sse_redis_url' or diag $out;
        like $out, qr/database/i, '... and saying why (the database)' or diag $out;
    }
    # History in a cluster is supported (README, "History in a cluster"):
    # nginx -t no longer refuses it.
    my $history = 'location = /events { sse_channel $arg_channels; sse_history on; }';
    my ($rc, $out) = nginx_test_conf(redis_url => "redis-cluster://127.0.0.1:$p1,127.0.0.1:$p2", server => $history);
    is $rc, 0, 'sse_history on with a cluster URL is accepted' or diag $out;
};

if ($MISSING) {
    SKIP: {
        skip "the cluster parts need redis-server 7 or later and redis-cli ($MISSING)", 1;
    }
    done_testing;
    exit 0;
}

# ---------------------------------------------------------------------------
# Helpers of this file: streams, warm-up, deliveries (the cluster and its
# publisher: SSETest::Cluster).
# ---------------------------------------------------------------------------

# More redis-server arguments for the nodes (repl-diskless-sync-delay 0:
# replicas sync at once instead of after 5 s).
my @CLUSTER_ARGS = ('--repl-diskless-sync-delay', 0);

# PUBSUB NUMSUB (plain subscriptions) of $channel, summed over @ports.
sub numsub_all {
    my ($channel, @ports) = @_;
    return sum0 map { my $r = eval { numsub($_, $channel)->{$channel} }; $r // 0 } @ports;
}

# Opens a stream on /events for $channels as $user, held by worker $pid (the
# kernel spreads connections over the workers: reuseport; others are closed),
# and reads its first event, which must be sse-session. Returns the client,
# with {worker}, {token}, {chans}.
sub open_stream {
    my ($nginx, $user, $channels, $pid) = @_;
    my $c = open_session_stream($nginx, "/events?user=$user&channels=$channels", worker => $pid);
    $c->{chans} = [ split /,/, $channels ];
    return $c;
}

# A keep-alive connection held by worker $pid (with $pid negative: any
# worker but -$pid).
sub conn_on {
    my ($nginx, $pid) = @_;
    for (1 .. 64) {
        my $c = http_connect($nginx->port);
        my $w = $nginx->worker_of($c) // next;
        return $c if $pid > 0 ? $w == $pid : $w != -$pid;
        $c->close;
    }
    die "no connection to the wanted worker after 64 attempts\n";
}

# Publishes 'warmup' on the channels (SPUBLISH to their masters) and plainly
# on @plain, until every client has received it on each of its channels (or
# $timeout). Returns how many clients are ready. The warm-up events are then
# consumed.
sub warm_up {
    my ($clients, $table, $slots, $plain, $timeout) = @_;
    my %want = map { $_ => 1 } map { @{ $_->{chans} } } @$clients;
    my $t0 = time;
    my $ready = 0;
    my $has = sub {
        my ($c) = @_;
        my %seen = map { $_->{event} => 1 } grep { $_->{data} eq 'warmup' } $c->all_events;
        return !grep { !$seen{$_} } map { $_ eq 'x:*' ? 'x:warm' : $_ } @{ $c->{chans} };
    };
    while (time - $t0 < $timeout) {
        for my $ch (keys %want) {
            if ($ch eq 'x:*') { redis_cmd($plain->[0], PUBLISH => 'x:warm', 'warmup'); next }
            redis_cmd(owner_in($table, $slots->{$ch}), SPUBLISH => $ch, 'warmup');
        }
        $ready = wait_clients($clients, $has, 0.3);
        last if $ready == @$clients;
    }
    $_->drain(0.1) for @$clients;
    $_->{next_index} = scalar @{ $_->{events} } for @$clients;    # consume everything so far
    return $ready;
}

# The events of a client from index $from on, grouped by channel: { ch => [data, ...] }.
sub by_channel {
    my ($c, $from) = @_;
    my @ev = @{ $c->{events} };
    my %by;
    push @{ $by{ $_->{event} } }, $_ for @ev[ ($from // 0) .. $#ev ];
    return \%by;
}

# The publisher's messages (tag $tag) each stream got from event index
# $from->[i] on: { ch => { stream index => { got => [n...], times => [arrival...],
# bad => [...] } } }.
sub deliveries {
    my ($clients, $from, $tag) = @_;
    my %d;
    for my $i (0 .. $#$clients) {
        my $c = $clients->[$i];
        my @ev = @{ $c->{events} };
        for my $e (@ev[ $from->[$i] .. $#ev ]) {
            my ($ch, $n) = $e->{data} =~ /^(\S+) \Q$tag\E#(\d+)$/ or next;
            push @{ $d{$ch}{$i}{bad} }, "event $e->{event} carries '$e->{data}'" if $ch ne $e->{event};
            push @{ $d{$ch}{$i}{got} }, $n;
            push @{ $d{$ch}{$i}{times} }, $e->{time};
        }
    }
    return \%d;
}

# ---------------------------------------------------------------------------
# 2. The cluster and nginx
# ---------------------------------------------------------------------------

my $t_cluster = time;
my @NODES = start_cluster(args => \@CLUSTER_ARGS);
my @ALL   = map { $_->port } @NODES;
my %NODE_OF = map { ($_->port => $_) } @NODES;
my $TABLE = slot_table($ALL[0]);
# The masters, shard 0 first: the first seed's (redis-cli makes the first
# three nodes masters), then by slot range.
my @M = map { $_->[2] } sort { ($b->[2] == $ALL[0]) <=> ($a->[2] == $ALL[0]) || $a->[0] <=> $b->[0] } @$TABLE;
is scalar(@M), 3, 'the cluster has three masters' or BAIL_OUT('unexpected cluster layout');
is $M[0], $ALL[0], 'the first seed is a master';
my $NODES0 = cluster_nodes($ALL[0]);
my %ID = map { ($_ => $NODES0->{$_}{id}) } @ALL;
my %REPLICA_OF = map { my $p = $_; ($p => first { $NODES0->{$_}{master} eq $ID{$p} } @ALL) } @M;
note sprintf 'cluster ready %.1f s after start: masters %s (replicas %s)', time - $t_cluster,
    join(', ', @M), join(', ', map { $REPLICA_OF{$_} // '?' } @M);

# Channel names c:k<i> by shard (CLUSTER KEYSLOT, and the slot's master).
my (%SLOT, %SHARD, @BY_SHARD);
{
    my @cand = map { "c:k$_" } 1 .. 120;
    my @slots = keyslots($ALL[0], @cand);
    for my $i (0 .. $#cand) {
        my $s = first { $M[$_] == owner_in($TABLE, $slots[$i]) } 0 .. 2;
        next if @{ $BY_SHARD[$s] || [] } >= 8;
        push @{ $BY_SHARD[$s] }, $cand[$i];
        $SLOT{ $cand[$i] } = $slots[$i];
        $SHARD{ $cand[$i] } = $s;
    }
    die "not enough channel names per shard\n" if grep { @{ $BY_SHARD[$_] || [] } < 8 } 0 .. 2;
}
sub owner_now { my ($ch) = @_; return owner_in($TABLE, $SLOT{$ch}) }

my $SEEDS = "127.0.0.1:$ALL[0],127.0.0.1:$ALL[1]";
my $grants = '"c:*, x:*"';
my $nginx = start_nginx(
    redis_url => "redis-cluster://$SEEDS",
    workers   => $WORKERS,
    listen    => 'reuseport',
    server    => qq{
        location = /events {
            sse_channel \$arg_channels;
            sse_channel_patterns on;
            sse_allow $grants;
            sse_user \$arg_user;
            sse_session on;
        }
        location = /events/subscribe {
            sse_subscribe;
            sse_allow $grants;
            sse_user \$arg_user;
        }
});
my @W = $nginx->worker_pids;

subtest 'nginx finds every master from two seeds' => sub {
    my $masters_re = qr/sse: redis cluster masters: (.*)/;
    ok wait_until(sub { (() = $nginx->error_log =~ /$masters_re/g) >= $WORKERS }, 10),
        "each worker logs the cluster's masters (seeds: $SEEDS)";
    my @lines = map { /$masters_re/ ? $1 : () } split /\n/, $nginx->error_log;
    for my $line (@lines) {
        my %listed = map { /:(\d+)$/ ? ($1 => 1) : () } split /, /, $line;
        is_deeply [ sort keys %listed ], [ sort @M ], "the masters line names the three masters: $line";
    }
    ok wait_until(sub { (() = $nginx->error_log =~ /connected to redis \(shard\) at /g) >= 3 * $WORKERS }, 10),
        'each worker connects a sharded subscriber to each master'
        or diag join "\n", grep { /connect/ } split /\n/, $nginx->error_log;
    my %to = map { /connected to redis \(shard\) at [^:\s]+:(\d+)/ ? ($1 => 1) : () } split /\n/, $nginx->error_log;
    is_deeply [ sort keys %to ], [ sort @M ], 'the sharded subscribers go to the masters (not the replicas)';
};

# ---------------------------------------------------------------------------
# 3. Fan-out across the shards
# ---------------------------------------------------------------------------

subtest 'fan-out: streams multiplexing channels of all three shards' => sub {
    my $N = 30;
    # A_s, B_s: read by 8 streams (every combination of one channel per
    # shard), 4 on each worker; D_s: by one stream only (one worker).
    my @A = map { $BY_SHARD[$_][0] } 0 .. 2;
    my @B = map { $BY_SHARD[$_][1] } 0 .. 2;
    my @D = map { $BY_SHARD[$_][2] } 0 .. 2;
    my @clients;
    for my $i (0 .. 7) {
        my @chans = map { ($i >> $_) & 1 ? $B[$_] : $A[$_] } 0 .. 2;
        push @clients, open_stream($nginx, 'fan', join(',', @chans), $W[ $i % 2 ]);
    }
    push @clients, open_stream($nginx, 'fan', join(',', @D), $W[1]);
    my %readers;    # channel => { worker => 1 }
    for my $c (@clients) { $readers{$_}{ $c->{worker} } = 1 for @{ $c->{chans} } }
    my @chans = (@A, @B, @D);
    my %expect = map { ($_ => scalar keys %{ $readers{$_} }) } @chans;
    ok((grep { $_ == 2 } values %expect) && (grep { $_ == 1 } values %expect),
        'some channels are read on both workers, some on one');

    my $settled = wait_until(sub { !grep { (shardnumsub(owner_now($_), $_) // -1) != $expect{$_} } @chans }, 10);
    ok $settled, 'PUBSUB SHARDNUMSUB on each owning master: one subscription per worker with a reader'
        or diag join ', ', map { "$_ on $SHARD{$_}: " . (shardnumsub(owner_now($_), $_) // 'undef') . " (want $expect{$_})" } @chans;
    my @elsewhere = grep { my $ch = $_; grep { $_ != owner_now($ch) && (shardnumsub($_, $ch) // 0) } @ALL } @chans;
    is "@elsewhere", '', 'no sharded subscription on any other node';

    # N messages per channel, interleaved over the channels and shards.
    my %pc = map { ($_ => redis_connect($_)) } @M;
    my %count;
    for my $k (1 .. $N) {
        my %batch;
        push @{ $batch{ owner_now($_) } }, [ SPUBLISH => $_, "$_ f#$k" ] for @chans;
        for my $p (keys %batch) {
            my @cmds = @{ $batch{$p} };
            my @r = $pc{$p}->pipeline(@cmds);
            $count{ $cmds[$_][1] } += ref $r[$_] ? 0 : $r[$_] for 0 .. $#cmds;
        }
    }
    $_->close for values %pc;
    my @zero = grep { ($count{$_} // 0) != $N * $expect{$_} } @chans;
    is "@zero", '', 'every SPUBLISH reached as many subscribers as the channel has workers with readers';
    is wait_events(\@clients, 3 * $N, 10), scalar @clients, "every stream got its 3 x $N messages";
    $_->drain(0.3) for @clients;
    my @bad;
    for my $i (0 .. $#clients) {
        my $c = $clients[$i];
        my $by = by_channel($c, 1);    # after sse-session
        my %mine = map { $_ => 1 } @{ $c->{chans} };
        push @bad, "stream $i: events on $_" for grep { !$mine{$_} } sort keys %$by;
        for my $ch (@{ $c->{chans} }) {
            my $got = join ' ', map { $_->{data} } @{ $by->{$ch} || [] };
            my $want = join ' ', map { "$ch f#$_" } 1 .. $N;
            push @bad, "stream $i, $ch: got '" . substr($got, 0, 200) . "'" if $got ne $want;
        }
    }
    is scalar(@bad), 0, 'each stream got exactly its channels\' messages, each once, in order' or diag first_lines(@bad);

    $_->close for @clients;
    ok wait_until(sub { !grep { (shardnumsub(owner_now($_), $_) // -1) != 0 } @chans }, 5),
        'SHARDNUMSUB drops to 0 on every master when the readers leave'
        or diag join ', ', map { "$_: " . (shardnumsub(owner_now($_), $_) // 'undef') } @chans;
    ok wait_until(sub { !grep { numsub_all($_, @ALL) } @chans }, 5), 'and so does the plain NUMSUB on every node';
};

subtest 'plain PUBLISH (fallback) and a pattern stream' => sub {
    my ($a0, $a1) = ($BY_SHARD[0][3], $BY_SHARD[1][3]);
    my $s = open_stream($nginx, 'plain', "$a0,$a1", $W[0]);
    my $t = open_stream($nginx, 'plain', "$a0,$a1", $W[1]);
    my $x = open_stream($nginx, 'plain', 'x:*', $W[0]);
    my $y = open_stream($nginx, 'plain', "x:*,$BY_SHARD[2][3]", $W[1]);
    my @clients = ($s, $t, $x, $y);
    my $replica = $REPLICA_OF{ $M[2] };    # plain PUBLISH reaches the whole cluster from any node
    is warm_up(\@clients, $TABLE, \%SLOT, [$replica], 10), 4, 'the streams receive warm-up messages';
    ok wait_until(sub { numsub_all($a0, @ALL) == 2 && numsub_all($a1, @ALL) == 2 }, 5),
        'the channels are also subscribed plainly, once per worker (PUBSUB NUMSUB over all nodes)';
    my @seq = (
        [ SPUBLISH => $a0, 's1' ], [ PUBLISH => $a0, 'p1' ], [ SPUBLISH => $a1, 's1' ], [ PUBLISH => $a1, 'p1' ],
        [ SPUBLISH => $a0, 's2' ], [ PUBLISH => $a0, 'p2' ], [ PUBLISH => $a1, 'p2' ], [ SPUBLISH => $a1, 's2' ],
        [ PUBLISH => 'x:one', 'q1' ], [ PUBLISH => 'x:two', 'q2' ], [ PUBLISH => 'x:one', 'q3' ],
    );
    for (@seq) {
        my ($cmd, $ch, $data) = @$_;
        my $port = $cmd eq 'PUBLISH' ? $replica : owner_now($ch);
        my $r = redis_cmd($port, $cmd, $ch, $data);
        die "$cmd $ch failed: $r\n" if ref $r;
    }
    is wait_events([ $s, $t ], 8, 5), 2, 'the channel streams get 8 events';
    is wait_events([ $x, $y ], 3, 5), 2, 'the pattern streams get 3 events';
    $_->drain(0.5) for @clients;
    for my $c ($s, $t) {
        my @got = map { "$_->{event}:$_->{data}" } $c->events_until($c->pending_events, 0);
        my %n;
        $n{$_}++ for @got;
        is_deeply [ sort keys %n ], [ sort map { my $ch = $_; map { "$ch:$_" } qw(p1 p2 s1 s2) } $a0, $a1 ],
            "stream on worker $c->{worker}: each message, SPUBLISHed or PUBLISHed, arrives" or diag "@got";
        is scalar(grep { $_ > 1 } values %n), 0, '... exactly once' or diag "@got";
        for my $ch ($a0, $a1) {
            my @s = grep { /^\Q$ch\E:s/ } @got;
            my @p = grep { /^\Q$ch\E:p/ } @got;
            is "@s @p", "$ch:s1 $ch:s2 $ch:p1 $ch:p2", "... in order on $ch (each way)";
        }
    }
    for my $c ($x, $y) {
        my @got = map { "$_->{event}:$_->{data}" } $c->events_until($c->pending_events, 0);
        is "@got", 'x:one:q1 x:two:q2 x:one:q3', "pattern stream on worker $c->{worker}: the plainly published messages, once, in order";
    }
    $_->close for @clients;
};

# ---------------------------------------------------------------------------
# 4. Revocation and live changes
# ---------------------------------------------------------------------------

subtest 'revocation and a live channel change in cluster mode' => sub {
    my ($c0, $c1, $c2) = map { $BY_SHARD[$_][4] } 0 .. 2;
    my $added = $BY_SHARD[0][7];    # read by no stream so far
    my $u1a = open_stream($nginx, 'u1', $c0, $W[0]);
    my $u1b = open_stream($nginx, 'u1', "$c1,x:*", $W[1]);
    my $u2  = open_stream($nginx, 'u2', $c2, $W[0]);
    my @all = ($u1a, $u1b, $u2);
    is warm_up(\@all, $TABLE, \%SLOT, [ $ALL[5] ], 10), 3, 'three streams (u1 on both workers, u2) are live';

    my $t0 = time;
    my $r = redis_cmd($REPLICA_OF{ $M[1] }, PUBLISH => 'sse:control', 'revoke u1');
    ok !ref $r, 'PUBLISH sse:control "revoke u1" on a replica node';
    my $ended = wait_clients([ $u1a, $u1b ], sub { $_[0]->is_eof }, 3);
    is $ended, 2, "both of u1's streams ended";
    is $_->{ended}, 'clean', "u1's stream on worker $_->{worker} ended cleanly (last chunk)" for $u1a, $u1b;
    my $took = max map { ($_->{ended_at} // time) - $t0 } $u1a, $u1b;
    cmp_ok $took, '<', 1, sprintf('... within 1 s (%.3f s)', $took);
    is $u2->is_eof, '', "u2's stream is still open";
    redis_cmd(owner_now($c2), SPUBLISH => $c2, 'after revoke');
    my $ev = $u2->next_event(3);
    is $ev && "$ev->{event} $ev->{data}", "$c2 after revoke", '... and still receives';
    like $nginx->error_log, qr/sse: revocation: ending 1 stream\(s\) of user\(s\) u1/, 'the revocation is logged';

    # A live change, POSTed to the other worker (forwarded through plain
    # pub/sub, i.e. through the cluster), adds a channel on shard 0.
    is shardnumsub($M[0], $added), 0, "before: no subscription to $added on shard 0's master";
    my $other = conn_on($nginx, -$u2->{worker});
    my $res = $other->request(POST => '/events/subscribe?user=u2',
        headers => { 'Content-Type' => 'application/x-www-form-urlencoded' },
        body => form_urlencode([ session => $u2->{token} ], [ add => $added ]));
    is $res->{status}, 200, "POST add=$added (shard 0) on the other worker: 200" or diag explain $res;
    is join(',', sort split /,/, ($res->{body} // '') =~ s/\s+$//r), join(',', sort $added, $c2), '... answering the channels now';
    $ev = $u2->next_event(3);
    is $ev && $ev->{event}, 'sse-channels', 'the stream gets sse-channels';
    is join(',', sort split /,/, $ev ? $ev->{data} : ''), join(',', sort $added, $c2), '... naming both channels';
    ok wait_until(sub { (shardnumsub($M[0], $added) // 0) == 1 }, 5),
        "SHARDNUMSUB $added on shard 0's master goes from 0 to 1 (the stream's worker)";
    redis_cmd(owner_now($added), SPUBLISH => $added, 'added');
    $ev = $u2->next_event(3);
    is $ev && "$ev->{event} $ev->{data}", "$added added", 'a message SPUBLISHed on the added channel arrives';

    # Removing the first channel (through the stream's own worker) drops its
    # sharded subscription; its messages stop.
    my $own = conn_on($nginx, $u2->{worker});
    $res = $own->request(POST => '/events/subscribe?user=u2',
        headers => { 'Content-Type' => 'application/x-www-form-urlencoded' },
        body => form_urlencode([ session => $u2->{token} ], [ remove => $c2 ]));
    is $res->{status}, 200, "POST remove=$c2 on the stream's worker: 200" or diag explain $res;
    $ev = $u2->next_event(3);
    is $ev && "$ev->{event} $ev->{data}", "sse-channels $added", 'sse-channels names the remaining channel';
    ok wait_until(sub { (shardnumsub($M[2], $c2) // -1) == 0 }, 5), "SHARDNUMSUB $c2 on shard 2's master drops to 0";
    redis_cmd(owner_now($c2), SPUBLISH => $c2, 'removed');
    redis_cmd(owner_now($added), SPUBLISH => $added, 'marker');
    $ev = $u2->next_event(3);
    is $ev && "$ev->{event} $ev->{data}", "$added marker", 'the removed channel\'s message does not arrive, the kept one\'s does';
    $_->close for @all, $own, $other;
};

# ---------------------------------------------------------------------------
# 5. Failover of a master under continuous publishing
# ---------------------------------------------------------------------------

# Streams for parts 5 and 6: channels E_s, F_s on every shard; 6 streams,
# 3 per worker, each reading one channel of each shard (every channel is read
# on both workers).
my @E = map { $BY_SHARD[$_][5] } 0 .. 2;
my @F = map { $BY_SHARD[$_][6] } 0 .. 2;
my @LIVE_CHANS = (@E, @F);
my @LIVE;
for my $i (0 .. 5) {
    my @chans = map { (($i + $_) % 2) ? $F[$_] : $E[$_] } 0 .. 2;
    push @LIVE, open_stream($nginx, 'live', join(',', @chans), $W[ int($i / 3) ]);
}
is warm_up(\@LIVE, $TABLE, \%SLOT, [], 10), scalar @LIVE, 'failover streams are live';

my $DEAD   = $M[0];                 # the first seed: the workers' plain connections use it
my $HEIR   = $REPLICA_OF{$DEAD};
my @SURVIVE_CH = grep { $SHARD{$_} != 0 } @LIVE_CHANS;
my @FAILED_CH  = grep { $SHARD{$_} == 0 } @LIVE_CHANS;

subtest "failover: SIGKILL of the master of shard 0 (port $DEAD) under continuous SPUBLISH" => sub {
    my @from = map { scalar @{ $_->{events} } } @LIVE;
    my $pub = start_cluster_publisher(nodes => \@ALL, channels => \@LIVE_CHANS, slots => \%SLOT,
        rate => $RATE, tag => 'f');
    pump_for(\@LIVE, 1.5);
    my $mark = $nginx->error_log_mark;
    my $t_kill = time;
    SSETest::_stop_group($NODE_OF{$DEAD}->pid, 'KILL', 5);
    delete $NODE_OF{$DEAD}{pid};
    my $alive = first { $_ != $DEAD } @ALL;
    my ($t_promoted, $t_resub);
    my %readers;
    for my $c (@LIVE) { $readers{$_}{ $c->{worker} } = 1 for grep { $SHARD{$_} == 0 } @{ $c->{chans} } }
    my $last_poll = 0;
    pump_for(\@LIVE, 20, sub {
        return 0 if time - $last_poll < 0.02;
        $last_poll = time;
        if (!$t_promoted) {
            my $t = slot_table($alive);
            $t_promoted = time if $t && (owner_in($t, $SLOT{ $FAILED_CH[0] }) // 0) == $HEIR;
            return 0;
        }
        $t_resub //= time if !grep { (shardnumsub($HEIR, $_) // -1) != scalar keys %{ $readers{$_} } } @FAILED_CH;
        return $t_resub && time - $t_resub > 0.5;
    });
    ok $t_promoted, "the replica on port $HEIR was promoted"
        or diag join "\n", map { "--- $_\n" . (eval { redis_cmd($_, CLUSTER => 'NODES') } // '') } grep { $_ != $DEAD } @ALL;
    ok $t_resub, "the workers subscribed shard 0's channels on the new master (PUBSUB SHARDNUMSUB on $HEIR)";
    pump_for(\@LIVE, 1.5);
    my $res = $pub->stop;
    pump_for(\@LIVE, 0.5);
    $TABLE = slot_table($alive);

    my @open = grep { $_->is_eof eq '' } @LIVE;
    is scalar(@open), scalar(@LIVE), 'every stream stayed open';
    my $d = deliveries(\@LIVE, \@from, 'f');
    my (@bad, @resume, @lost, $max_gap);
    $max_gap = 0;
    for my $ch (@LIVE_CHANS) {
        my @acked = @{ $res->{acked}{$ch} || [] };
        my %acked = map { ($_->{n} => $_) } @acked;
        my $maybe = $res->{maybe}{$ch} || {};
        for my $i (grep { my $c = $LIVE[$_]; grep { $_ eq $ch } @{ $c->{chans} } } 0 .. $#LIVE) {
            my $g = $d->{$ch}{$i} || { got => [], times => [] };
            my @got = @{ $g->{got} };
            push @bad, @{ $g->{bad} || [] };
            my %seen;
            push @bad, "stream $i $ch: #$_ twice" for grep { $seen{$_}++ } @got;
            push @bad, "stream $i $ch: out of order: " . "@got[0..min($#got, 30)]"
                if grep { $got[$_] <= $got[ $_ - 1 ] } 1 .. $#got;
            push @bad, "stream $i $ch: #$_ was never published" for grep { !$acked{$_} && !$maybe->{$_} } @got;
            if ($SHARD{$ch} != 0) {
                # Untouched shard: everything, and no pause while shard 0 was out.
                my @miss = grep { !$seen{ $_->{n} } } @acked;
                push @bad, "stream $i $ch (surviving shard): missing " . join(' ', map { "#$_->{n}" } @miss[0 .. min($#miss, 9)])
                    if @miss;
                my @t = grep { $_ > $t_kill - 0.5 && $_ < ($t_resub // time) + 0.5 } @{ $g->{times} };
                $max_gap = max $max_gap, map { $t[$_] - $t[ $_ - 1 ] } 1 .. $#t;
                next;
            }
            # The failed shard: what was acknowledged well before the kill
            # arrived; after the first message following the kill, nothing
            # is missing; and everything sent after the re-subscription is there.
            my @early = grep { $_->{acked} < $t_kill - 0.1 && !$seen{ $_->{n} } } @acked;
            push @bad, "stream $i $ch: acknowledged before the kill, missing: " . join(' ', map { "#$_->{n}" } @early) if @early;
            # The first message published after the kill that arrived.
            my $k = first { my $m = $acked{ $got[$_] } || {}; ($m->{sent} // 0) > $t_kill } 0 .. $#got;
            if (!defined $k) { push @bad, "stream $i $ch: nothing published after the kill arrived"; next }
            push @resume, $g->{times}[$k] - $t_kill;
            my @tail = grep { $_->{n} > $got[$k] && !$seen{ $_->{n} } } @acked;
            push @bad, "stream $i $ch: after #$got[$k] (the first sent after the kill to arrive) missing "
                . join(' ', map { "#$_->{n}" } @tail) if @tail;
            my @late = grep { $t_resub && $_->{sent} > $t_resub && !$seen{ $_->{n} } } @acked;
            push @bad, "stream $i $ch: sent after the re-subscription, missing " . join(' ', map { "#$_->{n}" } @late) if @late;
            push @lost, grep { $_->{acked} > $t_kill - 0.1 && $_->{n} < $got[$k] && !$seen{ $_->{n} } } @acked;
        }
    }
    my $acked = sum0 map { scalar @$_ } values %{ $res->{acked} };
    note sprintf 'publisher: %d acknowledged, %d failed attempts, %d redirections', $acked, $res->{failures},
        sum0(values %{ $res->{redirections} });
    is scalar(@bad), 0, 'every stream: each message once, in order; surviving shards complete; shard 0 complete '
        . 'before the kill and after the first message published after it that arrived' or diag first_lines(@bad);
    cmp_ok $max_gap, '<', 0.5, sprintf('the surviving shards\' channels kept flowing during the outage '
        . '(longest pause %.3f s, publisher at %d msg/s)', $max_gap, $RATE / @LIVE_CHANS);
    is scalar(@resume), scalar(@FAILED_CH) * 3, 'shard 0\'s channels resumed on every stream reading them';
    my $first_resume = min(@resume) // 0;
    cmp_ok max(@resume) // 99, '<', 15, 'within 15 s of the kill';
    my $lost_new = grep { $_->{port} == $HEIR } @lost;
    my $msg = sprintf 'failover: kill -> promotion %.2f s; kill -> shard 0 re-subscribed on %d %.2f s; '
        . 'kill -> first delivery on shard 0 (6 streams): %s; not delivered (stream x message): %d '
        . 'acknowledged by the new master before the worker subscribed there, %d acknowledged by the old one '
        . 'in its last 0.1 s', ($t_promoted // time) - $t_kill, $HEIR, ($t_resub // time) - $t_kill,
        quantiles(@resume), $lost_new, @lost - $lost_new;
    diag $msg;

    my $log = $nginx->error_log_since($mark);
    my @masters = grep { /sse: redis cluster masters:/ } split /\n/, $log;
    my @new = grep { my ($m) = /masters: ([^;]*)/; $m =~ /:$HEIR\b/ && $m !~ /:$DEAD\b/ } @masters;
    cmp_ok scalar(@new), '>=', $WORKERS, "error.log: each worker names the new masters (with $HEIR, without $DEAD)"
        or diag join "\n", @masters;
    my @alerts = grep { /\[(?:alert|emerg)\]|exited on signal/ } split /\n/, $log;
    is scalar(@alerts), 0, 'no [alert], [emerg] or crashed worker' or diag join "\n", @alerts;
    note "error.log during the failover:\n$log";

    # With its first seed gone, nginx still serves new streams and revokes.
    my @u3 = map { open_stream($nginx, 'u3', $FAILED_CH[0], $_) } @W;
    is warm_up(\@u3, $TABLE, \%SLOT, [], 5), 2, 'after the failover, new streams on both workers get shard 0\'s messages';
    my $t0 = time;
    redis_cmd($HEIR, PUBLISH => 'sse:control', 'revoke u3');
    is wait_clients(\@u3, sub { $_[0]->is_eof eq 'clean' }, 3), 2, '... and "revoke u3" ends them cleanly';
    cmp_ok time - $t0, '<', 1, '... within 1 s';
};

# ---------------------------------------------------------------------------
# 6. Resharding one slot under live subscribers
# ---------------------------------------------------------------------------

subtest 'resharding: the slot of a subscribed channel moves to another master' => sub {
    my $ch  = $E[1];                      # shard 1, read by 3 streams
    my $src = owner_in($TABLE, $SLOT{$ch});
    my $dst = owner_in($TABLE, $SLOT{ $E[2] });
    my $slot = $SLOT{$ch};
    isnt $src, $dst, "moving slot $slot ($ch) from $src to $dst";
    my %readers;
    for my $c (@LIVE) { $readers{ $c->{worker} } = 1 if grep { $_ eq $ch } @{ $c->{chans} } }
    my $want = scalar keys %readers;
    is shardnumsub($src, $ch), $want, "before: SHARDNUMSUB $ch on $src is $want";

    my @from = map { scalar @{ $_->{events} } } @LIVE;
    my @live_nodes = grep { $_ != $DEAD } @ALL;
    my $pub = start_cluster_publisher(nodes => \@live_nodes, channels => \@LIVE_CHANS, slots => \%SLOT,
        rate => $RATE, tag => 'r');
    pump_for(\@LIVE, 1);
    my $mark = $nginx->error_log_mark;
    my $t_start = time;
    my $ok = redis_cmd($dst, CLUSTER => SETSLOT => $slot, IMPORTING => $ID{$src});
    is $ok, 'OK', "SETSLOT $slot IMPORTING on $dst";
    $ok = redis_cmd($src, CLUSTER => SETSLOT => $slot, MIGRATING => $ID{$dst});
    is $ok, 'OK', "SETSLOT $slot MIGRATING on $src";
    pump_for(\@LIVE, 0.5);    # publishing goes on during the migration
    $ok = redis_cmd($dst, CLUSTER => SETSLOT => $slot, NODE => $ID{$dst});
    is $ok, 'OK', "SETSLOT $slot NODE on $dst";
    my $t_src = time;
    $ok = redis_cmd($src, CLUSTER => SETSLOT => $slot, NODE => $ID{$dst});
    is $ok, 'OK', "SETSLOT $slot NODE on $src";
    my $t_move = time;
    my $t_resub;
    pump_for(\@LIVE, 5, sub { $t_resub //= time if (shardnumsub($dst, $ch) // -1) == $want; $t_resub });
    ok $t_resub, "the workers subscribed $ch on $dst (SHARDNUMSUB $want)";
    is shardnumsub($src, $ch), 0, "... and no longer on $src";
    pump_for(\@LIVE, 1.5);
    my $res = $pub->stop;
    pump_for(\@LIVE, 0.5);
    $TABLE = slot_table($dst);
    is owner_in($TABLE, $slot), $dst, "CLUSTER SLOTS: slot $slot is served by $dst";

    my $d = deliveries(\@LIVE, \@from, 'r');
    my (@bad, @resume, @lost);
    for my $c_ch (@LIVE_CHANS) {
        my @acked = @{ $res->{acked}{$c_ch} || [] };
        my %acked = map { ($_->{n} => $_) } @acked;
        my $maybe = $res->{maybe}{$c_ch} || {};
        for my $i (grep { my $c = $LIVE[$_]; grep { $_ eq $c_ch } @{ $c->{chans} } } 0 .. $#LIVE) {
            my $g = $d->{$c_ch}{$i} || { got => [], times => [] };
            my @got = @{ $g->{got} };
            push @bad, @{ $g->{bad} || [] };
            my %seen;
            push @bad, "stream $i $c_ch: #$_ twice" for grep { $seen{$_}++ } @got;
            push @bad, "stream $i $c_ch: out of order" if grep { $got[$_] <= $got[ $_ - 1 ] } 1 .. $#got;
            push @bad, "stream $i $c_ch: #$_ was never published" for grep { !$acked{$_} && !$maybe->{$_} } @got;
            if ($c_ch ne $ch) {
                my @miss = grep { !$seen{ $_->{n} } } @acked;
                push @bad, "stream $i $c_ch (slot not moved): missing " . join(' ', map { "#$_->{n}" } @miss[0 .. min($#miss, 9)]) if @miss;
                next;
            }
            my @early = grep { $_->{acked} < $t_src && !$seen{ $_->{n} } } @acked;
            push @bad, "stream $i $ch: acknowledged before the move, missing " . join(' ', map { "#$_->{n}" } @early) if @early;
            my @late = grep { $t_resub && $_->{sent} > $t_resub && !$seen{ $_->{n} } } @acked;
            push @bad, "stream $i $ch: sent after the re-subscription on $dst, missing " . join(' ', map { "#$_->{n}" } @late) if @late;
            push @lost, grep { $_->{acked} >= $t_src && !$seen{ $_->{n} } } @acked;
            my $k = first { my $m = $acked{ $got[$_] } || {}; ($m->{sent} // 0) > $t_move } 0 .. $#got;
            push @resume, defined $k ? $g->{times}[$k] - $t_move : 99;
        }
    }
    is scalar(@bad), 0, 'every stream: each message once, in order; the moved channel complete before the move and '
        . 'after the re-subscription; the other channels complete' or diag first_lines(@bad);
    my $after = grep { $_->{sent} > $t_move } @{ $res->{acked}{$ch} || [] };
    my $moved = sum0 values %{ $res->{redirections} };
    cmp_ok $after, '>', 10, "the publisher kept SPUBLISHing $ch after the move ($after messages, $moved redirections)";
    cmp_ok max(@resume), '<', 1, 'delivery on the moved channel resumed within 1 s on every stream';
    diag sprintf 'resharding: SETSLOT NODE -> re-subscribed on the new owner %.3f s; -> first delivery %s; '
        . '%d acknowledged messages lost in between (per stream)', ($t_resub // time) - $t_move, quantiles(@resume), scalar @lost;

    my $log = $nginx->error_log_since($mark);
    my @lines = grep { length } split /\n/, $log;
    cmp_ok scalar(@lines), '<=', 2 * $WORKERS, 'error.log: a few lines, no reconnect storm (' . scalar(@lines) . ')'
        or diag $log;
    my @loud = grep { !/\[(?:notice|info)\]/ } @lines;
    is scalar(@loud), 0, '... none above notice (a slot move is routine)' or diag join "\n", @loud;
    my @drops = grep { /lost connection|reconnect|cannot connect|retrying/ } @lines;
    is scalar(@drops), 0, '... and no connection was dropped or re-made' or diag join "\n", @drops;
    note "error.log during the move:\n$log";
};

$_->close for @LIVE;
$nginx->stop;
is scalar($nginx->alerts), 0, 'no [alert] or [emerg] in error.log over the whole file' or diag join "\n", $nginx->alerts;

# With a debug error log, nginx's own debug lines read each timer's `data`
# as a connection: the module's timers (reconnects, keepalive PINGs, the
# topology re-read, started at once for each new shard) must point at
# something of that shape (a worker once crashed there, in a respawn loop).
subtest 'error_log debug: workers keep running in cluster mode' => sub {
    my $v = `$SSETest::NGINX_BIN -V 2>&1`;
    plan skip_all => 'nginx is not built --with-debug' unless $v =~ /--with-debug/;
    my $dbg = start_nginx(
        redis_url => "redis-cluster://$SEEDS",
        workers   => 2,
        main      => 'error_log debug.log debug;',
        server    => qq{
            location = /events { sse_channel \$arg_channels; sse_allow $grants; sse_user \$arg_user; sse_session on; }
    });
    my @pids = $dbg->worker_pids;
    my $debug_log = $dbg->prefix . '/debug.log';
    ok wait_until(sub { (() = SSETest::slurp($debug_log) =~ /connected to redis \(shard\) at /g) >= 6 }, 10),
        'the workers connect their sharded subscribers (debug log on)';
    my $ch = $BY_SHARD[1][6];
    my $c = open_stream($dbg, 'u3', $ch);
    my ($live) = grep { $_ != $DEAD } @ALL;    # the failover above killed one
    is warm_up([$c], slot_table($live), \%SLOT, [$live], 10), 1, "a stream on $ch receives an SPUBLISHed event";
    sleep 1.5;    # reconnect, topology and keepalive timers fire meanwhile
    is_deeply [ sort $dbg->worker_pids ], [ sort @pids ], 'the same workers run (none crashed and was respawned)';
    unlike $dbg->error_log, qr/exited on signal/, 'no worker exited on a signal';
    $c->close;
    $dbg->stop;
};

done_testing;
