# Access control when a stream opens: the auth service's answer (through
# auth_request) decides who the user is and which channels it may read.
# 401/403/500 from auth reach the client and open nothing; refused channels
# give 403 naming them (or, with sse_refused drop, an sse-refused event);
# headers and query strings sent by the client cannot widen the grants; names
# that try to escape a grant are refused or matched exactly; pattern
# subscriptions are filtered per message; sse: channels are out of reach; and
# nginx -t warns about open locations.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

# auth_request is not in every nginx build (ngx's vendored nginx lacks it).
my $HAVE_AUTH_REQUEST = have_auth_request();
my $NO_AUTH_REQUEST = "$SSETest::NGINX_BIN is built without http_auth_request_module";
diag "$NO_AUTH_REQUEST: auth-service status tests are skipped, grants come from a map instead"
    unless $HAVE_AUTH_REQUEST;

my $redis = start_redis();
my $rp    = $redis->port;
my $AUTH_PORT = free_port();

# The auth service: a second server block of the same nginx. Tokens name the
# user; "forbidden", "broken" and "gone" make it answer 403, 500 and 404.
my $maps = <<'CONF';
    map $http_authorization $auth_user {
        "Bearer alice"    alice;
        "Bearer bob"      bob;
        "Bearer root"     root;
        "Bearer nogrants" nogrants;
        "Bearer weird"    "bad user!";
        default           "";
    }
    map $http_authorization $auth_grants {
        "Bearer alice"    "dashboards:7, logs:w1:*, alerts:alice";
        "Bearer bob"      "dashboards:*, alerts:bob";
        "Bearer root"     "**";
        "Bearer weird"    "dashboards:*";
        default           "";
    }
CONF
my $auth_server = <<"CONF";
    server {
        listen 127.0.0.1:$AUTH_PORT;
        location = /check {
            if (\$http_authorization = "Bearer forbidden") { return 403; }
            if (\$http_authorization = "Bearer broken")    { return 500; }
            if (\$http_authorization = "Bearer gone")      { return 404; }
            if (\$auth_user = "") { return 401; }
            add_header X-Datashop-User \$auth_user;
            add_header X-Datashop-Channels \$auth_grants;
            return 204;
        }
    }
CONF

# What every protected location has: the grants and the user, from the auth
# response (or, without auth_request, straight from the maps).
my $guard = auth_guard() . "\n";

my $nginx = start_nginx(redis => $redis, workers => 1,
    http => $maps . ($HAVE_AUTH_REQUEST ? $auth_server : ''),
    server => ($HAVE_AUTH_REQUEST ? auth_location($AUTH_PORT) : '') . qq{
        location = /stream       { $guard sse_channel \$arg_channels; sse_channel_patterns on; }
        location = /stream-drop  { $guard sse_channel \$arg_channels; sse_channel_patterns on; sse_refused drop; }
        location = /stream-nopat { $guard sse_channel \$arg_channels; }
});
my $port = $nginx->port;

sub bearer { return { Authorization => "Bearer $_[0]", %{ $_[1] || {} } } }

# Opens a stream as $user and waits for its response head.
sub open_as {
    my ($user, $query, %opt) = @_;
    my $c = sse_connect($port, ($opt{path} || '/stream') . "?$query", headers => bearer($user, $opt{headers}));
    $c->status(5);
    return $c;
}

sub get_as {
    my ($user, $query, %opt) = @_;
    return http_request($port, 'GET', ($opt{path} || '/stream') . "?$query",
        headers => { Accept => 'text/event-stream', %{ $user ? bearer($user, $opt{headers}) : $opt{headers} || {} } });
}

# Channels (other than the module's own sse:control) and patterns Redis has
# subscribers for, and how many SUBSCRIBE/PSUBSCRIBE commands it ever ran.
sub subscribed_now {
    my $channels = redis_cmd($rp, PUBSUB => 'CHANNELS');
    return ([sort grep { $_ ne 'sse:control' } @$channels], redis_cmd($rp, PUBSUB => 'NUMPAT'));
}

sub subscribe_calls {
    my $info = redis_cmd($rp, INFO => 'commandstats');
    my $n = 0;
    $n += $1 while $info =~ /^cmdstat_p?subscribe:calls=(\d+)/mg;
    return $n;
}

sub quiet {
    return wait_until(sub { my ($ch, $np) = subscribed_now(); !@$ch && !$np }, 5);
}

