# One huge message: with the default sse_max_message_size (1m) a 100 MB
# PUBLISH is skipped, logged with the limit, and the worker's memory comes
# back; the next message arrives as usual. With sse_max_message_size 200m it
# is delivered complete, and the memory comes back afterwards too. Bad
# values fail `nginx -t` naming the directive.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

subtest 'nginx -t' => sub {
    my ($rc, $out) = nginx_test_conf(http => 'sse_max_message_size banana;', server => 'location /sse { sse_channel a; }');
    isnt $rc, 0, 'sse_max_message_size banana: nginx -t fails';
    like $out, qr/sse_max_message_size/, '... naming the directive' or diag $out;
    ($rc, $out) = nginx_test_conf(http => 'sse_max_message_size 200m;', server => 'location /sse { sse_channel a; }');
    is $rc, 0, 'sse_max_message_size 200m at http level: accepted' or diag $out;
};

# Pub/sub output buffers unlimited: Redis itself must not cut nginx off.
my $redis = start_redis(args => ['--client-output-buffer-limit', 'pubsub 0 0 0']);
my $rp    = $redis->port;

# 100 MB in lines of 1 KB (the client parses it line by line), no final newline.
my $BIG = join "\n", map { sprintf('%07d', $_) . ('x' x 1016) } 1 .. 102_400;
note 'payload: ' . length($BIG) . ' bytes';

# Waits until the worker's RSS stops falling (or $t s), returns it in KB.
sub settled_rss {
    my ($pid, $t) = @_;
    my $rss = rss_kb($pid);
    my $deadline = time + $t;
    while (time < $deadline) {
        sleep 0.5;
        my $now = rss_kb($pid) // last;
        last if $now >= $rss;
        $rss = $now;
    }
    return $rss;
}

subtest 'default limit (1m): a 100 MB message is skipped' => sub {
    my $nginx = start_nginx(redis => $redis, workers => 1, server => q{
        location /sse { sse_channel $arg_ch; }
    });
    my ($worker) = $nginx->worker_pids;
    my $c = sse_connect($nginx->port, '/sse?ch=big:a');
    is $c->status, 200, 'a reading client on big:a';
    ok wait_subscribed($rp, 'big:a', 1, 5), 'subscribed';
    redis_cmd($rp, PUBLISH => 'big:a' => 'small before');
    is $c->next_event(5)->{data}, 'small before', 'a small message arrives';
    my $base = rss_kb($worker);
    my $mark = $nginx->error_log_mark;

    my $t0 = time;
    is redis_cmd($rp, PUBLISH => 'big:a' => $BIG), 1, 'PUBLISH of 100 MB';
    redis_cmd($rp, PUBLISH => 'big:a' => 'small after');
    my $ev = $c->next_event(30);
    note sprintf 'next event after %.1f s', time - $t0;
    is $ev && substr($ev->{data}, 0, 20), 'small after', 'the next event is the small message after it (the big one is skipped)';
    my $log = $nginx->error_log_since($mark);
    my @limit = grep { /sse: / && !/sse_max_backlog/ && /sse_max_message_size|\b1048576\b|\b1m\b/ } split /\n/, $log;
    ok @limit, 'a log line names the size limit (not a slow-client line)' or diag $log;
    note join "\n", grep { /sse:/ } split /\n/, $log;
    my $after = settled_rss($worker, 5);
    ok $after - $base < 16 * 1024, sprintf('worker RSS is back within 16 MB of before (%+.1f MB)', ($after - $base) / 1024);
    redis_cmd($rp, PUBLISH => 'big:a' => 'still');
    $ev = $c->next_event(5);
    is $ev && $ev->{data}, 'still', 'the stream goes on';
    is_deeply [$nginx->worker_pids], [$worker], 'same worker (no crash)';
    $c->close;
};

subtest 'sse_max_message_size 200m (and sse_max_backlog 256m): the 100 MB message is delivered' => sub {
    # The backlog limit is raised too: this is about the message size alone
    # (the 100 MB frame is queued at once, more than the default 1m backlog).
    my $nginx = eval { start_nginx(redis => $redis, workers => 1, http => 'sse_max_message_size 200m;', server => q{
        location /sse { sse_channel $arg_ch; sse_max_backlog 256m; }
    }) };
    ok $nginx, 'nginx starts with sse_max_message_size 200m' or diag $@;
    return unless $nginx;
    my ($worker) = $nginx->worker_pids;
    my $c = sse_connect($nginx->port, '/sse?ch=big:b');
    is $c->status, 200, 'a reading client on big:b';
    ok wait_subscribed($rp, 'big:b', 1, 5), 'subscribed';
    redis_cmd($rp, PUBLISH => 'big:b' => 'small before');
    is $c->next_event(5)->{data}, 'small before', 'a small message arrives';
    my $base = rss_kb($worker);

    my $t0 = time;
    is redis_cmd($rp, PUBLISH => 'big:b' => $BIG), 1, 'PUBLISH of 100 MB';
    redis_cmd($rp, PUBLISH => 'big:b' => 'small after');
    my $ev = $c->next_event(30);
    note sprintf 'the big event arrived after %.1f s', time - $t0;
    is $ev && length $ev->{data}, length $BIG, 'an event of 100 MB arrives';
    ok $ev && $ev->{data} eq $BIG, '... byte for byte';
    undef $ev;
    $ev = $c->next_event(5);
    is $ev && $ev->{data}, 'small after', 'then the small message after it';
    my $after = settled_rss($worker, 5);
    ok $after - $base < 16 * 1024, sprintf('worker RSS is back within 16 MB of before (%+.1f MB)', ($after - $base) / 1024);
    is_deeply [$nginx->worker_pids], [$worker], 'same worker (no crash)';
    $c->close;
};

done_testing;
