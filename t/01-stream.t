# One channel end to end: response headers, the opening retry field, events
# for Redis messages; channel names built from variables; several channels on
# one connection; publish order kept per channel.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $redis = start_redis();
my $rp    = $redis->port;
my $nginx = start_nginx(redis => $redis, server => q{
        location /sse       { sse_channel news; }
        location /retry5    { sse_channel news; sse_retry 5s; }
        location /retry1500 { sse_channel news; sse_retry 1500ms; }
        location /logs      { sse_channel logs:$arg_ws:$arg_wf; }
        location /multi     { sse_channel $arg_channels; }
        location /two       { sse_channel fixed:one $arg_extra; }
        location /list      { sse_channel "alpha,beta"; }
});
my $port = $nginx->port;

# Fields of an event, for is_deeply.
sub ev { my ($e) = @_; return $e ? { map { $_ => $e->{$_} } qw(event data id) } : undef }

subtest 'headers and the opening retry field' => sub {
    my $t0 = time;
    my $c  = sse_connect($port, '/sse');
    is $c->status, 200, 'GET answers 200';
    like $c->header('Content-Type') // '', qr{^text/event-stream\s*(;|$)}, 'Content-Type: text/event-stream';
    like $c->header('Cache-Control') // '', qr/\bno-cache\b/, 'Cache-Control: no-cache';
    is $c->header('X-Accel-Buffering'), 'no', 'X-Accel-Buffering: no';
    ok $c->wait_for(sub { length $_[0]->body_head >= 13 }, 2), 'the first body bytes arrive without any message';
    is substr($c->body_head, 0, 13), "retry: 3000\n\n", 'the body starts with "retry: 3000\n\n" (default 3s)';
    ok defined $c->{first_body_at} && $c->{first_body_at} - $t0 < 1.5, 'and they arrive immediately'
        or diag 'first body byte after ' . (($c->{first_body_at} // time) - $t0) . ' s';
    is $c->is_eof, '', 'the stream stays open';
    is $c->pending_events, 0, 'no event dispatched yet';
    $c->close;

    for ([ '/retry5' => 5000 ], [ '/retry1500' => 1500 ]) {
        my ($path, $ms) = @$_;
        my $c = sse_connect($port, $path);
        is $c->status, 200, "$path answers 200";
        ok $c->wait_for(sub { length $_[0]->body_head >= length "retry: $ms\n\n" }, 2), "$path sends retry";
        is substr($c->body_head, 0, length "retry: $ms\n\n"), "retry: $ms\n\n", "sse_retry gives retry: $ms";
        $c->close;
    }
};

subtest 'a message becomes one event named after the channel' => sub {
    my $c = sse_connect($port, '/sse');
    is $c->status, 200, 'stream open';
    ok wait_subscribed($rp, 'news', 1, 5), 'the worker subscribes to "news" (PUBSUB NUMSUB = 1)';
    is redis_cmd($rp, PUBLISH => news => 'hello'), 1, 'PUBLISH reaches one subscriber (the worker)';
    is_deeply ev($c->next_event(5)), { event => 'news', data => 'hello', id => undef }, 'event: news, data: hello';
    is redis_cmd($rp, PUBLISH => other => 'not for you'), 0, 'nobody subscribes to "other"';
    redis_cmd($rp, PUBLISH => news => 'second');
    is_deeply ev($c->next_event(5)), { event => 'news', data => 'second', id => undef },
        'the next event is the next message on the channel';
    my $c2 = sse_connect($port, '/sse');
    ok $c2->wait_for(sub { length $_[0]->body_head >= 13 }, 5), 'a second client on the same channel';
    sleep 0.2;
    redis_cmd($rp, PUBLISH => news => 'both');
    is ev($c->next_event(5))->{data} // '', 'both', 'the first client gets it';
    is ev($c2->next_event(5))->{data} // '', 'both', 'the second client gets it too';
    $c->close;
    $c2->close;
};

subtest 'channel names built from variables' => sub {
    my $c = sse_connect($port, '/logs?ws=w1&wf=f1');
    is $c->status, 200, 'sse_channel logs:$arg_ws:$arg_wf answers 200';
    ok wait_subscribed($rp, 'logs:w1:f1', 1, 5), 'subscribed to logs:w1:f1';
    is redis_cmd($rp, PUBLISH => 'logs:w1:f2' => 'other workflow'), 0, 'logs:w1:f2 has no subscriber';
    redis_cmd($rp, PUBLISH => 'logs:w1:f1' => 'line 1');
    is_deeply ev($c->next_event(5)), { event => 'logs:w1:f1', data => 'line 1', id => undef },
        'event named logs:w1:f1';
    $c->close;

    $c = sse_connect($port, '/two?extra=x.y');
    is $c->status, 200, 'sse_channel fixed:one $arg_extra answers 200';
    ok wait_subscribed($rp, 'fixed:one', 1, 5) && wait_subscribed($rp, 'x.y', 1, 5), 'both values subscribed';
    redis_cmd($rp, PUBLISH => 'x.y' => 'from the variable');
    redis_cmd($rp, PUBLISH => 'fixed:one' => 'from the literal');
    my @got = map { ev($_) } $c->events_until(2, 5);
    is_deeply \@got, [
        { event => 'x.y',       data => 'from the variable', id => undef },
        { event => 'fixed:one', data => 'from the literal',  id => undef },
    ], 'events from both values';
    $c->close;
};

subtest 'several channels on one connection' => sub {
    for my $case (['/multi?channels=a1,b2,c3' => 'comma list in a variable'],
                  ['/multi?channels=a1%2Cb2%2cc3' => 'percent-encoded commas'],
                  ['/multi?channels=b2,a1,b2' => 'a channel listed twice'])
    {
        my ($path, $what) = @$case;
        my $c = sse_connect($port, $path);
        is $c->status, 200, "$what: 200";
        ok wait_subscribed($rp, $_, 1, 5), "$what: subscribed to $_" for qw(a1 b2);
        if ($path =~ /c3/) {
            ok wait_subscribed($rp, 'c3', 1, 5), "$what: subscribed to c3";
        }
        my @chans = $path =~ /c3/ ? qw(c3 a1 b2) : qw(b2 a1);
        redis_cmd($rp, PUBLISH => $_ => "to $_") for @chans;
        my @got = map { ev($_) } $c->events_until(scalar @chans, 5);
        is_deeply \@got, [map { { event => $_, data => "to $_", id => undef } } @chans],
            "$what: each event carries its own channel name";
        $c->close;
        # the next case reuses the channel names: wait until they are released
        wait_subscribed($rp, $_, 0, 5) for @chans;
    }

    my $c = sse_connect($port, '/list');
    is $c->status, 200, 'literal "alpha,beta": 200';
    ok wait_subscribed($rp, 'alpha', 1, 5) && wait_subscribed($rp, 'beta', 1, 5), 'subscribed to alpha and beta';
    redis_cmd($rp, PUBLISH => beta => 'b');
    redis_cmd($rp, PUBLISH => alpha => 'a');
    is_deeply [map { $_->{event} } $c->events_until(2, 5)], [qw(beta alpha)], 'events from both';
    $c->close;
};

subtest 'publish order is kept per channel' => sub {
    my @chans = qw(ord:a ord:b ord:c);
    my $c = sse_connect($port, '/multi?channels=' . join(',', @chans));
    is $c->status, 200, 'stream open';
    ok wait_subscribed($rp, $_, 1, 5), "subscribed to $_" for @chans;
    my $conn = redis_connect($rp);
    my @cmds = map { my $ch = $chans[$_ % 3]; [PUBLISH => $ch => "$ch #$_"] } 0 .. 199;
    my @replies = $conn->pipeline(@cmds);
    $conn->close;
    is scalar(grep { $_ eq '1' } @replies), 200, '200 messages published, each to one subscriber';
    my @got = $c->events_until(200, 20);
    is scalar(@got), 200, 'all 200 events arrived';
    my %seq;
    my $bad_name = 0;
    for my $e (@got) {
        my ($ch, $n) = $e->{data} =~ /^(\S+) #(\d+)$/ or do { $bad_name++; next };
        $bad_name++ if $e->{event} ne $ch;
        push @{ $seq{$ch} }, $n;
    }
    is $bad_name, 0, 'every event is named after the channel its message was published on';
    for my $i (0 .. 2) {
        my $ch = $chans[$i];
        is_deeply $seq{$ch}, [grep { $_ % 3 == $i } 0 .. 199], "$ch: every message, in publish order";
    }
    $c->drain(0.3);
    is $c->pending_events, 0, 'and nothing more';
    $c->close;
};

is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
