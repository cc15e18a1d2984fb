# Changing a stream's channels without reconnecting (`sse_session on` on the
# stream location, `sse_subscribe` on a control location), with two nginx (2
# workers each) on one Redis behind auth_request: the stream starts with its
# token (event sse-session); a POST with session, add, remove and
# last_event_id changes it in place, applied on the stream's own worker, on
# the other worker of the same nginx, or through the other nginx; the stream
# sees event sse-channels, then the added channels' events, and no more
# events of the removed ones. A refused change (grants, reserved names,
# overlaps, sse_max_channels, patterns where not served, malformed) changes
# nothing; another user's token, unknown, ended and malformed sessions, other
# methods and large bodies get their statuses; the grants of the change
# request apply; an owner that never answers gives 504, Redis down 503; with
# history and last_event_id a change under steady publishing loses and
# repeats nothing; PUBSUB NUMSUB follows the changes (channels and patterns);
# an HTTP/2 stream is changed like any other; sse_channel_changes_total counts
# the changes by result. An open stream whose worker is cut off Redis is
# answered 404 (as the README says: no worker listens on its node channel).
#
# How a POST is made to reach a chosen worker: both nginx listen with
# `reuseport`, so the kernel spreads new connections over the workers; the
# test opens keep-alive connections (each stays on the worker that accepted
# it, found through /proc: the worker whose descriptor table holds the
# server side of the socket) until it has one on the worker it wants, and
# sends the POST on it. Streams are placed on a chosen worker the same way.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use File::Temp ();
use POSIX ();
use SSETest;

# auth_request is not in every nginx build (ngx's vendored nginx lacks it):
# there the grants and the user come from maps in the nginx itself.
my $HAVE_AUTH_REQUEST = have_auth_request();
diag "$SSETest::NGINX_BIN is built without http_auth_request_module: grants come from maps in the streaming nginx"
    unless $HAVE_AUTH_REQUEST;

my $MAX_CHANNELS = 5;
my %GRANTS = (
    alice => 'live:**, ns:**, feed:*, hc:**, alerts:alice',
    bob   => 'live:**, alerts:bob',
);

my $redis = start_redis();
my $rp    = $redis->port;
load_sse_function($redis);

# "Authorization: Bearer <user>-token" names the user (bearer_maps), with
# %GRANTS changed by @_.
sub maps { return bearer_maps(%GRANTS, @_) }

# The auth service: its own nginx, asked by both streaming nginx.
my $auth = $HAVE_AUTH_REQUEST ? start_auth_service(http => maps()) : undef;

my $guard = auth_guard();

# The same without sse_allow: changes are checked against the stream's own grants.
my $guard_user = auth_guard(grants => 0);

my $server = ($HAVE_AUTH_REQUEST ? auth_location($auth->port) : '') . qq{
        location = /events {$guard
            sse_channel \$arg_channels;
            sse_channel_patterns on;
            sse_history on;
            sse_session on;
            sse_max_channels $MAX_CHANNELS;
            sse_heartbeat 1s;
        }
        location = /events-start2 {$guard
            sse_channel \$arg_channels;
            sse_history on;
            sse_history_start 2;
            sse_session on;
        }
        location = /events-nopat {$guard
            sse_channel \$arg_channels;
            sse_session on;
        }
        location = /plain {$guard
            sse_channel \$arg_channels;
            sse_history on;
        }
        location = /events/subscribe {$guard
            sse_subscribe;
            sse_subscribe_timeout 3s;
            client_body_buffer_size 16k;    # the default is 8k on x86-64
        }
        location = /events/subscribe-8k {$guard
            sse_subscribe;
            client_body_buffer_size 8k;
        }
        location = /events/subscribe-1s {$guard
            sse_subscribe;
            sse_subscribe_timeout 1s;
        }
        location = /events/subscribe-own {$guard_user
            sse_subscribe;
        }
        location = /metrics { sse_metrics; }
};

# Two nginx with two workers each, on the same Redis; reuseport spreads the
# connections over the workers.
my %conf = (redis => $redis, workers => 2, listen => 'reuseport', http => ($HAVE_AUTH_REQUEST ? '' : maps()),
    server => $server);
my $A = start_nginx(%conf);
my $B = start_nginx(%conf);

sub bearer { return { Authorization => "Bearer $_[0]-token" } }

# --- helpers -------------------------------------------------------------------

# A keep-alive connection to $nginx held by worker $pid (or, with $pid
# negative, by any worker but -$pid).
my %POOL;    # "port:pid" => [HTTPConn, ...]
sub conn_on {
    my ($nginx, $pid) = @_;
    my $want = sub { $pid > 0 ? $_[0] == $pid : $_[0] != -$pid };
    for my $key (grep { /^${\ $nginx->port }:/ } keys %POOL) {
        my ($w) = $key =~ /:(\d+)$/;
        next unless $want->($w);
        @{ $POOL{$key} } = grep { $_->is_open } @{ $POOL{$key} };
        return $POOL{$key}[0] if @{ $POOL{$key} };
    }
    for (1 .. 64) {
        my $c = http_connect($nginx->port);
        my $w = $nginx->worker_of($c) // next;
        push @{ $POOL{ $nginx->port . ":$w" } }, $c;
        return $c if $want->($w);
    }
    die "no connection to the wanted worker of nginx on port ${\ $nginx->port } after 64 attempts\n";
}

sub parse_token { return $_[0] =~ /\A(.+)\.([^.]+)\.([^.]+)\z/ ? ($1, $2, $3) : () }

# Opens a stream as $user (on worker $pid of $nginx if given) and reads its
# first event, which must be sse-session. Returns a hash: c (the client),
# token, worker, nginx, first (the first event).
sub open_stream {
    my ($nginx, $user, $channels, %opt) = @_;
    for (1 .. 64) {
        my $c = sse_connect($nginx->port, ($opt{path} || '/events') . "?channels=$channels", headers => bearer($user));
        my $status = $c->status(5);
        if ($status != 200) {
            $c->wait_eof(2);
            diag "GET /events?channels=$channels as $user: $status " . $c->body_head;
            return { c => $c, status => $status };
        }
        my $w = $nginx->worker_of($c);
        if ($opt{worker} && (!defined $w || $w != $opt{worker})) { $c->close; next }
        my $first = $c->next_event(5);
        my $token = $first && $first->{event} eq 'sse-session' ? $first->{data} : undef;
        return { c => $c, status => $status, token => $token, worker => $w, nginx => $nginx, first => $first };
    }
    die "could not open a stream on worker $opt{worker}\n";
}

# POSTs a change. $via: an SSETest::HTTPConn (keep-alive) or an
# SSETest::Nginx (a fresh connection to any of its workers). @pairs: form
# fields in order, e.g. [session => $t], [add => 'a,b'].
# Another control location: change_at($path, $via, $user, @pairs).
sub change { return change_at('/events/subscribe', @_) }

