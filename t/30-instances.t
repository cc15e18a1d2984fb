# Several nginx instances on one Redis behave as one gateway: three nginx
# (two workers each, sse_history on, sse_session on, the same auth_request
# setup) share one redis-server.
#   - A client whose every reconnection lands on another instance (A, B, C,
#     A, ...) while a service publishes a steady numbered sequence with FCALL
#     sse_publish on three channels receives every published event exactly
#     once, in id order: when it disconnects cleanly between reads, and when
#     its connection breaks abruptly (RST) in the middle of an event.
#   - PUBLISH sse:control "revoke u1" ends every stream of u1 on every worker
#     of every instance, cleanly, within a second; u2's streams go on
#     receiving.
#   - A channel change for a stream held by instance A, POSTed to each worker
#     of instances B and C, is answered 200 and applied: the stream gets
#     sse-channels, then the added channel's events (with its history after
#     last_event_id), and no more events of the removed one; once the stream
#     has ended, B and C answer 404 for its token.
#
# This file needs nothing of the harness beyond sse_connect, http_request and
# the process helpers; the two small helpers below (which worker holds a
# connection, a POST on a connection held by a chosen worker) are its own.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Select;
use IO::Socket::INET;
use List::Util qw(max sum0);
use Socket qw(SOL_SOCKET SO_LINGER);
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $WORKERS = 2;

# auth_request is not in every nginx build (ngx's vendored nginx lacks it):
# there the grants and the user come from maps in the streaming nginx.
my $HAVE_AUTH_REQUEST = have_auth_request();
diag "$SSETest::NGINX_BIN is built without http_auth_request_module: grants come from maps in the streaming nginx"
    unless $HAVE_AUTH_REQUEST;

# "Authorization: Bearer <user>-token" names the user.
my $maps = bearer_maps(u1 => 'in:**', u2 => 'in:**');

my $redis = start_redis();
my $rp    = $redis->port;
load_sse_function($redis);

# The auth service: its own nginx, asked by the three streaming nginx.
my $auth = $HAVE_AUTH_REQUEST ? start_auth_service(http => $maps) : undef;

my $guard = auth_guard();

my %conf = (redis => $redis, workers => $WORKERS, listen => 'reuseport backlog=1024',
    http => $HAVE_AUTH_REQUEST ? '' : $maps,
    server => ($HAVE_AUTH_REQUEST ? auth_location($auth->port) : '') . qq{
        location = /events {$guard
            sse_channel \$arg_channels;
            sse_history on;
            sse_session on;
            sse_heartbeat 5s;
        }
        location = /events/subscribe {$guard
            sse_subscribe;
            sse_subscribe_timeout 3s;
        }
});
my %NGINX = (A => start_nginx(%conf), B => start_nginx(%conf), C => start_nginx(%conf));
my @NAMES = qw(A B C);

sub bearer { return { Authorization => "Bearer $_[0]-token" } }

# --- helpers -------------------------------------------------------------------

sub form { return join '&', map { my ($k, $v) = @$_; $v =~ s/([^A-Za-z0-9*\-._])/sprintf '%%%02X', ord $1/ge; "$k=$v" } @_ }

