# A Redis that accepts the TCP connection but refuses the worker is a failure
# like a Redis that is down: the worker retries with exponential backoff
# (100 ms doubling to 5 s), says so once, and never claims to be connected.
# Four refusals side by side over the same 10 s:
#  - a wrong password (WRONGPASS at AUTH), 2 workers;
#  - no password where Redis requires one (NOAUTH at SUBSCRIBE), 2 workers,
#    until the password is removed at runtime: then it connects within the
#    backoff cap and messages flow, with one "connected" line per worker;
#  - a server that closes every connection at once, 1 worker;
#  - a server that answers "+OK" to everything (never confirms SUBSCRIBE),
#    1 worker: the unexpected reply is logged, nothing claims success.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $WINDOW = 10;

my $wrong_redis  = SSETest::Redis->new(password => 's3cr3t')->start;
my $noauth_redis = SSETest::Redis->new(password => 'later')->start;
my $closer = start_fake_server(mode => 'close');
my $yes    = start_fake_server(mode => 'ok');

# One connection each for INFO, so that asking does not count as a connection.
my $wrong_info = redis_connect($wrong_redis);
sub connections_received {
    my $text = $wrong_info->cmd(INFO => 'stats');
    my ($n) = $text =~ /^total_connections_received:(\d+)/m;
    return $n;
}

my $location = q{ location /sse { sse_channel news; sse_heartbeat 1s; } };
my $before = connections_received();
my $t0 = time;
my %nginx = (
    wrong  => start_nginx(workers => 2, server => $location,
        redis_url => 'redis://:wrong@127.0.0.1:' . $wrong_redis->port),
    noauth => start_nginx(workers => 2, server => $location, redis_url => 'redis://127.0.0.1:' . $noauth_redis->port),
    closer => start_nginx(workers => 1, server => $location, redis_url => 'redis://127.0.0.1:' . $closer->port),
    yes    => start_nginx(workers => 1, server => $location, redis_url => 'redis://127.0.0.1:' . $yes->port),
);
my %stream = map { $_ => sse_connect($nginx{$_}->port, '/sse') } sort keys %nginx;
is $stream{$_}->status, 200, "$_: a stream opens" for sort keys %stream;
my $started = time - $t0;
sleep $WINDOW - $started if $started < $WINDOW;
my $elapsed = time - $t0;

# Lines of the module (sse:) in an error log.
sub sse_lines { grep { / sse: / } split /\n/, $_[0]->error_log }
sub show { join "\n", grep { defined } @_ }

subtest 'wrong password (WRONGPASS), 2 workers' => sub {
    my $grew = connections_received() - $before;
    ok $grew <= 25, sprintf('Redis received %d connections in %.1f s (at most 25: backoff)', $grew, $elapsed);
    my @lines = sse_lines($nginx{wrong});
    my @refusal = grep { /WRONGPASS|password|auth/i } @lines;
    ok @refusal >= 1, 'the refusal is logged' or diag show(@lines);
    ok @refusal <= 2, 'at most once per worker (' . scalar(@refusal) . ' lines)' or diag show(@refusal[0 .. 9]);
    ok @lines <= 4, 'at most 4 module lines in all (' . scalar(@lines) . ')' or diag show(@lines[0 .. 9]);
    my @success = grep { /\bresubscrib|\b(?:re)?connected to\b/ } @lines;
    is scalar(@success), 0, 'no line claims a connection' or diag show(@success[0 .. 4]);
    is $stream{wrong}->is_eof, '', 'the stream stays open';
    is numsub($wrong_redis, 'news')->{news}, 0, 'nothing subscribed';
};

subtest 'a server that closes every connection at once, 1 worker' => sub {
    my $n = $closer->accepts;
    ok $n >= 2, "the worker keeps trying ($n connections)";
    ok $n <= 12, sprintf('%d connections in %.1f s (at most 12: backoff)', $n, $elapsed);
    my @lines = sse_lines($nginx{closer});
    ok @lines >= 1, 'the failure is logged';
    ok @lines <= 2, 'in at most 2 lines (' . scalar(@lines) . ')' or diag show(@lines[0 .. 9]);
    my @success = grep { /\bresubscrib|\b(?:re)?connected to\b/ } @lines;
    is scalar(@success), 0, 'no line claims a connection' or diag show(@success[0 .. 4]);
    is $stream{closer}->is_eof, '', 'the stream stays open';
};

