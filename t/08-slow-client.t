# A client that stops reading is disconnected once more than sse_max_backlog
# bytes wait for it, with a [warn] naming its address; a client that keeps up
# on the same channel receives every message.
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
        location /sse { sse_channel bulk; sse_max_backlog 64k; sse_heartbeat off; }
        location /patient { sse_channel stall; sse_max_backlog 100m; sse_heartbeat off; send_timeout 1s; }
});
my $port = $nginx->port;

# One fast and one slow client on the same channel; $count messages of $size
# bytes (several MiB in all: far more than the kernel socket buffers of the
# slow connection can hold).
sub scenario {
    my ($size, $count) = @_;
    my $log_mark = $nginx->error_log_mark;
    my $fast = sse_connect($port, '/sse');
    # The slow client asks for a tiny receive buffer, reads the response
    # head, then never reads again until the end.
    my $slow = sse_connect($port, '/sse', rcvbuf => 4096);
    is $fast->status, 200, 'fast client connected';
    is $slow->status, 200, 'slow client connected';
    ok wait_subscribed($rp, 'bulk', 1, 5), 'subscribed';
    my ($worker) = $nginx->worker_pids;
    my $rss_before = rss_kb($worker) // '?';

    my $payload = sub { my $head = sprintf 'msg %05d ', $_[0]; $head . ('z' x ($size - length $head)) };

    # Publish one message at a time and wait until the fast client has it,
    # so that the fast client never falls behind, whatever the machine's load.
    my $conn = redis_connect($rp);
    my $lost_at;
    my $t0 = time;
    for my $i (1 .. $count) {
        $conn->cmd(PUBLISH => bulk => $payload->($i));
        my $ev = $fast->next_event(10);
        if (!$ev || $ev->{data} ne $payload->($i)) { $lost_at = $i; last }
    }
    $conn->close;
    ok !defined $lost_at, "the fast client received all $count messages intact and in order"
        or diag "the fast client stopped at message $lost_at (stream ended: " . ($fast->{ended} // 'no') . ")\n"
            . $nginx->error_log_since($log_mark);
    note sprintf 'published %d x %d bytes in %.1f s', $count, $size, time - $t0;
    note "worker RSS: before $rss_before kB, after " . (rss_kb($worker) // '?') . ' kB';

    # Now read the slow client: it gets what was in the socket buffers, then
    # the connection must end (had nginx kept it, every message would follow).
    my $ended = $slow->wait_eof(20);
    ok $ended, "the slow client's connection was closed by nginx" or diag 'still open after reading for 20 s';
    my $slow_events = scalar $slow->all_events;
    ok $slow_events < $count, "the slow client got only part of the stream ($slow_events of $count events)";
    note 'slow client: ' . ($ended // 'open') . ", $slow->{body_len} body bytes";

    my @warn = grep { /\[warn\]/ } split /\n/, $nginx->error_log_since($log_mark);
    ok scalar(grep { /127\.0\.0\.1/ } @warn), "a [warn] line names the slow client's address"
        or diag $nginx->error_log_since($log_mark);

    # The fast client was not affected.
    is $fast->is_eof, '', 'the fast client is still connected';
    ok wait_subscribed($rp, 'bulk', 1, 2), 'the channel is still subscribed';
    redis_cmd($rp, PUBLISH => bulk => 'one more');
    my $ev = $fast->next_event(5);
    is $ev && $ev->{data}, 'one more', 'and still receives messages';
    $fast->close;
    ok wait_subscribed($rp, 'bulk', 0, 5), 'both clients gone: unsubscribed';
}

subtest 'sse_max_backlog 64k, 600 messages of 32 KiB' => sub { scenario(32 * 1024, 600) };

# A message as large as the limit is not a backlog for a client that keeps
# up: it must still be delivered.
subtest 'sse_max_backlog 64k, 300 messages of 64 KiB' => sub { scenario(64 * 1024, 300) };

# A client that takes nothing at all while data waits for it is dropped after
# send_timeout, even when the backlog limit is far away.
subtest 'send_timeout closes a stalled client below sse_max_backlog' => sub {
    my $log_mark = $nginx->error_log_mark;
    my $stalled = sse_connect($port, '/patient', rcvbuf => 4096);
    is $stalled->status, 200, 'stalled client connected';
    ok wait_subscribed($rp, 'stall', 1, 5), 'subscribed';
    # More than the socket buffers hold (about 3 MB here), far below 100m.
    my $conn = redis_connect($rp);
    $conn->cmd(PUBLISH => stall => 'y' x 32768) for 1 .. 200;
    $conn->close;
    my $t0 = time;
    my $closed = 0;
    while (time - $t0 < 10) {
        last if $closed = ($nginx->error_log_since($log_mark) =~ /sse: client timed out \(send_timeout\)/);
        select undef, undef, undef, 0.1;
    }
    ok $closed, 'nginx logs the timeout and drops the client';
    ok time - $t0 < 6, 'within a few seconds of send_timeout 1s';
    ok wait_subscribed($rp, 'stall', 0, 5), 'its channel is unsubscribed';
    $stalled->close;
};

is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
