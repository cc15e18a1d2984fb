# Requests that are refused: other methods than GET (405), invalid channel
# lists (400 with a text/plain reason); and requests that are accepted even
# though they look unusual (other Accept types, boundary-sized names).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $redis = start_redis();
my $rp    = $redis->port;
my $nginx = start_nginx(redis => $redis, server => q{
        location /fixed { sse_channel news; }
        location /sse   { sse_channel $arg_channels; }
        location /max2  { sse_channel $arg_channels; sse_max_channels 2; }
});
my $port = $nginx->port;

subtest 'methods other than GET get 405' => sub {
    for my $method (qw(POST PUT DELETE PATCH)) {
        my $res = http_request($port, $method, '/fixed', body => $method eq 'DELETE' ? undef : 'x=1',
            headers => { 'Content-Type' => 'application/x-www-form-urlencoded' });
        is $res->{status}, 405, "$method /fixed -> 405";
    }
    my $res = http_request($port, 'POST', '/sse?channels=news');
    is $res->{status}, 405, 'POST on a variable channel location -> 405 too';
    is numsub($rp, 'news')->{news}, 0, 'refused requests subscribe nothing';
};

# [ query string, description, pattern the reason must match ]
my $x129 = 'x' x 129;
my @bad = (
    ['',                            'no channels argument',        qr/\S/],
    ['channels=',                   'empty value',                 qr/\S/],
    ['channels=bad*name',           'a * in the name',             qr/\S/],
    ['channels=bad%20name',         'a space (percent-encoded)',   qr/\S/],
    ['channels=a/b',                'a / in the name',             qr/\S/],
    ['channels=caf%C3%A9',          'non-ASCII bytes',             qr/\S/],
    ['channels=a::b',               'an empty segment',            qr/\S/],
    ['channels=:a',                 'a leading :',                 qr/\S/],
    ['channels=a:',                 'a trailing :',                qr/\S/],
    ['channels=a,,b',               'an empty item in the list',   qr/\S/],
    ['channels=a,',                 'a trailing comma',            qr/\S/],
    ["channels=$x129",              'a 129-byte name',             qr/128/],
    ['channels=' . join(',', map { "c$_" } 1 .. 33), '33 channels (default limit 32)', qr/32/],
    ['channels=a%2',                'a truncated %-escape',        qr/\S/],
    ['channels=a%zzb',              'a %-escape without hex',      qr/\S/],
    ['channels=%',                  'a lone %',                    qr/\S/],
    ['channels=a%253Ab',            'a double-encoded : (decoded once leaves a %)', qr/\S/],
    ['channels=a%2Ab',              'an encoded *',                qr/\S/],
);

subtest 'invalid channel lists get 400 with a reason' => sub {
    for my $case (@bad) {
        my ($query, $what, $reason) = @$case;
        my $res = http_request($port, 'GET', "/sse?$query", headers => { Accept => 'text/event-stream' });
        is $res->{status}, 400, "$what -> 400";
        like $res->{headers}{'content-type'} // '', qr{^text/plain\b}, "$what: text/plain body";
        like $res->{body} // '', $reason, "$what: the body gives the reason"
            or diag "body: " . ($res->{body} // '');
        note "$what: $res->{body}";
    }
    my $res = http_request($port, 'GET', '/max2?channels=a,b,c');
    is $res->{status}, 400, 'sse_max_channels 2: three channels -> 400';
    like $res->{body} // '', qr/\b2\b/, '... and the reason gives the limit';
    is_deeply numsub($rp, qw(a b c)), { a => 0, b => 0, c => 0 }, 'refused requests subscribe nothing';
};

subtest 'valid boundary cases stream' => sub {
    my $x128 = 'x' x 128;
    my @good = (
        ["channels=$x128",                                   '128-byte name', [$x128]],
        ['channels=' . join(',', map { "c$_" } 1 .. 32),     '32 channels',   [map { "c$_" } 1 .. 32]],
        ['channels=AZaz09_-.@:x',                            'every allowed byte', ['AZaz09_-.@:x']],
        ['channels=a%3Ab',                                   'an encoded : (a:b)', ['a:b']],
        ['channels=q1%2Cq2',                                 'an encoded , (two channels)', [qw(q1 q2)]],
    );
    for my $case (@good) {
        my ($query, $what, $chans) = @$case;
        my $c = sse_connect($port, "/sse?$query");
        is $c->status, 200, "$what -> 200";
        my @subscribed = grep { wait_subscribed($rp, $_, 1, 5) } @$chans;
        is scalar(@subscribed), scalar(@$chans), "$what: all channels subscribed";
        my $ch = $chans->[-1];
        redis_cmd($rp, PUBLISH => $ch => "to $ch");
        my $ev = $c->next_event(5);
        is_deeply [$ev && $ev->{event}, $ev && $ev->{data}], [$ch, "to $ch"], "$what: events arrive";
        $c->close;
        wait_subscribed($rp, $_, 0, 5) for @$chans;
    }
    my $c = sse_connect($port, '/max2?channels=a,b');
    is $c->status, 200, 'sse_max_channels 2: two channels -> 200';
    $c->close;
};

subtest 'the Accept header does not matter' => sub {
    for my $accept ('application/json', '*/*', 'text/html', undef) {
        my $what = defined $accept ? "Accept: $accept" : 'no Accept header';
        my $c = sse_connect($port, '/fixed', headers => { Accept => $accept });
        is $c->status, 200, "$what -> 200";
        like $c->header('Content-Type') // '', qr{^text/event-stream\b}, "$what: still an event stream";
        ok wait_subscribed($rp, 'news', 1, 5), "$what: subscribed";
        redis_cmd($rp, PUBLISH => news => 'n');
        my $ev = $c->next_event(5);
        is $ev && $ev->{data}, 'n', "$what: events arrive";
        $c->close;
        wait_subscribed($rp, 'news', 0, 5);
    }
};

is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
