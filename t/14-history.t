# History and resume (sse_history): the workers load the sse_publish function;
# a client that comes back with its last id (Last-Event-ID header or
# last_event_id query argument) gets exactly what it missed, merged in id
# order, then live events; history that is gone (maxlen, ttl) is announced by
# an sse-gap event; ids nginx cannot resume from give sse-gap and live events;
# sse_history_start N replays the last N per channel to a new subscriber; a
# location without history ignores Last-Event-ID; many clients resuming at
# once while several publishers publish each get every message exactly once.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use List::Util qw(shuffle);
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $redis = start_redis();
my $rp    = $redis->port;
my $nginx = start_nginx(redis => $redis, workers => 1, server => q{
        location /h     { sse_channel $arg_channels; sse_history on; }
        location /h3    { sse_channel $arg_channels; sse_history on; sse_history_start 3; }
        location /plain { sse_channel $arg_channels; }
});
my $port    = $nginx->port;
my @workers = $nginx->worker_pids;

# An event as one string, for is_deeply: "event|data|id".
sub ev { my ($e) = @_; return defined $e ? join('|', $e->{event}, $e->{data}, $e->{id} // '-') : 'no event' }

sub channels_of { my ($path) = @_; my ($list) = $path =~ /channels=([^&]+)/; return split /,/, $list }

# Opens a stream and waits until its channels are subscribed in Redis (the
# channels of each subtest are new, so NUMSUB goes from 0 to 1).
sub open_stream {
    my ($path, %headers) = @_;
    my $c = sse_connect($port, $path, headers => \%headers);
    is $c->status, 200, "GET $path" . (%headers ? ' with ' . join(', ', map { "$_: $headers{$_}" } sort keys %headers) : '')
        . ' answers 200';
    ok wait_subscribed($rp, $_, 1, 5), "  and $_ is subscribed" for channels_of($path);
    return $c;
}

# Closes a stream and waits until the worker has let its channels go, so
# that what is published next happens while the client is away.
sub leave {
    my ($c, $path) = @_;
    $c->close;
    ok wait_subscribed($rp, $_, 0, 5), "client gone: $_ unsubscribed" for channels_of($path);
}

# Publishes with FCALL sse_publish in one pipeline; returns the expected
# events ("channel|payload|id") in publish order.
sub publish_many {
    my (@msgs) = @_;    # [channel, payload, options...]
    my $conn = redis_connect($rp);
    my @ids = $conn->pipeline(map { [FCALL => sse_publish => 0, @$_] } @msgs);
    $conn->close;
    my @bad = grep { ref $_ || !/^\d+$/ } @ids;
    is scalar(@bad), 0, scalar(@msgs) . ' messages published with FCALL sse_publish' or diag "@bad[0..2]";
    return map { "$msgs[$_][0]|$msgs[$_][1]|$ids[$_]" } 0 .. $#msgs;
}

sub strictly_increasing {
    my @ids = @_;
    for my $i (1 .. $#ids) {
        return 0 unless defined $ids[$i] && defined $ids[ $i - 1 ] && $ids[$i] > $ids[ $i - 1 ];
    }
    return 1;
}

# Per channel, the payloads in the order they arrived.
sub per_channel {
    my %seq;
    for (@_) { my ($ch, $data) = split /\|/; push @{ $seq{$ch} }, $data }
    return \%seq;
}

subtest 'the workers load the sse_publish function into Redis' => sub {
    my $loaded = wait_until(sub {
        my $list = redis_cmd($rp, FUNCTION => 'LIST', LIBRARYNAME => 'nginx_sse');
        ref $list eq 'ARRAY' && grep { ref $_ eq 'ARRAY' && "@$_" =~ /\bnginx_sse\b/ } @$list;
    }, 10);
    ok $loaded, 'FUNCTION LIST shows the library nginx_sse (sse_history on is configured)';
    load_sse_function($rp) unless $loaded;    # so that the rest can run
    my $id1 = sse_publish($rp, 'fn:a', 'x');
    my $id2 = sse_publish($rp, 'fn:b', 'y');
    like $id1, qr/^\d+$/, "FCALL sse_publish returns an id ($id1)";
    is $id2, $id1 + 1, 'one counter for all channels: the next publish on another channel gets the next id';
    is redis_cmd($rp, 'TYPE', 'sse:h:fn:a'), 'stream', 'the history is the Redis Stream sse:h:<channel>';
    my $entries = redis_cmd($rp, XRANGE => 'sse:h:fn:a', '-', '+');
    is $entries->[0][0], "$id1-0", "whose entry id is <id>-0";
};

# 500 messages over the 5 channels (100 each, shuffled), as [channel, payload].
sub five_hundred {
    my ($chans, $round) = @_;
    my %n;
    return map { [ $_, "$_ r$round #" . ++$n{$_} ] } shuffle map { my $ch = $_; ($ch) x 100 } @$chans;
}

my @res = map { "res:$_" } 1 .. 5;
my $res_path = '/h?channels=' . join(',', @res);
my $res_last;    # the last id the client of (a) and (b) received

sub check_replay {
    my ($what, $c, $since, @expected) = @_;
    is $c->header('Last-Event-ID'), $since, "$what: the response header Last-Event-ID says where the replay starts";
    my @got = map { ev($_) } $c->events_until(scalar @expected, 20);
    is scalar(@got), scalar(@expected), "$what: " . scalar(@expected) . ' events replayed';
    is scalar(grep { /^sse-gap\|/ } @got), 0, "$what: no sse-gap";
    ok strictly_increasing(map { (split /\|/)[2] } @got), "$what: ids strictly increasing";
    is_deeply per_channel(@got), per_channel(@expected), "$what: every message of each channel, in publish order";
    is_deeply \@got, \@expected, "$what: exactly the published events (channel, payload, id) in id order";
    return @got;
}

sub check_live_then_nothing {
    my ($what, $c, $channel) = @_;
    my ($live) = publish_many([ $channel, "$channel live after $what" ]);
    is ev($c->next_event(5)), $live, "$what: then a live event published after it";
    $c->drain(0.3);
    is $c->pending_events, 0, "$what: and nothing more (no duplicate)";
    return $live;
}

subtest '(a) resume with the Last-Event-ID header: 500 messages missed over 5 channels' => sub {
    my $c = open_stream($res_path);
    my @hello = publish_many(map { [ $_, "$_ hello" ] } @res);
    is_deeply [map { ev($_) } $c->events_until(5, 5)], \@hello, 'live events carry id: <the id FCALL returned>';
    my $last = (split /\|/, $hello[-1])[2];
    leave($c, $res_path);

    my @expected = publish_many(five_hundred(\@res, 1));
    $c = open_stream($res_path, 'Last-Event-ID' => $last);
    check_replay('header', $c, $last, @expected);
    $res_last = (split /\|/, check_live_then_nothing('header', $c, $res[2]))[2];
    leave($c, $res_path);
};

subtest '(b) resume with the last_event_id query argument' => sub {
    my $since = $res_last;
    my @expected = publish_many(five_hundred(\@res, 2));
    my $path = "$res_path&last_event_id=$since";
    my $c = sse_connect($port, $path);
    is $c->status, 200, "GET $path answers 200";
    check_replay('query', $c, $since, @expected);
    $res_last = (split /\|/, check_live_then_nothing('query', $c, $res[0]))[2];
    leave($c, $res_path);

    # A reconnecting EventSource keeps its first URL (with the query
    # argument) and adds the header: the header, newer, wins.
    my @more = publish_many(five_hundred(\@res, 3));
    my $mid = (split /\|/, $more[249])[2];
    $c = sse_connect($port, $path, headers => { 'Last-Event-ID' => $mid });
    is $c->status, 200, 'old last_event_id in the URL and a newer Last-Event-ID header: 200';
    check_replay('header and query', $c, $mid, @more[250 .. 499]);
    check_live_then_nothing('header and query', $c, $res[4]);
    $c->close;
};

subtest '(c) a position older than what is held: sse-gap, then what is held, then live' => sub {
    my $path = '/h?channels=gap:a,gap:b';
    my $c = open_stream($path);
    my @hello = publish_many([ 'gap:a', 'a hello' ], [ 'gap:b', 'b hello' ]);
    is_deeply [map { ev($_) } $c->events_until(2, 5)], \@hello, 'live events';
    my $last = (split /\|/, $hello[-1])[2];
    leave($c, $path);

    # 30 on gap:a keeping only the last 10, 3 on gap:b in between.
    my @msgs = map { ([ 'gap:a', "a #$_", 'maxlen=10' ], $_ % 10 == 5 ? [ 'gap:b', 'b #' . ($_ + 5) / 10 ] : ()) } 1 .. 30;
    my @published = publish_many(@msgs);
    is redis_cmd($rp, XLEN => 'sse:h:gap:a'), 10, 'Redis holds the last 10 of gap:a';
    my @held = grep { !/^gap:a\|a #(\d+)\|/ || $1 > 20 } @published;
    is scalar(@held), 13, '(the 10 held on gap:a and the 3 of gap:b)';

    $c = open_stream($path, 'Last-Event-ID' => $last);
    is ev($c->next_event(5)), 'sse-gap|gap:a|-', 'the first event is sse-gap naming gap:a (and only it)';
    my @got = map { ev($_) } $c->events_until(13, 10);
    is_deeply \@got, \@held, 'then the 10 held on gap:a and the 3 of gap:b, in id order';
    check_live_then_nothing('gap', $c, 'gap:a');
    leave($c, $path);

    # History gone because the channel was idle longer than its ttl.
    $path = '/h?channels=exp:a,exp:b';
    $c = open_stream($path);
    @hello = publish_many([ 'exp:a', 'a hello', 'ttl=1' ], [ 'exp:b', 'b hello' ]);
    is_deeply [map { ev($_) } $c->events_until(2, 5)], \@hello, 'live events';
    $last = (split /\|/, $hello[-1])[2];
    leave($c, $path);
    publish_many(map { [ 'exp:a', "a #$_", 'ttl=1' ] } 1 .. 3);
    ok wait_until(sub { !redis_cmd($rp, EXISTS => 'sse:h:exp:a') }, 6), 'the history of exp:a expires (ttl=1)';
    $c = open_stream($path, 'Last-Event-ID' => $last);
    is ev($c->next_event(5)), 'sse-gap|exp:a|-', 'resuming after it: sse-gap naming exp:a';
    check_live_then_nothing('expired', $c, 'exp:b');
    leave($c, $path);
};

subtest '(d) malformed or foreign ids: sse-gap for every channel, no replay, then live' => sub {
    my $path = '/h?channels=bad:a,bad:b';
    publish_many(map { ([ 'bad:a', "a #$_" ], [ 'bad:b', "b #$_" ]) } 1 .. 3);    # history a replay would show
    my $seq = redis_cmd($rp, GET => 'sse:seq');
    my @cases = (
        [ header => 'abc' ], [ header => '1700000000-0' ], [ header => '-1' ], [ header => '1.5' ],
        [ header => $seq + 1000 ], [ header => '99999999999999999999999' ], [ query => 'abc' ],
        [ query => $seq + 1000 ],
    );
    for my $case (@cases) {
        my ($how, $id) = @$case;
        my $what = "$how $id";
        my $c = $how eq 'header'
            ? sse_connect($port, $path, headers => { 'Last-Event-ID' => $id })
            : sse_connect($port, "$path&last_event_id=$id");
        is $c->status, 200, "$what: 200";
        my $first = $c->next_event(5);
        my ($name, @chans) = ($first ? $first->{event} : 'none', sort split /,/, $first ? $first->{data} : '');
        is "$name @chans", 'sse-gap bad:a bad:b', "$what: the first event is sse-gap naming both channels";
        # Live from here: the gap event comes once the stream is live.
        check_live_then_nothing($what, $c, 'bad:b');
        $c->close;
    }
    is_deeply [$nginx->worker_pids], \@workers, 'the worker is still the same process (no crash)';
};

subtest '(e) sse_history_start 3: a new subscriber first gets the last 3 per channel' => sub {
    my @published = publish_many(
        (map { ([ 'st:a', "a #$_" ], [ 'st:b', "b #$_" ]) } 1 .. 5), [ 'st:c', 'c #1' ]);

    # The default (newest): nothing old, only what is published after.
    my $path = '/h?channels=st:a,st:b,st:c';
    my $c = open_stream($path);
    push @published, check_live_then_nothing('newest', $c, 'st:c');
    leave($c, $path);

    $path = '/h3?channels=st:a,st:b,st:c';
    $c = sse_connect($port, $path);
    is $c->status, 200, "GET $path answers 200";
    my @expected = grep { /^st:c/ || (/^st:[ab]\|[ab] #(\d+)\|/ && $1 >= 3) } @published;
    is scalar(@expected), 8, '(last 3 of st:a, last 3 of st:b, the 2 of st:c)';
    my @got = map { ev($_) } $c->events_until(8, 5);
    is_deeply \@got, \@expected, 'the last 3 of st:a and of st:b, the only 2 of st:c, in id order';
    check_live_then_nothing('start 3', $c, 'st:a');
    $c->close;
};

subtest '(f) a location without history: Last-Event-ID is ignored' => sub {
    publish_many(map { [ 'off:a', "old #$_" ] } 1 .. 3);
    my $path = '/plain?channels=off:a&last_event_id=1';
    my $c = open_stream($path, 'Last-Event-ID' => 1);
    is $c->header('Last-Event-ID'), undef, 'no Last-Event-ID response header';
    is redis_cmd($rp, PUBLISH => 'off:a' => 'plain'), 1, 'a plain PUBLISH';
    my ($fcall) = publish_many([ 'off:a', 'via fcall' ]);
    my @got = map { ev($_) } $c->events_until(2, 5);
    is_deeply \@got, [ 'off:a|plain|-', $fcall ],
        'no replay, no sse-gap: the plain message (no id), then the FCALL one (with its id)';
    $c->drain(0.3);
    is $c->pending_events, 0, 'and nothing more';
    unlike $c->body_head, qr/^id: \S+\n(?:[^\n]+\n)*data: plain$/m, 'the plain message has no id: line';
    leave($c, '/plain?channels=off:a');
};

subtest '(g) resume on channels that never had history: no gap' => sub {
    my $seq = redis_cmd($rp, GET => 'sse:seq');
    for my $since (0, $seq) {
        my $path = "/h?channels=none$since:a,none$since:b";
        my $c = open_stream($path, 'Last-Event-ID' => $since);
        is $c->header('Last-Event-ID'), $since, "Last-Event-ID: $since echoed";
        my ($live) = publish_many([ "none$since:b", 'first ever' ]);
        is ev($c->next_event(5)), $live, "Last-Event-ID: $since: the first event is the live one (no sse-gap)";
        $c->drain(0.3);
        is $c->pending_events, 0, 'and nothing more';
        leave($c, $path);
    }
};

subtest '(h) 300 clients resume at the same moment while 4 services publish' => sub {
    # Like the browsers of a busy page coming back after a network blip: the
    # worker reads 300 histories at once while messages keep coming.
    my $N = 300;
    my @chans = map { "storm:$_" } 1 .. 6;
    my @pubs = map {
        start_publisher(redis => $rp, channels => [ $_ % 2 ? @chans : reverse @chans ], rate => 500,
            options => ['maxlen=100000'])
    } 1 .. 4;
    sleep 0.3;
    my $since = redis_cmd($rp, GET => 'sse:seq');
    my $path = '/h?channels=' . join(',', @chans);
    my @c = map { sse_connect($port, $path, headers => { 'Last-Event-ID' => $since }) } 1 .. $N;
    sleep 0.3;    # not reading meanwhile: nginx and the sockets hold what comes
    my @res = map { $_->stop } @pubs;
    my $accepted = 0;
    $accepted += @{ $_->{accepted} } for @res;
    my %chan_of;    # id => channel, for every message after $since
    for my $ch (@chans) {
        for (@{ redis_cmd($rp, XRANGE => "sse:h:$ch", "($since-0", '+') }) {
            my ($id) = $_->[0] =~ /^(\d+)-0$/;
            $chan_of{$id} = $ch;
        }
    }
    my @want = sort { $a <=> $b } keys %chan_of;
    ok @want > 100, scalar(@want) . " messages published after the clients' position ($accepted in all)";
    my $complete = wait_clients(\@c, sub { $_[0]->pending_events && ($_[0]{events}[-1]{id} // 0) >= $want[-1] }, 30);
    is $complete, $N, "all $N clients reached the last message";
    wait_clients(\@c, sub { 0 }, 0.3);
    my @wrong;
    for my $i (0 .. $#c) {
        my @ev   = $c[$i]->all_events;
        my @got  = map { $_->{id} // '-' } grep { $_->{event} ne 'sse-gap' } @ev;
        my $gaps = grep { $_->{event} eq 'sse-gap' } @ev;
        next if !$gaps && "@got" eq "@want";
        my %have = map { $_ => 1 } @got;
        my @missing = grep { !$have{$_} } @want;
        my %n;
        my $dups = grep { $n{$_}++ == 1 } @got;
        push @wrong, sprintf 'client %d: %d events, %d expected, %d sse-gap, %d duplicated, missing %d: %s',
            $i, scalar(@got), scalar(@want), $gaps, $dups, scalar(@missing),
            join(' ', map { "$_ ($chan_of{$_})" } @missing[0 .. ($#missing < 5 ? $#missing : 5)]);
    }
    is scalar(@wrong), 0, 'every client got every message after its position exactly once, in id order, no sse-gap'
        or diag join "\n", scalar(@wrong) . " of $N clients wrong:", @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)];
    $_->close for @c;
};

is_deeply [$nginx->worker_pids], \@workers, 'the same worker ran the whole file (no crash)';
is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
