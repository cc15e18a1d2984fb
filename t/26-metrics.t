# `sse_metrics`: the Prometheus exposition, summed over the workers, checked
# against known activity: streams opened and closed (by reason), events and
# subscriptions, refused requests, a slow client, resumes, Redis state; the
# counters stay monotonic across a reload; `promtool check metrics` accepts
# the output when promtool is installed.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use SSETest;

my $redis = start_redis();
my $rp    = $redis->port;
my $nginx = start_nginx(redis => $redis, workers => 2, server => q{
        location /sse    { sse_channel $arg_ch; sse_heartbeat off; }
        location /slow   { sse_channel $arg_ch; sse_max_backlog 64k; sse_heartbeat off; }
        location /closed { sse_channel $arg_ch; sse_allow granted; }
        location /hist   { sse_channel $arg_ch; sse_history on; }
        location = /metrics { sse_metrics; }
});
my $port = $nginx->port;

sub scrape {
    my $res = http_request($port, 'GET', '/metrics');
    return ($res, { map { /^(\S+) (\S+)$/ ? ($1 => $2) : () } grep { !/^#/ } split /\n/, $res->{body} // '' });
}
sub metric { my (undef, $m) = scrape(); $m->{ $_[0] } }
sub wait_metric {
    my ($name, $want, $timeout) = @_;
    wait_until(sub { (metric($name) // -1) == $want }, $timeout // 5);
    return metric($name);
}

my ($res, $m) = scrape();
is $res->{status}, 200, 'GET /metrics: 200';
like $res->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4}, 'the exposition content type';
like $res->{body}, qr/^sse_build_info\{version="\d+\.\d+\.\d+"\} 1$/m, 'build_info with the version';
is wait_metric('sse_redis_up{role="subscriber"}', 2), 2, 'both workers are up on Redis';
is $m->{'sse_workers'}, 2, 'two workers count';
is http_request($port, 'POST', '/metrics', body => 'x')->{status}, 405, 'POST /metrics: 405';

subtest 'streams, subscriptions and events' => sub {
    my @c = map { sse_connect($port, "/sse?ch=news,c$_") } 1 .. 4;
    is scalar(grep { $_->status == 200 } @c), 4, 'four streams open';
    ok wait_subscribed($rp, 'news', 2, 5) || wait_subscribed($rp, 'news', 1, 1), 'news is subscribed';
    is wait_metric('sse_streams_opened_total', 4), 4, 'sse_streams_opened_total 4';
    is metric('sse_streams_open{transport="http1"}'), 4, 'sse_streams_open{transport="http1"} 4';
    is metric('sse_subscriptions'), 8, 'sse_subscriptions 8 (two channels each)';
    my $workers_on_news = numsub($rp, 'news')->{news};
    is metric('sse_redis_subscriptions'), 4 + $workers_on_news, "sse_redis_subscriptions: c1..c4 and news on $workers_on_news worker(s)";
    redis_cmd($rp, PUBLISH => news => "n$_") for 1 .. 10;
    is wait_events(\@c, 10, 5), 4, 'every stream gets the 10 events';
    is wait_metric('sse_events_sent_total', 40), 40, 'sse_events_sent_total 40';
    ok metric('sse_bytes_sent_total') >= 40 * length("event: news\ndata: n1\n\n"), 'sse_bytes_sent_total covers them';
    is metric('sse_redis_messages_total'), 10 * $workers_on_news, 'sse_redis_messages_total: each message once per subscribed worker';
    $c[0]->close;
    is wait_metric('sse_streams_closed_total{reason="client"}', 1), 1, 'a client leaves: closed{reason="client"} 1';
    is metric('sse_streams_open{transport="http1"}'), 3, 'three open';
    $_->close for @c;
    is wait_metric('sse_streams_open{transport="http1"}', 0), 0, 'all closed: none open';
    is metric('sse_subscriptions'), 0, 'no subscription left';
    is wait_metric('sse_redis_subscriptions', 0), 0, 'no Redis subscription left';
};

subtest 'refused requests' => sub {
    is http_request($port, 'GET', '/sse?ch=a::b')->{status}, 400, 'an invalid channel: 400';
    is http_request($port, 'DELETE', '/sse?ch=a')->{status}, 405, 'DELETE: 405';
    is http_request($port, 'GET', '/closed?ch=other')->{status}, 403, 'an ungranted channel: 403';
    my (undef, $m) = scrape();
    is $m->{'sse_requests_refused_total{status="400"}'}, 1, 'refused{status="400"} 1';
    is $m->{'sse_requests_refused_total{status="405"}'}, 1, 'refused{status="405"} 1';
    is $m->{'sse_requests_refused_total{status="403"}'}, 1, 'refused{status="403"} 1';
};

subtest 'a slow client' => sub {
    my $slow = sse_connect($port, '/slow?ch=bulk', rcvbuf => 4096);
    is $slow->status, 200, 'a client that will stop reading';
    ok wait_subscribed($rp, 'bulk', 1, 5), 'subscribed';
    my $payload = 'z' x 32768;
    my $conn = redis_connect($rp);
    $conn->pipeline(map { [PUBLISH => bulk => $payload] } 1 .. 200);
    $conn->close;
    is wait_metric('sse_slow_client_drops_total', 1, 10), 1, 'sse_slow_client_drops_total 1';
    is metric('sse_streams_closed_total{reason="slow"}'), 1, 'closed{reason="slow"} 1';
    $slow->close;
};

subtest 'resumes' => sub {
    load_sse_function($rp);
    my $id = sse_publish($rp, 'h:1', 'first');
    sse_publish($rp, 'h:1', 'second');
    my $ok = sse_connect($port, '/hist?ch=h:1', headers => { 'Last-Event-ID' => $id });
    is $ok->status, 200, "resume after $id";
    is $ok->next_event(5)->{data}, 'second', 'replayed';
    my $bad = sse_connect($port, '/hist?ch=h:1', headers => { 'Last-Event-ID' => 'garbage' });
    is $bad->status, 200, 'resume from an id we did not issue';
    is wait_metric('sse_resumes_total{outcome="invalid_id"}', 1), 1, 'resumes{outcome="invalid_id"} 1';
    is metric('sse_resumes_total{outcome="replayed"}'), 1, 'resumes{outcome="replayed"} 1';
    ok metric('sse_events_replayed_total') >= 1, 'sse_events_replayed_total counts the replayed event';
    is metric('sse_redis_up{role="commands"}'), 2, 'the history connections are up too';
    $_->close for $ok, $bad;
};

subtest 'reload keeps the counters' => sub {
    my (undef, $before) = scrape();
    my @c = map { sse_connect($port, "/sse?ch=r$_") } 1 .. 3;
    is scalar(grep { $_->status == 200 } @c), 3, 'three streams open';
    is wait_metric('sse_streams_open{transport="http1"}', 3), 3, 'three open';
    $nginx->reload;
    is wait_clients(\@c, sub { $_[0]->is_eof }, 10), 3, 'the old workers end them';
    ok wait_until(sub { (metric('sse_workers') // 0) == 2 }, 10), 'two (new) workers count again';
    my (undef, $after) = scrape();
    is $after->{'sse_streams_closed_total{reason="reload"}'}, 3, 'closed{reason="reload"} 3';
    cmp_ok $after->{'sse_streams_opened_total'}, '==', $before->{'sse_streams_opened_total'} + 3,
        'opened_total went on from where it was';
    my @down = grep { /_total/ && ($after->{$_} // 0) < $before->{$_} } keys %$before;
    is_deeply \@down, [], 'no counter went down across the reload';
    is $after->{'sse_streams_open{transport="http1"}'}, 0, 'no stream open';
};

SKIP: {
    my $promtool = SSETest::_which('promtool');
    skip 'promtool not installed (Debian package prometheus)', 1 unless $promtool;
    my ($res) = scrape();
    my $file = $nginx->prefix . '/metrics.txt';
    open my $fh, '>', $file or die $!;
    print $fh $res->{body};
    close $fh;
    my $out = `$promtool check metrics < $file 2>&1`;
    is $?, 0, 'promtool check metrics accepts the exposition' or diag $out;
}

done_testing;