# Runs $code (requests that must open nothing), then proves that they did not
# subscribe anything, even for a moment: a granted stream opened afterwards
# reaches Redis after them (one worker, one Redis connection), and it must be
# the only SUBSCRIBE Redis saw.
sub opens_nothing {
    my ($what, $code) = @_;
    ok quiet(), "$what: nothing subscribed before";
    my $before = subscribe_calls();
    $code->();
    my $barrier = open_as(bob => 'channels=alerts:bob');
    is $barrier->status, 200, "$what: a granted stream opens after them";
    ok wait_subscribed($rp, 'alerts:bob', 1, 5), "$what: ... and is subscribed";
    my ($ch, $np) = subscribed_now();
    is_deeply $ch, ['alerts:bob'], "$what: no other channel is subscribed in Redis (PUBSUB CHANNELS)";
    is $np, 0, "$what: no pattern is subscribed in Redis (PUBSUB NUMPAT)";
    is subscribe_calls() - $before, 1, "$what: Redis saw no SUBSCRIBE/PSUBSCRIBE but the granted stream's";
    $barrier->close;
    ok quiet(), "$what: released afterwards";
}

sub names { return [map { "$_->{event} $_->{data}" } @_] }

# Publishes [channel, data] pairs in order, then expects exactly @$want
# ("channel data") on $c. The last publication must be one that is wanted,
# so that everything published before it has been seen when it arrives.
sub expect_only {
    my ($c, $what, $publish, $want) = @_;
    redis_cmd($rp, PUBLISH => @$_) for @$publish;
    my @got = $c->events_until(scalar @$want, 5);
    $c->drain(0.1);
    push @got, $c->events_until($c->pending_events, 0);
    is_deeply names(@got), $want, $what;
}

# --- the auth service's answer ------------------------------------------------

SKIP: {
    skip $NO_AUTH_REQUEST, 1 unless $HAVE_AUTH_REQUEST;
    subtest 'auth answers 401, 403, 500: same status, no stream, nothing subscribed' => sub {
        my @cases = (
            [undef,       401, 'no Authorization header'],
            ['stranger',  401, 'unknown token (auth answers 401)'],
            ['forbidden', 403, 'auth answers 403'],
            ['broken',    500, 'auth answers 500'],
            ['gone',      500, 'auth answers 404 (any other status)'],
        );
        opens_nothing('refused by auth', sub {
            for my $case (@cases) {
                my ($token, $status, $what) = @$case;
                for my $channels ('alerts:bob', 'dashboards:*') {
                    my $res = get_as($token, "channels=$channels");
                    is $res->{status}, $status, "$what, channels=$channels -> $status";
                    unlike $res->{headers}{'content-type'} // '', qr{event-stream}, "$what: not an event stream";
                    unlike $res->{body} // '', qr/^retry:/m, "$what: no SSE body";
                    ok $res->{complete}, "$what: the response is complete (nothing held open)";
                }
                # The same with a streaming client: the answer ends at once.
                my $c = sse_connect($port, '/stream?channels=alerts:bob', headers => $token ? bearer($token) : {});
                is $c->status, $status, "$what: streaming client gets $status";
                ok $c->wait_eof(3), "$what: and the response ends";
                is $c->pending_events, 0, "$what: without any event";
            }
        });

        # A 2xx answer with an invalid user id, or granting nothing.
        opens_nothing('no usable identity', sub {
            my $res = get_as(weird => 'channels=dashboards:1');
            is $res->{status}, 403, 'auth names an invalid user id ("bad user!") -> 403';
            like $nginx->error_log, qr/\[error\].*invalid user id/, '... and it is logged';
            $res = get_as(nogrants => 'channels=dashboards:1');
            is $res->{status}, 403, 'auth grants nothing -> 403 for any channel';
            like $res->{body}, qr/not allowed: dashboards:1/, '... naming it';
        });

        my $c = open_as(alice => 'channels=alerts:alice');
        is $c->status, 200, 'the same location streams for a user the auth service accepts';
        ok wait_subscribed($rp, 'alerts:alice', 1, 5), 'subscribed';
        expect_only($c, 'events arrive', [['alerts:alice' => 'hi']], ['alerts:alice hi']);
        $c->close;
        ok quiet(), 'released';
    };
}

# --- channels that are not granted -----------------------------------------------

