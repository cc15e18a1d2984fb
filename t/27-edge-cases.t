# Edge cases found in review: two revocations of one user in one Redis read
# end the stream once (no crash); a history stream whose Redis lost its data
# (the sequence went back) gets sse-gap and then the new events, not
# silence; a history read Redis refuses (an ACL without the history keys)
# ends in sse-gap without a reconnect loop; nginx's cache manager does not
# open Redis connections or count as a worker; `/db` selects the database
# of the history keys.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

subtest 'two revocations of one user in one read' => sub {
    my $redis = start_redis();
    my $rp    = $redis->port;
    my $nginx = start_nginx(redis => $redis, workers => 1, server => q{
        location /sse { sse_channel $arg_ch; sse_user $arg_u; }
    });
    my @c = map { sse_connect($nginx->port, "/sse?ch=r$_&u=u42") } 1 .. 3;
    is scalar(grep { $_->status == 200 } @c), 3, 'three streams of u42';
    ok wait_subscribed($rp, 'r3', 1, 5), 'subscribed';
    my $conn = redis_connect($rp);
    # One write: the worker reads both in one batch.
    $conn->pipeline([PUBLISH => 'sse:control' => 'revoke u42'], [PUBLISH => 'sse:control' => 'revoke u7 u42']);
    is wait_clients(\@c, sub { $_[0]->is_eof }, 5), 3, 'each stream ends';
    my $c = sse_connect($nginx->port, '/sse?ch=after&u=u1');
    is $c->status, 200, 'the worker still serves';
    $nginx->stop;    # the harness fails the test on a crashed worker
    unlike $nginx->error_log, qr/exited on signal/, 'no worker crashed';
};

subtest 'Redis lost its data: sse-gap, then the new events' => sub {
    my $redis = start_redis();
    my $rp    = $redis->port;
    my $nginx = start_nginx(redis => $redis, workers => 1, server => q{
        location /h { sse_channel $arg_ch; sse_history on; }
    });
    load_sse_function($rp);
    my $c = sse_connect($nginx->port, '/h?ch=seq:1');
    is $c->status, 200, 'a history stream';
    ok wait_subscribed($rp, 'seq:1', 1, 5), 'subscribed';
    sse_publish($rp, 'seq:1', "old $_") for 1 .. 5;
    ok $c->wait_for(sub { $_[0]->pending_events >= 5 }, 5), 'five events, ids 1..5';
    $c->take_events;
    # Redis loses everything (as a restart without persistence would), and
    # the worker's connection drops: its catch-up finds the sequence behind.
    redis_cmd($rp, 'FLUSHALL');
    load_sse_function($rp);
    redis_cmd($rp, CLIENT => KILL => TYPE => 'pubsub');
    ok wait_until(sub { $c->pump(0.1); grep { $_->{event} eq 'sse-gap' } $c->all_events }, 10),
        'the stream is told of the gap';
    ok wait_subscribed($rp, 'seq:1', 1, 5), 'subscribed again';
    sse_publish($rp, 'seq:1', "new $_") for 1 .. 3;
    ok $c->wait_for(sub { grep { $_->{data} eq 'new 3' } $_[0]->all_events }, 5), 'the new events arrive';
    is join(',', map { $_->{data} } grep { $_->{event} eq 'seq:1' } $c->all_events), 'new 1,new 2,new 3',
        'all three, in order';
};

subtest 'a history read Redis refuses: sse-gap, no reconnect loop' => sub {
    my $redis = start_redis();
    my $rp    = $redis->port;
    # The nginx user may use every channel and the function, but no key.
    is redis_cmd($rp, ACL => SETUSER => 'sse', 'reset', 'on', '>pw', 'resetkeys', '&*', '+@all'), 'OK', 'ACL without keys';
    load_sse_function($rp);
    my $nginx = start_nginx(redis_url => "redis://sse:pw\@127.0.0.1:$rp", workers => 1, server => q{
        location /h { sse_channel $arg_ch; sse_history on; }
    });
    my $before = redis_info($rp)->{total_connections_received};
    my $c = sse_connect($nginx->port, '/h?ch=acl:1', headers => { 'Last-Event-ID' => '1' });
    is $c->status, 200, 'a resuming history stream';
    ok wait_until(sub { $c->pump(0.1); grep { $_->{event} eq 'sse-gap' } $c->all_events }, 5),
        'it gets sse-gap (its history could not be read)';
    ok wait_subscribed($rp, 'acl:1', 1, 5), 'and stays subscribed';
    redis_cmd($rp, PUBLISH => 'acl:1' => 'live');
    ok $c->wait_for(sub { grep { $_->{data} eq 'live' } $_[0]->all_events }, 5), 'live events arrive';
    sleep 2;
    my $after = redis_info($rp)->{total_connections_received};
    cmp_ok $after - $before, '<=', 3, 'no reconnect loop (' . ($after - $before) . ' new connections in 2 s)';
    like $nginx->error_log, qr/refused a history read/, 'the refusal is logged';
};

subtest 'the /db of sse_redis_url holds the history' => sub {
    my $redis = start_redis();
    my $rp    = $redis->port;
    my $nginx = start_nginx(redis_url => "redis://127.0.0.1:$rp/3", workers => 1, server => q{
        location /h { sse_channel $arg_ch; sse_history on; }
    });
    load_sse_function($rp);
    my $conn = redis_connect($rp);
    is $conn->cmd(SELECT => 3), 'OK', 'a publisher on db 3';
    my @ids = map { $conn->cmd(FCALL => sse_publish => 0, 'db:1', "e$_") } 1 .. 3;
    is $conn->cmd(EXISTS => 'sse:h:db:1'), 1, 'the history is in db 3';
    my $c = sse_connect($nginx->port, '/h?ch=db:1', headers => { 'Last-Event-ID' => $ids[0] });
    is $c->status, 200, 'a stream resuming after the first';
    ok $c->wait_for(sub { $_[0]->pending_events >= 2 }, 5), 'it gets the two later events';
    is join(',', map { $_->{data} } $c->all_events), 'e2,e3', 'from db 3, without a gap';
};

subtest "nginx's cache manager is not a worker" => sub {
    my $redis = start_redis();
    my $rp    = $redis->port;
    my $nginx = start_nginx(redis => $redis, workers => 1,
        http   => 'proxy_cache_path cache keys_zone=c:1m;',
        server => q{
            location /sse { sse_channel $arg_ch; }
            location = /metrics { sse_metrics; }
        });
    ok wait_until(sub { ($nginx->error_log =~ /connected to redis/) }, 5), 'the worker connected';
    sleep 0.5;
    my @connected = $nginx->error_log =~ /(sse: connected to redis at)/g;
    is scalar(@connected), 1, 'one "connected to redis" line: the cache manager opens no connection';
    my $body = http_request($nginx->port, 'GET', '/metrics')->{body};
    like $body, qr/^sse_workers 1$/m, 'sse_workers 1';
};

done_testing;
