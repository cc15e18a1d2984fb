# 1,000 concurrent streams over two workers all receive every message, in
# order; each worker subscribes once; everything is released afterwards.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use POSIX ();
use Test::More;
use Time::HiRes qw(time sleep);

my $CLIENTS  = 1000;
my $MESSAGES = 20;

# This process needs a file descriptor per client: raise the soft limit by
# running again under `ulimit -n` if it is too low.
BEGIN {
    my $need = 1200;
    my $have = POSIX::sysconf(POSIX::_SC_OPEN_MAX()) || 0;
    if ($have < $need && !$ENV{SSE_TEST_NOFILE_RAISED}) {
        $ENV{SSE_TEST_NOFILE_RAISED} = 1;
        exec '/bin/sh', '-c', 'ulimit -Sn 4096 2>/dev/null || ulimit -Sn "$(ulimit -Hn)"; exec "$@"', 'sh', $^X, $0;
    }
}

use SSETest;

my $have = POSIX::sysconf(POSIX::_SC_OPEN_MAX()) || 0;
plan skip_all => "needs 1200 file descriptors, ulimit -n allows $have" if $have < 1200;

# nginx workers may raise their own soft limit up to the hard limit.
chomp(my $hard = `sh -c 'ulimit -Hn'`);
my $nofile = $hard =~ /^\d+$/ && $hard < 8192 ? $hard : 8192;

my $redis = start_redis();
my $rp    = $redis->port;
# reuseport spreads the connections over both workers; backlog so that 1000
# quick connects are not dropped.
my $nginx = start_nginx(redis => $redis, workers => 2, listen => 'reuseport backlog=4096',
    main => "worker_rlimit_nofile $nofile;", server => q{
        location /sse { sse_channel crowd; sse_heartbeat 5s; }
});
my $port = $nginx->port;

my $t0 = time;
my @clients = map { sse_connect($port, '/sse') } 1 .. $CLIENTS;
my $open = wait_clients(\@clients, sub { length $_[0]->body_head >= 13 }, 60);
is $open, $CLIENTS, "$CLIENTS streams open";
note sprintf '%d streams open after %.1f s', $open, time - $t0;
is scalar(grep { $_->status(0) == 200 } @clients), $CLIENTS, 'all answered 200';
ok wait_subscribed($rp, 'crowd', 2, 10), 'each of the two workers subscribed once (NUMSUB crowd = 2)';

my @conns = $redis->clients;
is scalar(@conns), 2, 'one Redis connection per worker, whatever the number of clients'
    or diag join "\n", map { "$_->{addr} cmd=$_->{cmd} sub=$_->{sub}" } @conns;

my @workers = $nginx->worker_pids;
note 'worker RSS before: ' . join(', ', map { (rss_kb($_) // '?') . ' kB' } @workers);

$t0 = time;
my $conn = redis_connect($rp);
my @receivers = map { my $n = $conn->cmd(PUBLISH => crowd => "message $_"); sleep 0.02; $n } 1 .. $MESSAGES;
$conn->close;
is scalar(grep { $_ eq '2' } @receivers), $MESSAGES, "$MESSAGES messages, each published to both workers";
my $complete = wait_events(\@clients, $MESSAGES, 60);
is $complete, $CLIENTS, "every client received $MESSAGES events";
note sprintf 'delivered in %.1f s', time - $t0;

my $expected = join '|', map { "crowd:message $_" } 1 .. $MESSAGES;
my @wrong = grep { join('|', map { "$_->{event}:$_->{data}" } $_->events_until($MESSAGES, 0)) ne $expected } @clients;
is scalar(@wrong), 0, 'every client got exactly the messages, in publish order';
$_->drain(0) for @clients;
is scalar(grep { $_->pending_events } @clients), 0, 'and no extra events';
is scalar(grep { $_->{ended} } @clients), 0, 'no stream ended';
note 'worker RSS after: ' . join(', ', map { (rss_kb($_) // '?') . ' kB' } @workers);
is_deeply [$nginx->worker_pids], \@workers, 'the same two workers are still running';

$_->close for @clients;
ok wait_subscribed($rp, 'crowd', 0, 10), 'all clients gone: NUMSUB crowd = 0';
is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