# POSTs a channel change (form fields @pairs) as $user to $nginx; with
# $worker, on a connection that this worker of $nginx accepted (connections
# are opened until one lands there; reuseport spreads them). Returns
# http_request's answer plus {worker} (the pid that took it, undef if it
# cannot be told).
sub change {
    my ($nginx, $worker, $user, @pairs) = @_;
    my $body = form(@pairs);
    my %h = (Host => 'localhost', Connection => 'close', %{ bearer($user) },
        'Content-Type' => 'application/x-www-form-urlencoded', 'Content-Length' => length $body);
    my $req = "POST /events/subscribe HTTP/1.1\r\n" . join('', map { "$_: $h{$_}\r\n" } sort keys %h) . "\r\n$body";
    for (1 .. 64) {
        my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $nginx->port, Proto => 'tcp', Timeout => 5)
            or die "cannot connect to nginx on port ${\ $nginx->port }: $!";
        binmode $sock;
        my $w = $nginx->worker_of($sock);
        next if defined $worker && defined $w && $w != $worker;
        syswrite $sock, $req;
        my ($raw, $res) = ('');
        my $sel = IO::Select->new($sock);
        my $deadline = time + 10;
        while (time < $deadline) {
            last unless $sel->can_read($deadline - time);
            last unless sysread $sock, $raw, 65536, length $raw;
            $res = SSETest::_parse_http_response($raw);
            last if $res && $res->{complete};
        }
        $res = SSETest::_parse_http_response($raw, 1) unless $res && $res->{complete};
        $res ||= { status => 0, body => '' };
        $res->{worker} = $w;
        return $res;
    }
    die "no connection to worker $worker of nginx on port ${\ $nginx->port } after 64 attempts\n";
}

