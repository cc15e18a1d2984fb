# User ids follow the channel-name grammar (segments separated by ':', none
# empty): `sse_user` values that break it are refused with 403, `org:u42` is
# a valid user. An audience envelope naming an invalid user is malformed as
# a whole and fails closed: delivered to nobody, not even the valid users it
# names, and logged; the same holds for an audience stored in the history
# (FCALL sse_publish ... to=...) when it is replayed.
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
        location /u  { sse_channel $arg_ch; sse_user $arg_u; }
        location /uh { sse_channel $arg_ch; sse_user $arg_u; sse_history on; }
});
my $port = $nginx->port;

subtest 'sse_user values' => sub {
    for my $user ('u42:', ':u', 'a::b', ':', 'a:b:') {
        my $res = http_request($port, 'GET', "/u?ch=env:0&u=$user");
        is $res->{status}, 403, "user \"$user\": 403";
    }
    my $c = sse_connect($port, '/u?ch=env:0&u=org:u42');
    is $c->status, 200, 'user "org:u42": 200';
    $c->close;
};

subtest 'audience envelopes' => sub {
    my %c = map { $_ => sse_connect($port, '/u?ch=env:1' . (length $_ ? "&u=$_" : '')) } 'u1', 'u2', 'org:u42', '';
    is $c{$_}->status, 200, 'stream of ' . (length $_ ? "user $_" : 'an anonymous user') . ' opens' for sort keys %c;
    ok wait_subscribed($rp, 'env:1', 1, 5), 'env:1 subscribed';
    my $mark = $nginx->error_log_mark;
    my $conn = redis_connect($rp);
    $conn->pipeline(
        [ PUBLISH => 'env:1' => "\x1esse1 to=u1,a::b\nX" ],
        [ PUBLISH => 'env:1' => "\x1esse1 to=u1,u2\nY" ],
        [ PUBLISH => 'env:1' => "\x1esse1 to=u2,u42:\nZ" ],
        [ PUBLISH => 'env:1' => "\x1esse1 to=org:u42\nO" ],
        [ PUBLISH => 'env:1' => 'end' ],
    );
    $conn->close;
    my %want = (u1 => 'Y end', u2 => 'Y end', 'org:u42' => 'O end', '' => 'end');
    for my $user (sort keys %c) {
        $c{$user}->wait_for(sub { grep { $_->{data} eq 'end' } $_[0]->all_events }, 5);
        $c{$user}->drain(0.2);
        is join(' ', map { $_->{data} } $c{$user}->all_events), $want{$user},
            (length $user ? "user $user" : 'anonymous') . " gets: $want{$user}";
    }
    my @log = grep { /sse: / } split /\n/, $nginx->error_log_since($mark);
    ok scalar(grep { /a::b/ } @log), 'the envelope naming "a::b" is logged' or diag join "\n", @log;
    ok scalar(grep { /u42:/ && !/org:u42/ } @log), 'the envelope naming "u42:" is logged' or diag join "\n", @log;
    $_->close for values %c;
};

subtest 'audiences in the history (sse_publish to=...), live and replayed' => sub {
    ok wait_until(sub {
        my $list = redis_cmd($rp, FUNCTION => 'LIST', LIBRARYNAME => 'nginx_sse');
        ref $list eq 'ARRAY' && @$list;
    }, 10) || load_sse_function($rp), 'the sse_publish function is loaded';
    my $c = sse_connect($port, '/uh?ch=hist:1&u=u1');
    is $c->status, 200, 'user u1 on hist:1 (history on)';
    ok wait_subscribed($rp, 'hist:1', 1, 5), 'subscribed';
    my $since = redis_cmd($rp, GET => 'sse:seq') // 0;
    my $bad = sse_publish($rp, 'hist:1', 'X', 'to=u1,a::b');
    like "$bad", qr/bad option "to=u1,a::b"/, 'FCALL with to=u1,a::b is refused by sse_publish';
    # An entry another writer (an older sse_publish) stored with that list
    # must still be read fail-closed: written here as the function would.
    my $id   = redis_cmd($rp, INCR => 'sse:seq');
    my $prev = redis_cmd($rp, HGET => 'sse:last', 'hist:1') // 0;
    redis_cmd($rp, XADD => 'sse:h:hist:1', "$id-0", d => 'X', p => $prev, t => 'u1,a::b');
    redis_cmd($rp, HSET => 'sse:last', 'hist:1', $id);
    my $good = sse_publish($rp, 'hist:1', 'Y', 'to=u1,u2');
    like $good, qr/^\d+$/, 'FCALL with to=u1,u2: published';
    redis_cmd($rp, PUBLISH => 'hist:1' => 'end');
    $c->wait_for(sub { grep { $_->{data} eq 'end' } $_[0]->all_events }, 5);
    is join(' ', map { $_->{data} } $c->all_events), 'Y end', 'live: u1 gets Y, not X';
    $c->close;
    ok wait_subscribed($rp, 'hist:1', 0, 5), 'u1 left';

    $c = sse_connect($port, '/uh?ch=hist:1&u=u1', headers => { 'Last-Event-ID' => $since });
    is $c->status, 200, "u1 comes back with Last-Event-ID $since";
    ok wait_subscribed($rp, 'hist:1', 1, 5), 'subscribed';
    my $live = sse_publish($rp, 'hist:1', 'live', 'to=u1');
    $c->wait_for(sub { grep { $_->{data} eq 'live' } $_[0]->all_events }, 5);
    $c->drain(0.2);
    is join(' ', map { $_->{data} } $c->all_events), 'Y live', 'replay: u1 gets Y (not X), then the live one';
    $c->close;
};

done_testing;
