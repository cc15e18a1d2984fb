# Redis outages: nginx starts and serves while Redis is down, open streams stay
# open (with heartbeats) while Redis is away, the worker reconnects with
# backoff and resubscribes, and messages flow again. The error log tells the
# state changes without a line per reconnection attempt.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $redis = SSETest::Redis->new;    # port chosen, server not started yet
my $rp    = $redis->port;
my $nginx = start_nginx(redis => $redis, workers => 1, server => q{
        location /sse { sse_channel news; sse_heartbeat 1s; }
});
my $port = $nginx->port;

my $c;

subtest 'Redis down when nginx starts' => sub {
    $c = sse_connect($port, '/sse');
    is $c->status, 200, 'a stream opens while Redis is down';
    ok $c->wait_for(sub { length $_[0]->body_head >= 13 }, 2), 'and gets its retry field';
    $c->wait_for(sub { 0 }, 2.5);
    ok scalar($c->comments) >= 1, 'heartbeats keep coming while Redis is down (' . scalar($c->comments) . ')';
    is $c->is_eof, '', 'the stream is still open';
    my $res = http_request($port, 'GET', '/nothing-here');
    is $res->{status}, 404, 'nginx serves other requests meanwhile';

    $redis->start;
    my $t0 = time;
    ok wait_subscribed($rp, 'news', 1, 10), 'after Redis starts, the worker subscribes';
    note sprintf 'subscribed %.2f s after Redis started', time - $t0;
    is redis_cmd($rp, PUBLISH => news => 'first'), 1, 'published to one subscriber';
    my $ev = $c->next_event(5);
    is $ev && $ev->{data}, 'first', 'the stream opened during the outage gets the message';

    my $late = sse_connect($port, '/sse');
    is $late->status, 200, 'a new stream opens';
    sleep 0.3;
    redis_cmd($rp, PUBLISH => news => 'second');
    is $late->next_event(5)->{data}, 'second', 'and gets messages';
    is $c->next_event(5)->{data}, 'second', 'so does the first one';
    $late->close;
};

subtest 'Redis restarted mid-stream' => sub {
    my $before = scalar $c->comments;
    $redis->stop;
    my $down = time;
    $c->wait_for(sub { 0 }, 1);
    is $c->is_eof, '', 'Redis gone: the stream stays open';
    is redis_cmd_safe(), undef, '(Redis is really down)';
    $redis->start;
    my $up = time;
    ok wait_subscribed($rp, 'news', 1, 5), 'after a short outage the worker resubscribes within 5 s';
    note sprintf 'resubscribed %.2f s after Redis came back (%.2f s after it went down)', time - $up, time - $down;
    is redis_cmd($rp, PUBLISH => news => 'after restart'), 1, 'published to one subscriber';
    my $ev = $c->next_event(5);
    is $ev && $ev->{data}, 'after restart', 'the same stream gets messages published after the restart';
    is $c->is_eof, '', 'the stream is still open';
};

subtest 'long outage: backoff is capped, the log is not flooded' => sub {
    my $mark = $nginx->error_log_mark;
    my $beats = scalar $c->comments;
    $redis->stop;
    $c->wait_for(sub { 0 }, 10);    # 10 s without Redis: at least 6 reconnection attempts
    my $during = $nginx->error_log_since($mark);
    my $beats_during = scalar($c->comments) - $beats;
    ok $beats_during >= 6, "heartbeats keep coming during a 10 s outage ($beats_during)";
    is $c->is_eof, '', 'the stream is still open';

    my $mark_up = $nginx->error_log_mark;
    $redis->start;
    my $up = time;
    ok wait_subscribed($rp, 'news', 1, 8), 'after a long outage the worker resubscribes within 8 s (capped backoff)';
    my $took = time - $up;
    note sprintf 'resubscribed %.2f s after Redis came back', $took;
    redis_cmd($rp, PUBLISH => news => 'after long outage');
    my $ev = $c->next_event(5);
    is $ev && $ev->{data}, 'after long outage', 'messages flow again';

    my @lines = split /\n/, $during;
    ok scalar(grep { /redis/i } @lines) >= 1, 'the loss of Redis is logged' or diag $during;
    ok @lines <= 5, 'at most 5 error.log lines for a 10 s outage (not one per attempt): ' . scalar(@lines)
        or diag $during;
    ok wait_until(sub { $nginx->error_log_since($mark_up) =~ /redis/i }, 2), 'the reconnection is logged'
        or diag $nginx->error_log_since($mark_up);
    note "log during the outage:\n$during";
    note "log after Redis came back:\n" . $nginx->error_log_since($mark_up);
};

$c->close;
is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;

sub redis_cmd_safe { my $r = eval { redis_cmd($rp, 'PING') }; return $r }
