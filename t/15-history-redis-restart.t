# Redis restarted under load with history: 20 clients over 3 channels on two
# workers while a publisher sends with FCALL sse_publish at a steady rate.
# Redis (append-only file, fsync at every write) is stopped for about 3 s and
# started again on the same port and directory; the publisher keeps trying
# and retries what failed, like a service. Every client must end with exactly
# the messages Redis accepted on its channels: none lost (the workers read
# back from the history what they missed), none twice, in order.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $CLIENTS = 20;
my $RATE    = 60;     # messages per second, all channels together
my @CHANS   = qw(rr:a rr:b rr:c);

my $redis = start_redis(persist => 1);
my $rp    = $redis->port;
load_sse_function($redis);
my $nginx = start_nginx(redis => $redis, workers => 2, listen => 'reuseport', server => q{
        location /h { sse_channel $arg_channels; sse_history on; sse_heartbeat 1s; sse_retry 1s; }
});
my $port = $nginx->port;

# Client i reads one of these channel sets.
my @SETS = ([qw(rr:a)], [qw(rr:b)], [qw(rr:c)], [qw(rr:a rr:b)], [qw(rr:b rr:c)], [qw(rr:a rr:c)], [@CHANS]);
my @clients = map {
    my $set = $SETS[ $_ % @SETS ];
    my $es = event_source($port, '/h?channels=' . join(',', @$set));
    $es->{chans} = $set;
    $es;
} 0 .. $CLIENTS - 1;

# Warm-up (plain PUBLISH, no id, no history) until every client receives on
# each of its channels: from then on nothing published can miss it.
my %warm;
my $t0 = time;
my $ready = warm_up_sources($rp, \@clients, \@CHANS, 20);
is $ready, $CLIENTS, "$CLIENTS streams open and receiving on every channel they asked for";
is scalar(grep { ($_->{connections}[0]{status} // 0) == 200 } @clients), $CLIENTS, 'all answered 200';

# Publish; stop Redis for about 3 s in the middle; publish some more.
my $pub = start_publisher(redis => $rp, channels => \@CHANS, rate => $RATE);
wait_sources(\@clients, sub { 0 }, 2);
my $before = $pub->results;
ok scalar(@{ $before->{accepted} }) >= $RATE, 'the publisher runs (' . scalar(@{ $before->{accepted} }) . ' accepted in 2 s)';

my $down = time;
$redis->stop;    # SIGTERM: Redis saves nothing more, then exits
note sprintf 'Redis stopped in %.2f s', time - $down;
wait_sources(\@clients, sub { 0 }, 3);
is scalar(grep { $_->{client} && !$_->{client}{ended} } @clients), $CLIENTS, 'Redis down for 3 s: every stream is still open';
$redis->start(timeout => 15);
my $up = time;
note sprintf 'Redis back after %.2f s down', $up - $down;
my ($resub, $polled) = (undef, 0);
wait_sources(\@clients, sub {    # meanwhile, note when both workers have subscribed again
    if (!$resub && $_[0] == $clients[0] && time - $polled > 0.05) {
        $polled = time;
        my $n = eval { numsub($rp, @CHANS) } || {};
        $resub = time unless grep { ($n->{$_} // 0) < 2 } @CHANS;
    }
    0;
}, 3);
my $res = $pub->stop;
my @accepted = @{ $res->{accepted} };
note sprintf '%d accepted, %d unknown, %d failed attempts (first %.2f s, last %.2f s after the stop)',
    scalar(@accepted), scalar(@{ $res->{unknown} }), $res->{failures},
    ($res->{failed_first} // $down) - $down, ($res->{failed_last} // $down) - $down;
ok $res->{failures} > 0, "the publisher saw Redis down ($res->{failures} failed attempts, retried)";
my $after = grep { $_->[3] > $up } @accepted;
ok $after > 0, "and published again after the restart ($after accepted)";
my $unseen = grep { $_->[3] > $up && (!$resub || $_->[3] < $resub) } @accepted;
note sprintf 'workers subscribed again %s after Redis came back: %d messages were accepted before that '
    . '(they can only reach the clients through the history)',
    $resub ? sprintf('%.2f s', $resub - $up) : 'not within 3 s', $unseen;

# What Redis holds is the truth: each accepted message is there (it survived
# the restart), and nothing else but messages whose reply was lost.
my %truth;    # channel => [ "channel|payload|id", ... ] in id order
for my $ch (@CHANS) {
    my $entries = redis_cmd($rp, XRANGE => "sse:h:$ch", '-', '+');
    $truth{$ch} = [ map {
        my ($id, $fields) = @$_;
        my %f = @$fields;
        $id =~ s/-0$//;
        "$ch|$f{d}|$id";
    } @{ ref $entries eq 'ARRAY' ? $entries : [] } ];
}
my %in_redis = map { my ($ch, $d, $id) = split /\|/; ("$ch|$d" => $id) } map { @$_ } values %truth;
my @lost_by_redis = grep { ($in_redis{"$_->[0]|$_->[0] #$_->[1]"} // -1) != $_->[2] } @accepted;
is scalar(@lost_by_redis), 0, scalar(@accepted) . ' accepted messages, all in Redis after the restart (append-only file)'
    or diag 'missing: ' . join ', ', map { "@$_" } @lost_by_redis[0 .. ($#lost_by_redis < 9 ? $#lost_by_redis : 9)];
my %maybe = map { ("$_->[0]|$_->[0] #$_->[1]" => 1) } @{ $res->{unknown} };
my %acked = map { ("$_->[0]|$_->[0] #$_->[1]" => 1) } @accepted;
my @from_nowhere = grep { !$acked{$_} && !$maybe{$_} } keys %in_redis;
is scalar(@from_nowhere), 0, 'Redis holds nothing else (' . (keys(%in_redis) - keys(%acked)) . ' sent whose reply was lost)'
    or diag "@from_nowhere";

# Every client: exactly the messages of its channels, in id order.
my %expected;
for my $es (@clients) {
    my @want = sort { (split /\|/, $a)[2] <=> (split /\|/, $b)[2] } map { @{ $truth{$_} } } @{ $es->{chans} };
    $es->{want} = \@want;
    $es->{want_last} = @want ? (split /\|/, $want[-1])[2] : 0;
}
my $t_wait = time;
my $complete = wait_sources(\@clients, sub { ($_[0]{last_id} // 0) >= $_[0]{want_last} }, 25);
note sprintf 'all clients complete %.2f s after the publisher stopped (%.2f s after Redis came back)',
    time - $t_wait, time - $up;
wait_sources(\@clients, sub { 0 }, 0.5);    # anything extra would arrive now
is $complete, $CLIENTS, 'every client received up to the last message of its channels';

my ($gaps, $dups, $wrong) = delivery_mismatches(\@clients);
is scalar(@$gaps), 0, 'no client got an sse-gap';
is scalar(@$dups), 0, 'no client got a message twice';
is scalar(@$wrong), 0, 'every client got exactly the accepted messages of its channels, in order'
    or diag join "\n", @$wrong[0 .. ($#$wrong < 9 ? $#$wrong : 9)];
is scalar(grep { $_->reconnections } @clients), 0, 'no stream was ended (no reconnection needed)';

$_->close for @clients;
is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in error.log';
note join "\n", grep { /sse:/ } split /\n/, $nginx->error_log;

done_testing;