# The channels of a 200 answer or of an sse-channels event, sorted.
sub set_of { my ($text) = @_; $text //= ''; chomp $text; return join ',', sort grep { length } split /,/, $text }

# An event as one string: "channel|data|id".
sub ev { my ($e) = @_; return join '|', $e->{event}, $e->{data}, $e->{own_id} // '-' }

sub first_few { my ($n, @l) = @_; return join ' ', @l[0 .. ($#l < $n - 1 ? $#l : $n - 1)] }

# --- setup ---------------------------------------------------------------------

subtest 'setup: three nginx with two workers each on one Redis' => sub {
    for my $name (@NAMES) {
        is scalar($NGINX{$name}->worker_pids), $WORKERS, "nginx $name (port ${\ $NGINX{$name}->port }) runs $WORKERS workers";
    }
    ok wait_until(sub { (numsub($rp, 'sse:control')->{'sse:control'} // 0) == 3 * $WORKERS }, 10),
        'all ' . 3 * $WORKERS . ' workers listen on sse:control';
    ok wait_until(sub { @{ redis_cmd($rp, PUBSUB => CHANNELS => 'sse:node:*') } == 3 * $WORKERS }, 10),
        'each worker has its own sse:node:<id> channel (' . 3 * $WORKERS . ' in all)';
};

# --- resume across instances -----------------------------------------------------

my $PUBLISH_FOR = 4;      # seconds of publishing
my $RATE        = 120;    # events per second, the three channels together
my $READ_FOR    = 0.35;   # seconds the client reads from one instance
my $AWAY        = 0.15;   # seconds between disconnecting and reconnecting

# One client reading $chans from A, then B, C, A, ... while the publisher
# runs, reconnecting each time with Last-Event-ID = the id of the last event
# it received (as EventSource does). With $abrupt, each connection ends by a
# reset in the middle of what the server sent: the client stops reading for a
# moment, takes a few bytes of what arrived (usually cutting an event), and
# resets the connection (SO_LINGER 0), dropping the rest unread. Returns
# the connections ({ instance, worker, sent, echo, status, opened, closed,
# events, partial }), the events received in arrival order, the function that
# moves a connection's new events over, and the last connection (open).
# $publisher_done->('start') starts the publisher once the first stream is
# subscribed; $publisher_done->() then says whether it is time to stop.
sub hopping_client {
    my ($chans, $abrupt, $publisher_done) = @_;
    my (@conns, @got, $last);
    my $hop = 0;
    my $open = sub {
        my $name = $NAMES[ $hop++ % @NAMES ];
        my $nginx = $NGINX{$name};
        my %h = %{ bearer('u1') };
        $h{'Last-Event-ID'} = $last if defined $last;
        my $c = sse_connect($nginx->port, '/events?channels=' . join(',', @$chans), headers => \%h);
        my $info = { instance => $name, sent => $last, opened => time, c => $c, events => 0 };
        $info->{status} = $c->status(5);
        $info->{echo}   = $c->header('Last-Event-ID');
        ($info->{worker}) = $nginx->workers_of($c);
        push @conns, $info;
        return $info;
    };
    my $take = sub {
        my ($info) = @_;
        for my $e ($info->{c}->take_events) {
            next if $e->{event} =~ /^sse-(?:session|channels)$/;
            push @got, $e;
            $info->{events}++;
            $last = $e->{own_id} if defined $e->{own_id};
        }
    };
    my $first = $open->();
    $first->{c}->next_event(5);    # its sse-session event: the stream is set up
    ok wait_subscribed($rp, $_, 1, 5), "$_ subscribed (by one worker of one instance)" for @$chans;
    $publisher_done->('start');
    my $info = $first;
    while (!$publisher_done->()) {
        $info->{c}->drain($READ_FOR);
        $take->($info);
        if ($abrupt) {
            sleep 0.05;    # events pile up unread
            my $n = sysread $info->{c}{sock}, my $buf, 1 + int rand 120;
            $info->{c}->_feed_raw($buf) if $n;
            $take->($info);
            my $c = $info->{c};
            $info->{partial} = (length $c->{line} || length $c->{data} || length $c->{type} || defined $c->{own_id}) ? 1 : 0;
            setsockopt($c->{sock}, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) if $c->{sock};
        }
        $info->{c}->close;
        $info->{closed} = time;
        sleep $AWAY;
        $info = $open->();
    }
    return (\@conns, \@got, $take, $info);
}

for my $variant (['disconnecting cleanly', 0, 'hop'], ['its connection reset mid-event', 1, 'cut']) {
    my ($what, $abrupt, $tag) = @$variant;
    subtest "a client reconnecting to another instance each time ($what) gets every event once, in order" => sub {
        my @chans = map { "in:$tag:$_" } qw(a b c);
        my ($pub, $started);
        my $done = sub {
            if (@_ && $_[0] eq 'start') {
                $pub = start_publisher(redis => $rp, channels => \@chans, rate => $RATE);
                $started = time;
                return;
            }
            return time - $started >= $PUBLISH_FOR;
        };
        my ($conns, $got, $take, $final) = hopping_client(\@chans, $abrupt, $done);
        my $res = $pub->stop;
        my @accepted = @{ $res->{accepted} };
        is $res->{failures} + @{ $res->{unknown} }, 0, 'Redis took every message';
        ok @accepted >= 300, scalar(@accepted) . ' events published with FCALL sse_publish on ' . join(', ', @chans);
        my @want = map { "$_->[0]|$_->[0] #$_->[1]|$_->[2]" } sort { $a->[2] <=> $b->[2] } @accepted;
        my $want_last = $accepted[-1][2];

        # The last connection reads until the last published event.
        $final->{c}->wait_for(sub {
            $take->($final);
            @$got && ($got->[-1]{own_id} // 0) >= $want_last;
        }, 10);
        $final->{c}->drain(0.3);    # anything more would arrive now
        $take->($final);
        $final->{c}->close;

        my @c = @$conns;
        note join "\n", map {
            sprintf '%2d: nginx %s worker %s, sent %s, echoed %s, %d events%s', $_, $c[$_]{instance},
                $c[$_]{worker} // '?', $c[$_]{sent} // 'none', $c[$_]{echo} // 'none', $c[$_]{events},
                $c[$_]{partial} ? ', cut mid-event' : '';
        } 0 .. $#c;
        ok @c >= 5, scalar(@c) . ' connections: the client reconnected ' . (@c - 1) . ' times while the events were published';
        my @ring = map { $c[$_]{instance} } 0 .. $#c;
        is "@ring", join(' ', map { $NAMES[ $_ % 3 ] } 0 .. $#c), 'each time to the next instance: A, B, C, A, ...';
        my %workers = map { ("$_->{instance}:" . ($_->{worker} // '?')) => 1 } @c;
        note scalar(keys %workers) . ' distinct (instance, worker) served the client';
        is scalar(grep { $_->{status} != 200 } @c), 0, 'every connection answered 200';
        is scalar(grep { $_->{events} == 0 } @c[0 .. $#c - 1]), 0, 'every connection but the last delivered events before the client left';
        my @bad_echo = grep { defined $_->{sent} && ($_->{echo} // '') ne $_->{sent} } @c;
        is scalar(@bad_echo), 0, 'each reconnection sent Last-Event-ID = the last id received, echoed by the instance it reached'
            or diag join "\n", map { "sent $_->{sent}, echoed " . ($_->{echo} // 'none') } @bad_echo;
        if ($abrupt) {
            my $partial = grep { $_->{partial} } @c;
            ok $partial >= 1, "$partial of " . (@c - 1) . ' connections were reset in the middle of an event';
        }

        # What only a replay could give: published while the client was away
        # (and, when reset, sent but never read).
        my $away = 0;
        for my $i (0 .. $#c - 1) {
            $away += grep { $_->[3] > $c[$i]{closed} && $_->[3] < $c[ $i + 1 ]{opened} } @accepted;
        }
        ok $away > 0, "$away events were published while the client was between two instances";

        my @have = map { ev($_) } @$got;
        my %n;
        my @dups = grep { $n{$_}++ == 1 } @have;
        is scalar(grep { $_->{event} eq 'sse-gap' } @$got), 0, 'no sse-gap';
        is scalar(@dups), 0, 'no event twice' or diag 'duplicated: ' . first_few(8, @dups);
        my @ids = map { $_->{own_id} // -1 } @$got;
        is scalar(grep { $ids[$_] <= $ids[ $_ - 1 ] } 1 .. $#ids), 0, 'ids strictly increasing across all connections';
        if (!is_deeply \@have, \@want, 'every published event exactly once, in id order (' . scalar(@want) . ')') {
            my %h = map { $_ => 1 } @have;
            my %w = map { $_ => 1 } @want;
            my @missing = grep { !$h{$_} } @want;
            my @extra   = grep { !$w{$_} } @have;
            diag sprintf 'got %d, want %d; missing %d: %s; extra %d: %s', scalar(@have), scalar(@want),
                scalar(@missing), first_few(8, @missing), scalar(@extra), first_few(8, @extra);
        }
    };
}

# --- live channel changes routed across instances --------------------------------

subtest 'a stream on A changed through each worker of B and C' => sub {
    my $A = $NGINX{A};
    my $c = sse_connect($A->port, '/events?channels=in:lc:0', headers => bearer('u2'));
    is $c->status, 200, 'a stream on nginx A';
    my $first = $c->next_event(5);
    is $first && $first->{event}, 'sse-session', 'its first event is sse-session';
    my $token = $first ? $first->{data} : '';
    ok wait_subscribed($rp, 'in:lc:0', 1, 5), 'in:lc:0 subscribed';
    my $id = sse_publish($rp, 'in:lc:0', 'hello');
    my $e = $c->next_event(5);
    is $e && ev($e), "in:lc:0|hello|$id", 'it receives in:lc:0';
    my $last = $id;

    my @steps;
    for my $name (qw(B C)) {
        my @w = $NGINX{$name}->worker_pids;
        push @steps, [$name, $_, $w[$_]] for 0 .. $#w;
    }
    my $k = 0;
    for my $step (@steps) {
        my ($name, $wi, $pid) = @$step;
        $k++;
        my ($old, $new) = ('in:lc:' . ($k - 1), "in:lc:$k");
        # Published before the change: only the replay after last_event_id can give it.
        my $early = sse_publish($rp, $new, 'early');
        my $res = change($NGINX{$name}, $pid, u2 => [session => $token], [add => $new], [remove => $old], [last_event_id => $last]);
        my $where = "nginx $name worker " . ($wi + 1) . (defined $res->{worker} ? " (pid $res->{worker})" : '');
        is $res->{status}, 200, "POST add=$new remove=$old last_event_id=$last to $where: 200"
            or diag explain $res;
        is set_of($res->{body}), $new, "... the answer lists the stream's channels now: $new";
        $e = $c->next_event(5);
        is $e && "$e->{event}|" . set_of($e->{data}), "sse-channels|$new", "the stream on A gets sse-channels: $new";
        $e = $c->next_event(5);
        is $e && ev($e), "$new|early|$early", "then $new\'s event published before the change (replayed after $last)";
        ok wait_subscribed($rp, $new, 1, 5), "$new subscribed";
        ok wait_subscribed($rp, $old, 0, 5), "$old released";
        sse_publish($rp, $old, 'removed');
        my $live = sse_publish($rp, $new, 'live');
        my @ev = $c->events_until(1, 5);
        $c->drain(0.2);
        push @ev, $c->events_until($c->pending_events, 0);
        is_deeply [map { ev($_) } @ev], ["$new|live|$live"], "then $new\'s live events, and none of $old";
        $last = $live;
    }
    ok !$c->{ended}, 'the stream on A stayed open throughout';

    $c->close;
    my @statuses;
    for my $name (qw(B C)) {
        ok wait_until(sub {
            my $res = change($NGINX{$name}, undef, u2 => [session => $token], [add => 'in:lc:x']);
            push @statuses, $res->{status};
            $res->{status} == 404 && ($res->{body} // '') =~ /unknown session/;
        }, 5, 0.1), "once the stream has ended, a change through nginx $name: 404 unknown session";
    }
    is_deeply [grep { $_ != 200 && $_ != 404 } @statuses], [], 'nothing but 200 (before the close was seen) and 404';
};

# --- revocation --------------------------------------------------------------------

# Opens streams of $user on $nginx until each worker holds at least $per of
# them (reuseport spreads them); returns { c, instance, worker } for each.
sub streams_on_every_worker {
    my ($name, $user, $channels, $per) = @_;
    my $nginx = $NGINX{$name};
    my @workers = $nginx->worker_pids;
    my (%n, @s);
    for (1 .. 80) {
        last unless grep { ($n{$_} // 0) < $per } @workers;
        my $c = sse_connect($nginx->port, "/events?channels=$channels", headers => bearer($user));
        next unless $c->status(5) == 200;
        $c->next_event(5);    # sse-session
        my $w = $nginx->worker_of($c);
        push @s, { c => $c, instance => $name, worker => $w // '?' };
        $n{$w}++ if defined $w;
        last if !defined $w && @s >= $per * @workers * 2;    # cannot tell: a few more than needed
    }
    return @s;
}

subtest 'revoke u1: its streams end on every worker of every instance; u2 goes on' => sub {
    my (@u1, @u2);
    for my $name (@NAMES) {
        push @u1, streams_on_every_worker($name, u1 => 'in:rev', 2);
        push @u2, streams_on_every_worker($name, u2 => 'in:rev', 1);
    }
    my %per;
    $per{"$_->{instance}:$_->{worker}"}{u1}++ for @u1;
    $per{"$_->{instance}:$_->{worker}"}{u2}++ for @u2;
    note join ', ', map { "$_: u1 " . ($per{$_}{u1} // 0) . ', u2 ' . ($per{$_}{u2} // 0) } sort keys %per;
    SKIP: {
        skip 'cannot tell which worker holds a connection (/proc not readable)', 1 if grep { /:\?$/ } keys %per;
        is scalar(grep { ($per{$_}{u1} // 0) >= 2 && ($per{$_}{u2} // 0) >= 1 } keys %per), 3 * $WORKERS,
            'every worker of every instance holds streams of u1 (2 or more) and of u2';
    }
    my @all = (@u1, @u2);
    is scalar(grep { $_->{c}->status(0) == 200 && !$_->{c}{ended} } @all), scalar(@all),
        scalar(@u1) . ' streams of u1 and ' . scalar(@u2) . ' of u2 open';
    ok wait_subscribed($rp, 'in:rev', 3 * $WORKERS, 10), 'in:rev subscribed by all ' . 3 * $WORKERS . ' workers';
    my $id = sse_publish($rp, 'in:rev', 'before');
    is wait_events([map { $_->{c} } @all], 1, 10), scalar(@all), 'all streams receive an event';
    is scalar(grep { my ($e) = $_->{c}->events_until(1, 0); !$e || ev($e) ne "in:rev|before|$id" } @all), 0,
        '... in:rev "before"';

    my %mark = map { $_ => $NGINX{$_}->error_log_mark } @NAMES;
    my $t0 = time;
    is redis_cmd($rp, PUBLISH => 'sse:control' => 'revoke u1'), 3 * $WORKERS,
        'PUBLISH sse:control "revoke u1" reaches the ' . 3 * $WORKERS . ' workers';
    my @u1c = map { $_->{c} } @u1;
    is wait_clients(\@u1c, sub { $_[0]{ended} }, 5), scalar(@u1), 'every stream of u1 ended (' . scalar(@u1) . ')';
    my %slowest;
    for my $s (@u1) {
        my $t = ($s->{c}{ended_at} // time) - $t0;
        my $key = "nginx $s->{instance} worker $s->{worker}";
        $slowest{$key} = $t if ($slowest{$key} // -1) < $t;
    }
    note join "\n", map { sprintf '%s: last u1 stream ended after %.3f s', $_, $slowest{$_} } sort keys %slowest;
    my $max = max(values %slowest);
    ok $max < 1, sprintf 'within 1 s on every worker of every instance (slowest after %.3f s)', $max;
    my @unclean = grep { ($_->{ended} // '') ne 'clean' } @u1c;
    is scalar(@unclean), 0, 'each cleanly: the response completes (last chunk), so EventSource reconnects'
        or diag join "\n", map { 'ended: ' . ($_->{ended} // 'no') . ' (' . ($_->{end_reason} // '') . ')' } @unclean;
    is scalar(grep { length $_->{line} || length $_->{data} } @u1c), 0, 'none in the middle of an event';

    my @u2c = map { $_->{c} } @u2;
    $_->drain(0.05) for @u2c;
    is scalar(grep { $_->{ended} } @u2c), 0, 'no stream of u2 ended';
    $id = sse_publish($rp, 'in:rev', 'after');
    is wait_events(\@u2c, 1, 10), scalar(@u2), 'every stream of u2 receives the next event';
    is scalar(grep { my ($e) = $_->events_until(1, 0); !$e || ev($e) ne "in:rev|after|$id" } @u2c), 0,
        '... in:rev "after"';
    is scalar(grep { $_->pending_events } @u1c), 0, "u1's ended streams got nothing more";

    for my $name (@NAMES) {
        my $log = $NGINX{$name}->error_log_since($mark{$name});
        my %by_pid;
        $by_pid{$1} += $2 while $log =~ /\] (\d+)#\d+: [^\n]*revocation: ending (\d+) stream/g;
        my $want = grep { $_->{instance} eq $name } @u1;
        is sum0(values %by_pid), $want, "nginx $name logs $want revoked streams"
            . ' (' . join(', ', map { "worker $_: $by_pid{$_}" } sort keys %by_pid) . ')';
    }

    # Revocation is not a ban: u1 reconnects (auth runs again) on any instance.
    my @again = map { sse_connect($NGINX{$_}->port, '/events?channels=in:rev2', headers => bearer('u1')) } @NAMES;
    is scalar(grep { $_->status(5) == 200 } @again), 3, 'u1 can open new streams on A, B and C';
    $_->next_event(5) for @again;
    ok wait_until(sub { (numsub($rp, 'in:rev2')->{'in:rev2'} // 0) == 3 }, 5), 'in:rev2 subscribed by a worker of each';
    $id = sse_publish($rp, 'in:rev2', 'welcome back');
    is scalar(grep { my $e = $_->next_event(5); $e && ev($e) eq "in:rev2|welcome back|$id" } @again), 3,
        'and they receive events';
    $_->close for @again, @u2c;
};

for my $name (@NAMES) {
    is_deeply [$NGINX{$name}->alerts], [], "no [alert] or [emerg] in the error.log of nginx $name";
}

done_testing;
