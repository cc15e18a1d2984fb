# Debug logging is compiled in and silent unless asked for: with an nginx
# built --with-debug (Debian's is) and `error_log ... debug;`, the module
# traces each stream and each Redis connection; at the default level none of
# those lines is written.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $v = `$SSETest::NGINX_BIN -V 2>&1`;
plan skip_all => "$SSETest::NGINX_BIN is not built --with-debug" unless $v =~ /--with-debug/;

my $redis = start_redis();
my $rp    = $redis->port;
my $nginx = start_nginx(
    redis  => $redis,
    main   => "error_log debug.log debug;",   # relative to the prefix
    server => q{
        location /sse  { sse_channel $arg_ch; }
        location /hist { sse_channel $arg_ch; sse_history on; }
    },
);
my $debug_log = $nginx->prefix . '/debug.log';
my $port = $nginx->port;

my $c = sse_connect($port, '/sse?ch=dbg:a');
is $c->status, 200, 'a stream opens';
ok wait_subscribed($rp, 'dbg:a', 1, 5), 'it is subscribed';
redis_cmd($rp, PUBLISH => 'dbg:a' => 'hello');
is $c->next_event(5)->{data}, 'hello', 'and receives an event';
$c->close;
ok wait_subscribed($rp, 'dbg:a', 0, 5), 'and leaves';

load_sse_function($rp);
my $h = sse_connect($port, '/hist?ch=dbg:h', headers => { 'Last-Event-ID' => '0' });
is $h->status, 200, 'a history stream opens';
ok wait_until(sub { slurp($debug_log) =~ /replay done/ }, 5), 'its replay completes';
$h->close;

my $log = slurp($debug_log);
for my $line (
    [qr/sse: connecting to redis at /,          'Redis connect'],
    [qr/sse: subscribe "dbg:a"/,                'subscribe'],
    [qr/sse: stream \d+ open, 1 subscription/,  'stream open'],
    [qr/sse: stream \d+ taken over/,            'takeover of an HTTP/1.1 stream'],
    [qr/sse: stream \d+ ends/,                  'stream end'],
    [qr/sse: unsubscribe "dbg:a"/,              'unsubscribe'],
    [qr/sse: stream \d+ reads its history/,     'replay read'],
    [qr/sse: stream \d+ replay done/,           'replay done'],
) {
    like $log, $line->[0], "debug log: $line->[1]";
}
unlike $nginx->error_log, qr/sse: (stream \d+|subscribe|connecting)/,
    'the info-level error log has none of these lines';

done_testing;