sub change_at {
    my ($path, $via, $user, @pairs) = @_;
    my %req = (headers => { %{ $user ? bearer($user) : {} }, 'Content-Type' => 'application/x-www-form-urlencoded' },
        body => form_urlencode(@pairs), timeout => 10);
    return $via->isa('SSETest::HTTPConn')
        ? $via->request(POST => $path, %req)
        : http_request($via->port, 'POST', $path, %req);
}

# The channels of a 200 answer or of an sse-channels event, sorted.
sub set_of { my ($text) = @_; $text //= ''; chomp $text; return join ',', sort grep { length } split /,/, $text }

sub names { return [map { "$_->{event} $_->{data}" } @_] }

# Publishes [channel, data] pairs with FCALL sse_publish, in order, then
# expects exactly @$want ("channel data") on $c. The last publication must be
# a wanted one, so that everything before it has been seen when it arrives.
sub expect_only {
    my ($c, $what, $publish, $want) = @_;
    sse_publish($rp, @$_) for @$publish;
    my @got = $c->events_until(scalar @$want, 5);
    $c->drain(0.2);
    push @got, $c->events_until($c->pending_events, 0);
    is_deeply names(@got), $want, $what;
}

sub scrape {
    my ($nginx) = @_;
    my $res = http_request($nginx->port, 'GET', '/metrics');
    return { map { /^(\S+) (\S+)$/ ? ($1 => $2) : () } grep { !/^#/ } split /\n/, $res->{body} // '' };
}

# sse_channel_changes_total by result label, summed over both nginx.
sub changes_total {
    my %n;
    for my $m (scrape($A), scrape($B)) {
        for (keys %$m) { $n{$1} += $m->{$_} if /^sse_channel_changes_total\{result="([^"]+)"\}$/ }
    }
    return \%n;
}

my @WORKERS_A = $A->worker_pids;
my $changes_before = changes_total();
my $applied = 0;    # changes this file expects to be applied
my $refused = 0;    # ... refused (4xx other than 404)
my $unknown = 0;    # ... answered 404
my ($timeouts, $unavailable) = (0, 0);    # ... 504, 503

# --- the token -----------------------------------------------------------------

subtest 'setup: each worker of both nginx has its own control channel' => sub {
    is scalar(@WORKERS_A), 2, 'nginx A runs 2 workers';
    is scalar($B->worker_pids), 2, 'nginx B runs 2 workers';
    ok wait_until(sub { @{ redis_cmd($rp, PUBSUB => CHANNELS => 'sse:node:*') } == 4 }, 10),
        'PUBSUB CHANNELS sse:node:* lists 4 channels (one per worker)'
        or diag explain redis_cmd($rp, PUBSUB => CHANNELS => 'sse:node:*');
    my $nodes = redis_cmd($rp, PUBSUB => CHANNELS => 'sse:node:*');
    is_deeply [grep { $_ != 1 } values %{ numsub($rp, @$nodes) }], [], 'each with one subscriber';
};

subtest 'the stream starts with event sse-session carrying its token' => sub {
    my $s1 = open_stream($A, alice => 'live:t:1', worker => $WORKERS_A[0]);
    is $s1->{status}, 200, 'a stream on sse_session on: 200';
    is $s1->{first} && $s1->{first}{event}, 'sse-session', 'its first event is sse-session';
    my $token = $s1->{token} // '';
    like $token, qr/\A[\x21-\x7e]{20,200}\z/, "the token is one word of printable ASCII (" . length($token) . ' bytes)';
    my ($node, $stream, $secret) = parse_token($token);
    ok defined $secret, 'it has the shape <node>.<stream>.<secret>' or diag $token;
    ok wait_subscribed($rp, 'live:t:1', 1, 5), 'the channel is subscribed';
    expect_only($s1->{c}, 'then the events of its channels', [['live:t:1' => 'one']], ['live:t:1 one']);

    my $s2 = open_stream($A, alice => 'live:t:1', worker => $WORKERS_A[0]);
    my $s3 = open_stream($A, alice => 'live:t:1', worker => $WORKERS_A[1]);
    my $s4 = open_stream($B, alice => 'live:t:1');
    my @p2 = parse_token($s2->{token} // '');
    my @p3 = parse_token($s3->{token} // '');
    my @p4 = parse_token($s4->{token} // '');
    isnt $s2->{token}, $token, 'another stream has another token';
    is $p2[0], $node, 'a stream of the same worker: the same node';
    isnt $p2[1], $stream, '... another stream number';
    isnt $p2[2], $secret, '... another secret';
    isnt $p3[0], $node, 'a stream of the other worker: another node';
    ok defined $p4[0] && $p4[0] ne $node && $p4[0] ne ($p3[0] // ''), 'a stream of the other nginx: another node again';

    my $plain = sse_connect($A->port, '/plain?channels=live:t:2', headers => bearer('alice'));
    is $plain->status, 200, 'a location without sse_session streams';
    ok wait_subscribed($rp, 'live:t:2', 1, 5), 'subscribed';
    expect_only($plain, 'and sends no sse-session event', [['live:t:2' => 'plain']], ['live:t:2 plain']);
    my $res = change($A, alice => [session => $token], [add => 'live:t:3']);
    is $res->{status}, 200, 'the token changes its stream';
    $applied++;
    $_->{c}->close for $s1, $s2, $s3, $s4;
    $plain->close;
};

# --- add and remove, from the same worker, the other worker, the other nginx -------

my @routes = (
    ['the same worker',  sub { conn_on($A, $_[0]{worker}) }],
    ['the other worker', sub { conn_on($A, -$_[0]{worker}) }],
    ['the other nginx',  sub { $B }],
);
my $r = 0;
for my $route (@routes) {
    my ($name, $via_for) = @$route;
    $r++;
    subtest "add and remove through $name" => sub {
        my ($a, $b, $c, $d) = map { "live:r$r:$_" } qw(a b c d);
        my $s = open_stream($A, alice => $a);
        is $s->{status}, 200, 'a stream on nginx A';
        ok defined $s->{token}, 'with its token';
        ok wait_subscribed($rp, $a, 1, 5), "$a subscribed";
        my $via = $via_for->($s);
        if ($via->isa('SSETest::HTTPConn')) {
            my $w = $A->worker_of($via);
            $name eq 'the same worker'
                ? is($w, $s->{worker}, "the POST goes to the stream's worker ($w)")
                : isnt($w, $s->{worker}, "the POST goes to worker $w, not the stream's ($s->{worker})");
        }

        my $res = change($via, alice => [session => $s->{token}], [add => $b], [remove => $a]);
        is $res->{status}, 200, "add=$b remove=$a: 200" or diag explain $res;
        like $res->{headers}{'content-type'} // '', qr{^text/plain\b}, 'text/plain';
        is set_of($res->{body}), $b, "the body lists the stream's channels now: $b";
        my $ev = $s->{c}->next_event(5);
        is $ev && "$ev->{event} " . set_of($ev->{data}), "sse-channels $b", "the stream gets event sse-channels: $b";
        ok wait_subscribed($rp, $b, 1, 5), "$b subscribed in Redis";
        ok wait_subscribed($rp, $a, 0, 5), "$a unsubscribed (no other stream wants it)";
        expect_only($s->{c}, "events of $b arrive, those of $a no more",
            [[$a => 'removed'], [$b => 'added']], ["$b added"]);

        # Repeated add fields, raw (curl -d) encoding.
        my $raw = "session=$s->{token}&add=$c&add=$d";
        $res = $via->isa('SSETest::HTTPConn')
            ? $via->request(POST => '/events/subscribe', headers => { %{ bearer('alice') },
                  'Content-Type' => 'application/x-www-form-urlencoded' }, body => $raw)
            : http_request($via->port, 'POST', '/events/subscribe', headers => { %{ bearer('alice') },
                  'Content-Type' => 'application/x-www-form-urlencoded' }, body => $raw);
        is $res->{status}, 200, "add=$c&add=$d (not percent-encoded): 200" or diag explain $res;
        is set_of($res->{body}), join(',', sort $b, $c, $d), 'the body lists the three channels';
        $ev = $s->{c}->next_event(5);
        is $ev && "$ev->{event} " . set_of($ev->{data}), 'sse-channels ' . join(',', sort $b, $c, $d),
            'sse-channels lists them';
        ok wait_subscribed($rp, $_, 1, 5), "$_ subscribed" for $c, $d;
        expect_only($s->{c}, 'events of the three channels arrive',
            [[$a => 'x'], [$c => 'c'], [$d => 'd'], [$b => 'b']], ["$c c", "$d d", "$b b"]);
        $applied += 2;
        $s->{c}->close;
    };
}

# --- refused changes ------------------------------------------------------------------

my $k = 0;
for my $route (['the same worker', sub { conn_on($A, $_[0]{worker}) }], ['the other nginx', sub { $B }]) {
    my ($name, $via_for) = @$route;
    $k++;
    subtest "refused changes through $name: the answer says why, the stream is unchanged" => sub {
        my $kept = "live:k$k:1";
        my $s = open_stream($A, alice => "$kept,feed:*");
        is $s->{status}, 200, "a stream with $kept and the pattern feed:*";
        ok wait_subscribed($rp, $kept, 1, 5), 'subscribed';
        my $via = $via_for->($s);
        my @more = map { "live:k$k:$_" } 2 .. 5;
        my @cases = (
            { what => 'an ungranted channel', pairs => [[add => 'secret:1']],
              status => 403, body => qr/\Asse: not allowed: secret:1\n?\z/ },
            { what => 'a granted and two ungranted channels', pairs => [[add => "$more[0],secret:1,alerts:bob"]],
              status => 403, body => qr/\Asse: not allowed: /, named => ['alerts:bob', 'secret:1'] },
            { what => 'a removal with an ungranted addition (the removal is not applied either)',
              pairs => [[remove => $kept], [add => 'secret:1']],
              status => 403, body => qr/\Asse: not allowed: secret:1\n?\z/ },
            { what => 'a reserved sse: name', pairs => [[add => 'sse:x']], status => 400, body => qr/\Asse: .*sse:x/ },
            { what => 'the control channel', pairs => [[add => 'sse:control']], status => 400, body => qr/\Asse: / },
            { what => 'a channel the kept pattern feed:* covers (overlap)', pairs => [[add => 'feed:1']],
              status => 400, body => qr/\Asse: .*overlap/ },
            { what => "a pattern covering the kept $kept (overlap)", pairs => [[add => "live:k$k:*"]],
              status => 400, body => qr/\Asse: .*overlap/ },
            { what => "4 more channels: 6 > sse_max_channels $MAX_CHANNELS", pairs => [[add => join ',', @more]],
              status => 400, body => qr/\Asse: / },
            { what => 'a channel both added and removed', pairs => [[add => $more[0]], [remove => $more[0]]],
              status => 400, body => qr/\Asse: / },
            { what => 'an invalid name', pairs => [[add => 'a::b']], status => 400, body => qr/\Asse: / },
            { what => 'an empty item in the list', pairs => [[add => "$more[0],,$more[1]"]],
              status => 400, body => qr/\Asse: / },
            { what => 'nothing to change (no add, no remove)', pairs => [], status => 400, body => qr/\Asse: / },
            { what => 'a malformed last_event_id', pairs => [[add => $more[0]], [last_event_id => 'abc']],
              status => 400, body => qr/\Asse: .*last_event_id/ },
            { what => 'an unknown field', pairs => [[add => $more[0]], [channels => $more[1]]],
              status => 400, body => qr/\Asse: / },
        );
        $refused += @cases;
        for my $case (@cases) {
            my $what = $case->{what};
            my $res = change($via, alice => [session => $s->{token}], @{ $case->{pairs} });
            is $res->{status}, $case->{status}, "$what: $case->{status}";
            like $res->{body} // '', $case->{body}, "$what: body " . (($res->{body} // '') =~ s/\n\z//r);
            if ($case->{named}) {
                my ($list) = ($res->{body} // '') =~ /not allowed: (.*?)\n?\z/;
                is_deeply [sort split /,\s*/, $list // ''], $case->{named}, "$what: it names the ungranted ones, and only them";
            }
        }
        $s->{c}->drain(0.3);
        is_deeply names($s->{c}->events_until($s->{c}->pending_events, 0)), [], 'the stream got no sse-channels event';
        is_deeply numsub($rp, @more, 'secret:1', 'feed:1', 'alerts:bob'),
            { map { $_ => 0 } @more, 'secret:1', 'feed:1', 'alerts:bob' }, 'nothing refused was subscribed in Redis';
        expect_only($s->{c}, 'publishing shows the channels are unchanged',
            [['secret:1' => 'x'], [$more[0] => 'x'], ['alerts:bob' => 'x'], ['feed:1' => 'f'], [$kept => 'kept']],
            ['feed:1 f', "$kept kept"]);

        # The limit is the stream location's: up to 5 channels is fine.
        my $res = change($via, alice => [session => $s->{token}], [add => join ',', @more[0 .. 2]]);
        is $res->{status}, 200, "3 more channels: 5 = sse_max_channels: 200";
        is set_of($res->{body}), join(',', sort 'feed:*', $kept, @more[0 .. 2]), 'the body lists the five';
        $res = change($via, alice => [session => $s->{token}], [add => $kept], [remove => 'live:never']);
        is $res->{status}, 200, 'adding a channel already there and removing one that is not: 200';
        is set_of($res->{body}), join(',', sort 'feed:*', $kept, @more[0 .. 2]), '... and nothing changed';
        $applied += 2;
        $s->{c}->close;
    };
}

subtest 'a pattern where the stream location does not serve patterns: 400' => sub {
    my $s = open_stream($A, alice => 'live:p:1', path => '/events-nopat');
    is $s->{status}, 200, 'a stream on a location without sse_channel_patterns';
    ok defined $s->{token}, 'with its token';
    my $res = change($B, alice => [session => $s->{token}], [add => 'feed:*']);
    is $res->{status}, 400, 'add=feed:* (granted): 400';
    like $res->{body} // '', qr/\Asse: .*pattern/, '... saying patterns are not served';
    $refused++;
    $res = change($B, alice => [session => $s->{token}], [add => 'feed:1']);
    is $res->{status}, 200, 'add=feed:1: 200';
    $applied++;
    $s->{c}->close;
};

# --- the session itself ----------------------------------------------------------------

# A token with the same shape but every character of $part (node, stream,
# secret) changed within its alphabet.
sub altered {
    my ($token, $part) = @_;
    my @p = parse_token($token);
    my $i = { node => 0, stream => 1, secret => 2 }->{$part};
    if ($p[$i] =~ /\A[0-9]+\z/) { $p[$i] = $p[$i] + 1000000 }
    elsif ($p[$i] =~ /\A[0-9a-f]+\z/) { $p[$i] =~ tr/0-9a-f/1-9a-f0/ }
    else { $p[$i] =~ tr/0-9a-zA-Z/1-9a-zA-Z0/ }
    return join '.', @p;
}

subtest 'the session: another user, unknown, ended, malformed' => sub {
    my $s = open_stream($A, alice => 'live:s:1');
    ok wait_subscribed($rp, 'live:s:1', 1, 5), "alice's stream";
    for my $via ([$A, 'nginx A'], [$B, 'nginx B']) {
        my ($n, $where) = @$via;
        my $res = change($n, bob => [session => $s->{token}], [add => 'live:s:2']);
        is $res->{status}, 403, "bob with alice's token ($where): 403";
        like $res->{body} // '', qr/\Asse: the session belongs to another user\n?\z/, '... saying so';
        like $res->{headers}{'content-type'} // '', qr{\Atext/plain\b}, '... in text/plain';
        if ($HAVE_AUTH_REQUEST) {
            $res = change($n, undef, [session => $s->{token}], [add => 'live:s:2']);
            is $res->{status}, 401, "alice's token without credentials ($where): 401 from auth_request";
        }
        for my $part (qw(secret stream node)) {
            my $t0 = time;
            $res = change($n, alice => [session => altered($s->{token}, $part)], [add => 'live:s:2']);
            my $took = time - $t0;
            is $res->{status}, 404, "a token with another $part ($where): 404";
            like $res->{body} // '', qr/\Asse: unknown session\n?\z/, '... "sse: unknown session"';
            like $res->{headers}{'content-type'} // '', qr{\Atext/plain\b}, '... in text/plain';
            ok $took < 1, sprintf '... at once (%.3f s)', $took if $part eq 'node';
        }
        for my $bad ('garbage', '', 'a.b', "$s->{token}.x", "$s->{token} x", 'x' x 1000, "\x{e9}$s->{token}") {
            $res = change($n, alice => [session => $bad], [add => 'live:s:2']);
            is $res->{status}, 400, "a malformed token ($where, " . (length $bad > 20 ? length($bad) . ' bytes' : "'$bad'") . '): 400';
        }
        $res = change($n, alice => [add => 'live:s:2']);
        is $res->{status}, 400, "no session field ($where): 400";
        # The token travels in the body only, never in a URL (access logs).
        $res = http_request($n->port, 'POST', '/events/subscribe?' . form_urlencode([session => $s->{token}]),
            headers => { %{ bearer('alice') }, 'Content-Type' => 'application/x-www-form-urlencoded' },
            body => form_urlencode([add => 'live:s:2']));
        is $res->{status}, 400, "the session in the query string instead of the body ($where): 400";
        $refused += 1 + 7 + 1 + 1;
        $unknown += 3;
    }
    $s->{c}->drain(0.2);
    is_deeply names($s->{c}->events_until($s->{c}->pending_events, 0)), [], "alice's stream got no sse-channels event";
    is numsub($rp, 'live:s:2')->{'live:s:2'}, 0, 'and live:s:2 was never subscribed';
    expect_only($s->{c}, 'its channels are unchanged', [['live:s:2' => 'x'], ['live:s:1' => 'y']], ['live:s:1 y']);

    # An ended stream: its token dies with it.
    my $token = $s->{token};
    $s->{c}->close;
    ok wait_subscribed($rp, 'live:s:1', 0, 5), 'the stream ended (its channel is released)';
    for my $via ([conn_on($A, $s->{worker}), 'its worker'], [conn_on($A, -$s->{worker}), 'the other worker'],
                 [$B, 'nginx B'])
    {
        my $res = change($via->[0], alice => [session => $token], [add => 'live:s:2']);
        is $res->{status}, 404, "the token of the ended stream through $via->[1]: 404";
        like $res->{body} // '', qr/\Asse: unknown session\n?\z/, '... "sse: unknown session"';
        $unknown++;
    }
};

subtest 'methods and body size' => sub {
    my $s = open_stream($A, alice => 'live:m:1');
    for my $method (qw(GET PUT DELETE)) {
        my $res = http_request($A->port, $method, '/events/subscribe', headers => bearer('alice'),
            $method eq 'PUT' ? (body => "session=$s->{token}&add=live:m:2") : ());
        is $res->{status}, 405, "$method: 405";
        like $res->{headers}{allow} // '', qr/\APOST\z/, '... with Allow: POST';
    }
    my $prefix = form_urlencode([session => $s->{token}], [remove => '']);
    # Removing channels that are not there changes nothing: a valid body of
    # exactly 16 KiB.
    my $pad = '';
    my $i = 0;
    $pad .= ($i++ ? '%2C' : '') . "gone$i" while length($prefix) + length($pad) < 16384 - 20;
    $pad .= ($i++ ? '%2C' : '') . 'x' x (16384 - length($prefix) - length($pad) - 3);
    my $body = $prefix . $pad;
    is length($body), 16384, '(a body of exactly 16384 bytes)';
    my %h = (headers => { %{ bearer('alice') }, 'Content-Type' => 'application/x-www-form-urlencoded' });
    my $res = http_request($A->port, 'POST', '/events/subscribe', %h, body => $body);
    is $res->{status}, 200, 'a 16 KiB body: 200' or diag $res->{body};
    for my $size (16385, 20000, 100000) {
        $res = http_request($A->port, 'POST', '/events/subscribe', %h, body => $body . ('x' x ($size - 16384)));
        is $res->{status}, 413, "a $size-byte body: 413";
        like $res->{body} // '', qr/\Asse: /, '... "sse: ..."';
    }
    $res = http_request($A->port, 'POST', '/events/subscribe-8k', %h, body => $body);
    is $res->{status}, 413, 'the same 16 KiB body where client_body_buffer_size is 8k: 413';
    $applied++;
    $refused += 3 + 3 + 1;
    $s->{c}->drain(0.2);
    is_deeply [grep { $_ ne 'sse-channels live:m:1' } @{ names($s->{c}->events_until($s->{c}->pending_events, 0)) }], [],
        'the refused requests changed nothing (no other sse-channels event than live:m:1)';
    expect_only($s->{c}, 'the stream still has its channel', [['live:m:1' => 'still']], ['live:m:1 still']);
    $s->{c}->close;
};

# --- Redis subscriptions -----------------------------------------------------------------

subtest 'PUBSUB NUMSUB follows the changes: one per worker while used, 0 after the last removal' => sub {
    my ($w1, $w2) = @WORKERS_A;
    my @s = (open_stream($A, alice => 'ns:base', worker => $w1), open_stream($A, alice => 'ns:base', worker => $w1),
             open_stream($A, alice => 'ns:base', worker => $w2));
    is scalar(grep { $_->{status} == 200 && $_->{token} } @s), 3, 'two streams on worker 1, one on worker 2';
    ok wait_subscribed($rp, 'ns:base', 2, 5), 'ns:base: NUMSUB 2';
    is numsub($rp, 'ns:x')->{'ns:x'}, 0, 'ns:x: NUMSUB 0';
    my @steps = (
        [0, add => $B, 1, 'stream 1 (worker 1) adds ns:x through nginx B'],
        [1, add => conn_on($A, $w2), 1, 'stream 2 (worker 1) adds ns:x through worker 2: still one for worker 1'],
        [2, add => conn_on($A, $w2), 2, 'stream 3 (worker 2) adds ns:x through worker 2'],
        [0, remove => conn_on($A, $w1), 2, 'stream 1 removes ns:x: stream 2 still wants it on worker 1'],
        [2, remove => $B, 1, 'stream 3 removes it: worker 2 lets it go'],
        [1, remove => conn_on($A, $w2), 0, 'stream 2 removes it: nobody wants it'],
    );
    for my $step (@steps) {
        my ($i, $op, $via, $want, $what) = @$step;
        my $res = change($via, alice => [session => $s[$i]{token}], [$op => 'ns:x']);
        is $res->{status}, 200, "$what: 200";
        sleep 0.3;    # an unsubscription, if any, would have happened now
        ok wait_subscribed($rp, 'ns:x', $want, 5), "NUMSUB ns:x = $want"
            or diag 'NUMSUB ns:x = ' . numsub($rp, 'ns:x')->{'ns:x'};
        $applied++;
    }
    # Who receives ns:x now: nobody; ns:base: everyone.
    sse_publish($rp, 'ns:x', 'x');
    sse_publish($rp, 'ns:base', 'b');
    for my $i (0 .. 2) {
        my @ev = grep { $_->{event} ne 'sse-channels' } $s[$i]{c}->events_until(20, 0);
        $s[$i]{c}->drain(0.2);
        push @ev, grep { $_->{event} ne 'sse-channels' } $s[$i]{c}->events_until(20, 0);
        is_deeply names(@ev), ['ns:base b'], "stream " . ($i + 1) . ': only the ns:base event';
    }
    is numsub($rp, 'ns:base')->{'ns:base'}, 2, 'ns:base still NUMSUB 2';
    $_->{c}->close for @s;
    ok wait_subscribed($rp, 'ns:base', 0, 5), 'streams gone: ns:base NUMSUB 0';
};

subtest 'an empty result: the stream stays open with heartbeats, and can be given channels again' => sub {
    my $s = open_stream($A, alice => 'live:e:1,live:e:2');
    ok wait_subscribed($rp, 'live:e:1', 1, 5), 'subscribed';
    my $res = change($B, alice => [session => $s->{token}], [remove => 'live:e:1,live:e:2']);
    is $res->{status}, 200, 'removing every channel: 200';
    is set_of($res->{body}), '', 'the body lists no channel';
    my $ev = $s->{c}->next_event(5);
    is $ev && "$ev->{event}|$ev->{data}", 'sse-channels|', 'event sse-channels with empty data';
    ok wait_subscribed($rp, 'live:e:1', 0, 5), 'live:e:1 released';
    my $beats = () = $s->{c}->comments;
    $s->{c}->drain(2.2);
    ok !$s->{c}{ended}, 'the stream is still open 2 s later';
    ok scalar($s->{c}->comments) - $beats >= 1, 'with heartbeats (sse_heartbeat 1s)';
    $res = change($B, alice => [session => $s->{token}], [add => 'live:e:3']);
    is $res->{status}, 200, 'then adding a channel: 200';
    $ev = $s->{c}->next_event(5);
    is $ev && "$ev->{event}|$ev->{data}", 'sse-channels|live:e:3', 'sse-channels live:e:3';
    ok wait_subscribed($rp, 'live:e:3', 1, 5), 'subscribed';
    expect_only($s->{c}, 'its events arrive', [['live:e:1' => 'x'], ['live:e:3' => 'three']], ['live:e:3 three']);
    $applied += 2;
    $s->{c}->close;
};

# --- history: nothing lost, nothing repeated ----------------------------------------------

subtest 'with history: a change under steady publishing loses nothing and repeats nothing' => sub {
    my ($keep, $old, $new) = qw(hc:keep hc:old hc:new);
    my $s = open_stream($A, alice => "$keep,$old");
    ok wait_subscribed($rp, $_, 1, 5), "$_ subscribed" for $keep, $old;
    my $c = $s->{c};
    my $pub = start_publisher(redis => $rp, channels => [$keep, $old, $new], rate => 300);
    $c->drain(1);
    my @seen = grep { defined $_->{own_id} } $c->all_events;
    my $last = @seen ? $seen[-1]{own_id} : undef;
    ok defined $last, "the stream received events with ids (the last one so far: " . ($last // 'none') . ')';
    # The page takes its time: what hc:new gets meanwhile only the replay can give.
    sleep 0.3;
    my $t_post = time;
    my $res = change($B, alice => [session => $s->{token}], [add => $new], [remove => $old], [last_event_id => $last]);
    my $t_answer = time;
    is $res->{status}, 200, "add=$new remove=$old last_event_id=$last through nginx B: 200";
    is set_of($res->{body}), "$keep,$new", "the stream now has $keep and $new";
    $c->drain(1.5);
    my $published = $pub->stop;
    is $published->{failures} + @{ $published->{unknown} }, 0, 'Redis took every message';
    my %accepted;
    push @{ $accepted{ $_->[0] } }, $_ for @{ $published->{accepted} };
    ok @{ $accepted{$new} || [] } > 100, scalar(@{ $accepted{$new} || [] }) . " messages published on $new";
    my @want_keep = map { "$_->[0]|$_->[0] #$_->[1]|$_->[2]" } @{ $accepted{$keep} };
    my @want_new  = map { "$_->[0]|$_->[0] #$_->[1]|$_->[2]" } grep { $_->[2] > $last } @{ $accepted{$new} };
    my $needed = grep { $_->[2] > $last && $_->[3] < $t_post } @{ $accepted{$new} };
    ok $needed > 0, "$needed messages of $new were published after id $last and before the POST";
    my %lastid = map { $_ => $accepted{$_}[-1][2] } $keep, $new;
    my %got_last;
    ok $c->wait_for(sub {
        $got_last{ $_->{event} } = $_->{own_id} for grep { defined $_->{own_id} } $c->all_events;
        ($got_last{$keep} // 0) >= $lastid{$keep} && ($got_last{$new} // 0) >= $lastid{$new};
    }, 10), 'the stream received the last message of both channels';
    $c->drain(0.3);

    my @all = $c->all_events;
    my ($ci) = grep { $all[$_]{event} eq 'sse-channels' } 0 .. $#all;
    ok defined $ci, 'the stream got event sse-channels';
    is scalar(grep { $_->{event} eq 'sse-channels' } @all), 1, '... once';
    is set_of($all[$ci]{data} // ''), "$keep,$new", "... listing $keep and $new" if defined $ci;
    $ci //= $#all;
    my $ev = sub { my ($e) = @_; join '|', $e->{event}, $e->{data}, $e->{own_id} // '-' };
    my @got_keep = map { $ev->($_) } grep { $_->{event} eq $keep } @all;
    my @got_new  = map { $ev->($_) } grep { $_->{event} eq $new } @all;
    my @new_before = grep { $_->{event} eq $new } @all[0 .. $ci];
    my @old_after  = grep { $_->{event} eq $old } @all[$ci .. $#all];
    is scalar(grep { $_->{event} eq 'sse-gap' } @all), 0, 'no sse-gap';
    is scalar(@new_before), 0, "no $new event before sse-channels";
    is scalar(@old_after), 0, "no $old event after sse-channels";
    my %n;
    is scalar(grep { $n{$_}++ } @got_keep, @got_new), 0, 'no event twice';
    is_deeply \@got_keep, \@want_keep, "$keep: every message, once, in order (" . scalar(@want_keep) . ')'
        or diag_diff(\@got_keep, \@want_keep);
    is_deeply \@got_new, \@want_new, "$new: every message after id $last, once, in order (" . scalar(@want_new) . ')'
        or diag_diff(\@got_new, \@want_new);
    $applied++;
    $c->close;
};

subtest 'without last_event_id an added channel starts as on a new stream (sse_history_start)' => sub {
    for my $case (['/events', 'the default (newest)', 'hc:start0', 0], ['/events-start2', 'sse_history_start 2', 'hc:start2', 2]) {
        my ($path, $what, $ch, $n) = @$case;
        my @old = map { [$ch, "old $_", sse_publish($rp, $ch, "old $_")] } 1 .. 3;
        my $s = open_stream($A, alice => 'hc:other', path => $path);
        is $s->{status}, 200, "$what: a stream";
        my $res = change($B, alice => [session => $s->{token}], [add => $ch]);
        is $res->{status}, 200, "$what: add=$ch (3 messages in its history) without last_event_id: 200";
        $applied++;
        my $ev = $s->{c}->next_event(5);
        is $ev && $ev->{event}, 'sse-channels', "$what: sse-channels";
        ok wait_subscribed($rp, $ch, 1, 5), "$what: $ch subscribed";
        my @want = map { join '|', @$_ } @old[3 - $n .. 2], [$ch, 'live', sse_publish($rp, $ch, 'live')];
        my @got = map { join '|', $_->{event}, $_->{data}, $_->{own_id} // '-' } $s->{c}->events_until(scalar @want, 5);
        $s->{c}->drain(0.2);
        push @got, map { join '|', $_->{event}, $_->{data}, $_->{own_id} // '-' } $s->{c}->events_until(9, 0);
        is_deeply \@got, \@want, "$what: " . ($n ? "the last $n messages, then" : 'nothing old, only') . ' the live one';
        $s->{c}->close;
    }
};

sub diag_diff {
    my ($got, $want) = @_;
    my %g = map { $_ => 1 } @$got;
    my %w = map { $_ => 1 } @$want;
    my @missing = grep { !$g{$_} } @$want;
    my @extra   = grep { !$w{$_} } @$got;
    diag sprintf "got %d, want %d; missing %d: %s; extra %d: %s", scalar(@$got), scalar(@$want),
        scalar(@missing), "@missing[0 .. ($#missing < 5 ? $#missing : 5)]",
        scalar(@extra), "@extra[0 .. ($#extra < 5 ? $#extra : 5)]";
}

subtest 'patterns can be added and removed' => sub {
    my $s = open_stream($A, alice => 'live:pt:1');
    ok wait_subscribed($rp, 'live:pt:1', 1, 5), 'a stream without patterns';
    ok wait_until(sub { redis_cmd($rp, PUBSUB => 'NUMPAT') == 0 }, 5), 'no pattern subscribed in Redis';
    my $res = change($B, alice => [session => $s->{token}], [add => 'feed:*']);
    is $res->{status}, 200, 'add=feed:*: 200';
    ok wait_until(sub { redis_cmd($rp, PUBSUB => 'NUMPAT') == 1 }, 5), 'feed:* pattern-subscribed (NUMPAT 1)';
    is $s->{c}->next_event(5)->{event}, 'sse-channels', 'sse-channels';
    expect_only($s->{c}, 'events of feed:* arrive', [['feed:9' => 'nine'], ['live:pt:1' => 'one']], ['feed:9 nine', 'live:pt:1 one']);
    $res = change(conn_on($A, -$s->{worker}), alice => [session => $s->{token}], [remove => 'feed:*']);
    is $res->{status}, 200, 'remove=feed:* (through the other worker): 200';
    ok wait_until(sub { redis_cmd($rp, PUBSUB => 'NUMPAT') == 0 }, 5), 'the pattern is released (NUMPAT 0)';
    is $s->{c}->next_event(5)->{event}, 'sse-channels', 'sse-channels';
    expect_only($s->{c}, 'no more feed events', [['feed:9' => 'nine'], ['live:pt:1' => 'one']], ['live:pt:1 one']);
    $applied += 2;
    $s->{c}->close;
};

SKIP: {
    my $curl = `command -v curl 2>/dev/null`;
    chomp $curl;
    skip 'curl with HTTP/2 is not installed', 1 unless $curl && `$curl -V 2>/dev/null` =~ /\bHTTP2\b/;
    subtest 'an HTTP/2 stream is changed like any other (POSTs over HTTP/1.1 and HTTP/2)' => sub {
        my $H = start_nginx(redis => $redis, listen => 'http2', server => q{
            location = /events    { sse_channel $arg_channels; sse_allow "live:**"; sse_user alice;
                                    sse_history on; sse_session on; }
            location = /subscribe { sse_subscribe; sse_allow "live:**"; sse_user alice; }
        });
        my $dir = File::Temp::tempdir(CLEANUP => 1);
        my $curl_bg = sub {
            my ($name, @args) = @_;
            my $pid = fork // die "fork: $!";
            if (!$pid) {
                open STDOUT, '>', "$dir/$name.out" or POSIX::_exit(127);
                open STDERR, '>', '/dev/null';
                { exec {$curl} $curl, '-sN', '--http2-prior-knowledge', '-D', "$dir/$name.head", @args }
                POSIX::_exit(127);
            }
            return $pid;
        };
        my $out = sub { slurp("$dir/$_[0].out") };
        my $pid = $curl_bg->('stream', 'http://127.0.0.1:' . $H->port . '/events?channels=live:h2:1');
        ok wait_until(sub { $out->('stream') =~ /^event: sse-session\ndata: (\S+)\n\n/m }, 5), 'the HTTP/2 stream sends its token';
        my ($token) = $out->('stream') =~ /^event: sse-session\ndata: (\S+)\n\n/m;
        ok wait_subscribed($rp, 'live:h2:1', 1, 5), 'subscribed';
        my $res = change($B, alice => [session => $token // ''], [add => 'live:h2:2']);
        is $res->{status}, 200, 'a change through nginx B (HTTP/1.1): 200';
        ok wait_until(sub { $out->('stream') =~ /^event: sse-channels\ndata: live:h2:1,live:h2:2\n\n/m }, 5),
            'the HTTP/2 stream gets sse-channels';
        my $p2 = $curl_bg->('post', '--data-binary', "session=$token&remove=live:h2:1", 'http://127.0.0.1:' . $H->port . '/subscribe');
        waitpid $p2, 0;
        like slurp("$dir/post.head"), qr{^HTTP/2 200}m, 'a change POSTed over HTTP/2 on the same worker: 200';
        is $out->('post'), "live:h2:2\n", '... listing the channels now';
        ok wait_until(sub { $out->('stream') =~ /^event: sse-channels\ndata: live:h2:2\n\n/m }, 5), 'sse-channels again';
        ok wait_subscribed($rp, 'live:h2:2', 1, 5) && wait_subscribed($rp, 'live:h2:1', 0, 5), 'Redis follows';
        sse_publish($rp, 'live:h2:1', 'gone');
        my $id = sse_publish($rp, 'live:h2:2', 'here');
        ok wait_until(sub { $out->('stream') =~ /^event: live:h2:2\nid: $id\ndata: here\n\n|^id: $id\nevent: live:h2:2\ndata: here\n\n/m }, 5),
            'the event of the added channel arrives' or diag $out->('stream');
        unlike $out->('stream'), qr/data: gone/, 'none of the removed one';
        $applied++;    # (the HTTP/2 POST counts in nginx H's metrics)
        $H->quit;
        waitpid $pid, 0;
        is $? >> 8, 0, 'curl saw a complete HTTP/2 response at quit';
    };
}

# --- grants of the change request ---------------------------------------------------------

SKIP: {
    skip 'the grants come from maps in the streaming nginx (no auth_request): they cannot change under a stream', 1
        unless $HAVE_AUTH_REQUEST;
    subtest "the change request's grants apply, and replace the stream's for its patterns" => sub {
        my $s = open_stream($A, alice => 'live:g:1,feed:*');
        is $s->{status}, 200, 'a stream with live:g:1 and feed:* (alice is granted live:** and feed:*)';
        ok wait_subscribed($rp, 'live:g:1', 1, 5), 'subscribed';
        ok wait_until(sub { redis_cmd($rp, PUBSUB => 'NUMPAT') >= 1 }, 5), 'feed:* pattern-subscribed';
        expect_only($s->{c}, 'it receives every feed', [['feed:1' => 'a'], ['feed:2' => 'b']], ['feed:1 a', 'feed:2 b']);

        # The auth service now grants alice live:g:2, live:g:3 and feed:1 only.
        $auth->write_conf(http => maps(alice => 'live:g:2, live:g:3, feed:1'));
        my @old = $auth->reload;
        ok defined $auth->wait_pids_gone(10, @old), 'the auth service now grants alice live:g:2, live:g:3, feed:1';

        my $res = change_at('/events/subscribe-own', $B, alice => [session => $s->{token}], [add => 'live:g:4']);
        is $res->{status}, 200, 'a control location without sse_allow keeps the stream\'s own grants: add=live:g:4 200';
        is set_of($res->{body}), 'feed:*,live:g:1,live:g:4', '... live:g:4 added';
        $applied++;
        $res = change($B, alice => [session => $s->{token}], [add => 'live:g:2']);
        is $res->{status}, 403, 'with sse_allow: add=live:g:2 -> 403, kept channels are checked against the new grants';
        my ($list) = ($res->{body} // '') =~ /not allowed: (.*?)\n?\z/;
        is_deeply [sort split /,\s*/, $list // ''], ['live:g:1', 'live:g:4'], '... naming the kept channels no longer granted';
        $refused++;
        $res = change($B, alice => [session => $s->{token}], [add => 'live:g:2'], [remove => 'live:g:1,live:g:4']);
        is $res->{status}, 200, 'add=live:g:2 remove=live:g:1,live:g:4 -> 200';
        is set_of($res->{body}), 'feed:*,live:g:2', '... feed:* (overlaps the grant feed:1) and live:g:2';
        $applied++;
        my @ev = grep { $_->{event} eq 'sse-channels' } $s->{c}->events_until(2, 5);
        is scalar(@ev), 2, 'two sse-channels events';
        ok wait_subscribed($rp, 'live:g:2', 1, 5), 'live:g:2 subscribed';
        expect_only($s->{c}, "feed:* now only delivers what the new grants permit (feed:1)",
            [['feed:2' => 'b'], ['live:g:1' => 'x'], ['feed:1' => 'a'], ['live:g:2' => 'two']],
            ['feed:1 a', 'live:g:2 two']);
        $s->{c}->close;

        $auth->write_conf(http => maps());
        @old = $auth->reload;
        ok defined $auth->wait_pids_gone(10, @old), 'the grants of the auth service are restored';
    };
}

# --- no answer, no Redis ----------------------------------------------------------------------

# A node channel the test itself listens to: PUBLISH reaches a subscriber,
# but nobody ever answers.
my $silent_node = sprintf '%08x%08x', int(rand(2**32)), int(rand(2**32));
my $silent = redis_connect($rp);
$silent->cmd(SUBSCRIBE => "sse:node:$silent_node");
my $silent_token = "$silent_node.1." . ('ab' x 16);

subtest 'the owner does not answer: 504 after sse_subscribe_timeout' => sub {
    for my $via ([$A, 'nginx A'], [$B, 'nginx B']) {
        my $t0 = time;
        my $res = change_at('/events/subscribe-1s', $via->[0], alice => [session => $silent_token], [add => 'live:w:1']);
        my $took = time - $t0;
        is $res->{status}, 504, "a change for a node that never answers, through $via->[1]: 504";
        like $res->{body} // '', qr/\Asse: the stream did not answer\n?\z/, '... "sse: the stream did not answer"';
        ok $took >= 0.9 && $took < 2.5, sprintf '... after sse_subscribe_timeout 1s (%.2f s)', $took;
        $timeouts++;
        my $msg = eval { $silent->read_reply };
        ok ref $msg eq 'ARRAY' && $msg->[1] eq "sse:node:$silent_node", 'the change was published on that node\'s channel';
    }
};

subtest 'Redis down: a change that must travel gets 503, a local one applies; back when Redis is' => sub {
    my $s = open_stream($A, alice => 'live:d:1');
    ok wait_subscribed($rp, 'live:d:1', 1, 5), 'a stream on nginx A';
    my $local = conn_on($A, $s->{worker});
    $silent->close;
    $redis->stop;
    ok wait_until(sub { (scrape($B)->{'sse_redis_up{role="commands"}'} // 1) == 0 }, 5), 'nginx B sees Redis down';
    my $t0 = time;
    my $res = change($B, alice => [session => $s->{token}], [add => 'live:d:2']);
    is $res->{status}, 503, 'a change through nginx B: 503 at once' . sprintf(' (%.3f s)', time - $t0);
    like $res->{body} // '', qr/\Asse: .*redis/i, '... saying Redis is unavailable';
    $res = change($local, alice => [session => $s->{token}], [add => 'live:d:3']);
    is $res->{status}, 200, "a change on the stream's own worker is applied (200)";
    my $ev = $s->{c}->next_event(5);
    is $ev && "$ev->{event} " . set_of($ev->{data}), 'sse-channels live:d:1,live:d:3', 'the stream gets sse-channels';
    $unavailable++;
    $applied++;
    $redis->start;
    load_sse_function($redis);
    ok wait_subscribed($rp, 'live:d:3', 1, 10), 'Redis back: the worker subscribes live:d:3 too';
    # While nginx B reconnects, a change through it is refused (503), or its
    # answer can be lost (504: "may or may not have been applied").
    my @statuses;
    ok wait_until(sub {
        push @statuses, change($B, alice => [session => $s->{token}], [add => 'live:d:2'])->{status};
        $statuses[-1] == 200;
    }, 15, 0.2), 'a change through nginx B works again (' . join(', ', @statuses) . ')';
    is_deeply [grep { !/^(?:200|503|504)$/ } @statuses], [], '... after nothing but 503 or 504 answers';
    $unavailable += grep { $_ == 503 } @statuses;
    $timeouts += grep { $_ == 504 } @statuses;
    $applied++;
    ok wait_subscribed($rp, 'live:d:2', 1, 5), 'live:d:2 subscribed';
    # Redis came back empty: the stream says so with sse-gap, as any history
    # stream does. Each applied change (a 504 may have been) sends sse-channels.
    $s->{c}->drain(0.3);
    my @ev = $s->{c}->events_until($s->{c}->pending_events, 0);
    is_deeply [grep { $_->{event} ne 'sse-gap' && $_->{event} ne 'sse-channels' } @ev], [],
        'meanwhile the stream got only sse-gap and sse-channels events';
    my ($last) = reverse grep { $_->{event} eq 'sse-channels' } @ev;
    is $last && set_of($last->{data}), 'live:d:1,live:d:2,live:d:3', 'the last sse-channels lists the three';
    expect_only($s->{c}, 'the stream receives its three channels',
        [['live:d:1' => 1], ['live:d:2' => 2], ['live:d:3' => 3]], ['live:d:1 1', 'live:d:2 2', 'live:d:3 3']);
    $s->{c}->close;
};

# Counts answers into the expected sse_channel_changes_total results.
sub tally {
    for (@_) {
        if    ($_ == 200) { $applied++ }
        elsif ($_ == 404) { $unknown++ }
        elsif ($_ == 503) { $unavailable++ }
        elsif ($_ == 504) { $timeouts++ }
        else              { $refused++ }
    }
}

subtest "a stream whose worker lost Redis is not an unknown session" => sub {
    # nginx C reaches Redis through a relay the test can cut: its stream stays
    # open (as streams do while Redis is away), but its worker no longer
    # listens on its node channel.
    my $proxy = start_tcp_proxy(to => $rp);
    my $C = start_nginx(%conf, workers => 1, redis_url => 'redis://127.0.0.1:' . $proxy->port);
    ok wait_until(sub { @{ redis_cmd($rp, PUBSUB => CHANNELS => 'sse:node:*') } == 5 }, 10),
        'nginx C (one worker, through the relay) listens on its node channel';
    my $s = open_stream($C, alice => 'live:c:1');
    ok wait_subscribed($rp, 'live:c:1', 1, 5), 'a stream on nginx C';
    $proxy->stop;
    ok wait_subscribed($rp, 'live:c:1', 0, 5), 'the relay is cut: nginx C is off Redis';
    $s->{c}->drain(0.3);
    ok !$s->{c}{ended}, 'its stream stays open';
    my $res = change($B, alice => [session => $s->{token}], [add => 'live:c:2']);
    tally($res->{status});
    # Nobody listens on the node channel of a worker cut off Redis: the
    # sender cannot tell it from a worker that is gone (README: 404).
    is $res->{status}, 404, 'a change through nginx B for a stream whose worker is off Redis: 404';
    $proxy->start;
    ok wait_subscribed($rp, 'live:c:1', 1, 10), 'the relay is back: nginx C resubscribes';
    my @statuses;
    ok wait_until(sub {
        push @statuses, change($B, alice => [session => $s->{token}], [add => 'live:c:2'])->{status};
        $statuses[-1] == 200;
    }, 10, 0.2), 'a change through nginx B applies (' . join(', ', @statuses) . ')';
    tally(@statuses);
    ok wait_subscribed($rp, 'live:c:2', 1, 5), 'live:c:2 subscribed';
    $s->{c}->drain(0.3);
    my ($last) = reverse grep { $_->{event} eq 'sse-channels' } $s->{c}->events_until($s->{c}->pending_events, 0);
    is $last && set_of($last->{data}), 'live:c:1,live:c:2', 'the stream has both channels';
    expect_only($s->{c}, 'and receives both', [['live:c:1' => 1], ['live:c:2' => 2]], ['live:c:1 1', 'live:c:2 2']);
    $s->{c}->close;
    $C->stop;
    $proxy->stop;
};

# --- metrics ------------------------------------------------------------------------------

subtest 'sse_channel_changes_total counts the changes' => sub {
    my $after = changes_total();
    my %delta = map { $_ => ($after->{$_} // 0) - ($changes_before->{$_} // 0) } keys %$after;
    is $delta{applied}, $applied, "sse_channel_changes_total{result=\"applied\"} went up by the $applied applied changes";
    is $delta{refused}, $refused, "{result=\"refused\"} by the $refused refused ones (400, 403, 405, 413)";
    is $delta{unknown_session}, $unknown, "{result=\"unknown_session\"} by the $unknown answered 404";
    is $delta{timeout}, $timeouts, "{result=\"timeout\"} by the $timeouts answered 504";
    is $delta{unavailable}, $unavailable, "{result=\"unavailable\"} by the $unavailable answered 503";
    is_deeply [sort keys %$changes_before], [qw(applied refused timeout unavailable unknown_session)],
        'the result label takes these values, each exposed from the start'
        or diag explain $changes_before;
};

for my $n ([$A, 'A'], [$B, 'B']) {
    is_deeply [$n->[0]->alerts], [], "no [alert] or [emerg] in the error.log of nginx $n->[1]";
    my @noise = grep { /\[(?:info|notice|warn|error)\].*sse:.*(?:\bchange|\bsession\b|sse_subscribe)/i } split /\n/, $n->[0]->error_log;
    is_deeply \@noise, [], "nginx $n->[1] logs no line per change at info level or above";
}

done_testing;
