# Configuration: the module loads, good configurations pass `nginx -t`, and
# every kind of bad value fails `nginx -t` with a message naming the directive.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

# --- good configurations -----------------------------------------------------

my $name128 = 'x' x 128;
my ($rc, $out) = nginx_test_conf(server => qq{
        location /sse { sse_channel news; }
        location /logs {
            sse_channel logs:\$arg_ws:\$arg_wf;
            sse_heartbeat 5s;
            sse_retry 1500ms;
            sse_max_backlog 256k;
            sse_max_channels 4;
        }
        location /multi { sse_channel \$arg_channels extra:one; sse_heartbeat off; }
        location /list { sse_channel "alpha,beta" A-b_c.d\@e:f; }
        location /longest { sse_channel $name128; }
        location /live { sse_channel \$arg_channels; sse_history on; sse_session on; }
        location = /live/subscribe { sse_subscribe; sse_subscribe_timeout 2s; }
        location / { return 200 "plain\\n"; }
});
is $rc, 0, 'nginx -t accepts a configuration using every directive' or diag $out;
like $out, qr/test is successful/, 'nginx -t reports success';

($rc, $out) = nginx_test_conf(
    http   => 'sse_heartbeat 20s; sse_retry 10s; sse_max_backlog 2m; sse_max_channels 8;',
    server => 'sse_heartbeat 1s; location /sse { sse_channel news; }',
);
is $rc, 0, 'sse_heartbeat/sse_retry/sse_max_backlog/sse_max_channels are accepted at http and server level'
    or diag $out;

($rc, $out) = nginx_test_conf(redis_url => undef, server => 'location /sse { sse_channel news; }');
is $rc, 0, 'sse_redis_url may be omitted (default redis://127.0.0.1:6379)' or diag $out;

for my $url ('redis://localhost', 'redis://127.0.0.1:6380/2', 'redis://:s3cret@127.0.0.1:6379',
    'redis://user:pass@127.0.0.1:6379/0')
{
    ($rc, $out) = nginx_test_conf(redis_url => $url, server => 'location /sse { sse_channel news; }');
    is $rc, 0, "sse_redis_url $url is accepted" or diag $out;
}

# Sanity check of the harness: without load_module the directives are unknown,
# so the failures below really come from the module.
($rc, $out) = nginx_test_conf(module => undef, redis_url => undef, server => 'location /sse { sse_channel news; }');
isnt $rc, 0, 'without load_module, sse_channel is an unknown directive';
like $out, qr/unknown directive "sse_channel"/, '... as nginx says';

# --- bad configurations ---------------------------------------------------------
# [ directive the message must name, description, nginx_test_conf options ]

my $loc = sub { (server => "location /sse { $_[0] }") };
my $long = 'x' x 129;
my @bad = (
    [sse_redis_url => 'http:// scheme',            redis_url => 'http://127.0.0.1:6379'],
    [sse_redis_url => 'no scheme',                 redis_url => '127.0.0.1:6379'],
    [sse_redis_url => 'no host',                   redis_url => 'redis://'],
    [sse_redis_url => 'port out of range',         redis_url => 'redis://127.0.0.1:99999'],
    [sse_redis_url => 'port not a number',         redis_url => 'redis://127.0.0.1:port'],
    [sse_redis_url => 'database not a number',     redis_url => 'redis://127.0.0.1:6379/db'],
    [sse_redis_url => 'in server context',
        server => 'sse_redis_url redis://127.0.0.1:6379; location /sse { sse_channel a; }'],
    [sse_redis_url => 'in location context',
        $loc->('sse_redis_url redis://127.0.0.1:6379; sse_channel a;')],

    [sse_channel => 'in http context',             http => 'sse_channel a;'],
    [sse_channel => 'in server context',           server => 'sse_channel a; location /sse { }'],
    [sse_channel => 'without a value',             $loc->('sse_channel;')],
    [sse_channel => 'literal with a space',        $loc->('sse_channel "bad name";')],
    [sse_channel => 'literal with *',              $loc->('sse_channel news.*;')],
    [sse_channel => 'literal with /',              $loc->('sse_channel a/b;')],
    [sse_channel => 'literal with empty segment',  $loc->('sse_channel a::b;')],
    [sse_channel => 'literal ending in :',         $loc->('sse_channel a:;')],
    [sse_channel => 'literal starting with :',     $loc->('sse_channel :a;')],
    [sse_channel => 'literal of 129 bytes',        $loc->("sse_channel $long;")],
    [sse_channel => 'empty literal',               $loc->('sse_channel "";')],
    [sse_channel => 'literal list with empty item', $loc->('sse_channel "a,,b";')],
    [sse_channel => 'literal non-ASCII',           $loc->("sse_channel caf\xc3\xa9;")],

    [sse_heartbeat => 'not a time',                $loc->('sse_channel a; sse_heartbeat soon;')],
    [sse_heartbeat => 'bad unit',                  $loc->('sse_channel a; sse_heartbeat 5q;')],
    [sse_heartbeat => 'two values',                $loc->('sse_channel a; sse_heartbeat 5s 10s;')],
    [sse_heartbeat => 'no value',                  $loc->('sse_channel a; sse_heartbeat;')],
    [sse_retry => 'not a time',                    $loc->('sse_channel a; sse_retry later;')],
    [sse_retry => 'bad unit',                      $loc->('sse_channel a; sse_retry 3parsecs;')],
    [sse_max_backlog => 'not a size',              $loc->('sse_channel a; sse_max_backlog huge;')],
    [sse_max_backlog => 'bad unit',                $loc->('sse_channel a; sse_max_backlog 1z;')],
    [sse_max_channels => 'not a number',           $loc->('sse_channel a; sse_max_channels many;')],
    [sse_max_channels => 'negative',               $loc->('sse_channel a; sse_max_channels -1;')],
    [sse_max_channels => 'in http context, not a number', http => 'sse_max_channels lots;'],

    [sse_session => 'not on/off',                  $loc->('sse_channel a; sse_session yes;')],
    [sse_subscribe => 'with a value',              $loc->('sse_subscribe now;')],
    [sse_subscribe => 'twice',                     $loc->('sse_subscribe; sse_subscribe;')],
    [sse_subscribe => 'in server context',         server => 'sse_subscribe; location /sse { sse_channel a; }'],
    [sse_subscribe => 'in the same location as sse_channel',
        $loc->('sse_channel a; sse_subscribe;')],
    [sse_subscribe_timeout => 'not a time',        $loc->('sse_subscribe; sse_subscribe_timeout soon;')],
);

for my $case (@bad) {
    my ($directive, $what, %conf) = @$case;
    my ($rc, $out) = nginx_test_conf(%conf);
    isnt $rc, 0, "nginx -t fails: $directive $what";
    like $out, qr/\Q$directive\E/, "... and the message names $directive" or diag $out;
}

# --- the module loads and runs -------------------------------------------------

my $redis = start_redis();
my $nginx = start_nginx(redis => $redis, server => q{
        location /sse { sse_channel news; }
        location / { return 200 "plain\n"; }
});
my $res = http_request($nginx->port, 'GET', '/');
is $res->{status}, 200, 'a location without sse_channel is served normally';
is $res->{body}, "plain\n", '... with its own body';

my $c = sse_connect($nginx->port, '/sse');
is $c->status, 200, 'an sse_channel location answers 200';
like $c->header('Content-Type') // '', qr{^text/event-stream\b}, '... with text/event-stream';
$c->close;

is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
