# Live channel changes (sse_session / sse_subscribe) at scale and across a
# reload: 100 streams changed by 100 concurrent POSTs (half through the
# stream's nginx, where reuseport spreads them over its two workers, half
# through a second nginx on the same Redis) are all answered 200, and every
# stream gets its sse-channels event and then its new channel's events; then
# `nginx -s reload` of both nginx while changes keep coming: every POST is
# answered (200, 404, 503 or 504; none hangs), nothing is logged at [alert],
# the old workers exit, and every client reconnects like EventSource, gets a
# new session token, and can be changed again. Also: rounds of concurrent
# add/remove toggles leave Redis subscriptions matching the streams, and
# clients that abandon their POST (waiting or not) crash nothing.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $N = 100;

my $HAVE_AUTH_REQUEST = have_auth_request();
diag "$SSETest::NGINX_BIN is built without http_auth_request_module: grants come from maps in the streaming nginx"
    unless $HAVE_AUTH_REQUEST;

my $redis = start_redis();
my $rp    = $redis->port;
load_sse_function($redis);

my $maps = bearer_maps(alice => 'sc:**, rl:**, tg:**, gu:**');
my $auth = $HAVE_AUTH_REQUEST ? start_auth_service(http => $maps) : undef;

my $guard = auth_guard();
my %conf = (redis => $redis, workers => 2, listen => 'reuseport backlog=1024',
    http => $HAVE_AUTH_REQUEST ? '' : $maps,
    server => ($HAVE_AUTH_REQUEST ? auth_location($auth->port) : '') . qq{
        location = /events {$guard
            sse_channel \$arg_channels;
            sse_history on;
            sse_session on;
            sse_retry 1s;
            sse_heartbeat 5s;
        }
        location = /events/subscribe {$guard
            sse_subscribe;
            sse_subscribe_timeout 5s;
        }
        location = /events/subscribe-1s {$guard
            sse_subscribe;
            sse_subscribe_timeout 1s;
        }
});
my $A = start_nginx(%conf);
my $B = start_nginx(%conf);

my %HEADERS = (Authorization => 'Bearer alice-token', 'Content-Type' => 'application/x-www-form-urlencoded',
    Accept => undef);

# Sends a change without waiting for the answer: an SSETest::Client whose
# status, body_head and end tell the answer.
sub post_change {
    my ($nginx, @pairs) = @_;
    my $path = @pairs >= 2 && $pairs[-2] eq 'path' ? (splice @pairs, -2)[1] : '/events/subscribe';
    return sse_connect($nginx->port, $path, method => 'POST', headers => \%HEADERS,
        body => form_urlencode(@pairs));
}

