package SSETest;

# Test harness for nginx-sse: starts real redis-server and nginx processes on
# free loopback ports, talks RESP to Redis, and reads Server-Sent Events the way
# a browser's EventSource does. Core Perl only.
#
#   use FindBin; use lib "$FindBin::Bin/lib";
#   use SSETest;                   # skips the whole file if the module is not built
#
#   my $redis = start_redis();                       # SSETest::Redis
#   my $nginx = start_nginx(redis => $redis, server => q{
#       location /sse { sse_channel news; }
#   });                                              # SSETest::Nginx
#   my $c = sse_connect($nginx->port, '/sse');       # SSETest::Client
#   is $c->status, 200;
#   wait_subscribed($redis->port, 'news', 1);
#   redis_cmd($redis->port, PUBLISH => news => 'hello');
#   my $ev = $c->next_event(5);                      # { event => 'news', data => 'hello', id => undef }
#
# Everything started here is killed when the test file ends, even when it dies.
# Temporary directories are removed unless TEST_KEEP is set.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Scalar::Util ();
use Test::More ();
use Time::HiRes qw(time sleep);

use parent 'Exporter';
our @EXPORT = qw(
    start_redis start_nginx nginx_test_conf nginx_conf_text
    sse_connect wait_clients wait_events pump_for open_session_stream
    http_request http_connect form_urlencode redis_cmd redis_connect numsub wait_subscribed
    free_port wait_until rss_kb children_of slurp first_lines quantiles
    load_sse_function sse_publish start_publisher start_publisher_process event_source wait_sources warm_up_sources
    delivery_mismatches
    redis_info reply_text start_fake_server start_tcp_proxy
    have_auth_request bearer_maps auth_check_location start_auth_service auth_location auth_guard
);

our $REPO       = abs_path(dirname(__FILE__) . '/../..');
our $NGINX_BIN  = $ENV{NGINX_BIN}  || '/usr/sbin/nginx';
our $SSE_MODULE = $ENV{SSE_MODULE} || "$REPO/target/release/libngx_http_sse_module.so";
$SSE_MODULE = abs_path($SSE_MODULE) if -f $SSE_MODULE;    # load_module is relative to the prefix
our $REDIS_BIN  = $ENV{REDIS_BIN}  || 'redis-server';

# Every process group we started (pid => 1) and every prefix kept for the
# failure report, so that the END block can clean up after a die().
my %PROCESS_GROUPS;
my @NGINX_PREFIXES;

# `use SSETest;` skips the whole test file when something it needs is missing.
# `use SSETest -noskip;` does not (for a test that wants to check that itself).
sub import {
    my ($class, @args) = @_;
    my $noskip = grep { $_ eq '-noskip' } @args;
    @args = grep { $_ ne '-noskip' } @args;
    unless ($noskip) {
        my $why = missing_prerequisite();
        Test::More::plan(skip_all => $why) if $why;
    }
    __PACKAGE__->export_to_level(1, $class, @args);
}

sub missing_prerequisite {
    return "nginx module not built: $SSE_MODULE does not exist (run 'make build' or set SSE_MODULE)"
        unless -f $SSE_MODULE;
    return "nginx binary $NGINX_BIN is not executable (set NGINX_BIN)" unless -x $NGINX_BIN;
    return "redis-server not found in PATH (set REDIS_BIN)" unless _which($REDIS_BIN);
    return;
}

sub _which {
    my ($prog) = @_;
    return -x $prog ? $prog : undef if $prog =~ m{/};
    for my $dir (split /:/, $ENV{PATH} || '/usr/bin:/bin') {
        return "$dir/$prog" if -x "$dir/$prog";
    }
    return;
}

# ---------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------

# A loopback TCP port that was free a moment ago. Ports handed out by this
# process are never handed out twice.
my %PORTS_GIVEN;
sub free_port {
    for (1 .. 50) {
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp', Listen => 1)
            or die "cannot bind a loopback port: $!";
        my $port = $s->sockport;
        close $s;
        next if $PORTS_GIVEN{$port}++;
        return $port;
    }
    die "no free loopback port found";
}

# Polls $cond every $interval seconds until it returns true (returns true) or
# $timeout seconds have passed (returns false).
sub wait_until {
    my ($cond, $timeout, $interval) = @_;
    $interval ||= 0.05;
    my $deadline = time + $timeout;
    while (1) {
        return 1 if $cond->();
        return 0 if time >= $deadline;
        sleep $interval;
    }
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return '';
    local $/;
    my $text = <$fh>;
    return defined $text ? $text : '';
}

# For a diag: the first ten of @lines, one a line, then "... (N in all)"
# when there are more.
sub first_lines {
    my @l = @_;
    return join "\n", @l[ 0 .. ($#l < 9 ? $#l : 9) ], (@l > 10 ? '... (' . @l . ' in all)' : ());
}

# Durations in seconds as 'first 0.12 s, median 0.34 s, last 0.56 s'
# ('none' for none).
sub quantiles {
    my @v = sort { $a <=> $b } @_;
    return 'none' unless @v;
    return sprintf 'first %.2f s, median %.2f s, last %.2f s', $v[0], $v[ $#v / 2 ], $v[-1];
}

sub _spew {
    my ($path, $text) = @_;
    open my $fh, '>:raw', $path or die "cannot write $path: $!";
    print {$fh} $text;
    close $fh or die "cannot write $path: $!";
}

sub _tempdir {
    my ($what) = @_;
    my $dir = tempdir("nginx-sse-$what-XXXXXX", TMPDIR => 1, CLEANUP => !$ENV{TEST_KEEP});
    # nginx workers run as "nobody" when the master is root: let them in.
    chmod 0755, $dir;
    Test::More::diag("TEST_KEEP: $what files in $dir") if $ENV{TEST_KEEP};
    return $dir;
}

# Starts @cmd in its own process group with stdout and stderr appended to
# $log; returns the pid. The child never returns into the test code.
sub _spawn {
    my ($log, @cmd) = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        setpgrp(0, 0);
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP QUIT PIPE);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log or POSIX::_exit(126);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        exec { $cmd[0] } @cmd or do { print STDERR "exec $cmd[0]: $!\n"; POSIX::_exit(127) };
    }
    $PROCESS_GROUPS{$pid} = 1;
    return $pid;
}

# Forks a child in a process group of its own that runs $code->() and then
# exits: 0, or 1 after printing "$name: <the error>" if $code died. It never
# returns into the test code nor runs the test's END blocks, and it is killed
# with everything else started here when the test file ends. With close_fds
# => 1 it first closes every descriptor above 2 (the test's sockets, its
# streams, stay the test's). Returns the pid.
sub _fork_child {
    my ($name, $code, %opt) = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        setpgrp(0, 0);
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP QUIT);
        $SIG{PIPE} = 'IGNORE';
        if ($opt{close_fds}) { POSIX::close($_) for 3 .. 1023 }
        my $ok = eval { $code->(); 1 };
        print STDERR "$name: $@" unless $ok;
        POSIX::_exit($ok ? 0 : 1);
    }
    $PROCESS_GROUPS{$pid} = 1;
    return $pid;
}

# Runs @cmd to completion; returns (exit code, stdout+stderr).
sub _run_capture {
    my (@cmd) = @_;
    my $out = File::Temp->new(TMPDIR => 1);
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $out->filename or POSIX::_exit(126);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        exec { $cmd[0] } @cmd or do { print STDERR "exec $cmd[0]: $!\n"; POSIX::_exit(127) };
    }
    waitpid $pid, 0;
    my $code = $? & 127 ? 128 + ($? & 127) : $? >> 8;
    return ($code, slurp($out->filename));
}

# Waits up to $timeout seconds for our child $pid to exit. Returns the number
# of seconds it took, or undef if it is still running.
sub _wait_child {
    my ($pid, $timeout) = @_;
    my $start = time;
    while (1) {
        my $r = waitpid $pid, WNOHANG;
        if ($r == $pid || $r == -1) {
            delete $PROCESS_GROUPS{$pid};
            return time - $start;
        }
        return undef if time - $start >= $timeout;
        sleep 0.01;
    }
}

# Sends $sig to the process group of $pid, waits $timeout seconds, then
# SIGKILLs the group. Returns seconds until the leader exited.
sub _stop_group {
    my ($pid, $sig, $timeout) = @_;
    kill $sig, -$pid;
    my $took = _wait_child($pid, $timeout);
    kill 'KILL', -$pid;    # stragglers (workers) of the group
    $took = _wait_child($pid, 5) unless defined $took;
    return $took;
}

# Pids whose parent is $ppid (from /proc/*/stat); zombies are left out.
sub children_of {
    my ($ppid) = @_;
    my @kids;
    opendir my $dh, '/proc' or return;
    for my $pid (grep { /^\d+$/ } readdir $dh) {
        my $stat = slurp("/proc/$pid/stat");
        next unless $stat;
        # "pid (comm) state ppid ..." where comm may contain spaces and parens
        my $rest = substr $stat, rindex($stat, ')') + 2;
        my ($state, $parent) = split / /, $rest;
        push @kids, $pid + 0 if $parent == $ppid && $state ne 'Z' && $state ne 'X';
    }
    @kids = sort { $a <=> $b } @kids;
    return @kids;
}

sub _alive {
    my ($pid) = @_;
    my $stat = slurp("/proc/$pid/stat");
    return 0 unless $stat;
    my ($state) = split / /, substr($stat, rindex($stat, ')') + 2);
    return $state ne 'Z' && $state ne 'X';
}

# Resident set size of $pid in KiB (VmRSS), undef if the process is gone.
sub rss_kb {
    my ($pid) = @_;
    my ($kb) = slurp("/proc/$pid/status") =~ /^VmRSS:\s*(\d+)\s*kB/m;
    return $kb;
}

