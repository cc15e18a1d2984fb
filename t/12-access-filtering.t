# Per-message filtering: 50 users with different grants all subscribe to the
# pattern dashboards:*; messages on every dashboard, audience envelopes to
# random subsets of users, empty envelopes, malformed envelopes and channels
# the pattern must not match are published; each user must receive exactly
# the events its grants and the audiences allow, each once, in publish order.
# Once with one worker, once with two.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use List::Util qw(shuffle);
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $USERS      = 50;
my $PER_DASH   = 5;
my $ENVELOPES  = 20;

my $seed = $ENV{SSE_TEST_SEED} // (time ^ $$) % 100000;
srand $seed;
note "random audiences from seed $seed (SSE_TEST_SEED=$seed to repeat)";

my $HAVE_AUTH_REQUEST = have_auth_request();
diag "$SSETest::NGINX_BIN is built without http_auth_request_module: grants come from a map in the"
    . " streaming location instead of an auth service" unless $HAVE_AUTH_REQUEST;

# --- the users and what they may read -------------------------------------------------
# u<i> (token t<i>) is granted dashboards:<i> and dashboards:<i+1 mod 50>;
# every tenth user (u0, u10, ...) dashboards:*, u5, u15, ... dashboards:**
# (which reaches deeper channels, but the subscription dashboards:* does
# not); u17 also dashboards:17:* (deeper only); u13 also an invalid pattern
# (ignored). Separators vary: ", ", " " and ",".

sub grants_of {
    my ($i) = @_;
    my @g = ("dashboards:$i", 'dashboards:' . (($i + 1) % $USERS));
    push @g, 'dashboards:*'    if $i % 10 == 0;
    push @g, 'dashboards:**'   if $i % 10 == 5;
    push @g, 'dashboards:17:*' if $i == 17;
    push @g, 'bad*grant'       if $i == 13;
    return join((', ', ' ', ',')[$i % 3], @g);
}

# The model: may user $i receive an event published on $channel?
sub may_read {
    my ($i, $channel) = @_;
    my ($d) = $channel =~ /^dashboards:([^:]+)\z/ or return 0;    # the subscription: one segment
    return 1 if $i % 10 == 0 || $i % 10 == 5;
    return $d eq $i || $d eq ($i + 1) % $USERS;
}

my $user_map  = join '', map { qq{        "Bearer t$_" u$_;\n} } 0 .. $USERS - 1;
my $grant_map = join '', map { qq{        "Bearer t$_" "} . grants_of($_) . qq{";\n} } 0 .. $USERS - 1;
my $maps = <<"CONF";
    map \$http_authorization \$auth_user {
$user_map        default "";
    }
    map \$http_authorization \$auth_grants {
$grant_map        default "";
    }
CONF

# --- the messages -----------------------------------------------------------------------
# Each: { channel, payload, data (what a recipient sees), audience (undef:
# everyone allowed; [users]; 'none': nobody) }.

my @messages;
for my $d (0 .. $USERS - 1) {
    push @messages, map { { channel => "dashboards:$d", payload => "d$d-$_", data => "d$d-$_" } } 1 .. $PER_DASH;
}
for my $n (1 .. $ENVELOPES) {
    my $d = int rand $USERS;
    # Candidates: the two narrow users granted dashboard d, two that are not,
    # two wide users, one at random; each is in the audience with p = 1/2.
    my @cand = ($d, ($d + $USERS - 1) % $USERS, ($d + 1) % $USERS, ($d + $USERS - 2) % $USERS,
                10 * int(rand 5), 10 * int(rand 5) + 5, int rand $USERS);
    my %to = map { ("u$_" => 1) } grep { rand() < 0.5 } @cand;
    $to{"u$cand[0]"} = 1 unless %to;
    $to{ghost} = 1 if $n % 4 == 0;                        # a user nobody is
    my @names = shuffle sort keys %to;
    push @messages, {
        channel  => "dashboards:$d",
        payload  => "\x1esse1 to=" . join(',', @names) . "\nenv$n for " . join(',', @names),
        data     => "env$n for " . join(',', @names),
        audience => \@names,
    };
}
# The empty envelope: for everyone, and the only way to send a payload that
# itself starts with 0x1E.
push @messages, { channel => 'dashboards:3', payload => "\x1esse1\n\x1eraw3", data => "\x1eraw3" },
                { channel => 'dashboards:40', payload => "\x1esse1\nplain40", data => 'plain40' };
