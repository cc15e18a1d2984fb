# A stream is never a conditional response: whatever validators a client
# (or a cache in front of it) sends, If-None-Match: *, If-Match,
# If-Unmodified-Since or If-Modified-Since, the answer is 200
# text/event-stream and events flow, over HTTP/1.1 and HTTP/2. (nginx's
# not-modified filter would otherwise answer 304 or 412, and a stream that
# followed a header-only answer would read as a second, broken response.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use POSIX ();
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $redis = start_redis();
my $rp    = $redis->port;
my $h2port = free_port();    # a second server, HTTP/2 without TLS (prior knowledge)
my $nginx = start_nginx(redis => $redis, workers => 1,
    http => qq{    server { listen 127.0.0.1:$h2port http2; location /sse { sse_channel \$arg_ch; } }},
    server => q{
        location /sse { sse_channel $arg_ch; }
});
my $port = $nginx->port;
my $now = POSIX::strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime(time + 5));
my $old = 'Thu, 01 Jan 1970 00:00:01 GMT';

my @cases = (
    [ 'If-None-Match: *',                { 'If-None-Match' => '*' } ],
    [ 'If-None-Match: "x", W/"y"',       { 'If-None-Match' => '"x", W/"y"' } ],
    [ 'If-Match: "nope"',                { 'If-Match' => '"nope"' } ],
    [ "If-Unmodified-Since: $old",       { 'If-Unmodified-Since' => $old } ],
    [ "If-Modified-Since: $now",         { 'If-Modified-Since' => $now } ],
    [ 'If-None-Match: * and If-Modified-Since', { 'If-None-Match' => '*', 'If-Modified-Since' => $now } ],
);
my $n = 0;
for my $case (@cases) {
    my ($what, $headers) = @$case;
    my $ch = 'cond' . ++$n;
    my $c = sse_connect($port, "/sse?ch=$ch", headers => $headers);
    is $c->status, 200, "$what: 200" or diag $c->{status_line};
    next if $c->status >= 400;    # no stream at all: nothing more to see
    like $c->header('Content-Type') // '', qr{^text/event-stream}, "$what: text/event-stream";
    ok wait_subscribed($rp, $ch, 1, 5), "$what: subscribed";
    redis_cmd($rp, PUBLISH => $ch => "to $ch");
    my $ev = $c->next_event(5);
    is $ev && "$ev->{event} $ev->{data}", "$ch to $ch", "$what: the event arrives";
    ok !$c->{framing_error}, "$what: the body is well-formed" or diag $c->{framing_error};
    $c->close;
}

SKIP: {
    my $curl = `command -v curl 2>/dev/null`;
    chomp $curl;
    skip 'curl is not installed', 4 unless $curl;
    skip 'curl has no HTTP/2 support', 4 unless `$curl -V 2>/dev/null` =~ /\bHTTP2\b/;
    my $dir = File::Temp::tempdir(CLEANUP => 1);
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', "$dir/out" or POSIX::_exit(127);
        open STDERR, '>', '/dev/null';
        { exec {$curl} $curl, '-sN', '--http2-prior-knowledge', '--max-time', '15', '-D', "$dir/head",
            '-H', 'If-None-Match: *', "http://127.0.0.1:$h2port/sse?ch=h2cond" }
        POSIX::_exit(127);
    }
    ok wait_subscribed($rp, 'h2cond', 1, 5), 'HTTP/2, If-None-Match: *: subscribed';
    redis_cmd($rp, PUBLISH => h2cond => 'over h2');
    ok wait_until(sub { slurp("$dir/out") =~ /event: h2cond\ndata: over h2\n\n/ }, 5),
        'HTTP/2, If-None-Match: *: the event arrives';
    like slurp("$dir/head"), qr{^HTTP/2 200}m, 'HTTP/2, If-None-Match: *: 200';
    like slurp("$dir/head"), qr{^content-type: text/event-stream}mi, 'HTTP/2: text/event-stream';
    kill 'TERM', $pid;
    waitpid $pid, 0;
}

done_testing;
