# Revocation: PUBLISH sse:control "revoke <user> ..." ends exactly those
# users' streams, cleanly (complete chunked body, so EventSource reconnects),
# within a second, on every worker; other users' streams stay open and keep
# receiving. Grants are fixed while a stream is open; after a revocation the
# user reconnects at once, the auth service is asked again and its new grants
# apply. Bad control messages are ignored and logged.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use List::Util qw(max sum0);
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $PER_USER = 20;
my $WORKERS  = 2;

my $HAVE_AUTH_REQUEST = have_auth_request();
my $NO_AUTH_REQUEST = "$SSETest::NGINX_BIN is built without http_auth_request_module";
diag "$NO_AUTH_REQUEST: grants come from a map in the streaming location, grant changes are not tested"
    unless $HAVE_AUTH_REQUEST;

my %GRANTS = (
    alice => 'dashboards:7',
    bob   => 'dashboards:*',
    carol => 'dashboards:7, alerts:carol',
    dave  => 'dashboards:7',
);

my $redis = start_redis();
my $rp    = $redis->port;

# The auth service: its own nginx, so that its answers can change (reload)
# while the streaming nginx keeps running. It logs every check. The token
# "Bearer <user>-token" names the user (bearer_maps).
my $auth = $HAVE_AUTH_REQUEST ? start_auth_service(
    http   => bearer_maps(%GRANTS) . q{    log_format auth '$http_authorization $status';},
    server => '        access_log auth.log auth;') : undef;

sub auth_checks {
    my ($user) = @_;
    return scalar grep { /^Bearer \Q$user\E-token / } split /\n/, slurp($auth->prefix . '/auth.log');
}

my $stream_location = ($HAVE_AUTH_REQUEST ? auth_location($auth->port) : '') . qq{
        location = /stream {${\ auth_guard() }
            sse_channel \$arg_channels;
            sse_channel_patterns on;
        }};

# reuseport spreads the streams over both workers.
my $nginx = start_nginx(redis => $redis, workers => $WORKERS, listen => 'reuseport backlog=1024',
    http => ($HAVE_AUTH_REQUEST ? '' : bearer_maps(%GRANTS)), server => $stream_location);
my $port = $nginx->port;

sub open_streams {
    my ($user, $channels, $n) = @_;
    my @c = map { sse_connect($port, "/stream?channels=$channels", headers => { Authorization => "Bearer $user-token" }) } 1 .. $n;
    wait_clients(\@c, sub { length $_[0]->body_head >= 13 }, 15);
    return @c;
}

# Publishes $data on $channel and checks that every client in @$clients
# receives it as its next event.
sub all_receive {
    my ($what, $channel, $data, $clients) = @_;
    redis_cmd($rp, PUBLISH => $channel => $data);
    my $n = wait_events($clients, 1, 10);
    is $n, scalar(@$clients), "$what: all " . scalar(@$clients) . " streams receive the next event";
    my @wrong = grep { my ($e) = $_->events_until(1, 0); !$e || $e->{event} ne $channel || $e->{data} ne $data } @$clients;
    is scalar(@wrong), 0, "$what: it is \"$data\" on $channel";
}

sub revocation_lines {
    my ($mark) = @_;
    my $log = $nginx->error_log_since($mark);
    my @lines;
    push @lines, [$1, $2] while $log =~ /\] (\d+)#\d+: [^\n]*revocation: ending (\d+) stream/g;
    return @lines;
}

my %streams;
my $alice_channel = 'dashboards:7';
$streams{alice} = [open_streams(alice => 'dashboards:7', $PER_USER)];
$streams{bob}   = [open_streams(bob   => 'dashboards:*', $PER_USER)];
$streams{carol} = [open_streams(carol => 'dashboards:7,alerts:carol', $PER_USER)];
$streams{dave}  = [open_streams(dave  => 'dashboards:7', $PER_USER)];
my @everyone = map { @{ $streams{$_} } } qw(alice bob carol dave);

