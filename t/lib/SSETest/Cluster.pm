package SSETest::Cluster;

# Redis Cluster helpers shared by t/32-cluster.t (live streams, SPUBLISH) and
# t/33-cluster-history.t (history, FCALL sse_publish 1): a cluster of six
# redis-server processes on loopback, what its nodes say about slots and
# roles, and a cluster-aware publisher. Core Perl only.
#
#   use SSETest;
#   use SSETest::Cluster;
#   my $why = cluster_tools_missing();        # skip when true
#   my @nodes = start_cluster();              # SSETest::Redis objects, 3 masters + 3 replicas
#   my $table = slot_table($nodes[0]->port);  # [ [first, last, master port] ... ]

use strict;
use warnings;

use Time::HiRes qw(time sleep);
use SSETest -noskip;

use parent 'Exporter';
our @EXPORT = qw(
    cluster_tools_missing start_cluster cluster_info cluster_nodes slot_table owner_in keyslots
    shardnumsub start_cluster_publisher
);

# redis-cli next to $REDIS_BIN when that is a path, else from PATH.
our $REDIS_CLI = $SSETest::REDIS_BIN =~ m{^(.*/)} && -x "$1redis-cli" ? "$1redis-cli" : 'redis-cli';

# cluster_tools_missing(): undef when redis-server is 7 or later (sharded
# pub/sub, functions) and redis-cli is found (it makes the cluster); else
# what there is, as "have: redis <major>, redis-cli found|missing".
sub cluster_tools_missing {
    my (undef, $version) = SSETest::_run_capture($SSETest::REDIS_BIN, '--version');
    my ($major) = $version =~ /\bv=(\d+)\./;
    my $have_cli = $REDIS_CLI =~ m{/} ? -x $REDIS_CLI : scalar grep { -x "$_/redis-cli" } split /:/, $ENV{PATH} // '';
    return undef if ($major // 0) >= 7 && $have_cli;
    return 'have: redis ' . ($major // 'unknown') . ', redis-cli ' . ($have_cli ? 'found' : 'missing');
}

# CLUSTER INFO of $port as a hash ({} when it does not answer).
sub cluster_info {
    my ($port) = @_;
    my $text = eval { redis_cmd($port, CLUSTER => 'INFO') };
    return {} unless defined $text && !ref $text;
    return { map { /^([^:\s]+):(.*?)\s*$/ ? ($1 => $2) : () } split /\n/, $text };
}

# CLUSTER NODES of $port: { port => { id, role (master/slave), master (its
# master's id), slots (text), fail, link } } ({} when it does not answer).
sub cluster_nodes {
    my ($port) = @_;
    my $text = eval { redis_cmd($port, CLUSTER => 'NODES') };
    return {} unless defined $text && !ref $text;
    my %n;
    for (split /\n/, $text) {
        my ($id, $addr, $flags, $master, undef, undef, undef, $link, @slots) = split ' ';
        my ($p) = ($addr // '') =~ /:(\d+)@/ or next;
        $n{$p} = { id => $id, role => ($flags =~ /master/ ? 'master' : 'slave'), master => $master,
            slots => "@slots", fail => ($flags =~ /fail/ && $flags !~ /pfail/ ? 1 : 0), link => $link };
    }
    return \%n;
}

# CLUSTER SLOTS of $port: [ [first, last, master port] ... ], or undef.
sub slot_table {
    my ($port) = @_;
    my $r = eval { redis_cmd($port, CLUSTER => 'SLOTS') };
    return undef unless ref $r eq 'ARRAY' && @$r;
    return [ map { [ $_->[0], $_->[1], $_->[2][1] ] } @$r ];
}

# The master port serving $slot in a slot_table, or undef.
sub owner_in {
    my ($table, $slot) = @_;
    for (@{ $table || [] }) { return $_->[2] if $slot >= $_->[0] && $slot <= $_->[1] }
    return undef;
}

# The slots of @names (CLUSTER KEYSLOT on $port, pipelined), in order.
sub keyslots {
    my ($port, @names) = @_;
    my $c = redis_connect($port) or die "cannot connect to $port\n";
    my @slots = $c->pipeline(map { [ CLUSTER => KEYSLOT => $_ ] } @names);
    $c->close;
    return @slots;
}

# PUBSUB SHARDNUMSUB $channel on $port (a node answers for itself), or undef.
sub shardnumsub {
    my ($port, $channel) = @_;
    my $r = eval { redis_cmd($port, PUBSUB => SHARDNUMSUB => $channel) };
    return ref $r eq 'ARRAY' ? $r->[1] : undef;
}

# start_cluster(args => [...]): six nodes (SSETest::Redis objects, killed at
# the end of the file like every Redis; each has its own directory for
# nodes.conf and a cluster bus port picked with free_port, so nothing
# depends on port + 10000 being free), made into 3 masters with a replica
# each by redis-cli --cluster create. args: more redis-server arguments.
# Waits until every node says cluster_state:ok, knows six nodes and sees
# three masters with slots and three replicas, and the replicas are linked;
# returns the nodes (redis-cli makes the first three masters).
sub start_cluster {
    my (%o) = @_;
    my @args = ('--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf',
        '--cluster-node-timeout', 2000, '--cluster-replica-validity-factor', 0, @{ $o{args} || [] });
    my @nodes = map { SSETest::Redis->new(args => [ @args, '--cluster-port', free_port() ])->start } 1 .. 6;
    my @ports = map { $_->port } @nodes;
    my ($rc, $out) = SSETest::_run_capture($REDIS_CLI, '--cluster', 'create', (map { "127.0.0.1:$_" } @ports),
        '--cluster-replicas', 1, '--cluster-yes');
    die "redis-cli --cluster create failed ($rc):\n$out" if $rc;
    my $ok = wait_until(sub {
        for my $p (@ports) {
            my $i = cluster_info($p);
            return 0 unless ($i->{cluster_state} // '') eq 'ok' && ($i->{cluster_known_nodes} // 0) == 6;
            my $n = cluster_nodes($p);
            return 0 unless (grep { $_->{role} eq 'master' && length $_->{slots} } values %$n) == 3
                && (grep { $_->{role} eq 'slave' } values %$n) == 3;
        }
        for my $p (@ports) {
            my $r = redis_info($p, 'replication');
            return 0 if $r->{role} eq 'slave' && ($r->{master_link_status} // '') ne 'up';
        }
        1;
    }, 30, 0.1);
    die "the cluster is not ready 30 s after redis-cli --cluster create:\n$out\n"
        . join('', map { "--- $_\n" . (eval { redis_cmd($_, CLUSTER => 'NODES') } // '') } @ports) unless $ok;
    return @nodes;
}

# start_cluster_publisher(nodes => [ports], channels => [...], slots => {
# channel => slot }, rate => 100, tag => 'f', command => sub { my ($ch,
# $payload) = @_; [ SPUBLISH => $ch, $payload ] }): a child process
# publishing like a service with a cluster-aware client: $command (SPUBLISH
# by default) at $rate calls/s round robin over the channels (payload
# "<channel> <tag>#<n>", n from 1 per channel) to the master of each
# channel's slot (from CLUSTER SLOTS of the first node that answers);
# follows -MOVED (and -ASK, with ASKING) at once; when a node cannot be
# reached or answers an error (CLUSTERDOWN, TRYAGAIN, ...), that channel's
# message is retried 50 ms later (the other channels go on meanwhile) after
# CLUSTER SLOTS is read again. Log lines:
#   A <ch> <n> <reply> <sent> <acked> <port>   acknowledged (reply: the id
#                                              FCALL returned, the receivers
#                                              of SPUBLISH)
#   U <ch> <n> <sent> <port> <why>             sent, no reply (maybe run): not retried
#   F <ch> <n> <time> <port> <why>             certainly not run: retried
#   R <ch> <MOVED|ASK> <port> <time>           a redirection
# Returns an SSETest::ClusterPublisher (->results, ->stop).
sub start_cluster_publisher {
    my (%o) = @_;
    return start_publisher_process('SSETest::ClusterPublisher', \&_cluster_publisher_loop, \%o, close_fds => 1);
}

sub _cluster_publisher_loop {
    my ($dir, %o) = @_;
    my @nodes    = @{ $o{nodes} };
    my @channels = @{ $o{channels} };
    my %slot     = %{ $o{slots} };
    my $rate     = $o{rate} || 100;
    my $tag      = $o{tag} // '';
    my $command  = $o{command} || sub { [ SPUBLISH => $_[0], $_[1] ] };
    open my $log, '>>', "$dir/log" or die "cannot write $dir/log: $!\n";
    $log->autoflush(1);
    my (%conn, %owner, %n, %retry_at);
    my $refresh = sub {
        for my $p (@nodes) {
            my $t = eval {
                my $c = SSETest::RedisConn->new($p, timeout => 0.5) or die "connect\n";
                my $r = $c->cmd(CLUSTER => 'SLOTS');
                $c->close;
                $r;
            };
            next unless ref $t eq 'ARRAY' && @$t;
            for my $ch (@channels) {
                for my $range (@$t) {
                    $owner{$ch} = $range->[2][1] if $slot{$ch} >= $range->[0] && $slot{$ch} <= $range->[1];
                }
            }
            return 1;
        }
        return 0;
    };
    $refresh->() or die "no node answers CLUSTER SLOTS\n";
    my $call = sub {    # (last reply or undef, sent, error)
        my ($port, @cmds) = @_;
        my $sent = 0;
        my $reply = eval {
            my $c = $conn{$port} ||= SSETest::RedisConn->new($port, timeout => 1) // die "connect: $!\n";
            $c->send_cmd(@$_) for @cmds;
            $sent = 1;
            my $r;
            $r = $c->read_reply for @cmds;
            $r;
        };
        my $err = $@;
        if (!defined $reply) {
            $conn{$port}->close if $conn{$port};
            delete $conn{$port};
        }
        return ($reply, $sent, $err);
    };
    my $k = 0;
    my $next = time;
    while (!-e "$dir/stop") {
        my $left = $next - time;
        sleep $left if $left > 0;
        $next = time if time - $next > 0.2;    # far behind: no burst
        my $ch;
        for (1 .. @channels) {
            my $c = $channels[ $k++ % @channels ];
            if (($retry_at{$c} // 0) <= time) { $ch = $c; last }
        }
        if (!defined $ch) { sleep 0.005; next }
        my $n = ($n{$ch} // 0) + 1;
        my $publish = $command->($ch, "$ch $tag#$n");
        my @cmds = ($publish);
        my $port = $owner{$ch};
        my ($reply, $sent, $err, $t0);
        for my $hop (1 .. 5) {
            $t0 = time;
            ($reply, $sent, $err) = $call->($port, @cmds);
            last unless ref $reply && $reply->message =~ /^(MOVED|ASK) \d+ [^:\s]+:(\d+)/;
            printf {$log} "R %s %s %d %.4f\n", $ch, $1, $2, time;
            $port = $2;
            if ($1 eq 'MOVED') { $owner{$ch} = $port; @cmds = ($publish) }
            else { @cmds = ([ 'ASKING' ], $publish) }
        }
        my $t = time;
        if (defined $reply && !ref $reply && $reply =~ /^\d+$/) {
            printf {$log} "A %s %d %s %.4f %.4f %d\n", $ch, $n, $reply, $t0, $t, $port;
            $n{$ch} = $n;
            $next += 1 / $rate;
            next;
        }
        my $why = defined $reply ? "$reply" : $err;
        $why =~ s/\s+/ /g;
        if ($sent && !defined $reply) {
            printf {$log} "U %s %d %.4f %d %s\n", $ch, $n, $t0, $port, $why;
            $n{$ch} = $n;
        } else {
            printf {$log} "F %s %d %.4f %d %s\n", $ch, $n, $t, $port, $why;
        }
        $retry_at{$ch} = time + 0.05;
        $refresh->();
    }
    close $log;
}

package SSETest::ClusterPublisher;

# stop() (and DESTROY) come from SSETest::Publisher; results() reads this
# publisher's log (see start_cluster_publisher).
use parent -norequire, 'SSETest::Publisher';

# { acked => { ch => [ { n, id (the reply), sent, acked, port } ... ] },
#   maybe => { ch => { n => 1 } }, failures => count, redirections => {
#   MOVED => count, ASK => count }, errors => [why ...] }
sub results {
    my ($self) = @_;
    my %r = (acked => {}, maybe => {}, failures => 0, redirections => {}, errors => []);
    for my $line (split /\n/, SSETest::slurp("$self->{dir}/log")) {
        my @f = split / /, $line;
        if ($f[0] eq 'A' && @f == 7) {
            push @{ $r{acked}{ $f[1] } }, { n => $f[2], id => $f[3], sent => $f[4], acked => $f[5], port => $f[6] };
        } elsif ($f[0] eq 'U' && @f >= 5) {
            $r{maybe}{ $f[1] }{ $f[2] } = 1;
            $r{failures}++;
            push @{ $r{errors} }, join ' ', @f[5 .. $#f];
        } elsif ($f[0] eq 'F' && @f >= 5) {
            $r{failures}++;
            push @{ $r{errors} }, join ' ', @f[5 .. $#f];
        } elsif ($f[0] eq 'R' && @f == 5) {
            $r{redirections}{ $f[2] }++;
        }
    }
    return \%r;
}

1;