# Malformed envelopes: delivered to nobody (and logged).
my @malformed = (
    ['dashboards:1',  "\x1esse1 to=u1",                  'no newline after the header'],
    ['dashboards:2',  "\x1esse1 cc=u2\nmal2",            'an unknown field'],
    ['dashboards:10', "\x1esse2 to=u10\nmal10",          'an unknown version'],
    ['dashboards:11', "\x1esse1 to=u11,bad*user\nmal11", 'an invalid user id'],
    ['dashboards:12', "\x1esse1 to=\nmal12",             'an empty audience'],
    ['dashboards:20', "\x1e",                            'the mark alone'],
);
push @messages, map { { channel => $_->[0], payload => $_->[1], data => $_->[1], audience => 'none' } } @malformed;
# Channels that Redis' glob dashboards:* matches but the pattern does not.
push @messages, map { { channel => $_, payload => "deep $_", data => "deep $_" } }
    'dashboards:7:x', 'dashboards:0:a:b', 'dashboards:5:x', 'dashboards:17:x';

@messages = shuffle @messages;
# Per channel, the publish order must be kept: renumber nothing, but note
# the end markers, published last on every dashboard.
push @messages, map { { channel => "dashboards:$_", payload => 'end', data => 'end' } } 0 .. $USERS - 1;

sub expected_for {
    my ($i) = @_;
    return map { "$_->{channel} $_->{data}" } grep {
        my $aud = $_->{audience};
        may_read($i, $_->{channel})
            && (!defined $aud || (ref $aud && grep { $_ eq "u$i" } @$aud));
    } @messages;
}

# --- one run ------------------------------------------------------------------------------

my $redis = start_redis();
my $rp    = $redis->port;

