# Self-test of t/lib/SSETest.pm's client side (no nginx, no Redis): a fake
# server sends crafted responses in small pieces, so that the chunked decoder
# and the SSE parser are checked on every awkward split, and a broken stream
# is told apart from a clean end. If these fail, the other tests cannot be
# trusted.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(time);
use SSETest -noskip;

my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 10, Proto => 'tcp')
    or die "listen: $!";
my $port = $listener->sockport;

# Opens a client and returns (client, server side of its connection).
sub pair {
    my $c = sse_connect($port, '/x');
    my $s = $listener->accept or die "accept: $!";
    my $req = '';
    sysread $s, $req, 4096, length $req until $req =~ /\r\n\r\n/;
    return ($c, $s, $req);
}

# Writes $bytes and waits until the client has read them.
sub send_piece {
    my ($c, $s, $bytes) = @_;
    syswrite $s, $bytes;
    my $deadline = time + 2;
    my $got = 0;
    while ($got < length $bytes && time < $deadline) {
        $got += $c->pump;
        last if $c->{ended};
    }
}

sub chunked { my ($body) = @_; sprintf("%x\r\n", length $body) . $body . "\r\n" }

my $head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    . "Cache-Control: no-cache\r\n\r\n";
my $body = "\xEF\xBB\xBFretry: 1000\n\n:hb\nevent: a\ndata: x\r\ndata: y\r\rdata:z\n\nid: 5\ndata: w\n\n"
    . "unknown: q\ndata\n\nevent: only-type\n\nretry: x1\ndata: a:b\r\n\r\n";
my @expected = (
    { event => 'a',       data => "x\ny", id => undef },
    { event => 'message', data => 'z',    id => undef },
    { event => 'message', data => 'w',    id => '5' },
    { event => 'message', data => '',     id => '5' },
    { event => 'message', data => 'a:b',  id => '5' },
);

sub fields { [map { { event => $_->{event}, data => $_->{data}, id => $_->{id} } } @_] }

subtest 'request line and headers' => sub {
    my ($c, $s, $req) = pair();
    like $req, qr{^GET /x HTTP/1\.1\r\n}, 'request line';
    like $req, qr{\r\nAccept: text/event-stream\r\n}, 'Accept header';
    like $req, qr{\r\nHost: localhost\r\n}, 'Host header';
    close $s;
    $c->close;
};

# The whole response in pieces of every size from 1 to 7 bytes, inside chunks
# of every size from 1 to 5 bytes: every CR/LF lands on a boundary somewhere.
for my $chunk_size (1, 2, 3, 5, 64) {
    for my $piece_size (1, 3, 7) {
        my ($c, $s) = pair();
        my $wire = $head;
        for (my $i = 0; $i < length $body; $i += $chunk_size) {
            $wire .= chunked(substr $body, $i, $chunk_size);
        }
        $wire .= "0\r\n\r\n";
        for (my $i = 0; $i < length $wire; $i += $piece_size) {
            send_piece($c, $s, substr $wire, $i, $piece_size);
        }
        my $what = "chunks of $chunk_size, pieces of $piece_size";
        is $c->status, 200, "$what: status";
        is $c->header('content-type'), 'text/event-stream', "$what: header";
        is_deeply fields($c->all_events), \@expected, "$what: events";
        is_deeply [map { $_->{text} } $c->comments], ['hb'], "$what: comments";
        is_deeply [$c->retries], [1000], "$what: retry";
        is_deeply $c->{unknown}, { unknown => 1 }, "$what: unknown fields recorded";
        is $c->wait_eof(1), 'clean', "$what: clean end after the last chunk";
        close $s;
    }
}

subtest 'connection closed without the last chunk' => sub {
    my ($c, $s) = pair();
    send_piece($c, $s, $head . chunked("data: one\n\ndata: partial\n"));
    is $c->next_event(1)->{data}, 'one', 'the complete event is seen';
    is $c->is_eof, '', 'still open';
    close $s;
    is $c->wait_eof(2), 'closed', 'a close without the last chunk is "closed", not "clean"';
    is $c->pending_events, 0, 'the unfinished event is not dispatched';
};

subtest 'next_event times out' => sub {
    my ($c, $s) = pair();
    send_piece($c, $s, $head . chunked(":\n"));
    my $t0 = time;
    is $c->next_event(0.3), undef, 'no event: undef';
    ok time - $t0 >= 0.25, 'after the timeout';
    is scalar($c->comments), 1, 'the comment was seen';
    close $s;
};

subtest 'many clients at once' => sub {
    my @pairs = map { [pair()] } 1 .. 50;
    syswrite $_->[1], $head . chunked("data: hi $_->[0]{path}\n\n") for @pairs;
    is wait_events([map { $_->[0] } @pairs], 1, 5), 50, 'wait_events sees all 50';
    syswrite $_->[1], "0\r\n\r\n" for @pairs[0 .. 24];
    close $_->[1] for @pairs;
    is wait_clients([map { $_->[0] } @pairs], sub { $_[0]{ended} }, 5), 50, 'all ended';
    is scalar(grep { $_->[0]{ended} eq 'clean' } @pairs), 25, '25 clean';
    is scalar(grep { $_->[0]{ended} eq 'closed' } @pairs), 25, '25 closed';
};

subtest 'http_request: Content-Length and chunked bodies' => sub {
    for my $case (
        ["HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nreason", 'reason'],
        ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n", 'abcde'],
        ["HTTP/1.0 405 Not Allowed\r\n\r\nuntil close", 'until close'],
    ) {
        my ($response, $body) = @$case;
        my $pid = fork // die;
        if (!$pid) {
            my $s = $listener->accept;
            my $req = '';
            sysread $s, $req, 4096, length $req until $req =~ /\r\n\r\n/;
            syswrite $s, $response;
            close $s;
            POSIX::_exit(0);
        }
        my $res = http_request($port, 'GET', '/y', timeout => 5);
        waitpid $pid, 0;
        my ($status) = $response =~ /^HTTP\S+ (\d+)/;
        is $res->{status}, $status, "status $status";
        is $res->{body}, $body, "body '$body'";
    }
};

subtest 'redis_cmd replies' => sub {
    my $pid = fork // die;
    if (!$pid) {
        my $s = $listener->accept;
        my $req = '';
        sysread $s, $req, 4096, length $req until $req =~ /\r\n$/ && $req =~ /NUMSUB/;
        syswrite $s, "*4\r\n\$1\r\na\r\n:1\r\n\$1\r\nb\r\n:0\r\n";
        sleep 1;
        POSIX::_exit(0);
    }
    is_deeply numsub($port, 'a', 'b'), { a => 1, b => 0 }, 'array of bulk strings and integers';
    waitpid $pid, 0;
};

done_testing;