sub _port_open {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

# Every SSETest::Nginx (weak references), for the teardown check.
our %NGINX_OBJECTS;

# Stops every nginx still running and checks its error log (see
# SSETest::Nginx::check_error_log). Runs when the test file calls
# done_testing (or the plan is checked at the end), while failures can
# still be reported.
sub _teardown_all_nginx {
    for my $nginx (grep { defined } values %NGINX_OBJECTS) {
        $nginx->stop('end of the test file') if $nginx->{pid};
    }
}
Test2::API::test2_add_callback_testing_done(\&_teardown_all_nginx)
    if eval { require Test2::API; 1 };

END {
    my $status = $?;
    # On failure, show the end of every nginx error log: it usually says why.
    my $tb = Test::More->builder;
    if (@NGINX_PREFIXES && !$tb->is_passing) {
        for my $prefix (@NGINX_PREFIXES) {
            my @lines = split /\n/, slurp("$prefix/error.log");
            next unless @lines;
            splice @lines, 0, @lines - 40 if @lines > 40;
            Test::More::diag("last lines of $prefix/error.log:\n" . join("\n", @lines));
        }
    }
    for my $pid (keys %PROCESS_GROUPS) {
        kill 'KILL', -$pid;
        waitpid $pid, 0;
    }
    $? = $status;
}

# A signal that ends the test file still runs the END block above.
$SIG{INT} = $SIG{TERM} = sub { die "killed by signal\n" };

# ---------------------------------------------------------------------------
# Redis: the server process and a tiny RESP client
# ---------------------------------------------------------------------------

sub start_redis { SSETest::Redis->new(@_)->start }

# redis_cmd($port, @args): one command on a fresh connection, returns the
# parsed reply (see SSETest::RedisConn::read_reply). Instead of a port, an
# SSETest::Redis may be given (needed when it has a password); the same holds
# for redis_connect, numsub and wait_subscribed.
sub redis_cmd {
    my ($port, @args) = @_;
    my $conn = redis_connect($port) or die "cannot connect to redis on port " . (ref $port ? $port->port : $port) . ": $!";
    my $reply = $conn->cmd(@args);
    $conn->close;
    return $reply;
}

sub redis_connect { SSETest::RedisConn->new(@_) }

# numsub($port, @channels): { channel => number of subscribers } via PUBSUB
# NUMSUB. Each nginx worker counts once per channel.
sub numsub {
    my ($port, @channels) = @_;
    my $reply = redis_cmd($port, 'PUBSUB', 'NUMSUB', @channels);
    die "PUBSUB NUMSUB failed: $reply" unless ref $reply eq 'ARRAY';
    return {@$reply};
}

# redis_info($port_or_redis, $section): INFO as a hash (field => value).
sub redis_info {
    my ($port, $section) = @_;
    my $text = redis_cmd($port, INFO => $section // 'default');
    die "INFO failed: $text" if ref $text;
    return { map { /^([^:#\s]+):(.*?)\s*$/ ? ($1 => $2) : () } split /\n/, $text };
}

# A Redis reply as one string (nested arrays joined with spaces, nil as
# ''), for a regex.
sub reply_text { my ($r) = @_; return ref $r eq 'ARRAY' ? join(' ', map { reply_text($_) } @$r) : $r // '' }

# Waits until `PUBSUB NUMSUB $channel` equals $count; true on success.
sub wait_subscribed {
    my ($port, $channel, $count, $timeout) = @_;
    $timeout ||= 10;
    return wait_until(sub { my $n = eval { numsub($port, $channel)->{$channel} }; defined $n && $n == $count },
        $timeout);
}

# start_fake_server(mode => 'close' | 'ok'): a stand-in for a broken Redis
# on a free loopback port, in a child process. 'close' accepts each
# connection and closes it at once; 'ok' answers "+OK" to every command it
# receives (RESP arrays) and never sends anything else. Returns an
# SSETest::FakeServer: port, accepts (how many connections so far), commands
# (the names of the commands received, in order), stop. It ends by itself
# after `lifetime` seconds (default 300).
sub start_fake_server {
    my (%o) = @_;
    my $mode = $o{mode} || 'close';
    die "start_fake_server: unknown mode $mode\n" unless $mode =~ /^(?:close|ok)$/;
    my $dir = _tempdir('fake-server');
    my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 128,
        Proto => 'tcp', ReuseAddr => 1) or die "fake server: cannot listen: $!";
    my $port = $listener->sockport;
    $PORTS_GIVEN{$port}++;
    my $pid = _fork_child('fake server', sub { _fake_server_loop($listener, $mode, $dir, $o{lifetime} || 300) });
    close $listener;
    return bless { pid => $pid, port => $port, dir => $dir, mode => $mode }, 'SSETest::FakeServer';
}

sub _fake_server_loop {
    my ($listener, $mode, $dir, $lifetime) = @_;
    open my $log, '>>', "$dir/log" or die;
    $log->autoflush(1);
    my $end = time + $lifetime;
    my $sel = IO::Select->new($listener);
    my %buf;
    while (time < $end) {
        for my $fh ($sel->can_read(0.5)) {
            if ($fh == $listener) {
                my $c = $listener->accept or next;
                printf {$log} "A %.3f\n", time;
                if ($mode eq 'close') { close $c; next }
                binmode $c;
                $sel->add($c);
                $buf{ 0 + $c } = '';
                next;
            }
            my $n = sysread $fh, $buf{ 0 + $fh }, 65536, length $buf{ 0 + $fh };
            if (!$n) { $sel->remove($fh); delete $buf{ 0 + $fh }; close $fh; next }
            # Complete RESP arrays of bulk strings: one "+OK" each.
            while (1) {
                my $b = \$buf{ 0 + $fh };
                last unless $$b =~ /\A\*(\d+)\r\n/;
                my ($count, $pos, @args) = ($1, length $&);
                for (1 .. $count) {
                    last unless substr($$b, $pos) =~ /\A\$(\d+)\r\n/;
                    my $len = $1;
                    my $start = $pos + length $&;
                    last if length($$b) < $start + $len + 2;
                    push @args, substr $$b, $start, $len;
                    $pos = $start + $len + 2;
                }
                last unless @args == $count;
                substr($$b, 0, $pos, '');
                printf {$log} "C %.3f %s\n", time, uc($args[0] // '');
                syswrite $fh, "+OK\r\n";
            }
        }
    }
}

# start_tcp_proxy(to => $port): a TCP relay on a free loopback port (in a
# child process) to 127.0.0.1:$port, e.g. to cut one nginx off Redis while
# another keeps its connection. Returns an SSETest::TcpProxy: port, stop
# (closes every relayed connection and stops listening: connections are
# refused), start (listens again on the same port).
sub start_tcp_proxy {
    my (%o) = @_;
    my $proxy = bless { to => $o{to} || die("start_tcp_proxy: to required\n"), port => free_port() }, 'SSETest::TcpProxy';
    return $proxy->start;
}

sub _tcp_proxy_loop {
    my ($listener, $to) = @_;
    my $sel = IO::Select->new($listener);
    my %peer;
    while (1) {
        for my $fh ($sel->can_read(1)) {
            if ($fh == $listener) {
                my $c = $listener->accept or next;
                my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $to, Proto => 'tcp');
                if (!$u) { close $c; next }
                binmode $_ for $c, $u;
                @peer{ 0 + $c, 0 + $u } = ($u, $c);
                $sel->add($c, $u);
                next;
            }
            my $other = $peer{ 0 + $fh } or next;
            my $n = sysread $fh, my $buf, 65536;
            if ($n) {
                while (length $buf) {
                    my $w = syswrite $other, $buf;
                    last unless defined $w;
                    substr($buf, 0, $w, '');
                }
                next;
            }
            delete @peer{ 0 + $fh, 0 + $other };
            $sel->remove($fh, $other);
            close $fh;
            close $other;
        }
    }
}

package SSETest::TcpProxy;

sub port { $_[0]{port} }

sub start {
    my ($self) = @_;
    return $self if $self->{pid};
    my $listener;
    for (1 .. 50) {
        $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $self->{port}, Listen => 128,
            Proto => 'tcp', ReuseAddr => 1) and last;
        Time::HiRes::sleep(0.1);
    }
    die "tcp proxy: cannot listen on port $self->{port}: $!" unless $listener;
    $self->{pid} = SSETest::_fork_child('tcp proxy', sub { SSETest::_tcp_proxy_loop($listener, $self->{to}) });
    close $listener;
    return $self;
}

sub stop {
    my ($self) = @_;
    SSETest::_stop_group($self->{pid}, 'KILL', 5) if $self->{pid};
    delete $self->{pid};
    return $self;
}

sub DESTROY { local ($., $@, $!, $^E, $?); $_[0]->stop if $_[0]{pid} }

package SSETest::FakeServer;

sub port { $_[0]{port} }
sub _lines { grep { length } split /\n/, SSETest::slurp("$_[0]{dir}/log") }
sub accepts { scalar grep { /^A / } $_[0]->_lines }
sub commands { map { (split / /)[2] } grep { /^C / } $_[0]->_lines }
sub stop {
    my ($self) = @_;
    SSETest::_stop_group($self->{pid}, 'TERM', 5) if $self->{pid};
    delete $self->{pid};
}
sub DESTROY { local ($., $@, $!, $^E, $?); $_[0]->stop if $_[0]{pid} }

package SSETest::Redis;

use Time::HiRes qw(time sleep);

# A redis-server child process on a loopback port. new() only picks the port,
# so a test can start nginx while Redis is still down.
# Options: port (default: a free one), password (requirepass), args (more
# redis-server arguments, e.g. ['--maxclients', 100]), persist (true: append-only
# file, fsync at every write, so that the data survives stop/start).
sub new {
    my ($class, %opt) = @_;
    my $self = bless {
        port     => $opt{port} || SSETest::free_port(),
        password => $opt{password},
        args     => $opt{args} || [],
        persist  => $opt{persist},
        dir      => SSETest::_tempdir('redis'),
    }, $class;
    return $self;
}

sub port { $_[0]{port} }
sub password { $_[0]{password} }
sub pid  { $_[0]{pid} }
sub log_text { SSETest::slurp("$_[0]{dir}/redis.log") }
sub is_running { defined $_[0]{pid} }

# Starts the server and waits until it answers PING.
sub start {
    my ($self, %opt) = @_;
    die "redis already running" if $self->{pid};
    $self->{pid} = SSETest::_spawn("$self->{dir}/redis.out",
        $SSETest::REDIS_BIN,
        '--port', $self->{port}, '--bind', '127.0.0.1', '--daemonize', 'no',
        '--save', '', '--dir', $self->{dir},
        ($self->{persist} ? ('--appendonly', 'yes', '--appendfsync', 'always') : ('--appendonly', 'no')),
        '--logfile', "$self->{dir}/redis.log",
        (defined $self->{password} ? ('--requirepass', $self->{password}) : ()),
        @{ $self->{args} });
    my $ok = SSETest::wait_until(sub {
        my $pong = eval { SSETest::redis_cmd($self, 'PING') };
        return 1 if defined $pong && $pong eq 'PONG';
        die "redis-server exited at start:\n" . $self->log_text . SSETest::slurp("$self->{dir}/redis.out")
            if waitpid($self->{pid}, POSIX::WNOHANG()) == $self->{pid};
        return 0;
    }, $opt{timeout} || 10);
    die "redis-server on port $self->{port} does not answer PING" unless $ok;
    return $self;
}

# SIGTERM, then wait for the process to exit (SIGKILL after 10 s).
sub stop {
    my ($self) = @_;
    return $self unless $self->{pid};
    SSETest::_stop_group($self->{pid}, 'TERM', 10);
    delete $self->{pid};
    return $self;
}

# Stops and starts again on the same port (the data set is empty anyway,
# unless persist is set).
sub restart { $_[0]->stop->start }

sub cmd { my $self = shift; SSETest::redis_cmd($self, @_) }

# The connections Redis has, as hashes of CLIENT LIST fields (addr, cmd, sub,
# ...), without the one asking.
sub clients {
    my ($self) = @_;
    my $list = $self->cmd('CLIENT', 'LIST');
    my @clients = map { { map { split /=/, $_, 2 } split / / } } split /\r?\n/, $list;
    return grep { $_->{cmd} !~ /^client/ } @clients;
}

sub DESTROY { local ($., $@, $!, $^E, $?); $_[0]->stop if $_[0]{pid} }

package SSETest::RedisError;

use overload '""' => sub { "ERR-REPLY: $_[0]{message}" }, fallback => 1;

sub new { bless { message => $_[1] }, $_[0] }
sub message { $_[0]{message} }

package SSETest::RedisConn;

# One blocking RESP connection. cmd() sends a command and returns its reply:
# simple string and bulk string -> scalar (nil bulk -> undef), integer ->
# number, array -> array ref, error -> SSETest::RedisError object.

use IO::Socket::INET;

# new($port) or new($redis): with an SSETest::Redis started with a password,
# the connection authenticates first.
sub new {
    my ($class, $target, %opt) = @_;
    my ($port, $password) = ref $target ? ($target->port, $target->password) : ($target, undef);
    my $sock = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => $opt{timeout} || 5,
    ) or return;
    binmode $sock;
    $sock->autoflush(1);
    my $self = bless { sock => $sock, buf => '', timeout => $opt{timeout} || 10 }, $class;
    if (defined $password) {
        my $ok = $self->cmd(AUTH => $password);
        die "redis AUTH failed: $ok\n" unless defined $ok && $ok eq 'OK';
    }
    return $self;
}

sub encode {
    my (@args) = @_;
    my $out = '*' . scalar(@args) . "\r\n";
    for my $arg (@args) {
        my $bytes = "$arg";
        utf8::encode($bytes) if utf8::is_utf8($bytes);
        $out .= '$' . length($bytes) . "\r\n" . $bytes . "\r\n";
    }
    return $out;
}

sub send_cmd {
    my ($self, @args) = @_;
    my $data = encode(@args);
    while (length $data) {
        my $n = syswrite $self->{sock}, $data;
        die "redis write: $!" unless defined $n;
        substr($data, 0, $n, '');
    }
}

sub cmd {
    my ($self, @args) = @_;
    $self->send_cmd(@args);
    return $self->read_reply;
}

# Sends several commands at once, returns their replies in order.
sub pipeline {
    my ($self, @cmds) = @_;
    my $data = join '', map { encode(@$_) } @cmds;
    while (length $data) {
        my $n = syswrite $self->{sock}, $data;
        die "redis write: $!" unless defined $n;
        substr($data, 0, $n, '');
    }
    return map { $self->read_reply } @cmds;
}

sub _fill {
    my ($self) = @_;
    my $sel = IO::Select->new($self->{sock});
    die "redis reply timed out\n" unless $sel->can_read($self->{timeout});
    my $n = sysread $self->{sock}, $self->{buf}, 65536, length $self->{buf};
    die "redis read: $!\n" unless defined $n;
    die "redis closed the connection\n" unless $n;
}

sub _line {
    my ($self) = @_;
    my $i;
    $self->_fill until ($i = index $self->{buf}, "\r\n") >= 0;
    my $line = substr $self->{buf}, 0, $i;
    substr($self->{buf}, 0, $i + 2, '');
    return $line;
}

sub read_reply {
    my ($self) = @_;
    my $line = $self->_line;
    my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));
    return $rest if $type eq '+';
    return SSETest::RedisError->new($rest) if $type eq '-';
    return $rest + 0 if $type eq ':';
    if ($type eq '$') {
        return undef if $rest < 0;
        $self->_fill while length $self->{buf} < $rest + 2;
        my $bulk = substr $self->{buf}, 0, $rest;
        substr($self->{buf}, 0, $rest + 2, '');
        return $bulk;
    }
    if ($type eq '*') {
        return undef if $rest < 0;
        return [map { $self->read_reply } 1 .. $rest];
    }
    die "unexpected RESP reply line: $line\n";
}

sub close { CORE::close($_[0]{sock}) if $_[0]{sock}; delete $_[0]{sock} }

# ---------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------

package SSETest;

# The nginx.conf used by the tests. Options (all optional):
#   prefix      directory for logs, pid and temp files
#   port        listen port
#   listen      extra parameters of the listen directive (e.g. 'reuseport')
#   workers     worker_processes (default 1)
#   main        extra main-context directives (e.g. 'worker_rlimit_nofile 8192;')
#   http        extra http-context directives
#   server      directives inside server { } (locations with sse_channel ...)
#   redis_port  port for sse_redis_url redis://127.0.0.1:PORT
#   redis       an SSETest::Redis (its port is used)
#   redis_url   the sse_redis_url value verbatim; undef (present, undef) omits it
#   module      .so to load (default $SSE_MODULE); undef omits load_module
sub nginx_conf_text {
    my (%o) = @_;
    my $prefix  = $o{prefix} or die "nginx_conf_text: prefix required";
    my $port    = $o{port} || 0;
    my $workers = $o{workers} || 1;
    my $module  = exists $o{module} ? $o{module} : $SSE_MODULE;
    my $rport   = $o{redis_port} || ($o{redis} ? $o{redis}->port : 6379);
    my $url     = exists $o{redis_url} ? $o{redis_url} : "redis://127.0.0.1:$rport";
    my $listen  = join ' ', "127.0.0.1:$port", grep { defined && length } $o{listen};
    my $main    = $o{main}   // '';
    my $http    = $o{http}   // '';
    my $server  = $o{server} // '';

    my $text = '';
    $text .= "load_module $module;\n" if defined $module;
    $text .= <<"CONF";
daemon off;
master_process on;
worker_processes $workers;
error_log $prefix/error.log info;
pid $prefix/nginx.pid;
$main

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path $prefix/client_body_temp;
    proxy_temp_path $prefix/proxy_temp;
    fastcgi_temp_path $prefix/fastcgi_temp;
    uwsgi_temp_path $prefix/uwsgi_temp;
    scgi_temp_path $prefix/scgi_temp;
CONF
    $text .= "    sse_redis_url $url;\n" if defined $url;
    $text .= <<"CONF";
$http

    server {
        listen $listen;
        server_name localhost;
$server
    }
}
CONF
    return $text;
}

# nginx_test_conf(%options) or nginx_test_conf(raw => $text):
# writes the config to a fresh prefix and runs `nginx -t` on it.
# Returns (exit code, everything nginx printed). In a raw text, %%PREFIX%% is
# replaced by the prefix directory.
sub nginx_test_conf {
    my (%o) = @_ == 1 ? (raw => $_[0]) : @_;
    my $prefix = _tempdir('nginx-t');
    my $text = defined $o{raw}
        ? $o{raw} =~ s/%%PREFIX%%/$prefix/gr
        : nginx_conf_text(%o, prefix => $prefix, port => $o{port} || free_port());
    _spew("$prefix/nginx.conf", $text);
    return _run_capture($NGINX_BIN, '-t', '-p', "$prefix/", '-c', "$prefix/nginx.conf");
}

sub start_nginx { SSETest::Nginx->new(@_)->start }

package SSETest::Nginx;

use Time::HiRes qw(time sleep);

# An nginx master (daemon off, so it is our child) with its own prefix.
# Options: see SSETest::nginx_conf_text.
sub new {
    my ($class, %opt) = @_;
    my $self = bless { %opt }, $class;
    $self->{prefix} = SSETest::_tempdir('nginx');
    $self->{port} ||= SSETest::free_port();
    $self->{workers} ||= 1;
    push @NGINX_PREFIXES, $self->{prefix};
    $self->write_conf;
    $SSETest::NGINX_OBJECTS{ Scalar::Util::refaddr($self) } = $self;
    Scalar::Util::weaken($SSETest::NGINX_OBJECTS{ Scalar::Util::refaddr($self) });
    return $self;
}

sub port   { $_[0]{port} }
sub prefix { $_[0]{prefix} }
sub pid    { $_[0]{pid} }      # the master
sub conf_path { "$_[0]{prefix}/nginx.conf" }

sub write_conf {
    my ($self, %change) = @_;
    @$self{ keys %change } = values %change;
    my %o = %$self;
    delete @o{qw(pid log_checked expect_alerts)};
    SSETest::_spew($self->conf_path, SSETest::nginx_conf_text(%o));
    return $self;
}

# Starts the master and waits until the port accepts connections and the
# workers are up.
sub start {
    my ($self, %opt) = @_;
    die "nginx already running" if $self->{pid};
    $self->{pid} = SSETest::_spawn("$self->{prefix}/stderr.log",
        $SSETest::NGINX_BIN, '-p', "$self->{prefix}/", '-c', $self->conf_path);
    my $timeout = $opt{timeout} || 10;
    my $ok = SSETest::wait_until(sub {
        if (waitpid($self->{pid}, POSIX::WNOHANG()) == $self->{pid}) {
            delete $PROCESS_GROUPS{ $self->{pid} };
            my $pid = delete $self->{pid};
            die "nginx exited at start (status $?):\n"
                . SSETest::slurp("$self->{prefix}/stderr.log") . SSETest::slurp("$self->{prefix}/error.log");
        }
        my @workers = $self->worker_pids;
        return @workers >= $self->{workers} && SSETest::_port_open($self->{port});
    }, $timeout);
    die "nginx did not start listening on port $self->{port} within $timeout s:\n" . $self->error_log
        unless $ok;
    return $self;
}

# Live worker processes (children of the master), sorted.
sub worker_pids {
    my ($self) = @_;
    return () unless $self->{pid};
    return SSETest::children_of($self->{pid});
}

sub error_log { SSETest::slurp("$_[0]{prefix}/error.log") }
sub stderr_log { SSETest::slurp("$_[0]{prefix}/stderr.log") }

# Size of error.log now: pass it to error_log_since() to see only newer lines.
sub error_log_mark { -s "$_[0]{prefix}/error.log" || 0 }

sub error_log_since {
    my ($self, $mark) = @_;
    return substr $self->error_log, $mark || 0;
}

# workers_of(@connections): for each SSETest::Client or SSETest::HTTPConn
# (anything with an open {sock}), or socket, the pid of the worker of this
# nginx that holds its server side: the socket whose peer is the client's
# port (from /proc/net/tcp) is in exactly one worker's descriptor table.
# undef where it cannot be told (connection closed, /proc not readable).
sub workers_of {
    my ($self, @conns) = @_;
    my %inode_worker;
    for my $pid ($self->worker_pids) {
        opendir my $dh, "/proc/$pid/fd" or next;
        for my $fd (readdir $dh) {
            my $link = readlink "/proc/$pid/fd/$fd" // next;
            $inode_worker{$1} = $pid if $link =~ /^socket:\[(\d+)\]$/;
        }
    }
    my %inode_of_client_port;
    for my $file ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $fh, '<', $file or next;
        <$fh>;
        while (<$fh>) {
            my @f = split ' ';
            my ($local) = $f[1] =~ /:([0-9A-F]{4})$/ or next;
            my ($remote) = $f[2] =~ /:([0-9A-F]{4})$/ or next;
            $inode_of_client_port{ hex $remote } = $f[9] if hex($local) == $self->{port} && $f[9];
        }
    }
    return map {
        my $sock = Scalar::Util::blessed($_) && $_->isa('IO::Socket') ? $_ : $_->{sock};
        my $p = $sock ? $sock->sockport : undef;
        my $inode = defined $p ? $inode_of_client_port{$p} : undef;
        defined $inode ? $inode_worker{$inode} : undef;
    } @conns;
}