subtest 'setup: 80 streams over both workers' => sub {
    for my $user (qw(alice bob carol dave)) {
        is scalar(grep { $_->status(0) == 200 && !$_->{ended} } @{ $streams{$user} }), $PER_USER, "$PER_USER streams of $user open";
    }
    ok wait_subscribed($rp, 'dashboards:7', $WORKERS, 10), "both workers subscribed to dashboards:7";
    ok wait_until(sub { (grep { ($_->{psub} // 0) > 0 } $redis->clients) == $WORKERS }, 10),
        'both workers pattern-subscribed (bob)';
    is numsub($rp, 'sse:control')->{'sse:control'}, $WORKERS, 'both workers listen on sse:control';

    my %spread;
    for my $user (qw(alice bob carol dave)) {
        my @owner = $nginx->workers_of(@{ $streams{$user} });
        SKIP: {
            skip 'cannot tell which worker holds a connection (/proc not readable)', 1 if grep { !defined } @owner;
            my %n;
            $n{$_}++ for @owner;
            is scalar(keys %n), $WORKERS, "$user has streams on both workers (" . join('/', map { $n{$_} } sort keys %n) . ')';
        }
    }
    all_receive('before any control message', 'dashboards:7', 'hello', \@everyone);
};

subtest 'bad control messages are ignored and logged' => sub {
    my $mark = $nginx->error_log_mark;
    my @bad = (
        ['shutdown',              qr/unknown control command "shutdown"/],
        ['REVOKE alice',          qr/unknown control command "REVOKE"/],
        ['revoke',                qr/names no user/],
        ['revoke alice,bob',      qr/invalid user "alice,bob"/],
        ['revoke bob bad*user',   qr/invalid user "bad\*user"/],
        ['',                      qr/empty control message/],
    );
    for my $case (@bad) {
        is redis_cmd($rp, PUBLISH => 'sse:control' => $case->[0]), $WORKERS, "\"$case->[0]\" published to both workers";
    }
    # Valid, but naming nobody who is connected: exact byte match, no prefix or case folding.
    for my $nobody ('revoke ali', 'revoke Alice', 'revoke alice2', 'revoke bob:x') {
        redis_cmd($rp, PUBLISH => 'sse:control' => $nobody);
    }
    all_receive('after bad control messages', 'dashboards:7', 'still here', \@everyone);
    is scalar(grep { $_->{ended} } @everyone), 0, 'no stream ended';
    my $log = $nginx->error_log_since($mark);
    for my $case (@bad) {
        like $log, qr/\[warn\][^\n]*control message[^\n]*$case->[1]/, "\"$case->[0]\" is logged at warn";
    }
    is_deeply [revocation_lines($mark)], [], 'no revocation is logged';
};

SKIP: {
    skip $NO_AUTH_REQUEST, 1 unless $HAVE_AUTH_REQUEST;
    subtest 'grants are fixed while a stream is open' => sub {
        # The auth service now grants alice dashboards:8 instead of dashboards:7.
        $auth->write_conf(http => bearer_maps(%GRANTS, alice => 'dashboards:8')
            . q{    log_format auth '$http_authorization $status';});
        my @old = $auth->reload;
        ok defined $auth->wait_pids_gone(10, @old), 'auth service reloaded with new grants for alice';
        my $res = http_request($port, 'GET', '/stream?channels=dashboards:7',
            headers => { Authorization => 'Bearer alice-token' });
        is $res->{status}, 403, 'a new request of alice for dashboards:7 is refused now';
        all_receive("alice's open streams still have their grants", 'dashboards:7', 'fixed', \@everyone);
    };
}

subtest 'revoke alice: her streams end cleanly within 1 s on both workers, others stay' => sub {
    my @alice = @{ $streams{alice} };
    my @owner = $nginx->workers_of(@alice);
    my @others = map { @{ $streams{$_} } } qw(bob carol dave);
    my $mark = $nginx->error_log_mark;

    my $t0 = time;
    is redis_cmd($rp, PUBLISH => 'sse:control' => 'revoke alice'), $WORKERS, 'PUBLISH sse:control "revoke alice" reaches both workers';
    my $ended = wait_clients(\@alice, sub { $_[0]{ended} }, 5);
    is $ended, $PER_USER, "all $PER_USER streams of alice ended";
    my $slowest = max(map { ($_->{ended_at} // time) - $t0 } @alice);
    ok $slowest < 1, sprintf 'within 1 s of the PUBLISH (slowest after %.3f s)', $slowest;
    if (!grep { !defined } @owner) {
        my %per_worker;
        for my $i (0 .. $#alice) {
            my $t = ($alice[$i]{ended_at} // time) - $t0;
            $per_worker{ $owner[$i] } = $t if !defined $per_worker{ $owner[$i] } || $t > $per_worker{ $owner[$i] };
        }
        note join ', ', map { sprintf 'worker %d: last alice stream ended after %.3f s', $_, $per_worker{$_} } sort keys %per_worker;
        is scalar(grep { $_ < 1 } values %per_worker), $WORKERS, 'on each worker';
    }
    my @unclean = grep { ($_->{ended} // '') ne 'clean' } @alice;
    is scalar(@unclean), 0, 'every one with the last chunk (a complete body: EventSource reconnects)'
        or diag join "\n", map { 'ended: ' . ($_->{ended} // 'no') . ' (' . ($_->{end_reason} // '') . ')' } @unclean;
    is scalar(grep { length $_->{line} || length $_->{data} } @alice), 0, 'none in the middle of an event';
    is scalar(grep { $_->{framing_error} } @alice), 0, 'no broken chunked framing';

    is scalar(grep { $_->{ended} } @others), 0, "bob's, carol's and dave's streams are still open";
    all_receive('after the revocation, the others', 'dashboards:7', 'after revoke', \@others);
    is scalar(grep { $_->pending_events } @alice), 0, "alice's ended streams got nothing more";

    my @lines = revocation_lines($mark);
    is sum0(map { $_->[1] } @lines), $PER_USER, "the log counts $PER_USER revoked streams";
    my %pids = map { $_->[0] => 1 } @lines;
    is scalar(keys %pids), $WORKERS, 'logged by both workers' or diag $nginx->error_log_since($mark);
};

subtest 'the revoked user reconnects at once and receives events' => sub {
    my $before = $HAVE_AUTH_REQUEST ? auth_checks('alice') : 0;
    my $channel = 'dashboards:7';
    if ($HAVE_AUTH_REQUEST) {
        my @refused = map { sse_connect($port, '/stream?channels=dashboards:7', headers => { Authorization => 'Bearer alice-token' }) } 1 .. 5;
        is scalar(grep { $_->status(5) == 403 } @refused), 5, 'reconnecting to dashboards:7: 403, the new grants apply';
        $channel = 'dashboards:8';
    }
    my @again = open_streams(alice => $channel, $PER_USER);
    is scalar(grep { $_->status(0) == 200 && !$_->{ended} } @again), $PER_USER, "$PER_USER new streams of alice on $channel open";
    if ($HAVE_AUTH_REQUEST) {
        ok wait_until(sub { auth_checks('alice') - $before >= $PER_USER + 5 }, 5),
            'the auth service was asked again for every one of them';
    }
    ok wait_subscribed($rp, $channel, $WORKERS, 10), "$channel subscribed by both workers";
    all_receive('the new streams', $channel, 'welcome back', \@again);
    is wait_events($streams{bob}, 1, 5), $PER_USER, "bob's streams (dashboards:*) receive it too";
    $_->events_until(1, 0) for @{ $streams{bob} };
    $streams{alice} = \@again;
    $alice_channel = $channel;
};

subtest 'revoke carol dave: several users at once' => sub {
    my @gone = map { @{ $streams{$_} } } qw(carol dave);
    my @stay = map { @{ $streams{$_} } } qw(alice bob);
    my $mark = $nginx->error_log_mark;
    my $t0 = time;
    is redis_cmd($rp, PUBLISH => 'sse:control' => 'revoke carol dave'), $WORKERS, 'PUBLISH sse:control "revoke carol dave"';
    is wait_clients(\@gone, sub { $_[0]{ended} }, 5), 2 * $PER_USER, "all streams of carol and dave ended";
    my $slowest = max(map { ($_->{ended_at} // time) - $t0 } @gone);
    ok $slowest < 1, sprintf 'within 1 s (slowest after %.3f s)', $slowest;
    is scalar(grep { ($_->{ended} // '') ne 'clean' } @gone), 0, 'all cleanly';
    is scalar(grep { $_->{ended} } @stay), 0, "alice's new streams and bob's stay open";
    all_receive('the remaining streams', $alice_channel, 'only for alice and bob', \@stay);
    is sum0(map { $_->[1] } revocation_lines($mark)), 2 * $PER_USER, 'the log counts ' . 2 * $PER_USER . ' revoked streams';
    ok wait_subscribed($rp, 'alerts:carol', 0, 5), "carol's alerts channel is released";
};

$_->close for map { @$_ } values %streams;
is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
