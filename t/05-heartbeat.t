# Heartbeats: an idle stream gets a comment line every sse_heartbeat, none with
# `sse_heartbeat off`, and none in the first seconds with the default (15s).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use SSETest;

my $redis = start_redis();
my $nginx = start_nginx(redis => $redis, server => q{
        location /hb      { sse_channel hb; sse_heartbeat 1s; }
        location /off     { sse_channel hb; sse_heartbeat off; }
        location /default { sse_channel hb; }
});
my $port = $nginx->port;

my %c = map { $_ => sse_connect($port, "/$_") } qw(hb off default);
is $c{$_}->status, 200, "/$_ answers 200" for sort keys %c;
my $opened = time;

# Read all three for 3.5 s.
wait_clients([values %c], sub { 0 }, 3.5);
my $elapsed = time - $opened;

my @beats = $c{hb}->comments;
my $n = @beats;
ok $n >= 2 && $n <= 4, "sse_heartbeat 1s: $n comment lines in " . sprintf('%.1f', $elapsed) . ' s (expected 2..4)';
my @gaps = map { $beats[$_]{time} - $beats[$_ - 1]{time} } 1 .. $#beats;
ok !grep({ $_ < 0.5 || $_ > 2 } @gaps), 'about one second between heartbeats'
    or diag 'gaps: ' . join ', ', map { sprintf '%.2f', $_ } @gaps;
ok $n && $beats[0]{time} - $opened < 2.5, 'the first heartbeat comes within about one interval';
is $c{hb}->pending_events, 0, 'heartbeats dispatch no event';
is $c{hb}->is_eof, '', 'the heartbeat stream is still open';

is scalar($c{off}->comments), 0, 'sse_heartbeat off: no comment line';
is $c{off}->is_eof, '', 'the stream without heartbeats is still open';

is scalar($c{default}->comments), 0, 'default (15s): no comment line in the first 3.5 s';
is $c{default}->is_eof, '', 'the default stream is still open';

# Heartbeats do not get in the way of events.
ok wait_subscribed($redis->port, 'hb', 1, 5), 'subscribed';
redis_cmd($redis->port, PUBLISH => hb => 'beat');
for my $name (sort keys %c) {
    my $ev = $c{$name}->next_event(5);
    is $ev && $ev->{data}, 'beat', "/$name receives events";
}

$_->close for values %c;
is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';

done_testing;
