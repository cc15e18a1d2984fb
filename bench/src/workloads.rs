//! The workloads: each starts a fresh nginx for one target, drives it, and
//! returns its rows for the report.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::acct::{self, Totals};
use crate::client::{ClientInject, Engine};
use crate::publish::{self, Kind, Msg, PlanRun, PubStats, Publisher};
use crate::report::Row;
use crate::server::{LogSummary, Nginx, NginxOpts, Redis, Target};
use crate::sys::{self, Mem};

pub struct Env<'a> {
    pub opts: NginxOpts<'a>,
    pub redis: &'a Redis,
    pub tmp: PathBuf,
    pub run: u32,
    /// Serious error.log lines and other observations, for the report.
    pub notes: Vec<String>,
}

const MB: f64 = 1024.0 * 1024.0;

fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / MB
}

fn chan_names(env: &Env, wl: &str, t: Target, n: u32) -> Vec<String> {
    (0..n).map(|c| format!("r{}.{}.{}.c{}", env.run, wl, t.label(), c)).collect()
}

fn start_nginx(env: &mut Env, wl: &str, t: Target, cpus: Option<Vec<usize>>) -> io::Result<Nginx> {
    let _ = publish::redis_cmd(env.redis.port, &["FLUSHALL"]);
    let prefix = env.tmp.join(format!("{wl}-{}", t.label()));
    let opts = NginxOpts { cpus, ..env.opts.clone_opts() };
    let n = Nginx::start(t, &opts, &prefix, env.redis.port)?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(n)
}

fn finish(env: &mut Env, wl: &str, ngx: Nginx, rows: &mut Vec<Row>) {
    let t = ngx.target;
    let workers_before = ngx.workers();
    let log: LogSummary = ngx.stop();
    rows.push(Row::num("error.log emerg/alert/crit/error lines", log.serious as f64, 0));
    rows.push(Row::num("error.log warn lines", log.warn as f64, 0));
    for s in log.samples {
        env.notes.push(format!("{wl} / {}: {s}", t.label()));
    }
    if workers_before.len() != 2 {
        env.notes.push(format!("{wl} / {}: {} workers at the end (expected 2)", t.label(), workers_before.len()));
    }
}

fn publisher_for(t: Target, env: &Env, ngx: &Nginx, conns: usize) -> io::Result<Publisher> {
    match t {
        Target::Sse => Publisher::connect(Kind::Redis, env.redis.port, 1),
        _ => Publisher::connect(Kind::Http { path_prefix: "/pub?id=".into() }, ngx.port, conns),
    }
}

/// Workload "idle": connect, measure memory, disconnect, measure again.
pub fn idle(env: &mut Env, t: Target, subs: u32, channels: u32) -> io::Result<Vec<Row>> {
    let wl = "idle";
    let ngx = start_nginx(env, wl, t, None)?;
    let names = chan_names(env, wl, t, channels);
    let mut eng = Engine::new(ngx.port, env.run, t.sub_prefix(), names)?;
    let (m0, fd0) = (ngx.mem(), ngx.workers_fds());
    let chans: Vec<u32> = (0..subs).map(|i| i % channels).collect();
    let cpu0 = ngx.workers_cpu_ns();
    let secs = eng.connect_subs(&chans, 256, 120_000);
    let cpu_connect = ngx.workers_cpu_ns() - cpu0;
    // Let the servers settle (subscriptions, lazy allocations), then measure.
    poll_for(&mut eng, 1000);
    let (m1, fd1) = (ngx.mem(), ngx.workers_fds());
    let open_ok = eng.live() as u64;
    eng.close_all();
    std::thread::sleep(Duration::from_millis(1000));
    let (m2, fd2) = (ngx.mem(), ngx.workers_fds());
    let st = &eng.sink.st;
    let n = st.connected.max(1) as f64;
    let mut rows = vec![
        Row::text("streams open (200)", format!("{}/{}", st.connected, subs)),
        Row::num("streams still open before disconnect", open_ok as f64, 0),
        Row::num("connect errors + non-200", (st.connect_errors + st.bad_status) as f64, 0),
        Row::num("time to open all (s)", secs, 2),
        Row::num("worker CPU to open them, per stream (us)", cpu_connect as f64 / 1e3 / n, 1),
        Row::num("RSS before (MB)", mb(m0.rss_kb), 1),
        Row::num("RSS with streams open (MB)", mb(m1.rss_kb), 1),
        Row::num("RSS after disconnect (MB)", mb(m2.rss_kb), 1),
        Row::num("RSS per stream (KB)", (m1.rss_kb as f64 - m0.rss_kb as f64) * 1024.0 / n / 1000.0, 2),
        Row::num("PSS per stream (KB)", (m1.pss_kb as f64 - m0.pss_kb as f64) * 1024.0 / n / 1000.0, 2),
        Row::text("worker fds before / open / after", format!("{fd0} / {fd1} / {fd2}")),
    ];
    note_client_errors(env, wl, t, &eng.sink.st);
    finish(env, wl, ngx, &mut rows);
    Ok(rows)
}

