# A Redis ACL that lets the nginx user read some channels only: a SUBSCRIBE
# Redis refuses (NOPERM) concerns the stream that asked for that channel, not
# the connection. That stream gets an sse-refused event naming the channel
# and ends (or is closed), the error log names the channel, and everything
# else carries on: other streams keep every message, the worker does not
# reconnect in a loop, and new streams on allowed channels work.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $redis = start_redis();
my $rp    = $redis->port;
is redis_cmd($rp, ACL => SETUSER => 'sse', 'reset', 'on', '>pw', '~*', 'resetchannels', '&fz*', '&sse:*', '+@all'), 'OK',
    'ACL SETUSER sse: may use the channels fz* and sse:* only';

my $nginx = start_nginx(redis_url => "redis://sse:pw\@127.0.0.1:$rp", workers => 1, server => q{
        location /sse { sse_channel $arg_ch; sse_heartbeat 1s; }
});
my $port = $nginx->port;

# One connection for CLIENT LIST and PUBLISH.
my $conn = redis_connect($rp);
# The worker's connections (user sse) as Redis numbers them: a reconnection
# gets a new id.
sub worker_connections {
    my $list = $conn->cmd(CLIENT => 'LIST');
    return join ',', sort { $a <=> $b } map { /\bid=(\d+)/ } grep { /\buser=sse\b/ } split /\n/, $list;
}

my $a = sse_connect($port, '/sse?ch=fz1');
is $a->status, 200, 'client A on fz1: 200';
ok wait_subscribed($rp, 'fz1', 1, 5), 'fz1 subscribed (as user sse)';
my $conns_before = worker_connections();
ok length $conns_before, "the worker's connection: id $conns_before";
my $mark = $nginx->error_log_mark;

# 30 messages on fz1, one per 100 ms; client B asks for "other" after 0.5 s.
my ($b, @sent);
my $t0 = time;
for my $i (1 .. 30) {
    is $conn->cmd(PUBLISH => fz1 => "m$i"), 1, "m$i published to one subscriber" if $i == 1 || $i == 30;
    $conn->cmd(PUBLISH => fz1 => "m$i") unless $i == 1 || $i == 30;
    push @sent, "m$i";
    $b = sse_connect($port, '/sse?ch=other') if $i == 5;
    wait_clients([ grep { defined } $a, $b ], sub { 0 }, $t0 + $i * 0.1 - time);
}

subtest 'client B, on a channel outside the ACL' => sub {
    my $end = $b->wait_eof(2);
    ok $end, 'its stream does not stay open: ' . ($end // 'still open');
    my @ev = $b->all_events;
    my $status = $b->status(0);
    if ($status == 200 && @ev) {
        is "$ev[0]{event}|$ev[0]{data}", 'sse-refused|other', 'it got an sse-refused event naming "other" first';
        is scalar(@ev), 1, 'and nothing else';
    } else {
        note "status $status, " . scalar(@ev) . ' events: closed without sse-refused';
        ok $status == 200 || $status >= 400, "status $status";
    }
    my @lines = grep { /\bother\b/ } split /\n/, $nginx->error_log_since($mark);
    ok @lines >= 1, 'the error log names the channel' or diag $nginx->error_log_since($mark);
    note join "\n", @lines;
    ok @lines <= 2, 'in a line or two, not a loop (' . scalar(@lines) . ')';
};

subtest 'client A, on an allowed channel, meanwhile' => sub {
    $a->wait_for(sub { $_[0]->pending_events >= 30 }, 3);
    my @got = map { "$_->{event} $_->{data}" } $a->events_until(30, 0);
    is_deeply \@got, [ map { "fz1 $_" } @sent ], 'got all 30 messages published during and after B, in order'
        or diag scalar(@got) . " received: @got";
    is $a->is_eof, '', 'still open';
    is worker_connections(), $conns_before, 'the worker kept its Redis connection (no reconnection)';
};

subtest 'client C, on an allowed channel, after B' => sub {
    my $c = sse_connect($port, '/sse?ch=fz2');
    is $c->status, 200, 'client C on fz2: 200';
    ok wait_subscribed($rp, 'fz2', 1, 5), 'fz2 subscribed';
    $conn->cmd(PUBLISH => fz2 => 'for C');
    $conn->cmd(PUBLISH => fz1 => 'for A');
    my $ev = $c->next_event(5);
    is $ev && "$ev->{event} $ev->{data}", 'fz2 for C', 'C receives its event';
    $ev = $a->next_event(5);
    is $ev && "$ev->{event} $ev->{data}", 'fz1 for A', 'A still receives';
    $c->close;
    is worker_connections(), $conns_before, 'the worker still has the same Redis connection';
};

is numsub($rp, 'other')->{other}, 0, 'Redis never let "other" be subscribed';
$a->close;

done_testing;