subtest 'a server that answers +OK to everything (no SUBSCRIBE confirmation), 1 worker' => sub {
    my $n = $yes->accepts;
    my @commands = $yes->commands;
    ok scalar(grep { $_ eq 'SUBSCRIBE' } @commands), 'the worker sent SUBSCRIBE';
    ok $n <= 12, sprintf('%d connections in %.1f s (at most 12: it reconnects with backoff)', $n, $elapsed);
    ok $n >= 2, "it does reconnect ($n connections)";
    my @lines = sse_lines($nginx{yes});
    my @unexpected = grep { /unexpected/i && /SUBSCRIBE/ } @lines;
    ok @unexpected >= 1, 'the unexpected reply to SUBSCRIBE is logged' or diag show(@lines[0 .. 9]);
    ok @lines <= 3, 'in few lines (' . scalar(@lines) . ')' or diag show(@lines[0 .. 9]);
    my @success = grep { /\bresubscrib|\b(?:re)?connected to\b/ } @lines;
    is scalar(@success), 0, 'no "connected to" or "resubscribed" line' or diag show(@success[0 .. 4]);
};

subtest 'no password where one is required (NOAUTH), then the password is removed' => sub {
    my @lines = sse_lines($nginx{noauth});
    my @refusal = grep { /NOAUTH|auth/i } @lines;
    ok @refusal >= 1, 'the refusal is logged' or diag show(@lines);
    ok @refusal <= 2, 'at most once per worker (' . scalar(@refusal) . ' lines)' or diag show(@refusal[0 .. 9]);
    my @success = grep { /\bresubscrib|\b(?:re)?connected to\b/ } @lines;
    is scalar(@success), 0, 'no line claims a connection while refused' or diag show(@success[0 .. 4]);
    is $stream{noauth}->is_eof, '', 'the stream stays open';

    my $mark = $nginx{noauth}->error_log_mark;
    is redis_cmd($noauth_redis, CONFIG => SET => requirepass => ''), 'OK', 'CONFIG SET requirepass ""';
    my $t1 = time;
    my $fresh = sse_connect($nginx{noauth}->port, '/sse');
    is $fresh->status, 200, 'a new stream opens';
    my %got;
    my $n = 0;
    while (keys(%got) < 2 && time - $t1 < 8) {
        redis_cmd($noauth_redis->port, PUBLISH => news => 'open #' . ++$n);
        my $has = sub { grep { $_->{event} eq 'news' && $_->{data} =~ /^open #/ } $_[0]->all_events };
        wait_clients([ $stream{noauth}, $fresh ], $has, 0.2);
        $got{old}   //= time - $t1 if $has->($stream{noauth});
        $got{fresh} //= time - $t1 if $has->($fresh);
    }
    ok defined $got{fresh}, sprintf('a stream opened after the change receives published messages (after %.1f s)', $got{fresh} // -1);
    ok defined $got{old}, sprintf('so does the stream opened during the refusal (after %.1f s)', $got{old} // -1);
    my $took = (sort { $b <=> $a } map { $_ // 99 } @got{qw(old fresh)})[0];
    ok $took <= 7, sprintf('both within 7 s (%.1f s)', $took);
    $fresh->close;
    ok wait_subscribed($noauth_redis->port, 'sse:control', 2, 8 - $took > 1 ? 8 - $took : 1),
        'both workers subscribed (sse:control)';
    my %per_worker;
    for (split /\n/, $nginx{noauth}->error_log_since($mark)) {
        $per_worker{$1}++ if /\] (\d+)#\d+: .*sse: .*\b(?:re)?connected to\b/;
    }
    is_deeply [sort values %per_worker], [1, 1], 'one "connected" line per worker'
        or diag $nginx{noauth}->error_log_since($mark);
};

$_->close for values %stream;

done_testing;