fn poll_for(eng: &mut Engine, ms: u64) {
    let t0 = sys::now_ns();
    while sys::now_ns() - t0 < ms * 1_000_000 && !crate::stopping() {
        eng.poll(10);
    }
}

fn note_client_errors(env: &mut Env, wl: &str, t: Target, st: &crate::client::Stats) {
    for e in &st.errors {
        env.notes.push(format!("{wl} / {} client: {e}", t.label()));
    }
}

#[derive(Clone)]
pub struct Fanout {
    pub name: String,
    pub channels: u32,
    pub subs: u32,
    pub rate: f64,
    pub secs: f64,
    pub size: usize,
    /// Server (nginx and redis) on CPU 0, the tool on CPU 1.
    pub pin: bool,
    pub client_inject: ClientInject,
    /// Rewrites the publishing plan (self-check).
    pub plan_inject: Option<fn(&mut Vec<Msg>)>,
}

/// What a fan-out run measured, beyond its rows (self-check reads this).
pub struct FanoutOut {
    pub totals: Totals,
    pub client: crate::client::Stats,
    pub publisher: PubStats,
}

fn mem_rows(rows: &mut Vec<Row>, label: &str, m: Mem) {
    rows.push(Row::num(&format!("RSS {label} (MB)"), mb(m.rss_kb), 1));
}

/// Workloads fanout-1, fanout-100, large and the pinned variant.
pub fn fanout(env: &mut Env, t: Target, f: &Fanout) -> io::Result<(Vec<Row>, FanoutOut)> {
    let wl = f.name.as_str();
    let ncpu = sys::num_cpus();
    let pin = f.pin && ncpu >= 2;
    let ngx = start_nginx(env, wl, t, pin.then(|| vec![0]))?;
    let r = fanout_on(env, t, f, &ngx, pin);
    if pin {
        let _ = sys::set_affinity(0, None);
        let _ = sys::set_process_affinity(env.redis.pid(), None);
    }
    let (mut rows, out) = r?;
    finish(env, wl, ngx, &mut rows);
    Ok((rows, out))
}