sub run_with_workers {
    my ($workers) = @_;
    my $auth_port = free_port();
    # The auth service is a second server block of the same nginx.
    my $http = $maps . ($HAVE_AUTH_REQUEST ? "    server {\n        listen 127.0.0.1:$auth_port;"
        . auth_check_location() . "    }\n" : '');
    my $server = ($HAVE_AUTH_REQUEST ? auth_location($auth_port) : '') . qq{
        location = /stream {${\ auth_guard() }
            sse_channel \$arg_channels;
            sse_channel_patterns on;
        }};
    # reuseport spreads the streams over the workers.
    my $nginx = start_nginx(redis => $redis, workers => $workers, listen => 'reuseport', http => $http,
        server => $server);
    my $port = $nginx->port;

    my @clients = map { sse_connect($port, '/stream?channels=dashboards:*',
        headers => { Authorization => "Bearer t$_" }) } 0 .. $USERS - 1;
    my $open = wait_clients(\@clients, sub { length $_[0]->body_head >= 13 }, 15);
    is $open, $USERS, "$USERS streams open";
    is scalar(grep { $_->status(0) == 200 } @clients), $USERS, 'all answered 200';

    # Every worker that holds streams pattern-subscribes once.
    my $psubscribed = sub { scalar grep { ($_->{psub} // 0) > 0 } $redis->clients };
    ok wait_until(sub { $psubscribed->() == $workers }, 10), "each of the $workers worker(s) PSUBSCRIBEd"
        or diag 'Redis connections with a pattern: ' . $psubscribed->();
    is redis_cmd($rp, PUBSUB => 'NUMPAT'), 1, 'one pattern in Redis (dashboards:*)';

    my $mark = $nginx->error_log_mark;
    my $t0 = time;
    my $conn = redis_connect($rp);
    my @replies = $conn->pipeline(map { [PUBLISH => $_->{channel}, $_->{payload}] } @messages);
    $conn->close;
    my @short = grep { $replies[$_] ne $workers } 0 .. $#messages;
    is scalar(@short), 0, scalar(@messages) . " messages published, each to the $workers worker(s)"
        or diag "$messages[$_]{channel}: $replies[$_]" for @short[0 .. ($#short < 4 ? $#short : 4)];

    # Every message before the end markers has been handled once a client has
    # all the end markers it may see (one Redis connection per worker, in order).
    my @want = map { [expected_for($_)] } 0 .. $USERS - 1;
    my @ends = map { my $i = $_; scalar grep { /^dashboards:\d+ end\z/ } @{ $want[$i] } } 0 .. $USERS - 1;
    my @seen = (0) x $USERS;
    my @scan = (0) x $USERS;
    my %index = map { ($clients[$_] => $_) } 0 .. $USERS - 1;
    my $done = wait_clients(\@clients, sub {
        my ($c) = @_;
        my $i = $index{$c};
        my $ev = $c->{events};
        while ($scan[$i] < @$ev) { $seen[$i]++ if $ev->[ $scan[$i]++ ]{data} eq 'end' }
        return $seen[$i] >= $ends[$i];
    }, 20);
    is $done, $USERS, 'every stream received its end markers';
    wait_clients(\@clients, sub { 0 }, 0.2);    # anything late would show now
    note sprintf 'delivered in %.2f s', time - $t0;

    for my $i (0 .. $USERS - 1) {
        my @got = map { "$_->{event} $_->{data}" } $clients[$i]->all_events;
        my $what = sprintf 'u%d (grants "%s"): exactly its %d permitted events', $i, grants_of($i), scalar @{ $want[$i] };
        my %count;
        $count{$_}++ for @got;
        $count{$_}-- for @{ $want[$i] };
        my @extra   = sort grep { $count{$_} > 0 } keys %count;
        my @missing = sort grep { $count{$_} < 0 } keys %count;
        ok !@extra && !@missing, $what or do {
            diag "  got " . scalar(@got) . ' events';
            diag "  not permitted or duplicated: " . join(' | ', map { s/\x1e/\\x1e/gr } @extra[0 .. ($#extra < 9 ? $#extra : 9)]) if @extra;
            diag "  missing: " . join(' | ', map { s/\x1e/\\x1e/gr } @missing[0 .. ($#missing < 9 ? $#missing : 9)]) if @missing;
        };
        # Per channel, publish order.
        my (%got_seq, %want_seq);
        for (@got) { my ($ch) = split / /; push @{ $got_seq{$ch} }, $_ }
        for (@{ $want[$i] }) { my ($ch) = split / /; push @{ $want_seq{$ch} }, $_ }
        if (grep { join("\n", @{ $got_seq{$_} || [] }) ne join("\n", @{ $want_seq{$_} }) } keys %want_seq) {
            fail "u$i: events of each channel in publish order";
        }
    }
    is scalar(grep { $_->{ended} } @clients), 0, 'no stream ended';

    # What the operator sees.
    my $log = $nginx->error_log;
    like $log, qr/\[warn\].*invalid grant.*bad\*grant/, "u13's invalid grant is logged at warn";
    my $since = $nginx->error_log_since($mark);
    for my $m (@malformed) {
        like $since, qr/\[warn\].*skipped a message on "\Q$m->[0]\E"/, "malformed envelope ($m->[2]) on $m->[0] is logged at warn";
    }
    is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

    $_->close for @clients;
    ok wait_until(sub { redis_cmd($rp, PUBSUB => 'NUMPAT') == 0 }, 10), 'all streams gone: pattern unsubscribed';
    $nginx->stop;
}

# A quick look at the model itself, so that a wrong model cannot pass unseen.
my @w0 = expected_for(0);
my @w3 = expected_for(3);
ok scalar(grep { /^dashboards:3 d3-/ } @w3) == $PER_DASH && !grep({ /^dashboards:5 / } @w3), 'model: u3 reads dashboards 3 and 4 only';
ok scalar(grep { / d\d+-\d+\z/ } @w0) == $USERS * $PER_DASH, 'model: u0 (dashboards:*) reads every plain message';
ok !grep({ /deep|mal/ } @w0), 'model: nobody reads deeper channels or malformed envelopes';
my @narrow = grep { $_ % 5 } 0 .. $USERS - 1;
ok scalar(grep { / env\d+ / } map { expected_for($_) } @narrow) >= 5, 'model: envelopes reach narrow users';
my $withheld = grep {
    my $m = $_;
    ref $m->{audience} && grep { my $i = $_; may_read($i, $m->{channel}) && !grep { $_ eq "u$i" } @{ $m->{audience} } } @narrow;
} @messages;
ok $withheld >= 5, 'model: envelopes are withheld from users who may read their channel';

for my $workers (1, 2) {
    subtest "worker_processes $workers" => sub { run_with_workers($workers) };
}

done_testing;