subtest 'a channel that is not granted: 403 naming it, nothing opens' => sub {
    opens_nothing('refused channels', sub {
        my $res = get_as(alice => 'channels=dashboards:8');
        is $res->{status}, 403, 'alice asks dashboards:8 (granted dashboards:7) -> 403';
        like $res->{headers}{'content-type'} // '', qr{^text/plain\b}, 'text/plain body';
        is $res->{body}, "sse: not allowed: dashboards:8\n", 'the body names the refused channel';

        $res = get_as(alice => 'channels=dashboards:7,alerts:bob,dashboards:8');
        is $res->{status}, 403, 'one granted and two refused channels -> 403 (deny is all or nothing)';
        like $res->{body}, qr/^sse: not allowed: /, 'body "sse: not allowed: ..."';
        my ($list) = ($res->{body} // '') =~ /^sse: not allowed: (.*)\n\z/;
        is_deeply [sort split /,\s*/, $list // ''], ['alerts:bob', 'dashboards:8'], 'it names both refused ones, and only them';

        $res = get_as(alice => 'channels=metrics:*');
        is $res->{status}, 403, 'a pattern that overlaps no grant (metrics:*) -> 403';
        like $res->{body}, qr/not allowed: metrics:\*/, '... naming it';

        $res = get_as(bob => 'channels=alerts:alice');
        is $res->{status}, 403, "bob asks alice's alerts -> 403";
    });
};

subtest 'sse_refused drop: sse-refused event, then only granted events' => sub {
    my $c = open_as(alice => 'channels=dashboards:7,dashboards:8,alerts:bob,metrics:*', path => '/stream-drop');
    is $c->status, 200, 'drop mode: the stream opens';
    my $first = $c->next_event(5);
    is $first && $first->{event}, 'sse-refused', 'the first event is sse-refused';
    is_deeply [sort split /,/, $first ? $first->{data} : ''], ['alerts:bob', 'dashboards:8', 'metrics:*'],
        'its data lists the refused channels, comma-separated';
    ok wait_subscribed($rp, 'dashboards:7', 1, 5), 'the granted channel is subscribed';
    my ($ch, $np) = subscribed_now();
    is_deeply $ch, ['dashboards:7'], 'the refused channels are not subscribed';
    is $np, 0, 'the refused pattern is not subscribed';
    expect_only($c, 'only the granted channel delivers',
        [['dashboards:8' => 'x'], ['alerts:bob' => 'x'], ['metrics:1' => 'x'], ['dashboards:7' => 'seven']],
        ['dashboards:7 seven']);
    $c->close;
    ok quiet(), 'released';

    $c = open_as(alice => 'channels=dashboards:7', path => '/stream-drop');
    is $c->status, 200, 'drop mode, nothing refused: stream opens';
    ok wait_subscribed($rp, 'dashboards:7', 1, 5), 'subscribed';
    expect_only($c, 'no sse-refused event when nothing is refused', [['dashboards:7' => 'only']], ['dashboards:7 only']);
    $c->close;
    ok quiet(), 'released';

    opens_nothing('drop mode, nothing granted', sub {
        my $res = get_as(alice => 'channels=dashboards:8,alerts:bob', path => '/stream-drop');
        is $res->{status}, 403, 'drop mode with no granted channel -> 403';
        like $res->{body}, qr/^sse: not allowed: .*dashboards:8/, '... naming the refused channels';
    });
};

# --- what the client sends cannot widen the grants ------------------------------

subtest "the client's own headers and query cannot widen alice's grants" => sub {
    my $forged = { 'X-Datashop-User' => 'bob', 'X-Datashop-Channels' => 'dashboards:*, alerts:bob, **' };
    opens_nothing('forged headers', sub {
        for my $q ('channels=dashboards:8', 'channels=alerts:bob', 'channels=dashboards:7,dashboards:8',
                   'channels=other:x', 'channels=dashboards:8&channels=dashboards:7')
        {
            my $res = get_as(alice => $q, headers => $forged);
            is $res->{status}, 403, "alice with forged X-Datashop-* headers asks $q -> 403";
        }
        my $res = get_as(alice => 'channels=dashboards:8', headers => { 'X-Datashop-User' => 'bob' });
        is $res->{status}, 403, 'forged X-Datashop-User alone -> 403';
        $res = get_as(alice => 'channels=dashboards:8&sse_grants=dashboards:8&sse_user=bob');
        is $res->{status}, 403, 'query arguments named like the variables -> 403';
    });

    # Allowed subscriptions still carry alice's grants and identity only.
    my $c = open_as(alice => 'channels=dashboards:*,alerts:alice', headers => $forged);
    is $c->status, 200, 'alice (forged headers) may subscribe to dashboards:* (it overlaps dashboards:7)';
    ok wait_subscribed($rp, 'alerts:alice', 1, 5), 'subscribed';
    ok wait_until(sub { (subscribed_now())[1] == 1 }, 5), 'dashboards:* is pattern-subscribed';
    expect_only($c, 'she receives dashboard 7 only, and audience envelopes for alice only',
        [
            ['dashboards:8'  => 'eight'],
            ['dashboards:70' => 'seventy'],
            ['dashboards:7'  => "\x1esse1 to=bob\nfor bob"],
            ['alerts:bob'    => 'bob alert'],
            ['dashboards:7'  => "\x1esse1 to=carol,alice\nfor alice"],
            ['dashboards:7'  => 'seven'],
        ],
        ['dashboards:7 for alice', 'dashboards:7 seven']);
    $c->close;
    ok quiet(), 'released';

    # The same subscription as bob really is wider: the filter above was alice's.
    $c = open_as(bob => 'channels=dashboards:*');
    is $c->status, 200, 'bob subscribes to dashboards:*';
    ok wait_until(sub { (subscribed_now())[1] == 1 }, 5), 'pattern-subscribed';
    expect_only($c, 'bob receives every dashboard, and envelopes for bob',
        [['dashboards:8' => 'eight'], ['dashboards:7' => "\x1esse1 to=alice\nfor alice"],
         ['dashboards:7' => "\x1esse1 to=bob\nfor bob"], ['dashboards:7:x' => 'deeper'], ['dashboards:7' => 'seven']],
        ['dashboards:8 eight', 'dashboards:7 for bob', 'dashboards:7 seven']);
    $c->close;
    ok quiet(), 'released';
};

# --- names that try to escape a grant ---------------------------------------------

subtest 'escape attempts against the grant logs:w1:*: refused or matched exactly' => sub {
    my $x121 = 'x' x 121;    # logs:w1: + 121 bytes = 129
    my @refused = (
        ['logs:w1:x:y',        403, 'one segment too many'],
        ['logs:w10:x',         403, 'a longer workspace segment (w10)'],
        ['logs:w1',            403, 'one segment too few'],
        ['LOGS:w1:x',          403, 'other case (matching is case-sensitive)'],
        ['logs:W1:x',          403, 'other case in the middle'],
        ['logs::x',            400, 'an empty segment'],
        ['logs:w1:',           400, 'a trailing :'],
        ['logs:w1:%EF%BD%98',  400, 'a fullwidth x (U+FF58, percent-encoded)'],
        ["logs:w1:\xEF\xBD\x98", 400, 'a fullwidth x (U+FF58, raw UTF-8 in the URL)'],
        ['%E2%85%BCogs:w1:x',  400, 'a small roman numeral fifty for the l (U+217C)'],
        ["logs:w1:$x121",      400, 'a 129-byte name'],
        ['logs%253Aw1',        400, 'a double-encoded : (decoded once only, leaves a %)'],
        ['logs:w1:x%00',       400, 'an encoded NUL byte'],
        ['logs:w1:x%0Ay',      400, 'an encoded newline'],
        ['logs:w1:x%2Fy',      400, 'an encoded /'],
        ['sse:control',        400, 'the reserved control channel'],
        ['sse%3Acontrol',      400, 'the reserved control channel, percent-encoded'],
        ['sse:*',              400, 'a pattern over the reserved channels'],
    );
    opens_nothing('escape attempts', sub {
        for my $case (@refused) {
            my ($name, $status, $what) = @$case;
            my $res = get_as(alice => "channels=$name");
            is $res->{status}, $status, "$what -> $status";
            if ($status == 403) {
                like $res->{body}, qr/^sse: not allowed: \Q$name\E\n\z/, "$what: body names it";
            } elsif ($name !~ /[\x80-\xff]/) {
                like $res->{headers}{'content-type'} // '', qr{^text/plain\b}, "$what: text/plain reason";
            }
        }
    });

    # Accepted names: each must deliver the channel it names and nothing near it.
    my $x120 = 'x' x 120;
    my @accepted = (
        ['logs%3Aw1%3Ax', 'logs:w1:x', 'percent-encoded colons, decoded once -> logs:w1:x',
            [['logs%3Aw1%3Ax' => 'literal'], ['logs:w1:x:y' => 'deeper'], ['logs:w1:x' => 'exact']],
            ['logs:w1:x exact']],
        ["logs:w1:$x120", "logs:w1:$x120", 'a 128-byte name under the grant',
            [["logs:w1:$x120" => 'long']], ["logs:w1:$x120 long"]],
        ['logs:w1:*', undef, 'the granted pattern itself',
            [['logs:w1:a:b' => 'deeper'], ['logs:w10:a' => 'w10'], ['logs:w1' => 'short'], ['logs:w1:a' => 'a']],
            ['logs:w1:a a']],
        ['logs:*:x', undef, 'a wider pattern logs:*:x (overlaps the grant): only logs:w1:x passes',
            [['logs:w2:x' => 'w2'], ['logs:w1:y:x' => 'deep'], ['logs:w10:x' => 'w10'], ['logs:w1:x' => 'w1']],
            ['logs:w1:x w1']],
        ['logs:**', undef, 'logs:** (overlaps the grant): only logs:w1:<one segment> passes',
            [['logs:w1:a:b' => 'deep'], ['logs:w2:a' => 'w2'], ['logs:x' => 'short'], ['logs:w1:b' => 'b']],
            ['logs:w1:b b']],
    );
    for my $case (@accepted) {
        my ($query, $channel, $what, $publish, $want) = @$case;
        my $c = open_as(alice => "channels=$query");
        is $c->status, 200, "$what: 200";
        if (defined $channel) {
            ok wait_subscribed($rp, $channel, 1, 5), "$what: Redis channel $channel subscribed";
            my ($ch, $np) = subscribed_now();
            is_deeply $ch, [$channel], "$what: and nothing else";
        } else {
            ok wait_until(sub { (subscribed_now())[1] == 1 }, 5), "$what: one pattern subscribed";
        }
        expect_only($c, "$what: events", $publish, $want);
        $c->close;
        ok quiet(), "$what: released";
    }
};

# --- pattern subscriptions ----------------------------------------------------------

subtest 'patterns: exact semantics, overlaps refused, only where enabled' => sub {
    # root is granted **: only the subscription's own pattern filters here.
    my $c = open_as(root => 'channels=dashboards:*');
    is $c->status, 200, 'root (granted **): dashboards:*';
    ok wait_until(sub { (subscribed_now())[1] == 1 }, 5), 'pattern-subscribed (PSUBSCRIBE)';
    expect_only($c, 'dashboards:* matches one segment only',
        [['dashboards:7:x' => 'deep'], ['dashboards' => 'bare'], ['dashboards:1:2:3' => 'deeper'],
         ['dashboardsX:1' => 'other'], ['dashboards:1' => 'one'], ['dashboards:x.y' => 'dotted']],
        ['dashboards:1 one', 'dashboards:x.y dotted']);
    $c->close;
    ok quiet(), 'released';

    opens_nothing('overlaps and disabled patterns', sub {
        for my $q ('dashboards:*,dashboards:7', 'dashboards:7,dashboards:*', 'logs:w1:*,logs:**', '**,alerts:bob') {
            my $res = get_as(bob => "channels=$q");
            is $res->{status}, 400, "overlapping subscriptions $q -> 400";
            like $res->{body}, qr/overlap/, '... saying they overlap';
        }
        my $res = get_as(bob => 'channels=dashboards:*', path => '/stream-nopat');
        is $res->{status}, 400, 'dashboards:* where sse_channel_patterns is off -> 400 (although granted)';
        like $res->{body}, qr/pattern/, '... saying patterns are not served';
        $res = get_as(bob => 'channels=dashboards:**', path => '/stream-nopat');
        is $res->{status}, 400, 'dashboards:** there -> 400 too';
        $res = get_as(bob => 'channels=dashboards:7*');
        is $res->{status}, 400, 'a * inside a segment (dashboards:7*) -> 400';
        $res = get_as(bob => 'channels=**:x');
        is $res->{status}, 400, '** not as the last segment -> 400';
    });

    $c = open_as(bob => 'channels=dashboards:7,dashboards:7', path => '/stream-nopat');
    is $c->status, 200, 'the same channel twice is merged, not an overlap (200)';
    ok wait_subscribed($rp, 'dashboards:7', 1, 5), 'subscribed';
    expect_only($c, 'each event once', [['dashboards:7' => 'once']], ['dashboards:7 once']);
    $c->close;
    ok quiet(), 'released';
};

subtest 'sse: channels never reach clients, even through ** or *:*' => sub {
    for my $case (['**' => ['app:x:y deep', 'app:x visible']], ['*:*' => ['app:x visible']]) {
        my ($pattern, $want) = @$case;
        my $c = open_as(root => "channels=$pattern");
        is $c->status, 200, "root (granted **) subscribes to $pattern";
        ok wait_until(sub { (subscribed_now())[1] == 1 }, 5), 'pattern-subscribed';
        expect_only($c, "$pattern: nothing from sse:*",
            [['sse:secret' => 'hidden'], ['sse:control' => 'revoke nobody'], ['sse:a:b' => 'hidden'],
             ['sse:x' => "\x1esse1 to=root\nhidden"], ['app:x:y' => 'deep'], ['app:x' => 'visible']],
            $want);
        $c->close;
        ok quiet(), 'released';
    }
};

# --- nginx -t -------------------------------------------------------------------------

subtest 'nginx -t warns about locations whose channels come from the client without sse_allow' => sub {
    my @warn = (
        ['location /x { sse_channel $arg_channels; }', '/x', '$arg_channels'],
        ['location /hdr { sse_channel $http_x_channels; }', '/hdr', '$http_x_channels'],
        ['location /ck { sse_channel logs:$cookie_ws; }', '/ck', '$cookie_ws'],
        ['location /br { sse_channel ${arg_c}:x; }', '/br', '${arg_c}'],
    );
    for my $case (@warn) {
        my ($server, $loc, $var) = @$case;
        my ($rc, $out) = nginx_test_conf(server => $server);
        is $rc, 0, "$var without sse_allow: nginx -t still succeeds" or diag $out;
        my @lines = grep { /\[warn\]/ && /sse_allow/ } split /\n/, $out;
        is scalar(@lines), 1, "$var: one [warn] line mentioning sse_allow" or diag $out;
        like $lines[0] // '', qr/"\Q$loc\E"/, "$var: it names the location $loc";
    }

    my ($rc, $out) = nginx_test_conf(server => q{
        location /open { sse_channel $arg_channels; }
        location /safe { sse_channel $arg_channels; sse_allow $http_x_grants_from_auth; }
    });
    my @lines = grep { /\[warn\]/ && /sse/ } split /\n/, $out;
    is scalar(@lines), 1, 'two locations, one protected: exactly one warning' or diag $out;
    like $lines[0] // '', qr{"/open"}, '... for the open one';
    unlike $lines[0] // '', qr{"/safe"}, '... not for the protected one';

    for my $case (
        ['with sse_allow', server => 'location /x { sse_channel $arg_channels; sse_allow $http_x_g; }'],
        ['with sse_allow inherited from the server', server => 'sse_allow dashboards:*; location /x { sse_channel $arg_channels; }'],
        ['with sse_allow inherited from http', http => 'sse_allow dashboards:*;', server => 'location /x { sse_channel $arg_channels; }'],
        ['with literal channels', server => 'location /x { sse_channel news alerts:x "a,b"; }'],
        ['with channels from a non-client variable', server => 'location /x { sse_channel host:$server_port; }'],
    ) {
        my ($what, %conf) = @$case;
        my ($rc, $out) = nginx_test_conf(%conf);
        is $rc, 0, "$what: nginx -t succeeds" or diag $out;
        is_deeply [grep { /\[warn\]/ } split /\n/, $out], [], "$what: no warning";
    }

    for my $case (['sse_allow bad*x;', 'bad*x'], ['sse_allow "dashboards:7, **:x";', '**:x'],
                  ['sse_allow a::b;', 'a::b'])
    {
        my ($directive, $bad) = @$case;
        my ($rc, $out) = nginx_test_conf(server => "location /x { sse_channel \$arg_channels; $directive }");
        isnt $rc, 0, "invalid literal grant: $directive fails nginx -t";
        like $out, qr/\[emerg\].*sse_allow/, '... naming sse_allow' or diag $out;
        like $out, qr/\Q$bad\E/, "... and the bad pattern $bad";
    }
};

is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