fn fanout_on(env: &mut Env, t: Target, f: &Fanout, ngx: &Nginx, pin: bool) -> io::Result<(Vec<Row>, FanoutOut)> {
    let wl = f.name.as_str();
    if pin {
        sys::set_process_affinity(env.redis.pid(), Some(&[0]))?;
        // This thread, and the publisher thread it starts, on CPU 1.
        sys::set_affinity(0, Some(&[1]))?;
    }
    let names = chan_names(env, wl, t, f.channels);
    let mut eng = Engine::new(ngx.port, env.run, t.sub_prefix(), names.clone())?;
    eng.sink.inject = f.client_inject;
    let m0 = ngx.mem();
    let chans: Vec<u32> = (0..f.subs).map(|i| i % f.channels).collect();
    let connect_secs = eng.connect_subs(&chans, 256, 120_000);
    let m1 = ngx.mem();

    // Warm-up: sequence-0 messages on every channel until each subscriber
    // has seen one, so the measured phase starts with every path live.
    let mut p = publisher_for(t, env, ngx, 8)?;
    let t_warm = sys::now_ns();
    while !eng.all_warm() && sys::now_ns() - t_warm < 20_000_000_000 && !crate::stopping() {
        for c in eng.cold_channels() {
            while !p.can_send() {
                p.io(1_000_000);
                eng.poll(0);
            }
            p.publish(&names[c as usize], c, 0, env.run, f.size);
        }
        let t1 = sys::now_ns();
        while sys::now_ns() - t1 < 150_000_000 {
            p.io(0);
            eng.poll(10);
        }
    }
    let warm_secs = (sys::now_ns() - t_warm) as f64 / 1e9;
    let cold = eng.sink.subs.iter().filter(|s| !s.warm).count();
    if cold > 0 {
        env.notes.push(format!("{wl} / {}: {cold} subscribers never saw a warm-up message", t.label()));
    }
    let t_settle = sys::now_ns();
    while (p.outstanding() > 0 || sys::now_ns() - t_settle < 200_000_000) && sys::now_ns() - t_settle < 5_000_000_000 {
        p.io(1_000_000);
        eng.poll(5);
    }
    let warm_pub = std::mem::take(&mut p.st);
    if warm_pub.errors > 0 {
        env.notes.push(format!("{wl} / {}: {} publish errors during warm-up: {:?}", t.label(), warm_pub.errors, warm_pub.notes));
    }

    // The measured phase.
    let total = (f.rate * f.secs).round() as u64;
    let mut plan = publish::round_robin(f.channels, total);
    if let Some(inject) = f.plan_inject {
        inject(&mut plan);
    }
    let last = publish::last_seqs(&plan, f.channels);
    let expected: u64 = eng.sink.subs.iter().map(|s| last[s.chan as usize]).sum();
    let distinct0 = eng.sink.distinct;
    let (cpu0, rcpu0, tcpu0) = (ngx.workers_cpu_ns(), env.redis.cpu_ns(), sys::self_cpu_ns());
    let workers0 = ngx.workers();
    let done = Arc::new(AtomicBool::new(false));
    let (run, size, rate) = (env.run, f.size, f.rate);
    let pub_thread = {
        let done = done.clone();
        let names = names.clone();
        std::thread::spawn(move || {
            let r = publish::run_plan(&mut p, &plan, &names, rate, size, run);
            done.store(true, Ordering::SeqCst);
            (r, p.st)
        })
    };
    while !done.load(Ordering::SeqCst) {
        eng.poll(5);
    }
    let (plan_run, pub_st): (PlanRun, PubStats) = pub_thread.join().expect("publisher thread");
    // Drain: until every expected delivery arrived, or 3 s without progress.
    let mut last_progress = (sys::now_ns(), eng.sink.distinct);
    while eng.sink.distinct - distinct0 < expected && !crate::stopping() {
        eng.poll(5);
        if eng.sink.distinct != last_progress.1 {
            last_progress = (sys::now_ns(), eng.sink.distinct);
        } else if sys::now_ns() - last_progress.0 > 3_000_000_000 {
            break;
        }
    }
    let t_end = eng.sink.last_delivery_ns.max(plan_run.t_last_sent);
    let (cpu1, rcpu1, tcpu1) = (ngx.workers_cpu_ns(), env.redis.cpu_ns(), sys::self_cpu_ns());
    let workers1 = ngx.workers();
    if workers0 != workers1 {
        env.notes.push(format!("{wl} / {}: worker pids changed during the run: {workers0:?} -> {workers1:?}", t.label()));
    }
    let m2 = ngx.mem();
    let tot = acct::totals(&eng.sink.subs, &last);
    let still_open = eng.live();
    eng.close_all();
    std::thread::sleep(Duration::from_millis(500));
    let m3 = ngx.mem();

    let st = eng.sink.st.clone();
    let lat = &eng.sink.latency;
    let recv = tot.received.max(1) as f64;
    let span = (t_end.saturating_sub(plan_run.t_start)) as f64 / 1e9;
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut rows = vec![
        Row::text("streams open (200)", format!("{}/{}", st.connected, f.subs)),
        Row::num("time to open all (s)", connect_secs, 2),
        Row::num("warm-up (s)", warm_secs, 2),
        Row::num("messages published", plan_run.sent as f64, 0),
        Row::num("publish errors / unanswered", (pub_st.errors + plan_run.unanswered) as f64, 0),
        Row::num("publish lag max (ms)", ms(plan_run.lag_max_ns), 1),
        Row::num("deliveries expected", tot.expected as f64, 0),
        Row::num("deliveries received", tot.received as f64, 0),
        Row::num("missing", tot.missing as f64, 0),
        Row::num("duplicated", tot.duplicated as f64, 0),
        Row::num("out of order", tot.out_of_order as f64, 0),
        Row::num("misrouted / foreign", (tot.misrouted + st.foreign) as f64, 0),
        Row::num("streams closed by server", st.server_closed as f64, 0),
        Row::num("deliveries/s", tot.received as f64 / span.max(1e-9), 0),
        Row::num("latency p50 (ms)", ms(lat.quantile(0.5)), 2),
        Row::num("latency p99 (ms)", ms(lat.quantile(0.99)), 2),
        Row::num("latency p99.9 (ms)", ms(lat.quantile(0.999)), 2),
        Row::num("latency max (ms)", ms(lat.max), 2),
        Row::num("worker CPU (ms)", ms(cpu1 - cpu0), 0),
        Row::num("worker CPU per delivery (us)", (cpu1 - cpu0) as f64 / 1e3 / recv, 2),
        Row::num("redis CPU (ms)", ms(rcpu1 - rcpu0), 0),
        Row::num("tool CPU per delivery (us)", (tcpu1 - tcpu0) as f64 / 1e3 / recv, 2),
    ];
    mem_rows(&mut rows, "before", m0);
    mem_rows(&mut rows, "streams open", m1);
    mem_rows(&mut rows, "after publish", m2);
    mem_rows(&mut rows, "after disconnect", m3);
    if still_open as u64 != st.connected - st.server_closed {
        env.notes.push(format!("{wl} / {}: {still_open} streams open at the end", t.label()));
    }
    for n in &pub_st.notes {
        env.notes.push(format!("{wl} / {} publisher: {n}", t.label()));
    }
    if let Some((s, c)) = pub_st.statuses.iter().find(|(s, _)| !(200..300).contains(*s)) {
        env.notes.push(format!("{wl} / {}: publisher got HTTP {s} x{c}", t.label()));
    }
    note_client_errors(env, wl, t, &st);
    Ok((rows, FanoutOut { totals: tot, client: st, publisher: pub_st }))
}

