# sse_redis_url credentials: with the right password the worker authenticates
# and messages flow; with a wrong one nginx still serves (streams open, with
# heartbeats), says so in the error log, and never subscribes.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $redis = SSETest::Redis->new(password => 's3cr3t')->start;

subtest 'right password' => sub {
    my $nginx = start_nginx(redis_url => 'redis://:s3cr3t@127.0.0.1:' . $redis->port, server => q{
        location /sse { sse_channel news; }
    });
    my $c = sse_connect($nginx->port, '/sse');
    is $c->status, 200, 'stream open';
    ok wait_subscribed($redis, 'news', 1, 5), 'the worker authenticated and subscribed';
    is redis_cmd($redis, PUBLISH => news => 'authenticated'), 1, 'published';
    my $ev = $c->next_event(5);
    is $ev && $ev->{data}, 'authenticated', 'the message arrives';
    $c->close;
    is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';
    $nginx->stop;
    ok wait_subscribed($redis, 'news', 0, 5), 'nginx stopped: unsubscribed';
};

subtest 'wrong password' => sub {
    my $nginx = start_nginx(redis_url => 'redis://:wrong@127.0.0.1:' . $redis->port, server => q{
        location /sse { sse_channel news; sse_heartbeat 1s; }
    });
    my $c = sse_connect($nginx->port, '/sse');
    is $c->status, 200, 'a stream still opens';
    $c->wait_for(sub { 0 }, 2.5);
    is $c->is_eof, '', 'and stays open';
    ok scalar($c->comments) >= 1, 'with heartbeats';
    is numsub($redis, 'news')->{news}, 0, 'nothing subscribed with a wrong password';
    like $nginx->error_log, qr/redis[^\n]*(auth|password|WRONGPASS|NOAUTH)|(auth|password|WRONGPASS|NOAUTH)[^\n]*redis/i,
        'the error log says that Redis refused the credentials';
    is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';
    $c->close;
};

done_testing;
