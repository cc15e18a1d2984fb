# Delivery exactly as documented, where Redis' own matching says otherwise:
# (a) a stream subscribed to a pattern and to a channel (or a second
#     pattern) that Redis' glob also covers (`*` crosses `:` in Redis) gets
#     each event once, and a channel outside the documented rule (`*` = one
#     segment) never;
# (b) a control message that reaches the worker through client patterns too
#     (`*:*`, `**`) is acted on once: one revocation, one log line;
# (c) two nginx with different sse_redis_prefix on one Redis and one channel
#     name: each stream gets its own application's events (with their ids)
#     and plain PUBLISHes, never the other's; resume works per prefix;
# (d) `sse_channel $arg_a $arg_b;` with one argument missing streams the
#     other; with both missing it answers 400 with a reason;
# (e) a replay of 100,000 events arrives complete, in order, in time.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $redis = start_redis();
my $rp    = $redis->port;
my $nginx = start_nginx(redis => $redis, workers => 1, server => q{
        location /p   { sse_channel $arg_ch; sse_channel_patterns on; }
        location /u   { sse_channel $arg_ch; sse_channel_patterns on; sse_user $arg_u; }
        location /two { sse_channel $arg_a $arg_b; }
        location /big { sse_channel $arg_ch; sse_history on; sse_max_backlog 64m; }
});
my $port = $nginx->port;
my @workers = $nginx->worker_pids;

sub numpat { redis_cmd($rp, PUBSUB => 'NUMPAT') }

# Waits until Redis has no client subscription left but sse:control.
sub quiet {
    return wait_until(sub {
        my $ch = redis_cmd($rp, PUBSUB => 'CHANNELS');
        !grep({ $_ ne 'sse:control' } @$ch) && numpat() == 0;
    }, 5);
}

# Opens a stream and waits until Redis has the given channels and number of
# patterns subscribed.
sub open_ready {
    my ($path, $channels, $patterns) = @_;
    my $c = sse_connect($port, $path);
    is $c->status, 200, "GET $path: 200";
    ok wait_subscribed($rp, $_, 1, 5), "  $_ subscribed" for @$channels;
    ok wait_until(sub { numpat() == $patterns }, 5), "  $patterns pattern(s) subscribed (PUBSUB NUMPAT)";
    return $c;
}

# Publishes each [channel, payload] in order, then a marker on
# $marker_channel, waits for the marker and a little more, and returns
# { "channel payload" => times received } (marker included).
sub publish_and_count {
    my ($c, $marker_channel, @msgs) = @_;
    my $conn = redis_connect($rp);
    my @n = $conn->pipeline(map { [PUBLISH => @$_] } @msgs, [$marker_channel, 'marker']);
    $conn->close;
    # What PUBLISH answered: how many subscriptions of the worker Redis delivered to.
    my %receivers;
    $receivers{ $msgs[$_][0] } = $n[$_] for 0 .. $#msgs;
    $c->{receivers} = \%receivers;
    $c->wait_for(sub { grep { $_->{data} eq 'marker' } $_[0]->all_events }, 5);
    $c->drain(0.5);
    my %n;
    $n{"$_->{event} $_->{data}"}++ for $c->events_until($c->pending_events, 0);
    return \%n;
}

