# Payloads: line breaks of every kind, attempts to forge fields or events,
# empty, large and UTF-8 payloads all arrive as exactly one event whose data is
# the payload (line breaks normalised to \n, as EventSource does).
use strict;
use warnings;
use utf8;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $redis = start_redis();
my $rp    = $redis->port;
# Heartbeats off: any comment line seen would have come out of a payload.
my $nginx = start_nginx(redis => $redis, server => q{
        location /p { sse_channel payload; sse_heartbeat off; }
});

my $text = "héllo wörld — ✓ 日本語 🎉 Ω";
utf8::encode(my $utf8 = $text);

my $kib100 = join '', map { chr(33 + ($_ * 7) % 94) } 1 .. 100 * 1024;
my $kib100_lines = join "\n", map { sprintf "%05d %s", $_, 'y' x 94 } 1 .. 1024;    # 100 KiB, 1024 lines

# [ description, payload ]; the expected data is the payload with CRLF and CR
# turned into LF.
my @cases = (
    ['plain text',                   'hello'],
    ['LF-separated lines',           "line one\nline two\nline three"],
    ['CRLF-separated lines',         "a\r\nb\r\nc"],
    ['CR-separated lines',           "a\rb\rc"],
    ['mixed line breaks',            "a\r\n\r\nb\n\rc\r"],
    ['trailing newline',             "ends with a newline\n"],
    ['blank lines around',           "\n\nmiddle\n\n"],
    ['only newlines',                "\n\n\n"],
    ['empty payload',                ''],
    ['leading and trailing spaces',  '  two leading spaces, one trailing '],
    ['looks like a comment',         ': not a comment'],
    ['looks like a data field',      'data: inner'],
    ['forged fields after LF LF',    "innocent\n\nevent: forged\nid: 666\nretry: 1\ndata: evil\n\n"],
    ['forged fields after CR CR',    "x\r\revent: forged\rid: 7\rretry: 2\rdata: evil\r\r"],
    ['forged fields after CRLF',     "x\r\n\r\nevent: forged\r\nid: 8\r\ndata: evil\r\n\r\n"],
    ['forged field with no space',   "x\nid:9\nevent:forged"],
    ['UTF-8 text',                   $utf8],
    ['100 KiB on one line',          $kib100],
    ['100 KiB in 1024 lines',        $kib100_lines],
    ['JSON',                         '{"level":"INFO","msg":"a \"quoted\" word","n":[1,2,3]}'],
);

my $c = sse_connect($nginx->port, '/p');
is $c->status, 200, 'stream open';
ok wait_subscribed($rp, 'payload', 1, 5), 'subscribed';

my $conn = redis_connect($rp);
for my $case (@cases) {
    my ($what, $payload) = @$case;
    is $conn->cmd(PUBLISH => payload => $payload), 1, "published: $what";
    my $ev = $c->next_event(10);
    (my $expected = $payload) =~ s/\r\n?/\n/g;
    ok $ev, "$what: one event arrives" or next;
    is $ev->{event}, 'payload', "$what: event name is the channel";
    ok !defined $ev->{id}, "$what: no id field";
    if (length $expected > 200) {
        ok $ev->{data} eq $expected, "$what: data intact (" . length($expected) . ' bytes)'
            or diag 'got ' . length($ev->{data}) . ' bytes, starting ' . substr($ev->{data}, 0, 80);
    } else {
        is $ev->{data}, $expected, "$what: data as published";
    }
}
$conn->close;

# Nothing beyond one event per message, and no field other than event/data
# (plus the opening retry) was ever seen.
$c->drain(0.5);
is scalar($c->all_events), scalar(@cases), 'exactly one event per message';
is_deeply [$c->retries], [3000], 'the only retry field is the opening one';
is_deeply $c->{unknown}, {}, 'no unknown field was seen';
is scalar($c->comments), 0, 'no comment line was seen';
ok !grep({ defined $_->{id} } $c->all_events), 'no event ever carried an id';
is $c->is_eof, '', 'the stream is still open';
$c->close;

is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