/// Workload "churn": many short connect / first bytes / close cycles.
pub fn churn(env: &mut Env, t: Target, cycles: u64, concurrency: usize, channels: u32) -> io::Result<Vec<Row>> {
    let wl = "churn";
    let ngx = start_nginx(env, wl, t, None)?;
    let names = chan_names(env, wl, t, channels);
    let mut eng = Engine::new(ngx.port, env.run, t.sub_prefix(), names)?;
    let (m0, fd0) = (ngx.mem(), ngx.workers_fds());
    let cpu0 = ngx.workers_cpu_ns();
    let first = (cycles / 10).max(1);
    let s1 = eng.churn(first, concurrency, channels, 600_000);
    std::thread::sleep(Duration::from_millis(500));
    let m1 = ngx.mem();
    let s2 = eng.churn(cycles - first, concurrency, channels, 600_000);
    let cpu1 = ngx.workers_cpu_ns();
    std::thread::sleep(Duration::from_millis(1000));
    let (m2, fd2) = (ngx.mem(), ngx.workers_fds());
    let st = &eng.sink.st;
    let done = st.connected;
    let d = m2.rss_kb as f64 - m0.rss_kb as f64;
    let mut rows = vec![
        Row::text("cycles completed (200 seen)", format!("{}/{}", done, cycles)),
        Row::num("connect errors + non-200", (st.connect_errors + st.bad_status) as f64, 0),
        Row::num("cycles/s", cycles as f64 / (s1 + s2), 0),
        Row::num("time to first byte p50 (ms)", eng.sink.ttfb.quantile(0.5) as f64 / 1e6, 2),
        Row::num("time to first byte p99 (ms)", eng.sink.ttfb.quantile(0.99) as f64 / 1e6, 2),
        Row::num("worker CPU per cycle (us)", (cpu1 - cpu0) as f64 / 1e3 / cycles.max(1) as f64, 1),
        Row::num("RSS before (MB)", mb(m0.rss_kb), 1),
        Row::num(&format!("RSS after {first} cycles (MB)"), mb(m1.rss_kb), 1),
        Row::num("RSS after all cycles (MB)", mb(m2.rss_kb), 1),
        Row::num("RSS after - before (MB)", d / 1024.0, 2),
        Row::num("RSS after - after first 10% (MB)", (m2.rss_kb as f64 - m1.rss_kb as f64) / 1024.0, 2),
        Row::text("RSS back to baseline +-2 MB", if d.abs() <= 2048.0 { "yes" } else { "NO" }.into()),
        Row::text("worker fds before / after", format!("{fd0} / {fd2}")),
    ];
    note_client_errors(env, wl, t, &eng.sink.st);
    finish(env, wl, ngx, &mut rows);
    Ok(rows)
}

impl NginxOpts<'_> {
    fn clone_opts(&self) -> NginxOpts<'_> {
        NginxOpts {
            nginx_bin: self.nginx_bin,
            sse_module: self.sse_module,
            nchan_module: self.nchan_module,
            nofile: self.nofile,
            cpus: self.cpus.clone(),
        }
    }
}