subtest '(a) a pattern and a channel its Redis glob also covers: each event once' => sub {
    my @cases = (
        {
            subs => 'logs:*,logs:w1:f1', channels => ['logs:w1:f1'], patterns => 1,
            once => [ map({ [ 'logs:w1:f1', "f1 #$_" ] } 1 .. 3), [ 'logs:w2', 'w2 #1' ], [ 'logs:w2', 'w2 #2' ] ],
            never => [ [ 'logs:w9:x', 'w9 #1' ], [ 'logs:w9:x', 'w9 #2' ], [ 'logs', 'bare' ] ],
            marker => 'logs:w1:f1', dup => 'logs:w1:f1',
        },
        {
            subs => 'logs:*,logs:w1:**', channels => [], patterns => 2,
            once => [ [ 'logs:w1:a:b', 'ab #1' ], [ 'logs:w1:a:b', 'ab #2' ], [ 'logs:w1:a', 'a #1' ], [ 'logs:w3', 'w3' ] ],
            never => [ [ 'logs:w3:a:b', 'w3ab' ], [ 'logs', 'bare' ] ],
            marker => 'logs:w1:a:b', dup => 'logs:w1:a:b',
        },
        {
            subs => 'dashboards:*,dashboards:7:x', channels => ['dashboards:7:x'], patterns => 1,
            once => [ [ 'dashboards:7:x', 'x #1' ], [ 'dashboards:7', 'seven' ], [ 'dashboards:7:x', 'x #2' ] ],
            never => [ [ 'dashboards:7:y', 'y' ] ],
            marker => 'dashboards:7:x', dup => 'dashboards:7:x',
        },
        {
            subs => '*:*,a:b:c', channels => ['a:b:c'], patterns => 1,
            once => [ [ 'a:b:c', 'abc #1' ], [ 'q:r', 'qr' ], [ 'a:b:c', 'abc #2' ] ],
            never => [ [ 'a:b:d', 'abd' ], [ 'solo', 'solo' ] ],
            marker => 'a:b:c', dup => 'a:b:c',
        },
    );
    for my $case (@cases) {
        ok quiet(), "$case->{subs}: nothing subscribed before";
        my $c = open_ready("/p?ch=$case->{subs}", $case->{channels}, $case->{patterns});
        my $got = publish_and_count($c, $case->{marker}, map { @{ $case->{$_} } } qw(once never));
        is $c->{receivers}{ $case->{dup} }, 2,
            "$case->{subs}: (Redis delivers $case->{dup} to the worker twice: through both subscriptions)";
        my %want = map { ("$_->[0] $_->[1]" => 1) } @{ $case->{once} }, [ $case->{marker}, 'marker' ];
        is_deeply $got, \%want,
            "$case->{subs}: every event of a subscribed channel exactly once, none outside the rules"
            or diag explain { got => $got, want => \%want };
        my @twice = grep { $got->{$_} > 1 } sort keys %$got;
        is_deeply \@twice, [], "$case->{subs}: no duplicate";
        $c->close;
    }

    # The same subscriptions split over two streams of one worker.
    ok quiet(), 'two streams: nothing subscribed before';
    my $pat  = open_ready('/p?ch=logs:*', [], 1);
    my $chan = open_ready('/p?ch=logs:w1:f1', ['logs:w1:f1'], 1);
    my $conn = redis_connect($rp);
    $conn->pipeline([ PUBLISH => 'logs:w1:f1', 'to chan' ], [ PUBLISH => 'logs:w2', 'to pat' ],
        [ PUBLISH => 'logs:w1:f1', 'end' ], [ PUBLISH => 'logs:w2', 'end' ]);
    $conn->close;
    $_->wait_for(sub { grep { $_->{data} eq 'end' } $_[0]->all_events }, 5) for $pat, $chan;
    $_->drain(0.3) for $pat, $chan;
    is_deeply [map { "$_->{event} $_->{data}" } $pat->all_events], ['logs:w2 to pat', 'logs:w2 end'],
        'the logs:* stream gets logs:w2 only, once each';
    is_deeply [map { "$_->{event} $_->{data}" } $chan->all_events], ['logs:w1:f1 to chan', 'logs:w1:f1 end'],
        'the logs:w1:f1 stream gets logs:w1:f1 only, once each';
    $_->close for $pat, $chan;
};

subtest '(b) a control message reaching the worker through client patterns acts once' => sub {
    ok quiet(), 'nothing subscribed before';
    # Three pattern streams whose Redis globs all match "sse:control".
    my @watchers;
    my $n = 0;
    for my $p ('*:*', '**', '*:control') {
        my $c = sse_connect($port, "/u?ch=$p&u=watcher");
        is $c->status, 200, "a stream of user watcher on $p opens";
        push @watchers, $c;
        $n++;
        ok wait_until(sub { numpat() == $n }, 5), "  its pattern is subscribed ($n)";
    }
    my $u1 = sse_connect($port, '/u?ch=news:1&u=u1');
    is $u1->status, 200, 'a stream of user u1 on news:1 opens';
    ok wait_subscribed($rp, 'news:1', 1, 5), '  news:1 subscribed';

    my $mark = $nginx->error_log_mark;
    my $t0 = time;
    is redis_cmd($rp, PUBLISH => 'sse:control' => 'revoke u1'), 4,
        'PUBLISH sse:control "revoke u1" reaches the worker 4 times (its channel, 3 client patterns)';
    is $u1->wait_eof(3), 'clean', "u1's stream ends cleanly";
    note sprintf 'ended after %.3f s', time - $t0;
    sleep 1;    # any further (repeated) processing would be logged by now
    my @lines = grep { /revocation/ } split /\n/, $nginx->error_log_since($mark);
    is scalar(@lines), 1, 'exactly one revocation line in the error log (one worker)' or diag join "\n", @lines;
    like $lines[0] // '', qr/sse: revocation: ending 1 stream\(s\) of user\(s\) u1\b/, '... ending 1 stream of u1'
        or diag $lines[0];

    is scalar(grep { $_->is_eof } @watchers), 0, "the watchers' streams stay open";
    redis_cmd($rp, PUBLISH => 'q:r' => 'after');
    redis_cmd($rp, PUBLISH => 'x' => 'after');
    $_->drain(0.5) for @watchers;
    is_deeply [map { "$_->{event} $_->{data}" } $watchers[0]->all_events], ['q:r after'],
        '*:* got nothing from sse:control, and still gets its events';
    is_deeply [map { "$_->{event} $_->{data}" } $watchers[1]->all_events], ['q:r after', 'x after'],
        '** got nothing from sse:control, and still gets its events';
    is_deeply [map { "$_->{event} $_->{data}" } $watchers[2]->all_events], [],
        '*:control got nothing from sse:control';
    is_deeply [$nginx->worker_pids], \@workers, 'the worker is the same process (no crash)';
    $_->close for @watchers;
};

