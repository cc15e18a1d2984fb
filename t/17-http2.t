# HTTP/2 streams (h2c, with curl as the client) stay ordinary nginx requests
# and write through nginx's output filters: events, heartbeats, and a clean
# end of the stream on quit. (A stalled HTTP/2 reader is not tested: curl's
# large stream window and the socket buffers absorb tens of MB first.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use POSIX ();
use SSETest;

my $curl = `command -v curl 2>/dev/null`;
chomp $curl;
plan skip_all => 'curl is not installed' unless $curl;
plan skip_all => 'curl has no HTTP/2 support' unless `$curl -V 2>/dev/null` =~ /\bHTTP2\b/;

my $redis = start_redis();
my $nginx = start_nginx(redis => $redis, listen => 'http2', server => q{
        location /sse  { sse_channel $arg_channels; sse_allow "**"; sse_heartbeat 1s; }
});
my $port = $nginx->port;
my $dir  = File::Temp::tempdir(CLEANUP => 1);

# Runs curl in the background; returns (pid, output file).
sub h2_stream {
    my ($path, $name, @extra) = @_;
    my $out = "$dir/$name.out";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', $out or POSIX::_exit(127);
        open STDERR, '>', '/dev/null';
        { exec {$curl} $curl, '-sN', '--http2-prior-knowledge', '-D', "$dir/$name.head", @extra,
            "http://127.0.0.1:$port$path" }
        POSIX::_exit(127);
    }
    return ($pid, $out);
}

sub slurp_file { open my $fh, '<', $_[0] or return ''; local $/; <$fh> }

sub wait_file_match {
    my ($file, $re, $timeout) = @_;
    my $t0 = time;
    while (time - $t0 < $timeout) {
        return 1 if slurp_file($file) =~ $re;
        sleep 0.05;
    }
    return 0;
}

my ($pid, $out) = h2_stream('/sse?channels=a,b', 'main');
ok wait_file_match($out, qr/^retry: 3000\n\n/, 5), 'the stream opens with retry:';
like slurp_file("$dir/main.head"), qr{^HTTP/2 200}m, 'HTTP/2 200';
like slurp_file("$dir/main.head"), qr{^content-type: text/event-stream}mi, 'text/event-stream';
ok wait_subscribed($redis->port, 'a', 1, 5), 'subscribed';
redis_cmd($redis->port, PUBLISH => a => "one\ntwo");
redis_cmd($redis->port, PUBLISH => b => 'three');
ok wait_file_match($out, qr/event: a\ndata: one\ndata: two\n\nevent: b\ndata: three\n\n/, 5),
    'events of both channels arrive, in order, with their names';
ok wait_file_match($out, qr/^:\n/m, 3), 'heartbeats arrive on an idle HTTP/2 stream';

# Quit: the open stream ends cleanly (curl exits 0 on a complete response).
my $elapsed = $nginx->quit;
waitpid $pid, 0;
is $? >> 8, 0, 'curl saw a complete HTTP/2 response at quit';
ok defined $elapsed && $elapsed < 3, 'nginx exited promptly';
is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