sub set_of { my ($text) = @_; $text //= ''; chomp $text; return join ',', sort grep { length } split /,/, $text }

subtest "$N concurrent changes on $N streams" => sub {
    my @s = map { sse_connect($A->port, '/events?channels=sc:base', headers => { Authorization => 'Bearer alice-token' }) } 1 .. $N;
    is wait_events(\@s, 1, 15), $N, "$N streams open on nginx A, each with its first event";
    my @tokens = map { my $e = $_->next_event(0); $e && $e->{event} eq 'sse-session' ? $e->{data} : undef } @s;
    is scalar(grep { defined } @tokens), $N, 'every first event is sse-session';
    my %workers;
    $workers{$_ // '?'}++ for $A->workers_of(@s);
    is scalar(grep { $_ ne '?' } keys %workers), 2, 'the streams are on both workers ('
        . join('/', map { $workers{$_} } sort keys %workers) . ')';
    ok wait_subscribed($rp, 'sc:base', 2, 10), 'sc:base subscribed by both workers';

    # Stream i adds sc:n:i; the even ones also remove sc:base. Odd i through
    # nginx A (either worker), even i through nginx B.
    my @want = map { $_ % 2 ? "sc:base,sc:n:$_" : "sc:n:$_" } 0 .. $N - 1;
    my $t0 = time;
    my @posts = map {
        post_change($_ % 2 ? $A : $B, [session => $tokens[$_]], [add => "sc:n:$_"], ($_ % 2 ? () : [remove => 'sc:base']))
    } 0 .. $N - 1;
    my $answered = wait_clients(\@posts, sub { $_[0]{ended} }, 15);
    my $took = time - $t0;
    is $answered, $N, sprintf 'every POST was answered (all within %.2f s)', $took;
    my %status;
    $status{ $_->{status} // 'none' }++ for @posts;
    is_deeply \%status, { 200 => $N }, "all $N answered 200";
    my @wrong = grep { set_of($posts[$_]->body_head) ne $want[$_] } 0 .. $N - 1;
    is scalar(@wrong), 0, "each answer lists its stream's channels now"
        or diag join "\n", map { "stream $_: '" . $posts[$_]->body_head . "', want $want[$_]" } @wrong[0 .. ($#wrong < 4 ? $#wrong : 4)];

    is wait_events(\@s, 1, 10), $N, 'every stream got an event';
    @wrong = grep { my $e = $s[$_]->next_event(0); !$e || $e->{event} ne 'sse-channels' || set_of($e->{data}) ne $want[$_] } 0 .. $N - 1;
    is scalar(@wrong), 0, 'each: sse-channels with its channels now';
    my @chans = map { "sc:n:$_" } 0 .. $N - 1;
    ok wait_until(sub { !grep { $_ != 1 } values %{ numsub($rp, @chans) } }, 10),
        "each new channel is subscribed by one worker (PUBSUB NUMSUB sc:n:0 .. sc:n:" . ($N - 1) . ' = 1)';
    # One event on each new channel, then one on sc:base.
    my $conn = redis_connect($rp);
    $conn->pipeline((map { [FCALL => sse_publish => 0, "sc:n:$_", "for $_"] } 0 .. $N - 1), [FCALL => sse_publish => 0, 'sc:base', 'base']);
    $conn->close;
    my %expect = map { (0 + $s[$_] => $_ % 2 ? 2 : 1) } 0 .. $N - 1;
    wait_clients(\@s, sub { $_[0]->pending_events >= $expect{ 0 + $_[0] } }, 10);
    wait_clients(\@s, sub { 0 }, 0.5);    # anything more would arrive now
    @wrong = ();
    for my $i (0 .. $N - 1) {
        my @got = map { "$_->{event} $_->{data}" } $s[$i]->events_until(10, 0);
        my @exp = ("sc:n:$i for $i", $i % 2 ? ('sc:base base') : ());
        push @wrong, "stream $i: [@got], want [@exp]" unless "@got" eq "@exp";
    }
    is scalar(@wrong), 0, "each stream gets its new channel's event (and sc:base's only if it kept it), nothing else"
        or diag join "\n", @wrong[0 .. ($#wrong < 4 ? $#wrong : 4)];
    $_->close for @s;
};

subtest 'churn: 21 rounds of add/remove toggles on 20 streams end with Redis subscriptions that match' => sub {
    my $M = 20;
    my @s = map { sse_connect($A->port, '/events?channels=tg:base', headers => { Authorization => 'Bearer alice-token' }) } 1 .. $M;
    is wait_events(\@s, 1, 10), $M, "$M streams with their token";
    my @tokens = map { my $e = $_->next_event(0); $e ? $e->{data} : '' } @s;
    my %per_worker;
    $per_worker{$_ // '?'}++ for $A->workers_of(@s);
    my $workers = grep { $_ ne '?' } keys %per_worker;
    my (%status, $rounds);
    for my $round (1 .. 21) {
        my $op = $round % 2 ? 'add' : 'remove';
        my @p = map { post_change($round % 2 ? $A : $B, [session => $tokens[$_]], [$op => "tg:$_,tg:shared"]) } 0 .. $M - 1;
        wait_clients(\@p, sub { $_[0]{ended} }, 10);
        $status{ $_->{status} // 'none' }++ for @p;
        $rounds++;
    }
    is_deeply \%status, { 200 => 21 * $M }, "all " . 21 * $M . ' changes answered 200';
    my $want = { 'tg:shared' => $workers, map { ("tg:$_" => 1) } 0 .. $M - 1 };
    ok wait_until(sub { my $n = numsub($rp, keys %$want); !grep { $n->{$_} != $want->{$_} } keys %$want }, 5),
        "after an odd number of toggles: each tg:i subscribed once, tg:shared once per worker ($workers)"
        or diag explain numsub($rp, keys %$want);
    wait_clients(\@s, sub { 0 }, 0.3);
    my @last = map { my ($e) = reverse grep { $_->{event} eq 'sse-channels' } $_->all_events; $e ? set_of($e->{data}) : '' } @s;
    is scalar(grep { $last[$_] ne join ',', sort "tg:$_", 'tg:base', 'tg:shared' } 0 .. $M - 1), 0,
        "each stream's last sse-channels lists tg:base, tg:shared and its tg:i";
    $_->events_until($_->pending_events, 0) for @s;
    my $conn = redis_connect($rp);
    $conn->pipeline((map { [FCALL => sse_publish => 0, "tg:$_", "mine $_"] } 0 .. $M - 1), [FCALL => sse_publish => 0, 'tg:shared', 'all']);
    $conn->close;
    is wait_events(\@s, 2, 5), $M, 'each stream gets two events';
    wait_clients(\@s, sub { 0 }, 0.3);
    my @wrong = grep { my @e = map { "$_->{event} $_->{data}" } $s[$_]->events_until(9, 0); "@e" ne "tg:$_ mine $_ tg:shared all" } 0 .. $M - 1;
    is scalar(@wrong), 0, 'its own channel\'s event and the shared one, nothing else';
    my @p = map { post_change($B, [session => $tokens[$_]], [remove => "tg:$_,tg:shared"]) } 0 .. $M - 1;
    is wait_clients(\@p, sub { ($_[0]{status} // 0) == 200 && $_[0]{ended} }, 10), $M, 'one more toggle (remove): 200';
    ok wait_until(sub { my $n = numsub($rp, keys %$want); !grep { $_ } values %$n }, 5),
        'then no tg:i and no tg:shared subscription is left in Redis'
        or diag explain numsub($rp, keys %$want);
    $_->close for @s;
};

subtest 'clients that give up on their change: workers carry on' => sub {
    my @workers = ($A->worker_pids, $B->worker_pids);
    my $s = sse_connect($A->port, '/events?channels=gu:base', headers => { Authorization => 'Bearer alice-token' });
    my $e = $s->next_event(5);
    my $token = $e && $e->{event} eq 'sse-session' ? $e->{data} : '';
    ok length $token, 'a stream with its token';
    # Changes waiting for a node that never answers, and changes for the
    # stream through either nginx, each abandoned right after it is sent.
    my $silent_node = sprintf '%08x%08x', int(rand(2**32)), int(rand(2**32));
    my $silent = redis_connect($rp);
    $silent->cmd(SUBSCRIBE => "sse:node:$silent_node");
    $_->close for map { post_change($B, [session => "$silent_node.$_." . ('ef' x 16)], [add => 'gu:x'], path => '/events/subscribe-1s') } 1 .. 20;
    $_->close for map { post_change($_ % 2 ? $A : $B, [session => $token], [$_ % 4 < 2 ? 'add' : 'remove' => 'gu:y']) } 1 .. 100;
    sleep 0.3;
    my $p = post_change($B, [session => $token], [add => 'gu:z']);
    is $p->status, 200, 'a change after them: 200';
    like set_of($p->body_head), qr/\Agu:base,(?:gu:y,)?gu:z\z/, '... listing the channels now';
    ok !$s->{ended}, 'the stream is open';
    sleep 1.5;    # past sse_subscribe_timeout (1s) of the abandoned ones
    is_deeply [$A->worker_pids, $B->worker_pids], \@workers, 'the same workers run (none crashed)';
    $s->close;
    $silent->close;
};

subtest 'reload of both nginx while changes are in flight' => sub {
    my @es = map { event_source($A->port, "/events?channels=rl:base", headers => { Authorization => 'Bearer alice-token' }) } 0 .. $N - 1;
    my $token = sub {
        my ($es) = @_;
        my $conn = $#{ $es->{connections} };
        my ($e) = grep { $_->{event} eq 'sse-session' && $_->{conn} == $conn } $es->all_events;
        return $e ? $e->{data} : undef;
    };
    is wait_sources(\@es, sub { defined $token->($_[0]) }, 15), $N, "$N EventSource clients with their token";
    ok wait_subscribed($rp, 'rl:base', 2, 10), 'rl:base subscribed by both workers';

    # For 3 s, 5 changes every 50 ms (toggling rl:x:i on client i), through A
    # and B in turn; A is reloaded after 1 s, B after 2 s.
    my (@posts, %on);
    my ($mark_a, $mark_b) = ($A->error_log_mark, $B->error_log_mark);
    my ($t0, $k) = (time, 0);
    my (@old_a, @old_b, $t_reload_a, $t_reload_b);
    # Changes that are certainly waiting in nginx B when it reloads: for a
    # node channel the test listens to itself (PUBLISH finds a subscriber,
    # nobody answers).
    my $silent_node = sprintf '%08x%08x', int(rand(2**32)), int(rand(2**32));
    my $silent = redis_connect($rp);
    $silent->cmd(SUBSCRIBE => "sse:node:$silent_node");
    my (@held, $held_seen);
    while (time - $t0 < 3) {
        for (1 .. 5) {
            my $i = $k % $N;
            my $t = $token->($es[$i]) // next;
            my $via = $k++ % 2 ? $A : $B;
            my $op = $on{$i} ? 'remove' : 'add';
            my $p = post_change($via, [session => $t], [$op => "rl:x:$i"]);
            $p->{sent} = time;
            $p->{via} = $via == $A ? 'A' : 'B';
            push @posts, $p;
            $on{$i} = !$on{$i};
        }
        if (!$t_reload_a && time - $t0 >= 1) { $t_reload_a = time; @old_a = $A->reload }
        if (!$t_reload_b && time - $t0 >= 2) {
            @held = map { post_change($B, [session => "$silent_node.$_." . ('cd' x 16)], [add => 'rl:held']) } 1 .. 5;
            $held_seen = grep { my $m = eval { $silent->read_reply }; ref $m eq 'ARRAY' && $m->[0] eq 'message' } 1 .. 5;
            $t_reload_b = time;
            @old_b = $B->reload;
        }
        $_->pump for grep { !$_->{ended} } @posts, @held;
        wait_sources(\@es, sub { 0 }, 0.05);
    }
    is $held_seen, 5, '5 changes were waiting in nginx B for an answer when it reloaded';
    is wait_clients(\@held, sub { $_[0]{ended} }, 1), 5, '... each was answered';
    is_deeply [map { $_->{status} } @held], [(503) x 5], '... 503 (shutting down)'
        or diag explain [map { $_->body_head } @held];
    my @late = grep { ($_->{ended_at} // time) - $t_reload_b > 1 } @held;
    is scalar(@late), 0, '... within 1 s of the reload (sse_subscribe_timeout is 5 s)';
    $silent->close;
    my $answered = wait_clients(\@posts, sub { $_[0]{ended} }, 8);
    is $answered, scalar(@posts), scalar(@posts) . ' POSTs sent, every one answered (none hangs)';
    my %status;
    $status{ $_->{status} // 'none' }++ for @posts;
    note 'statuses: ' . join ', ', map { "$_: $status{$_}" } sort keys %status;
    is_deeply [grep { !/^(?:200|404|503|504)$/ } keys %status], [], 'each with 200, 404, 503 or 504';
    is scalar(grep { ($_->{ended} // '') ne 'clean' } @posts), 0, 'each a complete response';
    ok +($status{200} // 0) > 0, 'changes were applied';
    my @during = grep { $_->{sent} >= $t_reload_a && $_->{sent} < $t_reload_a + 1 } @posts;
    ok scalar(@during), scalar(@during) . ' POSTs were sent in the second after the reload of A';
    ok defined $A->wait_pids_gone(10, @old_a), "nginx A's old workers exited";
    ok defined $B->wait_pids_gone(10, @old_b), "nginx B's old workers exited (no POST held them)";

    # Every client reconnected to A's new workers and has a new token.
    my $ok = wait_sources(\@es, sub {
        my ($es) = @_;
        $es->reconnections >= 1 && ($es->{connections}[-1]{status} // 0) == 200 && defined $token->($es);
    }, 10);
    is $ok, $N, 'every client reconnected (EventSource) and got a new sse-session token';
    my @first = map { $_->{connections}[0] } @es;
    is scalar(grep { ($_->{ended} // '') eq 'clean' } @first), $N, 'the first streams ended cleanly (last chunk)';

    # And can be changed again.
    my $t_final = time;
    my @final = map { post_change($_ % 2 ? $A : $B, [session => $token->($es[$_])], [add => "rl:final:$_"]) } 0 .. $N - 1;
    is wait_clients(\@final, sub { $_[0]{ended} }, 10), $N, 'a change for each new stream: all answered';
    my %fs;
    $fs{ $_->{status} // 'none' }++ for @final;
    is_deeply \%fs, { 200 => $N }, 'all 200' or diag explain [map { $_->body_head } grep { ($_->{status} // 0) != 200 } @final];
    my $got = wait_sources(\@es, sub {
        grep { $_->{event} eq 'sse-channels' && $_->{time} >= $t_final } $_[0]->all_events;
    }, 10);
    is $got, $N, 'each stream got its sse-channels event';
    ok wait_until(sub { !grep { $_ != 1 } values %{ numsub($rp, map { "rl:final:$_" } 0 .. $N - 1) } }, 10),
        'each new channel is subscribed';
    my $conn = redis_connect($rp);
    $conn->pipeline(map { [FCALL => sse_publish => 0, "rl:final:$_", "final $_"] } 0 .. $N - 1);
    $conn->close;
    my $i = 0;
    my %idx = map { (0 + $_ => $i++) } @es;
    $got = wait_sources(\@es, sub {
        my $n = $idx{ 0 + $_[0] };
        grep { $_->{event} eq "rl:final:$n" && $_->{data} eq "final $n" } $_[0]->all_events;
    }, 10);
    is $got, $N, "each stream then got its new channel's event";

    for my $n ([$A, 'A', $mark_a], [$B, 'B', $mark_b]) {
        my @alerts = grep { /\[(?:alert|emerg)\]/ } split /\n/, $n->[0]->error_log_since($n->[2]);
        is_deeply \@alerts, [], "no [alert] or [emerg] in nginx $n->[1]'s error.log during the reload";
    }
    $_->close for @es;
};

done_testing;
