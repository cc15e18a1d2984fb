# Graceful reload and quit with open streams: the old workers end every stream
# with a complete chunked body and exit within about a second, nothing is
# logged at [alert] or [emerg], and after a reload new streams work.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use SSETest;

my $STREAMS = 50;
my $WORKERS = 2;

my $redis = start_redis();
my $rp    = $redis->port;
# reuseport spreads the connections over both workers.
my $nginx = start_nginx(redis => $redis, workers => $WORKERS, listen => 'reuseport', server => q{
        location /sse { sse_channel news; sse_heartbeat 1s; sse_retry 2s; }
});
my $port = $nginx->port;

sub open_streams {
    my @c = map { sse_connect($port, '/sse') } 1 .. $STREAMS;
    my $ready = wait_clients(\@c, sub { length $_[0]->body_head >= 13 }, 15);
    is $ready, $STREAMS, "$STREAMS streams open";
    is scalar(grep { $_->status == 200 } @c), $STREAMS, 'all answered 200';
    ok wait_subscribed($rp, 'news', $WORKERS, 10), "both workers subscribed (NUMSUB news = $WORKERS)";
    return @c;
}

sub check_clean_end {
    my ($what, @c) = @_;
    my $ended = wait_clients(\@c, sub { $_[0]{ended} }, 5);
    is $ended, scalar(@c), "$what: every stream ended within 5 s";
    my @unclean = grep { ($_->{ended} // '') ne 'clean' } @c;
    is scalar(@unclean), 0, "$what: every stream ended with the last chunk (complete body)"
        or diag join "\n", map { 'ended: ' . ($_->{ended} // 'no') . ' (' . ($_->{end_reason} // '') . ')' } @unclean;
    my @partial = grep { length $_->{line} || length $_->{data} } @c;
    is scalar(@partial), 0, "$what: no stream ended in the middle of an event";
}

subtest 'reload with open streams' => sub {
    my @c = open_streams();
    is redis_cmd($rp, PUBLISH => news => 'before'), $WORKERS, 'published to both workers';
    my $got = wait_events(\@c, 1, 10);
    is $got, $STREAMS, 'every stream received the message';

    # The new configuration differs: its streams say retry: 4000.
    $nginx->write_conf(server => q{
        location /sse { sse_channel news; sse_heartbeat 1s; sse_retry 4s; }
    });
    my $mark = $nginx->error_log_mark;
    my $t0   = time;
    my @old  = $nginx->reload;
    my $gone = $nginx->wait_pids_gone(5, @old);
    my $took = defined $gone ? time - $t0 : undef;
    ok defined $took && $took < 2, 'old workers exit within 2 s of the reload'
        . (defined $took ? sprintf(' (%.2f s)', $took) : ' (still running after 5 s)');
    check_clean_end('reload', @c);

    my @new = map { sse_connect($port, '/sse') } 1 .. 20;
    is scalar(grep { $_->status == 200 } @new), 20, 'after the reload new streams open';
    is wait_clients(\@new, sub { length $_[0]->body_head >= 13 }, 5), 20, 'and get their retry field';
    is scalar(grep { $_->body_head =~ /^retry: 4000\n\n/ } @new), 20, 'from the new configuration (retry: 4000)';
    ok wait_subscribed($rp, 'news', $WORKERS, 10), "the new workers subscribe (NUMSUB news = $WORKERS)";
    is redis_cmd($rp, PUBLISH => news => 'after reload'), $WORKERS, 'the message reaches the new workers only';
    is wait_events(\@new, 1, 10), 20, 'and every new stream receives it';
    is scalar(grep { $_->pending_events == 1 && $_->next_event(0)->{data} eq 'after reload' } @new), 20,
        '... exactly once';
    $_->close for @new;
    my @alerts = grep { /\[(?:alert|emerg)\]/ } split /\n/, $nginx->error_log_since($mark);
    is_deeply \@alerts, [], 'no [alert] or [emerg] during the reload';
};

subtest 'quit with open streams' => sub {
    my @c = open_streams();
    my $mark = $nginx->error_log_mark;
    my $took = $nginx->quit(10);
    ok defined $took && $took < 2, 'nginx -s quit: the master exits within 2 s'
        . (defined $took ? sprintf(' (%.2f s)', $took) : ' (still running after 10 s)');
    check_clean_end('quit', @c);
    ok wait_subscribed($rp, 'news', 0, 5), 'no subscriber left in Redis';
    my @alerts = grep { /\[(?:alert|emerg)\]/ } split /\n/, $nginx->error_log_since($mark);
    is_deeply \@alerts, [], 'no [alert] or [emerg] during the quit';
};

is_deeply [$nginx->alerts], [], 'no [alert] or [emerg] in the whole error.log';

done_testing;