subtest '(c) two applications (sse_redis_prefix appa / appb) on one Redis, one channel name' => sub {
    my %app;
    for my $name (qw(appa appb)) {
        $app{$name} = start_nginx(redis => $redis, workers => 1, http => "sse_redis_prefix $name;", server => q{
            location /h { sse_channel $arg_ch; sse_history on; }
        });
    }
    my $loaded = wait_until(sub {
        my $list = redis_cmd($rp, FUNCTION => 'LIST', LIBRARYNAME => 'nginx_sse');
        ref $list eq 'ARRAY' && grep { ref $_ eq 'ARRAY' && "@$_" =~ /\bnginx_sse\b/ } @$list;
    }, 10);
    ok $loaded, 'the workers loaded the nginx_sse library';
    load_sse_function($rp) unless $loaded;
    # appb's ids start far above appa's, as two real applications' would.
    redis_cmd($rp, SET => 'appb:seq' => 1000);

    my %c = map { $_ => sse_connect($app{$_}->port, '/h?ch=logs:x') } qw(appa appb);
    is $c{$_}->status, 200, "$_: stream on logs:x opens" for qw(appa appb);
    ok wait_subscribed($rp, 'logs:x', 2, 5), 'both nginx subscribed to logs:x';

    my $conn = redis_connect($rp);
    my @cmds = map { ([FCALL => sse_publish => 0, 'logs:x', "a$_", 'prefix=appa'],
                      [FCALL => sse_publish => 0, 'logs:x', "b$_", 'prefix=appb']) } 1 .. 20;
    my @ids = $conn->pipeline(@cmds, [PUBLISH => 'logs:x' => 'plain']);
    $conn->close;
    my $plain = pop @ids;
    is $plain, 2, 'the plain PUBLISH reached both nginx';
    is scalar(grep { !ref && /^\d+$/ } @ids), 40, '40 events published with FCALL sse_publish';
    my (%want, %id_of);
    for my $i (0 .. $#cmds) {
        my ($payload, $opt) = @{ $cmds[$i] }[4, 5];
        my ($name) = $opt =~ /prefix=(\w+)/;
        push @{ $want{$name} }, "logs:x|$payload|$ids[$i]";
        $id_of{$payload} = $ids[$i];
    }
    push @{ $want{$_} }, 'logs:x|plain|-' for qw(appa appb);
    for my $name (qw(appa appb)) {
        $c{$name}->wait_for(sub { grep { $_->{data} eq 'plain' } $_[0]->all_events }, 5);
        $c{$name}->drain(0.3);
        # own_id: the event's own id: field (EventSource would show the previous id on the plain one).
        my @got = map { join '|', $_->{event}, $_->{data}, $_->{own_id} // '-' } $c{$name}->all_events;
        my $letter = substr $name, 3, 1;
        is_deeply \@got, $want{$name},
            "$name: exactly its own 20 events in order with their ids, then the plain one (no id)"
            or diag "got: @got";
        my $other = $letter eq 'a' ? 'b' : 'a';
        is scalar(grep { /^logs:x\|$other\d/ } @got), 0, "$name: none of the other application's events";
        $c{$name}->close;
    }
    ok wait_subscribed($rp, 'logs:x', 0, 5), 'both streams closed';

    # Resume, each from its own 10th event.
    for my $name (qw(appa appb)) {
        my $letter = substr $name, 3, 1;
        my $since = $id_of{"${letter}10"};
        my $c = sse_connect($app{$name}->port, '/h?ch=logs:x', headers => { 'Last-Event-ID' => $since });
        is $c->status, 200, "$name: resume from ${letter}10 (id $since): 200";
        my @got = map { join '|', $_->{event}, $_->{data}, $_->{own_id} // '-' } $c->events_until(10, 10);
        is_deeply \@got, [ @{ $want{$name} }[10 .. 19] ], "$name: replays ${letter}11..${letter}20 with their ids";
        $c->drain(0.3);
        is $c->pending_events, 0, "$name: and nothing more";
        $c->close;
    }
    $app{$_}->stop for qw(appa appb);
};

subtest '(d) sse_channel $arg_a $arg_b: an empty value contributes no channel' => sub {
    for my $case ([ '/two?a=x', 'x' ], [ '/two?b=y', 'y' ], [ '/two?a=x&b=', 'x' ], [ '/two?a=&b=y', 'y' ]) {
        my ($path, $ch) = @$case;
        my $c = sse_connect($port, $path);
        is $c->status, 200, "$path: 200"
            or do { diag $c->{body_head}; next };
        like $c->header('Content-Type') // '', qr{^text/event-stream}, "$path: text/event-stream";
        ok wait_subscribed($rp, $ch, 1, 5), "$path: $ch subscribed";
        redis_cmd($rp, PUBLISH => $ch => "to $ch");
        my $ev = $c->next_event(5);
        is $ev && "$ev->{event} $ev->{data}", "$ch to $ch", "$path: the stream gets the events of $ch";
        $c->close;
        ok wait_subscribed($rp, $ch, 0, 5), "$path: released";
    }
    for my $path ('/two', '/two?a=&b=') {
        my $res = http_request($port, 'GET', $path);
        is $res->{status}, 400, "$path (no channel at all): 400";
        like $res->{headers}{'content-type'} // '', qr{^text/plain}, "$path: text/plain";
        like $res->{body} // '', qr/\S/, "$path: with a reason (" . ($res->{body} // '') =~ s/\s+$//r . ')';
    }
};

subtest '(e) a replay of 100,000 events' => sub {
    my $N = 100_000;
    my $conn = redis_connect($rp, timeout => 30);
    my @ids;
    my $t0 = time;
    for (my $i = 1; $i <= $N; $i += 5000) {
        push @ids, $conn->pipeline(map { [FCALL => sse_publish => 0, 'big:c', sprintf('big event %010d', $_), "maxlen=$N"] }
            $i .. $i + 4999);
    }
    $conn->close;
    diag sprintf 'published %d events in %.1f s', scalar(@ids), time - $t0;
    is scalar(grep { !ref && /^\d+$/ } @ids), $N, "$N events published";
    is redis_cmd($rp, XLEN => 'sse:h:big:c'), $N, "Redis holds all $N";

    $t0 = time;
    my $c = sse_connect($port, '/big?ch=big:c', headers => { 'Last-Event-ID' => $ids[0] });
    is $c->status(10), 200, "resume from the first event's id ($ids[0]): 200";
    my $complete = $c->wait_for(sub { $_[0]->pending_events >= $N - 1 }, 60);
    my $took = time - $t0;
    diag sprintf 'the replay of %d events took %.1f s', $c->pending_events, $took;
    ok $complete, sprintf('all %d remaining events arrive within 60 s (%.1f s)', $N - 1, $took);
    $c->drain(0.5);
    my @ev = $c->all_events;
    is scalar(@ev), $N - 1, 'no more than that';
    my @bad;
    for my $k (0 .. $#ev) {
        my $i = $k + 1;    # events 2 .. N
        my $want = sprintf 'big:c|big event %010d|%s', $i + 1, $ids[$i] // '?';
        my $got = join '|', $ev[$k]{event}, $ev[$k]{data}, $ev[$k]{id} // '-';
        push @bad, "event $k: $got, expected $want" if $got ne $want;
        last if @bad >= 5;
    }
    is_deeply \@bad, [], 'events 2..100000 in order, with their ids, no duplicate, no gap';
    $c->close;
};

is_deeply [$nginx->worker_pids], \@workers, 'the same worker ran the whole file (no crash)';

done_testing;
