# Redis subscriptions follow the clients: a worker subscribes to a channel once
# while at least one of its clients wants it, and unsubscribes when the last
# one leaves. PUBSUB NUMSUB counts subscribed workers (here: one worker).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use SSETest;

my $redis = start_redis();
my $rp    = $redis->port;
my $nginx = start_nginx(redis => $redis, workers => 1, server => q{
        location /sse { sse_channel $arg_channels; }
});
my $port = $nginx->port;

sub n { numsub($rp, $_[0])->{ $_[0] } }

# NUMSUB must stay at $count for $seconds (a channel that should remain
# subscribed must not be dropped in passing).
sub stays {
    my ($ch, $count, $seconds) = @_;
    return !wait_until(sub { n($ch) != $count }, $seconds);
}

sub open_stream {
    my ($channels) = @_;
    my $c = sse_connect($port, "/sse?channels=$channels");
    $c->wait_for(sub { length $_[0]->body_head >= 13 }, 5);
    return $c;
}

subtest 'two clients on one channel' => sub {
    is n('news'), 0, 'nobody subscribed to news at first';
    my $c1 = open_stream('news');
    is $c1->status, 200, 'client 1 connected';
    ok wait_subscribed($rp, 'news', 1, 5), 'NUMSUB news = 1 with one client';

    my $c2 = open_stream('news');
    is $c2->status, 200, 'client 2 connected';
    ok stays('news', 1, 0.5), 'NUMSUB news stays 1 with two clients (one subscription per worker)';
    is redis_cmd($rp, PUBLISH => news => 'to both'), 1, 'a message reaches one Redis subscriber';
    is $c1->next_event(5)->{data}, 'to both', 'client 1 gets it';
    is $c2->next_event(5)->{data}, 'to both', 'client 2 gets it';

    $c1->close;
    ok stays('news', 1, 1), 'client 1 gone: NUMSUB news still 1 (client 2 remains)';
    redis_cmd($rp, PUBLISH => news => 'to client 2');
    my $ev = $c2->next_event(5);
    is $ev && $ev->{data}, 'to client 2', 'client 2 still receives messages';

    $c2->close;
    ok wait_subscribed($rp, 'news', 0, 3), 'both gone: NUMSUB news = 0 within 3 s';

    my $c3 = open_stream('news');
    ok wait_subscribed($rp, 'news', 1, 5), 'a new client subscribes again';
    redis_cmd($rp, PUBLISH => news => 'again');
    $ev = $c3->next_event(5);
    is $ev && $ev->{data}, 'again', 'and receives messages';
    $c3->close;
    ok wait_subscribed($rp, 'news', 0, 3), 'and its leaving unsubscribes';
};

subtest 'overlapping channel sets' => sub {
    my $ab = open_stream('ch-a,ch-b');
    my $b  = open_stream('ch-b');
    ok wait_subscribed($rp, 'ch-a', 1, 5) && wait_subscribed($rp, 'ch-b', 1, 5), 'ch-a and ch-b subscribed';
    $ab->close;
    ok wait_subscribed($rp, 'ch-a', 0, 3), 'the only client of ch-a left: ch-a unsubscribed';
    ok stays('ch-b', 1, 0.5), 'ch-b stays subscribed for the other client';
    redis_cmd($rp, PUBLISH => 'ch-b' => 'still here');
    my $ev = $b->next_event(5);
    is $ev && $ev->{data}, 'still here', 'the other client still receives ch-b';
    $b->close;
    ok wait_subscribed($rp, 'ch-b', 0, 3), 'last client of ch-b left: ch-b unsubscribed';
};

subtest 'clients that leave at once' => sub {
    # Disconnect right after the request, before the subscription may even
    # be confirmed by Redis.
    my @quick = map { sse_connect($port, '/sse?channels=churn') } 1 .. 20;
    $_->close for @quick;
    ok wait_subscribed($rp, 'churn', 0, 3), '20 clients gone right away: NUMSUB churn = 0';
    ok stays('churn', 0, 1), '... and it stays 0';

    # Clients that come and go while one stays.
    my $stay = open_stream('churn');
    ok wait_subscribed($rp, 'churn', 1, 5), 'one client stays';
    for my $round (1 .. 5) {
        my @batch = map { open_stream('churn') } 1 .. 10;
        $_->close for @batch;
    }
    ok stays('churn', 1, 1), 'after 50 clients came and went, the channel is still subscribed once';
    redis_cmd($rp, PUBLISH => churn => 'for the one that stayed');
    my $ev = $stay->next_event(5);
    is $ev && $ev->{data}, 'for the one that stayed', 'the remaining client still receives messages';
    $stay->close;
    ok wait_subscribed($rp, 'churn', 0, 3), 'and then NUMSUB churn = 0';
};

my @conns = $redis->clients;
is scalar(@conns), 1, 'after all that, the worker still has exactly one Redis connection'
    or diag join "\n", map { "$_->{addr} cmd=$_->{cmd} sub=$_->{sub}" } @conns;

is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