# worker_of($connection, $timeout): the pid of the worker holding one
# connection (as for workers_of), waiting up to $timeout s (default 3) for a
# worker to have accepted it; undef if it cannot be told.
sub worker_of {
    my ($self, $conn, $timeout) = @_;
    my $pid;
    SSETest::wait_until(sub { ($pid) = $self->workers_of($conn); defined $pid }, $timeout // 3);
    return $pid;
}

# Lines of error.log at [alert] or [emerg] (should be none, ever).
sub alerts {
    my ($self) = @_;
    return grep { /\[(?:alert|emerg)\]/ } split /\n/, $self->error_log;
}

# The teardown check: whenever this nginx is stopped (stop, quit, going out
# of scope, or the end of the test file: done_testing stops every nginx still
# running), the part of error.log not checked yet must have no [alert] or
# [emerg] line and no "exited on signal" (a crashed worker); otherwise that
# is reported as a failed test, with the lines. A test that expects such
# lines says so: start_nginx(expect_alerts => qr/.../) (or
# $nginx->expect_alerts(qr/.../)) excuses the lines that match, and
# expect_alerts => 1 turns the check off for this nginx. (`nginx -t` runs,
# nginx_test_conf, are not concerned: they start no SSETest::Nginx.)
sub expect_alerts { $_[0]{expect_alerts} = $_[1]; $_[0] }

sub check_error_log {
    my ($self, $when) = @_;
    my $log = $self->error_log;
    my $from = $self->{log_checked} // 0;
    $from = 0 if $from > length $log;
    # Only whole lines: a line being written is checked next time.
    my $end = rindex($log, "\n") + 1;
    return if $end <= $from;
    $self->{log_checked} = $end;
    my @bad = grep { /\[(?:alert|emerg)\]|exited on signal/ } split /\n/, substr($log, $from, $end - $from);
    my $allow = $self->{expect_alerts};
    return if $allow && !ref $allow;
    @bad = grep { !/$allow/ } @bad if $allow;
    return unless @bad;
    local $Test::Builder::Level = $Test::Builder::Level + 2;
    Test::More::ok(0, "nginx in $self->{prefix} ($when): no [alert], [emerg] or crashed worker in error.log");
    Test::More::diag(join "\n", 'offending error.log lines:', @bad);
    return @bad;
}

# Reloads the configuration like `nginx -s reload` (SIGHUP to the master) and
# waits until the new generation of workers is running. Returns the old worker
# pids (they may still be finishing their connections); dies on timeout.
sub reload {
    my ($self, %opt) = @_;
    my %old = map { $_ => 1 } $self->worker_pids;
    kill 'HUP', $self->{pid} or die "cannot signal nginx master: $!";
    my $timeout = $opt{timeout} || 10;
    SSETest::wait_until(sub { (grep { !$old{$_} } $self->worker_pids) >= $self->{workers} }, $timeout)
        or die "no new nginx workers $timeout s after reload:\n" . $self->error_log;
    my @old = sort { $a <=> $b } keys %old;
    return @old;
}

# Waits until none of @pids is alive; returns seconds waited, or undef if some
# still run after $timeout seconds.
sub wait_pids_gone {
    my ($self, $timeout, @pids) = @_;
    my $start = time;
    SSETest::wait_until(sub { !grep { SSETest::_alive($_) } @pids }, $timeout, 0.01) or return undef;
    return time - $start;
}

# Graceful shutdown (SIGQUIT, like `nginx -s quit`). Returns the seconds until
# the master exited, or undef if it had not after $timeout seconds (then it is
# killed).
sub quit {
    my ($self, $timeout) = @_;
    return undef unless $self->{pid};
    kill 'QUIT', $self->{pid};
    my $took = SSETest::_wait_child($self->{pid}, $timeout || 10);
    SSETest::_stop_group($self->{pid}, 'KILL', 5) unless defined $took;
    kill 'KILL', -$self->{pid};    # nothing of the group may survive
    delete $self->{pid};
    $self->check_error_log('quit');
    return $took;
}

# Fast stop (SIGTERM to the whole process group).
sub stop {
    my ($self, $when) = @_;
    return unless $self->{pid};
    SSETest::_stop_group($self->{pid}, 'TERM', 10);
    delete $self->{pid};
    $self->check_error_log($when // 'stop');
}

sub DESTROY {
    local ($., $@, $!, $^E, $?);
    my ($self) = @_;
    delete $SSETest::NGINX_OBJECTS{ Scalar::Util::refaddr($self) };
    return unless $self->{pid};
    # During global destruction the test has ended: nothing can be reported.
    if (${^GLOBAL_PHASE} eq 'DESTRUCT') { SSETest::_stop_group($self->{pid}, 'TERM', 10); return }
    $self->stop('end of scope');
}

# ---------------------------------------------------------------------------
# An auth service for auth_request: the user and the grants of a stream come
# from the answer (X-Datashop-User, X-Datashop-Channels) of a location that
# auth_request asks
# ---------------------------------------------------------------------------

package SSETest;

# have_auth_request(): whether $NGINX_BIN is built with
# http_auth_request_module (not every build is: ngx's vendored nginx lacks
# it). Without it, auth_guard() takes the user and the grants straight from
# maps in the streaming nginx.
my $HAVE_AUTH_REQUEST;
sub have_auth_request {
    unless (defined $HAVE_AUTH_REQUEST) {
        my (undef, $v) = _run_capture($NGINX_BIN, '-V');
        $HAVE_AUTH_REQUEST = $v =~ /--with-http_auth_request_module\b/ ? 1 : 0;
    }
    return $HAVE_AUTH_REQUEST;
}

# bearer_maps(user => 'grants', ...): http-level map blocks by which the
# header "Authorization: Bearer <user>-token" sets $auth_user to <user> and
# $auth_grants to its grants (both "" for any other header).
sub bearer_maps {
    my (%g) = @_;
    my $users  = join '', map { qq{        "Bearer $_-token" $_;\n} } sort keys %g;
    my $grants = join '', map { qq{        "Bearer $_-token" "$g{$_}";\n} } sort keys %g;
    return "    map \$http_authorization \$auth_user {\n$users        default \"\";\n    }\n"
         . "    map \$http_authorization \$auth_grants {\n$grants        default \"\";\n    }\n";
}

# auth_check_location(): the auth service's `location = /check` (text for a
# server block), answering from the maps' $auth_user and $auth_grants: 401
# without a user, else 204 with X-Datashop-User and X-Datashop-Channels.
sub auth_check_location {
    return q{
        location = /check {
            if ($auth_user = "") { return 401; }
            add_header X-Datashop-User $auth_user;
            add_header X-Datashop-Channels $auth_grants;
            return 204;
        }
};
}

# start_auth_service(http => $maps, server => $directives): the auth
# service, an nginx of its own (one worker, no module, no Redis) serving
# auth_check_location(); http is its http-level text (the maps), server more
# directives for its server block. Returns the SSETest::Nginx (a test
# changes the answers with ->write_conf(http => ...) and ->reload).
sub start_auth_service {
    my (%o) = @_;
    return start_nginx(module => undef, redis_url => undef, workers => 1, http => $o{http},
        server => ($o{server} // '') . auth_check_location());
}

# auth_location($auth_port): `location = /_auth` (text for a server block),
# the internal location auth_guard()'s auth_request asks: it passes the
# request's headers, not its body, to /check on 127.0.0.1:$auth_port.
sub auth_location {
    my ($auth_port) = @_;
    return qq{
        location = /_auth {
            internal;
            proxy_pass http://127.0.0.1:$auth_port/check;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }};
}

# auth_guard(grants => 0): the directives that protect a streaming location
# (text for inside it). With auth_request (have_auth_request()), the user
# and the grants (sse_user, sse_allow) come from /_auth's answer (the server
# also needs auth_location()); without, from the maps' $auth_user and
# $auth_grants (the streaming nginx then needs the maps). grants => 0 leaves
# sse_allow out (only the user).
sub auth_guard {
    my (%o) = @_;
    my $grants = $o{grants} // 1;
    return have_auth_request()
        ? q{
            auth_request /_auth;
            auth_request_set $sse_user   $upstream_http_x_datashop_user;}
          . ($grants ? q{
            auth_request_set $sse_grants $upstream_http_x_datashop_channels;
            sse_allow $sse_grants;} : '') . q{
            sse_user  $sse_user;}
        : ($grants ? q{
            sse_allow $auth_grants;} : '') . q{
            sse_user  $auth_user;};
}

# ---------------------------------------------------------------------------
# Plain HTTP (one request per connection)
# ---------------------------------------------------------------------------

package SSETest;

# http_request($port, $method, $path, %opt) with opt headers => {..},
# body => '...', timeout => s. Returns a hash ref { status, headers (lower-case
# names), body, complete } where complete says whether the whole body was read.
sub http_request {
    my ($port, $method, $path, %opt) = @_;
    my $timeout = $opt{timeout} || 10;
    my %h = (Host => 'localhost', Connection => 'close', %{ $opt{headers} || {} });
    my $body = $opt{body};
    $h{'Content-Length'} = length $body if defined $body && !grep { lc($_) eq 'content-length' } keys %h;
    my $req = "$method $path HTTP/1.1\r\n";
    $req .= "$_: $h{$_}\r\n" for grep { defined $h{$_} } sort keys %h;
    $req .= "\r\n" . ($body // '');

    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 5)
        or die "cannot connect to 127.0.0.1:$port: $!";
    binmode $sock;
    syswrite $sock, $req;
    my $raw = '';
    my $sel = IO::Select->new($sock);
    my $deadline = time + $timeout;
    my $res;
    while (time < $deadline) {
        last unless $sel->can_read($deadline - time);
        my $n = sysread $sock, $raw, 65536, length $raw;
        last unless $n;
        $res = _parse_http_response($raw);
        last if $res && $res->{complete};
    }
    close $sock;
    $res = _parse_http_response($raw, 1) unless $res && $res->{complete};
    die "no HTTP response from 127.0.0.1:$port for $method $path\n" unless $res;
    return $res;
}

# http_connect($port): one keep-alive HTTP/1.1 connection (SSETest::HTTPConn):
# its requests all reach the same nginx worker. ->request($method, $path,
# headers => {..}, body => '..', timeout => s) returns what http_request
# returns (and { status => 0, error => ... } when the connection fails);
# ->close.
sub http_connect { SSETest::HTTPConn->new(@_) }

# form_urlencode([name, value], ...): an application/x-www-form-urlencoded
# body, encoded as a browser's URLSearchParams does (A-Z a-z 0-9 * - . _ as
# they are, space as +, every other byte as %XX).
sub form_urlencode {
    my @pairs = @_;
    my $enc = sub {
        my ($v) = @_;
        utf8::encode($v) if utf8::is_utf8($v);
        $v =~ s/([^A-Za-z0-9*\-._ ])/sprintf '%%%02X', ord $1/ge;
        $v =~ tr/ /+/;
        return $v;
    };
    return join '&', map { $enc->($_->[0]) . '=' . $enc->($_->[1]) } @pairs;
}

sub _parse_http_response {
    my ($raw, $at_eof) = @_;
    my $end = index $raw, "\r\n\r\n";
    return undef if $end < 0;
    my ($status_line, @lines) = split /\r\n/, substr($raw, 0, $end);
    my ($status) = $status_line =~ m{^HTTP/\d\.\d (\d{3})} or return undef;
    my %headers = _parse_headers(@lines);
    my $rest = substr $raw, $end + 4;
    my $res = { status => $status + 0, status_line => $status_line, headers => \%headers };
    if (($headers{'transfer-encoding'} // '') =~ /chunked/i) {
        my $dec = SSETest::Chunked->new;
        $res->{body} = $dec->feed($rest);
        $res->{complete} = $dec->{done} ? 1 : 0;
    } elsif (defined $headers{'content-length'}) {
        $res->{body} = substr $rest, 0, $headers{'content-length'};
        $res->{complete} = length($rest) >= $headers{'content-length'} ? 1 : 0;
    } else {
        $res->{body} = $rest;
        $res->{complete} = $at_eof ? 1 : 0;
    }
    return $res;
}

sub _parse_headers {
    my %headers;
    for (@_) {
        my ($name, $value) = /^([^:]+):\s*(.*?)\s*$/ or next;
        $name = lc $name;
        $headers{$name} = exists $headers{$name} ? "$headers{$name}, $value" : $value;
    }
    return %headers;
}

package SSETest::HTTPConn;

use IO::Socket::INET;
use Time::HiRes qw(time);

sub new {
    my ($class, $port) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 5)
        or die "cannot connect to 127.0.0.1:$port: $!";
    binmode $sock;
    return bless { port => $port, sock => $sock }, $class;
}

sub request {
    my ($self, $method, $path, %opt) = @_;
    my $sock = $self->{sock} or return { status => 0, error => 'connection closed' };
    my $timeout = $opt{timeout} || 10;
    my %h = (Host => 'localhost', %{ $opt{headers} || {} });
    my $body = $opt{body};
    $h{'Content-Length'} = length $body if defined $body && !grep { lc($_) eq 'content-length' } keys %h;
    my $req = "$method $path HTTP/1.1\r\n";
    $req .= "$_: $h{$_}\r\n" for grep { defined $h{$_} } sort keys %h;
    $req .= "\r\n" . ($body // '');
    my $n = syswrite $sock, $req;
    unless (defined $n && $n == length $req) { $self->close; return { status => 0, error => "write: $!" } }
    my ($raw, $res) = ('');
    my $sel = IO::Select->new($sock);
    my $deadline = time + $timeout;
    while (time < $deadline) {
        last unless $sel->can_read($deadline - time);
        my $got = sysread $sock, $raw, 65536, length $raw;
        if (!$got) { $self->close; last }
        $res = SSETest::_parse_http_response($raw);
        last if $res && $res->{complete};
    }
    $res = SSETest::_parse_http_response($raw, 1) unless $res && $res->{complete};
    $self->close if !$res || !$res->{complete} || ($res->{headers}{connection} // '') =~ /close/i;
    return $res || { status => 0, error => 'no response' };
}

sub close { CORE::close($_[0]{sock}) if $_[0]{sock}; delete $_[0]{sock}; return }
sub is_open { $_[0]{sock} ? 1 : 0 }

# ---------------------------------------------------------------------------
# Chunked transfer-coding decoder (incremental)
# ---------------------------------------------------------------------------

package SSETest::Chunked;

# feed($bytes) returns the body bytes decoded so far from this input; {done}
# becomes true once the last (0-size) chunk and the trailer have been read.
# {error} is set if the framing is broken.
sub new { bless { buf => '', state => 'size', left => 0, done => 0, error => undef }, $_[0] }

sub feed {
    my ($self, $bytes) = @_;
    $self->{buf} .= $bytes;
    my $out = '';
    while (!$self->{done} && !$self->{error}) {
        if ($self->{state} eq 'size') {
            my $i = index $self->{buf}, "\r\n";
            last if $i < 0;
            my $line = substr $self->{buf}, 0, $i;
            substr($self->{buf}, 0, $i + 2, '');
            my ($hex) = $line =~ /^([0-9a-fA-F]+)\s*(?:;.*)?$/;
            if (!defined $hex) { $self->{error} = "bad chunk size line '$line'"; last }
            $self->{left} = hex $hex;
            $self->{state} = $self->{left} ? 'data' : 'trailer';
        } elsif ($self->{state} eq 'data') {
            last unless length $self->{buf};
            my $take = substr $self->{buf}, 0, $self->{left};
            substr($self->{buf}, 0, length $take, '');
            $out .= $take;
            $self->{left} -= length $take;
            $self->{state} = 'crlf' unless $self->{left};
        } elsif ($self->{state} eq 'crlf') {
            last if length $self->{buf} < 2;
            if (substr($self->{buf}, 0, 2) ne "\r\n") { $self->{error} = 'chunk not followed by CRLF'; last }
            substr($self->{buf}, 0, 2, '');
            $self->{state} = 'size';
        } elsif ($self->{state} eq 'trailer') {
            my $i = index $self->{buf}, "\r\n";
            last if $i < 0;
            my $line = substr $self->{buf}, 0, $i;
            substr($self->{buf}, 0, $i + 2, '');
            $self->{done} = 1 if $line eq '';
        }
    }
    return $out;
}

# ---------------------------------------------------------------------------
# SSE client
# ---------------------------------------------------------------------------

package SSETest;

# sse_connect($port, $path, %opt): opens a stream request (does not wait for
# the answer). Options:
#   headers  => { name => value }  replaces/adds request headers (value undef
#                                   removes a default header, e.g. Accept)
#   method   => 'GET'
#   rcvbuf   => bytes               SO_RCVBUF set before connecting (slow clients)
#   body     => bytes               a request body (Content-Length is added), so
#                                   that a POST can be sent without waiting for
#                                   its answer (status, body_head, wait_eof)
sub sse_connect { SSETest::Client->new(@_) }

# wait_clients(\@clients, $cond, $timeout): reads from all clients at once
# until $cond->($client) is true for every client or $timeout seconds passed.
# Returns the number of clients for which $cond holds.
sub wait_clients {
    my ($clients, $cond, $timeout) = @_;
    my $deadline = time + $timeout;
    my %sock_to_client = map { (0 + $_->{sock} => $_) } grep { $_->{sock} } @$clients;
    while (1) {
        my @pending = grep { !$cond->($_) } @$clients;
        return scalar(@$clients) - @pending unless @pending;
        my $left = $deadline - time;
        return scalar(@$clients) - @pending if $left <= 0;
        my @socks = map { $_->{sock} } grep { $_->{sock} && !$_->{ended} } @pending;
        if (!@socks) {    # everything pending has ended: nothing more will come
            return scalar(@$clients) - @pending;
        }
        my $sel = IO::Select->new(@socks);
        my @ready = $sel->can_read($left < 0.2 ? $left : 0.2);
        $sock_to_client{ 0 + $_ }->pump for @ready;
    }
}

# wait_events(\@clients, $n, $timeout): until every client has at least $n
# unread events. Returns the number of clients that have them.
sub wait_events {
    my ($clients, $n, $timeout) = @_;
    return wait_clients($clients, sub { $_[0]->pending_events >= $n }, $timeout);
}

# pump_for(\@clients, $seconds, $tick): reads every client for $seconds, or
# until $tick->() returns true (it is called about every 10 ms). Returns
# whether $tick returned true.
sub pump_for {
    my ($clients, $seconds, $tick) = @_;
    my $end = time + $seconds;
    while (time < $end) {
        my %by = map { (0 + $_->{sock} => $_) } grep { $_->{sock} } @$clients;
        if (%by) { $by{ 0 + $_ }->pump for IO::Select->new(map { $_->{sock} } values %by)->can_read(0.01) }
        else     { sleep 0.01 }
        return 1 if $tick && $tick->();
    }
    return 0;
}

# open_session_stream($nginx, $path, worker => $pid, headers => {...}): a
# stream (SSETest::Client) on $path of a location with `sse_session on`.
# With worker, it is held by that worker of $nginx (with reuseport the kernel
# spreads connections over the workers: streams that land elsewhere are
# closed and opened again). Its first event, read here, must be
# sse-session. Returns the client with {worker} (the pid holding it) and
# {token} (the sse-session data); dies when the answer is not 200 or the
# first event is not sse-session.
sub open_session_stream {
    my ($nginx, $path, %o) = @_;
    for (1 .. 64) {
        my $c = sse_connect($nginx->port, $path, headers => $o{headers} || {});
        my $status = $c->status(5);
        die "GET $path: $status " . $c->body_head . "\n" unless $status == 200;
        my $w = $nginx->worker_of($c);
        if (defined $o{worker} && (!defined $w || $w != $o{worker})) { $c->close; next }
        my $first = $c->next_event(5);
        die "the stream $path did not start with sse-session\n"
            unless $first && $first->{event} eq 'sse-session';
        @$c{qw(worker token)} = ($w, $first->{data});
        return $c;
    }
    die "could not open a stream on worker $o{worker}\n";
}

package SSETest::Client;

use Errno qw(EAGAIN EWOULDBLOCK EINTR ECONNRESET);
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_RCVBUF inet_aton pack_sockaddr_in);
use Time::HiRes qw(time sleep);

sub new {
    my ($class, $port, $path, %opt) = @_;
    my $sock = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
    if ($opt{rcvbuf}) {
        setsockopt($sock, SOL_SOCKET, SO_RCVBUF, pack('i', $opt{rcvbuf})) or die "SO_RCVBUF: $!";
    }
    connect($sock, pack_sockaddr_in($port, inet_aton('127.0.0.1')))
        or die "cannot connect to 127.0.0.1:$port: $!";
    binmode $sock;

    my %h = (Host => 'localhost', Accept => 'text/event-stream');
    while (my ($k, $v) = each %{ $opt{headers} || {} }) {
        delete $h{$_} for grep { lc $_ eq lc $k } keys %h;
        $h{$k} = $v;
    }
    $h{'Content-Length'} = length $opt{body}
        if defined $opt{body} && !grep { lc $_ eq 'content-length' } keys %h;
    my $req = ($opt{method} || 'GET') . " $path HTTP/1.1\r\n";
    $req .= "$_: $h{$_}\r\n" for grep { defined $h{$_} } sort keys %h;
    $req .= "\r\n" . ($opt{body} // '');
    my $n = syswrite $sock, $req;
    die "cannot send request: $!" unless defined $n && $n == length $req;
    $sock->blocking(0);

    return bless {
        sock        => $sock,
        path        => $path,
        opened      => time,
        head        => '',        # raw response head until it is complete
        status      => undef,
        headers     => {},
        body_mode   => undef,     # chunked | length | eof
        chunked     => undef,     # SSETest::Chunked
        body_len    => 0,         # decoded body bytes so far
        body_head   => '',        # the first 64 KiB of decoded body, verbatim
        first_body_at => undef,   # time the first body byte arrived
        ended       => undef,     # undef while open; 'clean' or 'closed'
        ended_at    => undef,
        # SSE parser state (WHATWG "event stream interpretation")
        line        => '',
        skip_lf     => 0,
        bom_checked => 0,
        bom_probe   => '',
        data        => '',
        type        => '',
        last_id     => undef,
        events      => [],        # every dispatched event
        next_index  => 0,         # first event not yet returned by next_event
        comments    => [],        # { text, time } for every ':' line
        retries     => [],        # values of valid retry: fields
        unknown     => {},        # field name => count, for fields SSE ignores
    }, $class;
}

# Reads whatever the socket has (never blocks) and feeds the decoders.
sub pump {
    my ($self) = @_;
    return 0 unless $self->{sock};
    my $total = 0;
    while ($total < 4 * 1024 * 1024) {
        my $n = sysread $self->{sock}, my $buf, 262144;
        if (!defined $n) {
            next if $! == EINTR;
            last if $! == EAGAIN || $! == EWOULDBLOCK;
            $self->_end('closed', "read error: $!");
            last;
        }
        if ($n == 0) {
            # Without chunked coding or Content-Length the body ends at EOF.
            my $clean = ($self->{body_mode} // '') eq 'eof';
            $self->_end($clean ? 'clean' : 'closed', 'eof');
            last;
        }
        $total += $n;
        $self->_feed_raw($buf);
        last unless $self->{sock};    # the body ended inside this read
    }
    return $total;
}

sub _end {
    my ($self, $how, $why) = @_;
    return if $self->{ended};
    $self->{ended} = $how;
    $self->{end_reason} = $why;
    $self->{ended_at} = time;
    if ($self->{sock}) { CORE::close($self->{sock}); delete $self->{sock}; }
}

sub _feed_raw {
    my ($self, $bytes) = @_;
    if (!defined $self->{status}) {
        $self->{head} .= $bytes;
        my $end = index $self->{head}, "\r\n\r\n";
        return if $end < 0;
        my ($status_line, @lines) = split /\r\n/, substr($self->{head}, 0, $end);
        ($self->{status}) = $status_line =~ m{^HTTP/\d\.\d (\d{3})};
        $self->{status} //= 0;
        $self->{status_line} = $status_line;
        $self->{headers} = { SSETest::_parse_headers(@lines) };
        $bytes = substr $self->{head}, $end + 4;
        $self->{head} = '';
        my $h = $self->{headers};
        if (($h->{'transfer-encoding'} // '') =~ /chunked/i) {
            $self->{body_mode} = 'chunked';
            $self->{chunked} = SSETest::Chunked->new;
        } elsif (defined $h->{'content-length'}) {
            $self->{body_mode} = 'length';
            $self->{length_left} = $h->{'content-length'};
        } else {
            $self->{body_mode} = 'eof';
        }
    }
    my $body;
    if ($self->{body_mode} eq 'chunked') {
        $body = $self->{chunked}->feed($bytes);
        $self->{framing_error} = $self->{chunked}{error} if $self->{chunked}{error};
    } elsif ($self->{body_mode} eq 'length') {
        $body = substr $bytes, 0, $self->{length_left};
        $self->{length_left} -= length $body;
    } else {
        $body = $bytes;
    }
    if (length $body) {
        $self->{first_body_at} //= time;
        $self->{body_len} += length $body;
        $self->{body_head} .= substr($body, 0, 65536 - length $self->{body_head})
            if length $self->{body_head} < 65536;
        $self->_feed_sse($body);
    }
    if ($self->{body_mode} eq 'chunked' && $self->{chunked}{done}) {
        $self->_end('clean', 'last chunk');
    } elsif ($self->{body_mode} eq 'length' && $self->{length_left} <= 0) {
        $self->_end('clean', 'content-length reached');
    }
}

# The WHATWG event stream parser: lines end at CRLF, LF or CR.
sub _feed_sse {
    my ($self, $bytes) = @_;
    if (!$self->{bom_checked}) {    # a UTF-8 BOM at the very start is skipped
        $bytes = $self->{bom_probe} . $bytes;
        if (length $bytes < 3 && substr("\xEF\xBB\xBF", 0, length $bytes) eq $bytes) {
            $self->{bom_probe} = $bytes;    # maybe a BOM split over reads: wait
            return;
        }
        $self->{bom_checked} = 1;
        $bytes =~ s/^\xEF\xBB\xBF//;
    }
    if ($self->{skip_lf}) {
        $self->{skip_lf} = 0;
        $bytes =~ s/^\n//;
    }
    my $buf = $self->{line} . $bytes;
    pos($buf) = 0;
    my $consumed = 0;
    while ($buf =~ /\G([^\r\n]*)(\r\n|\r|\n)/gc) {
        my ($line, $eol) = ($1, $2);
        $consumed = pos $buf;
        # A CR at the very end may be the first half of a CRLF.
        $self->{skip_lf} = 1 if $eol eq "\r" && $consumed == length $buf;
        $self->_sse_line($line);
    }
    $self->{line} = substr $buf, $consumed;
}

sub _sse_line {
    my ($self, $line) = @_;
    if ($line eq '') {
        my $own_id = delete $self->{own_id};
        if ($self->{data} eq '') {
            $self->{type} = '';
            return;
        }
        my $data = $self->{data};
        $data =~ s/\n\z//;
        push @{ $self->{events} }, {
            event  => length $self->{type} ? $self->{type} : 'message',
            data   => $data,
            id     => $self->{last_id},    # the last event ID, as EventSource keeps it
            own_id => $own_id,             # the id: field of this event itself, if it had one
            time   => time,
        };
        $self->{data} = '';
        $self->{type} = '';
        return;
    }
    if (substr($line, 0, 1) eq ':') {
        push @{ $self->{comments} }, { text => substr($line, 1), time => time };
        return;
    }
    my ($field, $value) = $line =~ /^([^:]*)(?::(.*))?\z/s;
    $value //= '';
    $value =~ s/^ //;
    if    ($field eq 'event') { $self->{type} = $value }
    elsif ($field eq 'data')  { $self->{data} .= "$value\n" }
    elsif ($field eq 'id')    { ($self->{last_id} = $self->{own_id} = $value) unless $value =~ /\0/ }
    elsif ($field eq 'retry') { push @{ $self->{retries} }, $value + 0 if $value =~ /^[0-9]+\z/ }
    else                      { $self->{unknown}{$field}++ }
}

# Reads from this client alone until $cond->($client) is true (returns 1), the
# response ends, or $timeout seconds pass (returns 0).
sub wait_for {
    my ($self, $cond, $timeout) = @_;
    return $self->_wait(sub { $cond->($self) }, $timeout);
}

sub _wait {
    my ($self, $cond, $timeout) = @_;
    my $deadline = time + $timeout;
    while (!$cond->()) {
        return 0 if $self->{ended};
        my $left = $deadline - time;
        return 0 if $left <= 0;
        my $sel = IO::Select->new($self->{sock});
        $self->pump if $sel->can_read($left);
    }
    return 1;
}

# Status code of the response (waits up to $timeout s for the head); 0 if the
# connection ended before a response head.
sub status {
    my ($self, $timeout) = @_;
    $self->_wait(sub { defined $self->{status} }, $timeout // 5);
    return $self->{status} // 0;
}

sub header {
    my ($self, $name) = @_;
    $self->status;
    return $self->{headers}{ lc $name };
}

sub headers { $_[0]->status; $_[0]{headers} }

# The next event not yet returned, waiting up to $timeout s (default 5);
# undef if none came.
sub next_event {
    my ($self, $timeout) = @_;
    $self->_wait(sub { $self->pending_events > 0 }, $timeout // 5);
    return undef unless $self->pending_events;
    return $self->{events}[ $self->{next_index}++ ];
}

# Waits until $count events not yet returned are there (or $timeout), and
# returns (consumes) up to $count of them.
sub events_until {
    my ($self, $count, $timeout) = @_;
    $self->_wait(sub { $self->pending_events >= $count }, $timeout // 5);
    my $n = $self->pending_events < $count ? $self->pending_events : $count;
    my @ev = @{ $self->{events} }[ $self->{next_index} .. $self->{next_index} + $n - 1 ];
    $self->{next_index} += $n;
    return @ev;
}

sub pending_events { scalar(@{ $_[0]{events} }) - $_[0]{next_index} }
sub all_events { @{ $_[0]{events} } }

# Returns the events not yet returned and forgets every event so far (for
# long runs; all_events then starts after them).
sub take_events {
    my ($self) = @_;
    my @ev = @{ $self->{events} }[ $self->{next_index} .. $#{ $self->{events} } ];
    $self->{events} = [];
    $self->{next_index} = 0;
    return @ev;
}

# Reads for $seconds and returns the events that arrived meanwhile (consumed).
sub collect {
    my ($self, $seconds) = @_;
    $self->_wait(sub { 0 }, $seconds);
    return $self->events_until($self->pending_events, 0);
}

# Comment lines seen so far, as { text, time } (heartbeats are ':' lines).
sub comments { @{ $_[0]{comments} } }

sub retries { @{ $_[0]{retries} } }

# The first bytes of the body (up to 64 KiB), exactly as received.
sub body_head { $_[0]{body_head} }

# Reads for up to $timeout s, so that everything already sent is seen.
sub drain { my ($self, $t) = @_; $self->_wait(sub { 0 }, $t // 0.2); $self }

# '' while the response is still open; 'clean' once the body ended properly
# (last chunk of a chunked body, or Content-Length reached); 'closed' if the
# connection ended without that.
sub is_eof {
    my ($self) = @_;
    $self->pump;
    return $self->{ended} // '';
}

# Waits up to $timeout s for the end of the response; returns 'clean',
# 'closed', or undef if it is still open.
sub wait_eof {
    my ($self, $timeout) = @_;
    $self->_wait(sub { $self->{ended} }, $timeout // 5);
    return $self->{ended};
}

sub close {
    my ($self) = @_;
    $self->_end('closed', 'closed by test') if $self->{sock};
    return;
}

sub DESTROY { local ($., $@, $!, $^E, $?); CORE::close($_[0]{sock}) if $_[0]{sock} }

# ---------------------------------------------------------------------------
# History (sse_history): the sse_publish function, a publisher process, and
# a client that reconnects like EventSource
# ---------------------------------------------------------------------------

package SSETest;

# load_sse_function($port_or_redis): FUNCTION LOAD REPLACE of redis/sse.lua,
# what the workers do themselves when a location has `sse_history on` (a test
# that publishes at once does not have to wait for them). Returns the library
# name; dies on an error reply.
sub load_sse_function {
    my ($target) = @_;
    my $code = slurp("$REPO/redis/sse.lua");
    die "cannot read $REPO/redis/sse.lua\n" unless length $code;
    my $reply = redis_cmd($target, FUNCTION => LOAD => REPLACE => $code);
    die "FUNCTION LOAD failed: $reply\n" if ref $reply;
    return $reply;
}

# sse_publish($port_or_redis_or_conn, $channel, $payload, @options):
# FCALL sse_publish 0 $channel $payload @options ('maxlen=10', 'ttl=5', ...).
# Returns the event id (a number) or an SSETest::RedisError.
sub sse_publish {
    my ($target, $channel, $payload, @options) = @_;
    my @cmd = (FCALL => sse_publish => 0, $channel, $payload, @options);
    return $target->cmd(@cmd) if ref $target && $target->isa('SSETest::RedisConn');
    return redis_cmd($target, @cmd);
}

# start_publisher(redis => $redis_or_port, channels => [...], rate => 100,
#                 options => ['maxlen=5000']): a child process that publishes
# with FCALL sse_publish at a steady rate (messages per second, all channels
# together), round robin over the channels, payload "<channel> #<n>" with n
# counting from 1 per channel. Like a service, it retries a message that
# certainly failed (no connection, error reply such as LOADING) every 50 ms
# until Redis takes it; a message that was sent but whose reply never came
# (connection lost) is recorded as unknown and not retried (Redis may or may
# not have run it). Returns an SSETest::Publisher: ->stop ends it and returns
# { accepted => [[channel, n, id, time], ...] (in publish order), unknown =>
# [[channel, n], ...], failures => attempts that failed, failed_first /
# failed_last => times of the first and last failure }.
sub start_publisher { return start_publisher_process('SSETest::Publisher', \&_publisher_loop, {@_}) }

# start_publisher_process($class, $loop, \%options, close_fds => 1): the
# common part of the publishers (this file's, and those of t/31 and the
# cluster tests): forks a child (see _fork_child; close_fds is passed on)
# that runs $loop->($dir, %options), where $dir is a fresh temporary
# directory: the loop writes its log to $dir/log and returns once $dir/stop
# exists. Returns a $class object (SSETest::Publisher or a subclass that
# reads its own log format in results()) with pid, dir and tag ($options{tag},
# '' if none).
sub start_publisher_process {
    my ($class, $loop, $o, %opt) = @_;
    my $dir = _tempdir('publisher');
    my $pid = _fork_child('publisher', sub { $loop->($dir, %$o) }, close_fds => $opt{close_fds});
    return bless { pid => $pid, dir => $dir, tag => $o->{tag} // '' }, $class;
}

sub _publisher_loop {
    my ($dir, %o) = @_;
    my $target   = $o{redis} or die "start_publisher: redis required\n";
    my @channels = @{ $o{channels} or die "start_publisher: channels required\n" };
    my $rate     = $o{rate} || 100;
    my @options  = @{ $o{options} || [] };
    open my $log, '>>', "$dir/log" or die "cannot write $dir/log: $!\n";
    $log->autoflush(1);
    my %n;
    my $k = 0;
    my $conn;
    my $next = time;
    while (!-e "$dir/stop") {
        my $left = $next - time;
        sleep $left if $left > 0;
        $next = time if time - $next > 0.2;    # far behind (an outage): no burst
        my $ch = $channels[ $k % @channels ];
        my $n  = ($n{$ch} // 0) + 1;
        my $sent = 0;
        my $reply = eval {
            $conn ||= SSETest::RedisConn->new($target, timeout => 3) or die "connect: $!\n";
            $conn->send_cmd(FCALL => sse_publish => 0, $ch, "$ch #$n", @options);
            $sent = 1;
            $conn->read_reply;
        };
        my $t = sprintf '%.3f', time;
        if (defined $reply && !ref $reply && $reply =~ /^\d+$/) {
            print {$log} "A $ch $n $reply $t\n";
        } elsif ($sent && !defined $reply) {    # sent, then the connection broke
            print {$log} "U $ch $n - $t\n";
            $conn->close if $conn;
            undef $conn;
        } else {                                # certainly not run: retry it
            my $why = defined $reply ? "$reply" : $@;
            $why =~ s/\s+/ /g;
            print {$log} "F $ch $n - $t $why\n";
            if (!defined $reply) { $conn->close if $conn; undef $conn; }
            $next = time + 0.05;
            next;
        }
        $n{$ch} = $n;
        $k++;
        $next += 1 / $rate;
    }
    close $log;
}

package SSETest::Publisher;

# A publisher child (start_publisher_process): stop() and DESTROY for all of
# them; results() reads start_publisher's log (subclasses read their own).

use Time::HiRes qw(time sleep);

sub pid { $_[0]{pid} }

# What was published so far (see start_publisher), read from the log.
sub results {
    my ($self) = @_;
    my %r = (accepted => [], unknown => [], failures => 0, failed_first => undef, failed_last => undef);
    for my $line (split /\n/, SSETest::slurp("$self->{dir}/log")) {
        my ($kind, $ch, $n, $id, $t) = split / /, $line;
        next unless defined $t;    # a line being written
        if ($kind eq 'A') { push @{ $r{accepted} }, [ $ch, $n, $id, $t ] }
        elsif ($kind eq 'U') { push @{ $r{unknown} }, [ $ch, $n ] }
        elsif ($kind eq 'F') {
            $r{failures}++;
            $r{failed_first} //= $t;
            $r{failed_last} = $t;
        }
    }
    return \%r;
}

# Stops publishing (after the message in progress) and returns results().
sub stop {
    my ($self, $timeout) = @_;
    if ($self->{pid}) {
        SSETest::_spew("$self->{dir}/stop", '');
        my $took = SSETest::_wait_child($self->{pid}, $timeout || 10);
        SSETest::_stop_group($self->{pid}, 'KILL', 5) unless defined $took;
        delete $self->{pid};
    }
    return $self->results;
}

sub DESTROY { local ($., $@, $!, $^E, $?); SSETest::_stop_group($_[0]{pid}, 'KILL', 5) if $_[0]{pid} }

package SSETest;

# event_source($port, $path, %opt): a client that behaves like a browser's
# EventSource (SSETest::EventSource).
sub event_source { SSETest::EventSource->new(@_) }

# wait_sources(\@sources, $cond, $timeout): reads from all the EventSource
# clients at once (reconnecting them when due) until $cond->($source) holds
# for all of them or $timeout seconds passed. Returns the number for which
# $cond holds.
sub wait_sources {
    my ($sources, $cond, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        my %by_sock;
        for my $es (@$sources) {
            $es->_tick;
            my $c = $es->{client};
            $by_sock{ 0 + $c->{sock} } = $es if $c && $c->{sock};
        }
        my $done = grep { $cond->($_) } @$sources;
        return $done if $done == @$sources;
        my $left = $deadline - time;
        return $done if $left <= 0;
        my $sel = IO::Select->new(map { $_->{client}{sock} } values %by_sock);
        if ($sel->count) {
            $by_sock{ 0 + $_ }->pump for $sel->can_read($left < 0.05 ? $left : 0.05);
        } else {
            sleep($left < 0.05 ? $left : 0.05);
        }
    }
}

# Publishes a plain 'warmup' message on every channel of @$channels until
# each source has received it on every channel it asked for ($es->{chans}),
# or $timeout s pass. From then on nothing published can miss a source.
# Returns how many sources are ready.
sub warm_up_sources {
    my ($redis_port, $sources, $channels, $timeout) = @_;
    my $t0 = time;
    my $ready = 0;
    while (time - $t0 < $timeout) {
        redis_cmd($redis_port, PUBLISH => $_ => 'warmup') for @$channels;
        $ready = wait_sources($sources, sub {
            my ($es) = @_;
            my %seen = map { $_->{event} => 1 } grep { $_->{data} eq 'warmup' } $es->all_events;
            !grep { !$seen{$_} } @{ $es->{chans} };
        }, 0.5);
        last if $ready == @$sources;
    }
    return $ready;
}

# delivery_mismatches(\@sources, describe => sub { ... }): compares what
# each EventSource client got, as "event|data|id" lines (warm-up messages
# left out; id '-' when none), with its {want} (the same lines, in order).
# Returns (\@gapped, \@duplicated, \@wrong): the indexes of the clients that
# got an sse-gap, of those that got a line twice, and for each client whose
# lines differ from {want} a description: "client <i> (<channels><extra>):
# N events, M expected; missing ...; extra ...; duplicated ...", where
# <extra> is describe->($client) ('' without describe).
sub delivery_mismatches {
    my ($sources, %o) = @_;
    my (@wrong, @gaps, @dups);
    for my $i (0 .. $#$sources) {
        my $es  = $sources->[$i];
        my @got = map { join '|', $_->{event}, $_->{data}, $_->{id} // '-' } grep { $_->{data} ne 'warmup' } $es->all_events;
        push @gaps, $i if grep { /^sse-gap\|/ } @got;
        my %n;
        push @dups, $i if grep { $n{$_}++ } @got;
        next if join("\n", @got) eq join("\n", @{ $es->{want} });
        my %have = map { $_ => 1 } @got;
        my %want = map { $_ => 1 } @{ $es->{want} };
        my @missing = grep { !$have{$_} } @{ $es->{want} };
        my @extra   = grep { !$want{$_} } @got;
        push @wrong, sprintf "client %d (%s%s): %d events, %d expected; missing %d [%s]; extra %d [%s]; duplicated %d",
            $i, join(',', @{ $es->{chans} }), $o{describe} ? $o{describe}->($es) : '', scalar(@got),
            scalar(@{ $es->{want} }), scalar(@missing), join(' ', @missing[0 .. ($#missing < 5 ? $#missing : 5)]),
            scalar(@extra), join(' ', @extra[0 .. ($#extra < 5 ? $#extra : 5)]), scalar(grep { $n{$_} > 1 } keys %n);
    }
    return (\@gaps, \@dups, \@wrong);
}

package SSETest::EventSource;

# What a browser's EventSource does with a stream: when a response that
# answered 200 ends (cleanly or not), or the connection fails, it waits the
# reconnection time (the last retry: field received; 3 s before any; or the
# retry_ms option) and requests the same URL again with `Last-Event-ID: <the
# id of the last event received>`. A response other than 200 ends it for good
# ({failed}). Options: headers (as for sse_connect, first request included),
# retry_ms.
#
# {events}: every event of every connection, in arrival order, each with
# {conn} (0 for the first connection); {connections}: per connection
# { sent_id (the Last-Event-ID sent), status, echo (Last-Event-ID response
# header), ended ('clean' / 'closed' / 'failed'), end_reason, opened, ended_at,
# partial (ended in the middle of an event) }; {last_id}.

use Time::HiRes qw(time sleep);

sub new {
    my ($class, $port, $path, %opt) = @_;
    my $self = bless {
        port => $port, path => $path, headers => $opt{headers} || {}, retry_ms => $opt{retry_ms},
        events => [], next_index => 0, connections => [], last_id => undef, retry => 3000,
        client => undef, reconnect_at => undef, failed => undef,
    }, $class;
    $self->_open;
    return $self;
}

sub _open {
    my ($self) = @_;
    my %h = %{ $self->{headers} };
    $h{'Last-Event-ID'} = $self->{last_id} if defined $self->{last_id} && length $self->{last_id};
    my $info = { sent_id => $h{'Last-Event-ID'}, opened => time };
    push @{ $self->{connections} }, $info;
    $self->{reconnect_at} = undef;
    my $c = eval { SSETest::Client->new($self->{port}, $self->{path}, headers => \%h) };
    if (!$c) {    # network error: try again later, like a browser
        @$info{qw(ended end_reason ended_at)} = ('closed', "connect: $@", time);
        $self->{reconnect_at} = time + $self->_retry_s;
        return;
    }
    $self->{client} = $c;
}

sub _retry_s { my $s = shift; ($s->{retry_ms} // $s->{retry}) / 1000 }

# Reads what is there and moves the events over; handles the end of a
# connection and a due reconnection.
sub pump {
    my ($self) = @_;
    my $c = $self->{client} or return $self->_tick;
    $c->pump;
    $self->_collect;
    $self->_tick;
}

sub _collect {
    my ($self) = @_;
    my $c = $self->{client} or return;
    my $info = $self->{connections}[-1];
    if (!defined $info->{status} && defined $c->{status}) {
        $info->{status} = $c->{status};
        $info->{echo}   = $c->{headers}{'last-event-id'};
    }
    my $conn = $#{ $self->{connections} };
    for my $e ($c->take_events) {
        $e->{conn} = $conn;
        $self->{last_id} = $e->{id} if defined $e->{id};
        push @{ $self->{events} }, $e;
    }
    my @retries = $c->retries;
    $self->{retry} = $retries[-1] if @retries;
}

sub _tick {
    my ($self) = @_;
    my $c = $self->{client};
    if ($c && $c->{ended}) {
        $self->_collect;
        my $info = $self->{connections}[-1];
        @$info{qw(ended end_reason ended_at)} = ($c->{ended}, $c->{end_reason}, $c->{ended_at});
        $info->{partial} = (length $c->{line} || length $c->{data}) ? 1 : 0;
        $self->{client} = undef;
        if (defined $c->{status} && $c->{status} != 200) {
            $self->{failed} = "status $c->{status}";
        } else {
            $self->{reconnect_at} = time + $self->_retry_s;
        }
    }
    $self->_open if !$self->{client} && !$self->{failed} && defined $self->{reconnect_at}
        && time >= $self->{reconnect_at};
    return 0;
}

# The next event not yet returned (waiting up to $timeout s), like
# SSETest::Client::next_event but across reconnections.
sub next_event {
    my ($self, $timeout) = @_;
    SSETest::wait_sources([$self], sub { $_[0]->pending_events > 0 }, $timeout // 5);
    return undef unless $self->pending_events;
    return $self->{events}[ $self->{next_index}++ ];
}

sub pending_events { scalar(@{ $_[0]{events} }) - $_[0]{next_index} }
sub all_events { @{ $_[0]{events} } }
sub connections { @{ $_[0]{connections} } }
sub reconnections { scalar(@{ $_[0]{connections} }) - 1 }

sub close {
    my ($self) = @_;
    $self->{failed} //= 'closed by test';
    $self->{client}->close if $self->{client};
    $self->{client} = undef;
}

1;
