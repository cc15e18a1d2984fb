# Reload under load with history: 200 clients (two channels each, out of 4)
# on two workers while 200 messages per second are published with FCALL
# sse_publish. `nginx -s reload` in the middle: the old workers end every
# stream cleanly, each client reconnects like a browser's EventSource (after
# the retry delay, with Last-Event-ID = the last id it received) to the new
# workers, and in the end every client has every accepted message of its
# channels exactly once, in order: zero loss, zero duplicates.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $CLIENTS = 200;
my $RATE    = 200;    # messages per second, all channels together
my $PUBLISH = 7;      # seconds of publishing; the reload comes after 2.5 s
my @CHANS   = map { "rl:$_" } qw(a b c d);

my $redis = start_redis();
my $rp    = $redis->port;
load_sse_function($redis);
my $LOCATION = q{
        location /h { sse_channel $arg_channels; sse_history on; sse_heartbeat 5s; sse_retry 1s; }
};
my $nginx = start_nginx(redis => $redis, workers => 2, listen => 'reuseport backlog=1024', server => $LOCATION);
my $port = $nginx->port;

# Client i reads channels i and i+1 (mod 4).
my @clients = map {
    my $set = [ $CHANS[ $_ % 4 ], $CHANS[ ($_ + 1) % 4 ] ];
    my $es = event_source($port, '/h?channels=' . join(',', @$set));
    $es->{chans} = $set;
    $es;
} 0 .. $CLIENTS - 1;

# Warm-up (plain PUBLISH, no id) until every client receives on both its
# channels: from then on nothing published can miss it.
my $t0 = time;
my $ready = warm_up_sources($rp, \@clients, \@CHANS, 30);
is $ready, $CLIENTS, "$CLIENTS streams open and receiving";
note sprintf 'ready after %.2f s', time - $t0;
is scalar(grep { ($_->{connections}[0]{status} // 0) == 200 } @clients), $CLIENTS, 'all answered 200';

my $pub = start_publisher(redis => $rp, channels => \@CHANS, rate => $RATE);
my $start = time;
wait_sources(\@clients, sub { 0 }, 2.5);

my $mark = $nginx->error_log_mark;
my $reload_at = time;
my @old = $nginx->reload;
note sprintf 'new workers up %.2f s after SIGHUP', time - $reload_at;
my $old_gone;
wait_sources(\@clients, sub {
    $old_gone //= time if $_[0] == $clients[0] && !grep { SSETest::_alive($_) } @old;
    0;
}, $start + $PUBLISH - time);
my $res = $pub->stop;
my @accepted = @{ $res->{accepted} };
note sprintf '%d messages accepted in %.1f s; %d failed attempts, %d unknown',
    scalar(@accepted), time - $start, $res->{failures}, scalar(@{ $res->{unknown} });
ok scalar(@accepted) >= $RATE * $PUBLISH * 0.6, 'the publisher kept a steady rate (' . scalar(@accepted) . ' messages)';
is $res->{failures} + @{ $res->{unknown} }, 0, 'Redis took every message';
ok defined $old_gone && $old_gone - $reload_at < 3, 'the old workers exited within 3 s of the reload'
    . (defined $old_gone ? sprintf(' (%.2f s)', $old_gone - $reload_at) : '');

# Expected per client: the accepted messages of its channels, in id order.
my %by_chan;
push @{ $by_chan{ $_->[0] } }, "$_->[0]|$_->[0] #$_->[1]|$_->[2]" for @accepted;
for my $es (@clients) {
    my @want = sort { (split /\|/, $a)[2] <=> (split /\|/, $b)[2] } map { @{ $by_chan{$_} || [] } } @{ $es->{chans} };
    $es->{want} = \@want;
    $es->{want_last} = @want ? (split /\|/, $want[-1])[2] : 0;
}
my $t_wait = time;
my $complete = wait_sources(\@clients, sub { ($_[0]{last_id} // 0) >= $_[0]{want_last} }, 20);
note sprintf 'all clients complete %.2f s after the publisher stopped', time - $t_wait;
wait_sources(\@clients, sub { 0 }, 0.5);    # anything extra would arrive now
is $complete, $CLIENTS, 'every client received up to the last message of its channels';

# The reload as the clients saw it.
my @first = map { $_->{connections}[0] } @clients;
is scalar(grep { defined $_->{ended} && $_->{ended_at} >= $reload_at } @first), $CLIENTS,
    'every stream opened before the reload was ended by it';
is scalar(grep { ($_->{ended} // '') eq 'clean' } @first), $CLIENTS, 'each with the last chunk (complete body)'
    or diag join "\n", map { "ended: " . ($_->{ended} // 'no') . ' (' . ($_->{end_reason} // '') . ')' }
        grep { ($_->{ended} // '') ne 'clean' } @first;
is scalar(grep { $_->{partial} } @first), 0, 'none in the middle of an event';
my @again = grep { $_->reconnections >= 1 } @clients;
is scalar(@again), $CLIENTS, 'every client reconnected';
is scalar(grep { $_->reconnections == 1 } @clients), $CLIENTS, 'exactly once (the new workers kept them)'
    or diag join ', ', map { $_->reconnections } grep { $_->reconnections != 1 } @clients;
my @second = map { $_->{connections}[1] || {} } @clients;
is scalar(grep { ($_->{status} // 0) == 200 } @second), $CLIENTS, 'to a 200 stream of the new workers';
my @bad_resume;
for my $es (@clients) {
    my $conn1 = $es->{connections}[1] or next;
    my @before = grep { $_->{conn} == 0 && defined $_->{id} } $es->all_events;
    my $last = @before ? $before[-1]{id} : undef;
    push @bad_resume, sprintf('sent %s, last received %s, echoed %s',
        map { $_ // 'none' } $conn1->{sent_id}, $last, $conn1->{echo})
        unless defined $last && ($conn1->{sent_id} // '') eq $last && ($conn1->{echo} // '') eq $last;
}
is scalar(@bad_resume), 0, 'each sent Last-Event-ID = the last id it had received, echoed in the response'
    or diag join "\n", @bad_resume[0 .. ($#bad_resume < 9 ? $#bad_resume : 9)];

# Every message exactly once, in order.
my ($gaps, $dups, $wrong) = delivery_mismatches(\@clients, describe => sub {
    my ($es) = @_;
    return ', resumed after ' . ($es->{connections}[1] ? $es->{connections}[1]{sent_id} // '-' : '-');
});
is scalar(@$gaps), 0, 'no client got an sse-gap';
is scalar(@$dups), 0, 'no client got a message twice';
is scalar(@$wrong), 0, "every client got every accepted message of its channels exactly once, in order"
    or diag join "\n", scalar(@$wrong) . ' clients wrong:', @$wrong[0 .. ($#$wrong < 9 ? $#$wrong : 9)];
# The reload did make the clients miss messages, which only the replay could
# give them: those published between the end of their first stream and the
# start of the second.
my $away = 0;
for my $es (@clients) {
    my ($gone, $back) = ($es->{connections}[0]{ended_at}, $es->{connections}[1]);
    next unless defined $gone && $back;
    my %mine = map { $_ => 1 } @{ $es->{chans} };
    $away += grep { $mine{ $_->[0] } && $_->[3] > $gone && $_->[3] < $back->{opened} } @accepted;
}
ok $away > 0, "$away messages (all clients together) were published while their client was reconnecting";

$_->close for @clients;
my @alerts = grep { /\[(?:alert|emerg)\]/ } split /\n/, $nginx->error_log;
is_deeply \@alerts, [], 'no [alert] or [emerg] in error.log';

done_testing;
