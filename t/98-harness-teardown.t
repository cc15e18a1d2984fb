# Self-test of the harness's teardown check: an nginx whose error.log got an
# [alert] or [emerg] line or a crashed worker ("exited on signal") makes the
# test file fail when that nginx is stopped (stop, quit, end of scope, end of
# the file), unless the test said it expects those lines. The check runs in
# child test scripts whose TAP output is inspected. Plain nginx (no module),
# so that this runs even before the module is built.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use File::Temp ();
use Test::More;
use SSETest -noskip;

plan skip_all => "nginx binary $SSETest::NGINX_BIN is not executable (set NGINX_BIN)" unless -x $SSETest::NGINX_BIN;

my $dir = File::Temp::tempdir(CLEANUP => 1);
my $lib = "$FindBin::Bin/lib";

# Runs a test script whose body is $code (after a common preamble); returns
# (exit code, TAP output with diagnostics).
sub run_script {
    my ($name, $code) = @_;
    my $file = "$dir/$name.t";
    open my $fh, '>', $file or die "$file: $!";
    print {$fh} <<"PERL" . $code;
use strict; use warnings;
use lib '$lib';
use Test::More;
use SSETest -noskip;
sub plain_nginx { start_nginx(module => undef, redis_url => undef, \@_, server => 'location / { return 204; }') }
sub add_line { my (\$n, \$line) = \@_; open my \$fh, '>>', \$n->prefix . '/error.log' or die; print {\$fh} "2026/01/01 00:00:00 \$line\\n"; close \$fh }
PERL
    close $fh;
    my ($rc, $out) = SSETest::_run_capture($^X, $file);
    return ($rc, $out);
}

my ($rc, $out) = run_script(clean => <<'PERL');
my $n = plain_nginx();
ok 1, 'body';
$n->stop;
my $m = plain_nginx();    # still running at done_testing
done_testing;
PERL
is $rc, 0, 'a clean error.log: the script passes' or diag $out;
unlike $out, qr/not ok/, '... with no failed test';

($rc, $out) = run_script(stop => <<'PERL');
my $n = plain_nginx();
add_line($n, '[alert] 1#1: something bad');
ok 1, 'body';
$n->stop;
done_testing;
PERL
isnt $rc, 0, '[alert] then stop: the script fails';
like $out, qr/^not ok \d+ - nginx in \S+ \(stop\): no \[alert\]/m, '... with a failed test named after the teardown';
like $out, qr/something bad/, '... showing the offending line';

($rc, $out) = run_script(quit => <<'PERL');
my $n = plain_nginx();
add_line($n, '[emerg] 1#1: something worse');
$n->quit;
ok 1, 'body';
done_testing;
PERL
isnt $rc, 0, '[emerg] then quit: the script fails';
like $out, qr/^not ok \d+ - nginx in \S+ \(quit\)/m, '... at the quit';

($rc, $out) = run_script(scope => <<'PERL');
subtest 'inner' => sub {
    my $n = plain_nginx();
    add_line($n, '[notice] 1#1: worker process 42 exited on signal 11 (core dumped)');
    ok 1, 'body';
};
done_testing;
PERL
isnt $rc, 0, 'a crashed worker, nginx going out of scope in a subtest: the script fails';
like $out, qr/not ok \d+ - nginx in \S+ \(end of scope\)/, '... at the end of its scope';
like $out, qr/exited on signal 11/, '... showing the line';

($rc, $out) = run_script(end => <<'PERL');
my $n = plain_nginx();
add_line($n, '[alert] 1#1: left running');
ok 1, 'body';
done_testing;
PERL
isnt $rc, 0, 'an nginx still running at done_testing is stopped and checked: the script fails';
like $out, qr/not ok \d+ - nginx in \S+ \(end of the test file\)/, '... at the end of the file';

($rc, $out) = run_script(once => <<'PERL');
my $n = plain_nginx();
add_line($n, '[alert] 1#1: reported once');
$n->stop;
$n->start;
ok 1, 'body';
$n->stop;
done_testing;
PERL
my $times = () = $out =~ /^not ok \d+ - nginx/mg;
is $times, 1, 'a line is reported once, even if the same nginx is started and stopped again';

($rc, $out) = run_script(expected => <<'PERL');
my $n = plain_nginx(expect_alerts => qr/expected one/);
add_line($n, '[alert] 1#1: the expected one');
my $m = plain_nginx()->expect_alerts(1);
add_line($m, '[emerg] 1#1: anything');
ok 1, 'body';
done_testing;
PERL
is $rc, 0, 'expect_alerts excuses the lines it matches, expect_alerts(1) all of them' or diag $out;

($rc, $out) = run_script(partly => <<'PERL');
my $n = plain_nginx(expect_alerts => qr/expected one/);
add_line($n, '[alert] 1#1: the expected one');
add_line($n, '[alert] 1#1: another one');
ok 1, 'body';
done_testing;
PERL
isnt $rc, 0, 'but not the others';
like $out, qr/another one/, '... which are shown';
my ($offending) = $out =~ /offending error\.log lines:\n((?:# 2026[^\n]*\n)+)/;
unlike $offending // '', qr/the expected one/, '... and only those';

done_testing;
