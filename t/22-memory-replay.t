# Replays are bounded by sse_max_backlog: clients that resume from the very
# beginning of a large history (32 channels x 1,000 x 2 KB = 64 MB) and
# never read cannot make the worker hold the whole history for each of
# them, and the memory is given back when they leave. A client that does
# read gets the newest part of the history that fits, announced by an
# sse-gap event (the older part is dropped), in id order, then live events.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $CHANNELS = 32;
my $PER      = 1000;
my $SIZE     = 2048;
my $CLIENTS  = 10;
my $HOLD     = 5;    # seconds the non-reading clients are held

my $redis = start_redis();
my $rp    = $redis->port;
my $nginx = start_nginx(redis => $redis, workers => 1, server => q{
        location /h { sse_channel $arg_ch; sse_history on; }
});
my $port = $nginx->port;
my ($worker) = $nginx->worker_pids;
my @chans = map { "mem:$_" } 1 .. $CHANNELS;
my $path = '/h?ch=' . join(',', @chans);

ok wait_until(sub {
    my $list = redis_cmd($rp, FUNCTION => 'LIST', LIBRARYNAME => 'nginx_sse');
    ref $list eq 'ARRAY' && @$list;
}, 10) || load_sse_function($rp), 'the sse_publish function is loaded';

# The history: round robin over the channels, so that ids interleave.
my $t0 = time;
my $conn = redis_connect($rp, timeout => 30);
my @ids;
my @order;    # [channel, n] per id, in publish order
for my $n (1 .. $PER) {
    my @batch = map { [ $_, $n ] } @chans;
    push @ids, $conn->pipeline(map {
        [FCALL => sse_publish => 0, $_->[0], sprintf('%s #%04d ', @$_) . ('m' x ($SIZE - 16)), "maxlen=$PER"]
    } @batch);
    push @order, @batch;
}
$conn->close;
is scalar(grep { !ref && /^\d+$/ } @ids), $CHANNELS * $PER, sprintf('%d events of %d bytes published on %d channels (%.1f s)',
    $CHANNELS * $PER, $SIZE, $CHANNELS, time - $t0);
my ($first, $last) = ($ids[0], $ids[-1]);
note "ids $first .. $last";

# A small resume first, so that the worker's history connection and buffers exist.
my $warm = sse_connect($port, '/h?ch=mem:1', headers => { 'Last-Event-ID' => $ids[-$CHANNELS - 1] });
is $warm->status, 200, 'a small resume (warm-up)';
my $e = $warm->next_event(5);
is $e && $e->{own_id}, $ids[-$CHANNELS], '... gets the last event of mem:1';
$warm->close;
sleep 0.5;
my $base = rss_kb($worker);
note "worker RSS before: $base KB";

subtest "$CLIENTS clients resume from the beginning and never read" => sub {
    my @c = map { sse_connect($port, $path, rcvbuf => 4096, headers => { 'Last-Event-ID' => $first - 1 }) } 1 .. $CLIENTS;
    my $peak = $base;
    my $t = time;
    my @samples;
    while (time - $t < $HOLD) {
        my $rss = rss_kb($worker) // last;
        $peak = $rss if $rss > $peak;
        push @samples, sprintf '%.2fs %dMB', time - $t, $rss / 1024;
        sleep 0.02;
    }
    note "worker RSS while held: @samples[grep { $_ % 10 == 0 } 0 .. $#samples]";
    my $growth = ($peak - $base) / 1024;
    ok $growth < 150, sprintf('worker RSS grew by %.0f MB at most while they were held (less than 150 MB)', $growth);
    is_deeply [$nginx->worker_pids], [$worker], 'the worker is still the same process';
    $_->close for @c;
    sleep 2;
    my $after = rss_kb($worker) // 0;
    my $left = ($after - $base) / 1024;
    ok $left < 16, sprintf('2 s after they left, RSS is %.1f MB above the start (less than 16 MB)', $left);
};

subtest 'a client that reads, resuming from the beginning' => sub {
    my $c = sse_connect($port, $path, headers => { 'Last-Event-ID' => $first - 1 });
    is $c->status, 200, 'GET with Last-Event-ID before the first event: 200';
    my $gap = $c->next_event(10);
    is $gap && $gap->{event}, 'sse-gap', 'the first event is sse-gap';
    my @named = split /,/, $gap ? $gap->{data} : '';
    my %known = map { $_ => 1 } @chans;
    ok @named && !grep({ !$known{$_} } @named), 'naming some of the requested channels (' . scalar(@named) . ')';
    # Everything replayed has arrived once a live event arrives.
    $c->wait_for(sub { $_[0]->pending_events > 0 }, 10);
    my $live_id = sse_publish($rp, 'mem:1', 'live after the replay', "maxlen=$PER");
    $c->wait_for(sub { grep { ($_->{own_id} // '') eq $live_id } $_[0]->all_events }, 30);
    my @ev = $c->events_until($c->pending_events, 0);
    my $live = pop @ev;
    is $live && "$live->{event}|$live->{data}|$live->{own_id}", "mem:1|live after the replay|$live_id",
        'then the live event, last';
    my @got = map { $_->{own_id} // -1 } @ev;
    my $bytes = 0;
    $bytes += length $_->{data} for @ev;
    note sprintf '%d events (%.2f MB) replayed', scalar(@ev), $bytes / 1048576;
    ok @ev >= 1, 'some history was replayed (' . scalar(@ev) . ' events)';
    ok $bytes <= 1.1 * 1048576, sprintf('no more than sse_max_backlog (1m) of it (%.2f MB)', $bytes / 1048576);
    my @tail = @ids[ @ids - @got .. $#ids ];
    is_deeply \@got, \@tail, 'the newest events, contiguous, in strictly increasing id order (the oldest part dropped)'
        or diag "first ids: @got[0 .. 4]; expected @tail[0 .. 4]";
    my %chan_of = map { $ids[$_] => $order[$_][0] } 0 .. $#ids;
    is scalar(grep { $_->{event} ne ($chan_of{ $_->{own_id} // '' } // '') } @ev), 0, 'each on its channel';
    $c->close;
};

is_deeply [$nginx->worker_pids], [$worker], 'the same worker ran the whole file (no crash)';

done_testing;
