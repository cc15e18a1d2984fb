//! The workloads: each starts a fresh nginx for one target (or, for
//! fanout-cluster, one Redis set-up), drives it, and returns its rows for
//! the report.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::acct::{self, Totals};
use crate::client::{ClientInject, Engine};
use crate::cluster::{self, RedisCluster};
use crate::publish::{self, Kind, Msg, PlanRun, PubStats, Publisher};
use crate::report::Row;
use crate::server::{Backend, LogSummary, Nginx, NginxOpts, Redis, Target};
use crate::sys::{self, Mem};

pub struct Env<'a> {
    pub opts: NginxOpts<'a>,
    pub redis: &'a Redis,
    pub tmp: PathBuf,
    pub run: u32,
    /// Observations for the report.
    pub notes: Vec<String>,
    /// error.log lines (warn and worse), without time and pid, with the
    /// workloads whose log had them.
    pub log_notes: Vec<(String, Vec<String>)>,
}

const MB: f64 = 1024.0 * 1024.0;

/// One column of a workload's table: a server, the Redis it reads, and how
/// messages are published to that Redis.
pub struct Column<'a> {
    pub target: Target,
    /// The column's header; also part of channel names and of the nginx
    /// prefix directory (no spaces).
    pub label: String,
    pub redis: Backend<'a>,
    /// nginx-sse: `PUBLISH` or `SPUBLISH` (on a cluster, each channel on
    /// the connection to the master serving its slot).
    pub command: &'static str,
}

impl<'a> Column<'a> {
    /// A target on the run's redis-server.
    pub fn standalone(env: &Env<'a>, t: Target) -> Column<'a> {
        Column {
            target: t,
            label: t.label().to_string(),
            redis: Backend::Standalone(env.redis),
            command: "PUBLISH",
        }
    }

    /// Who the notes are about: "nginx-sse", or "nginx-sse/cluster-SPUBLISH".
    fn who(&self) -> String {
        if self.label == self.target.label() {
            self.label.clone()
        } else {
            format!("{}/{}", self.target.label(), self.label)
        }
    }
}

pub const OTHERS_METRIC: &str = "CPU of other processes (% of one CPU)";

/// What else used the machine's CPUs during a measured phase: all busy
/// process time minus nginx workers, redis-server and this tool.
struct Meter {
    m0: sys::MachineCpu,
    wall0: u64,
    ours0: u64,
}

fn ours_cpu(ngx: &Nginx, redis: Backend) -> u64 {
    ngx.workers_cpu_ns() + redis.cpu_ns() + sys::self_cpu_ns()
}

impl Meter {
    fn start(ngx: &Nginx, redis: Backend) -> Meter {
        Meter {
            m0: sys::machine_cpu(),
            wall0: sys::now_ns(),
            ours0: ours_cpu(ngx, redis),
        }
    }

    /// (others, irq + softirq), in % of one CPU.
    fn others(&self, ngx: &Nginx, redis: Backend) -> (f64, f64) {
        let m1 = sys::machine_cpu();
        let wall = (sys::now_ns() - self.wall0) as f64;
        let ours = ours_cpu(ngx, redis) - self.ours0;
        let others = (m1.procs - self.m0.procs).saturating_sub(ours);
        (
            others as f64 / wall * 100.0,
            (m1.irq - self.m0.irq) as f64 / wall * 100.0,
        )
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / MB
}

fn chan_names(env: &Env, wl: &str, label: &str, n: u32) -> Vec<String> {
    (0..n)
        .map(|c| format!("r{}.{}.{}.c{}", env.run, wl, label, c))
        .collect()
}

fn prefix_of(env: &Env, wl: &str, label: &str) -> PathBuf {
    env.tmp.join(format!("{wl}-{label}"))
}

fn start_nginx(
    env: &mut Env,
    wl: &str,
    col: &Column,
    cpus: Option<Vec<usize>>,
) -> io::Result<Nginx> {
    if let Backend::Standalone(r) = col.redis {
        // A cluster is fresh for each run.
        let _ = publish::redis_cmd(r.port, &["FLUSHALL"]);
    }
    let prefix = prefix_of(env, wl, &col.label);
    let opts = NginxOpts {
        cpus,
        ..env.opts.clone_opts()
    };
    let n = Nginx::start(col.target, &opts, &prefix, col.redis)?;
    // Workers set up their connection tables and Redis connections after
    // the port is open: wait until their memory stops moving.
    let t0 = sys::now_ns();
    let mut prev = n.mem().rss_kb;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = n.mem().rss_kb;
        if now.abs_diff(prev) < 64 || sys::now_ns() - t0 > 5_000_000_000 {
            break;
        }
        prev = now;
    }
    Ok(n)
}

fn finish(env: &mut Env, wl: &str, col: &Column, ngx: Nginx, rows: &mut Vec<Row>) {
    let who = col.who();
    let workers_before = ngx.workers();
    let log: LogSummary = ngx.stop();
    rows.push(Row::num(
        "error.log emerg/alert/crit/error lines",
        log.serious as f64,
        0,
    ));
    rows.push(Row::num("error.log warn lines", log.warn as f64, 0));
    let prefix = prefix_of(env, wl, &col.label).display().to_string();
    for line in log.samples {
        // "2026/01/01 00:00:00 [warn] 123#123: msg" -> "[warn] msg"
        let msg = match (
            line.find(" ["),
            line.find("]: ").or_else(|| line.find(": ")),
        ) {
            (Some(a), _) => {
                let rest = &line[a + 1..];
                let level_end = rest.find(']').map(|i| i + 1).unwrap_or(0);
                let body = rest[level_end..]
                    .split_once(": ")
                    .map_or(&rest[level_end..], |(_, b)| b);
                format!("{} {}", &rest[..level_end], body)
            }
            _ => line.clone(),
        };
        let msg = msg.replace(&prefix, "$PREFIX");
        // Printable and short: nchan can log binary junk.
        let mut msg: String = msg
            .chars()
            .map(|c| {
                if c.is_control() || c == '\u{fffd}' {
                    '.'
                } else {
                    c
                }
            })
            .collect();
        if msg.chars().count() > 200 {
            msg = msg.chars().take(200).collect::<String>() + "...";
        }
        let key = format!("{} error.log: {msg}", col.target.label());
        let place = if who == col.label {
            wl.to_string()
        } else {
            format!("{wl}/{}", col.label)
        };
        match env.log_notes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, wls)) => wls.push(place),
            None => env.log_notes.push((key, vec![place])),
        }
    }
    if workers_before.len() != 2 {
        env.notes.push(format!(
            "{wl} / {who}: {} workers at the end (expected 2)",
            workers_before.len()
        ));
    }
}

/// nginx-sse: Redis (on a cluster, a connection per master and each channel
/// on its master's); nchan: `conns` keep-alive connections to its `/pub`.
fn publisher_for(
    col: &Column,
    names: &[String],
    ngx: &Nginx,
    conns: usize,
) -> io::Result<Publisher> {
    match col.target {
        Target::Sse => {
            let route = match col.redis {
                Backend::Standalone(_) => Vec::new(),
                Backend::Cluster(c) => cluster::route(names, &c.ranges),
            };
            Publisher::connect(
                Kind::Redis {
                    command: col.command,
                    route,
                },
                &col.redis.ports(),
            )
        }
        _ => Publisher::connect(
            Kind::Http {
                path_prefix: "/pub?id=".into(),
            },
            &vec![ngx.port; conns.max(1)],
        ),
    }
}

/// Workload "idle": connect, measure memory, disconnect, measure again.
pub fn idle(env: &mut Env, t: Target, subs: u32, channels: u32) -> io::Result<Vec<Row>> {
    let wl = "idle";
    let col = Column::standalone(env, t);
    let ngx = start_nginx(env, wl, &col, None)?;
    let names = chan_names(env, wl, &col.label, channels);
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
        Row::num(
            "connect errors + non-200",
            (st.connect_errors + st.bad_status) as f64,
            0,
        ),
        Row::num("time to open all (s)", secs, 2),
        Row::num(
            "worker CPU to open them, per stream (us)",
            cpu_connect as f64 / 1e3 / n,
            1,
        ),
        Row::num("RSS before (MB)", mb(m0.rss_kb), 1),
        Row::num("RSS with streams open (MB)", mb(m1.rss_kb), 1),
        Row::num("RSS after disconnect (MB)", mb(m2.rss_kb), 1),
        Row::num(
            "RSS per stream (KB)",
            (m1.rss_kb as f64 - m0.rss_kb as f64) * 1024.0 / n / 1000.0,
            2,
        ),
        Row::num(
            "PSS per stream (KB)",
            (m1.pss_kb as f64 - m0.pss_kb as f64) * 1024.0 / n / 1000.0,
            2,
        ),
        Row::text(
            "worker fds before / open / after",
            format!("{fd0} / {fd1} / {fd2}"),
        ),
    ];
    note_client_errors(env, wl, &col, &eng.sink.st);
    finish(env, wl, &col, ngx, &mut rows);
    Ok(rows)
}

fn poll_for(eng: &mut Engine, ms: u64) {
    let t0 = sys::now_ns();
    while sys::now_ns() - t0 < ms * 1_000_000 && !crate::stopping() {
        eng.poll(10);
    }
}

fn note_client_errors(env: &mut Env, wl: &str, col: &Column, st: &crate::client::Stats) {
    for e in &st.errors {
        env.notes.push(format!("{wl} / {} client: {e}", col.who()));
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
    /// CPU of each redis-server process during it, ns.
    pub redis_cpu_ns: Vec<u64>,
}

fn mem_rows(rows: &mut Vec<Row>, label: &str, m: Mem) {
    rows.push(Row::num(&format!("RSS {label} (MB)"), mb(m.rss_kb), 1));
}

/// Workloads fanout-1, fanout-100, large and the pinned variant.
pub fn fanout(env: &mut Env, t: Target, f: &Fanout) -> io::Result<(Vec<Row>, FanoutOut)> {
    let wl = f.name.as_str();
    let col = Column::standalone(env, t);
    let ncpu = sys::num_cpus();
    let pin = f.pin && ncpu >= 2;
    let ngx = start_nginx(env, wl, &col, pin.then(|| vec![0]))?;
    let r = fanout_on(env, &col, f, &ngx, pin);
    if pin {
        let _ = sys::set_affinity(0, None);
        for pid in col.redis.pids() {
            let _ = sys::set_process_affinity(pid, None);
        }
    }
    let (mut rows, out) = r?;
    finish(env, wl, &col, ngx, &mut rows);
    Ok((rows, out))
}

fn fanout_on(
    env: &mut Env,
    col: &Column,
    f: &Fanout,
    ngx: &Nginx,
    pin: bool,
) -> io::Result<(Vec<Row>, FanoutOut)> {
    let wl = f.name.as_str();
    let who = col.who();
    if pin {
        for pid in col.redis.pids() {
            sys::set_process_affinity(pid, Some(&[0]))?;
        }
        // This thread, and the publisher thread it starts, on CPU 1.
        sys::set_affinity(0, Some(&[1]))?;
    }
    let names = chan_names(env, wl, &col.label, f.channels);
    let mut eng = Engine::new(ngx.port, env.run, col.target.sub_prefix(), names.clone())?;
    eng.sink.inject = f.client_inject;
    let m0 = ngx.mem();
    let chans: Vec<u32> = (0..f.subs).map(|i| i % f.channels).collect();
    let connect_secs = eng.connect_subs(&chans, 256, 120_000);
    let m1 = ngx.mem();

    // Warm-up: sequence-0 messages on every channel until each subscriber
    // has seen one, so the measured phase starts with every path live.
    let mut p = publisher_for(col, &names, ngx, 8)?;
    let t_warm = sys::now_ns();
    while !eng.all_warm() && sys::now_ns() - t_warm < 20_000_000_000 && !crate::stopping() {
        for c in eng.cold_channels() {
            while !p.can_send(c) {
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
        env.notes.push(format!(
            "{wl} / {}: {cold} subscribers never saw a warm-up message",
            who
        ));
    }
    let t_settle = sys::now_ns();
    while (p.outstanding() > 0 || sys::now_ns() - t_settle < 200_000_000)
        && sys::now_ns() - t_settle < 5_000_000_000
    {
        p.io(1_000_000);
        eng.poll(5);
    }
    let warm_pub = std::mem::take(&mut p.st);
    if warm_pub.errors > 0 {
        env.notes.push(format!(
            "{wl} / {}: {} publish errors during warm-up: {:?}",
            who, warm_pub.errors, warm_pub.notes
        ));
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
    eng.loop_stats = Default::default();
    let rcpu0 = col.redis.cpu_ns_each();
    let (cpu0, tcpu0) = (ngx.workers_cpu_ns(), sys::self_cpu_ns());
    let (mcpu0, wall0) = (sys::machine_cpu(), sys::now_ns());
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
    if eng.sink.timeline.is_some() {
        errln!("  loop {:?}", eng.loop_stats);
    }
    if let Some(tl) = &eng.sink.timeline {
        for (sec, h) in tl {
            errln!(
                "  timeline {wl}/{}: send second {sec}: {} deliveries, latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
                who,
                h.count,
                h.quantile(0.5) as f64 / 1e6,
                h.quantile(0.99) as f64 / 1e6,
                h.max as f64 / 1e6
            );
        }
    }
    let rcpu: Vec<u64> = col
        .redis
        .cpu_ns_each()
        .iter()
        .zip(&rcpu0)
        .map(|(b, a)| b.saturating_sub(*a))
        .collect();
    let rcpu_all: u64 = rcpu.iter().sum();
    let (cpu1, tcpu1) = (ngx.workers_cpu_ns(), sys::self_cpu_ns());
    let (mcpu1, wall1) = (sys::machine_cpu(), sys::now_ns());
    let ours = (cpu1 - cpu0) + rcpu_all + (tcpu1 - tcpu0);
    let others = (mcpu1.procs - mcpu0.procs).saturating_sub(ours);
    let irq = mcpu1.irq - mcpu0.irq;
    let busy = (mcpu1.procs - mcpu0.procs) + irq;
    let wall = (wall1 - wall0) as f64;
    let workers1 = ngx.workers();
    if workers0 != workers1 {
        env.notes.push(format!(
            "{wl} / {}: worker pids changed during the run: {workers0:?} -> {workers1:?}",
            who
        ));
    }
    let m2 = ngx.mem();
    let tot = acct::totals(&eng.sink.subs, &last);
    if tot.missing > 0 {
        let pairs = acct::missing_pairs(&eng.sink.subs, &last, 12);
        let list: Vec<String> = pairs
            .iter()
            .map(|(c, q, n)| format!("c{c} s{q} x{n}"))
            .collect();
        env.notes.push(format!(
            "{wl} / {}: missing (channel, sequence, subscribers): {}",
            who,
            list.join(", ")
        ));
    }
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
        Row::num(
            "publish errors / unanswered",
            (pub_st.errors + plan_run.unanswered) as f64,
            0,
        ),
        Row::num("publish lag max (ms)", ms(plan_run.lag_max_ns), 1),
        Row::num(
            "publisher connections closed by server",
            pub_st.reconnects as f64,
            0,
        ),
        Row::num("deliveries expected", tot.expected as f64, 0),
        Row::num("deliveries received", tot.received as f64, 0),
        Row::num("missing", tot.missing as f64, 0),
        Row::num("duplicated", tot.duplicated as f64, 0),
        Row::num("out of order", tot.out_of_order as f64, 0),
        Row::num(
            "misrouted / foreign",
            (tot.misrouted + st.foreign) as f64,
            0,
        ),
        Row::num("streams closed by server", st.server_closed as f64, 0),
        Row::num("deliveries/s", tot.received as f64 / span.max(1e-9), 0),
        Row::num("latency p50 (ms)", ms(lat.quantile(0.5)), 2),
        Row::num("latency p99 (ms)", ms(lat.quantile(0.99)), 2),
        Row::num("latency p99.9 (ms)", ms(lat.quantile(0.999)), 2),
        Row::num("latency max (ms)", ms(lat.max), 2),
        Row::num("worker CPU (ms)", ms(cpu1 - cpu0), 0),
        Row::num(
            "worker CPU per delivery (us)",
            (cpu1 - cpu0) as f64 / 1e3 / recv,
            2,
        ),
        Row::num("redis CPU (ms)", ms(rcpu_all), 0),
        Row::num(
            "redis CPU per message (us)",
            rcpu_all as f64 / 1e3 / plan_run.sent.max(1) as f64,
            2,
        ),
        Row::num(
            "tool CPU per delivery (us)",
            (tcpu1 - tcpu0) as f64 / 1e3 / recv,
            2,
        ),
        Row::num(
            "machine busy, all CPUs (%)",
            busy as f64 / wall / sys::num_cpus() as f64 * 100.0,
            0,
        ),
        Row::num(OTHERS_METRIC, others as f64 / wall * 100.0, 0),
        Row::num(
            "irq + softirq CPU (% of one CPU)",
            irq as f64 / wall * 100.0,
            0,
        ),
    ];
    mem_rows(&mut rows, "before", m0);
    mem_rows(&mut rows, "streams open", m1);
    mem_rows(&mut rows, "after publish", m2);
    mem_rows(&mut rows, "after disconnect", m3);
    if still_open as u64 != st.connected - st.server_closed {
        env.notes.push(format!(
            "{wl} / {}: {still_open} streams open at the end",
            who
        ));
    }
    for n in &pub_st.notes {
        env.notes.push(format!("{wl} / {} publisher: {n}", who));
    }
    if let Some((s, c)) = pub_st
        .statuses
        .iter()
        .find(|(s, _)| !(200..300).contains(*s))
    {
        env.notes
            .push(format!("{wl} / {}: publisher got HTTP {s} x{c}", who));
    }
    note_client_errors(env, wl, col, &st);
    Ok((
        rows,
        FanoutOut {
            totals: tot,
            client: st,
            publisher: pub_st,
            redis_cpu_ns: rcpu,
        },
    ))
}

/// The columns of workload fanout-cluster: nginx-sse only (nchan has no
/// comparable Redis Cluster support), with the same fan-out load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterVariant {
    /// The run's redis-server, `PUBLISH`.
    Standalone,
    /// A Redis Cluster, `SPUBLISH` on the master serving the channel's slot.
    Sharded,
    /// The same cluster, plain `PUBLISH` on that master: the cluster bus
    /// copies every message to every node.
    Broadcast,
}

impl ClusterVariant {
    pub const ALL: [ClusterVariant; 3] = [
        ClusterVariant::Standalone,
        ClusterVariant::Sharded,
        ClusterVariant::Broadcast,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ClusterVariant::Standalone => "standalone",
            ClusterVariant::Sharded => "cluster-SPUBLISH",
            ClusterVariant::Broadcast => "cluster-PUBLISH",
        }
    }

    fn command(self) -> &'static str {
        match self {
            ClusterVariant::Sharded => "SPUBLISH",
            _ => "PUBLISH",
        }
    }
}

/// Masters of the fanout-cluster workload's Redis Cluster.
pub const CLUSTER_MASTERS: usize = 3;

/// `extra` goes right after the row named `after` (at the end if none is).
fn insert_after(rows: &mut Vec<Row>, after: &str, extra: Vec<Row>) {
    let at = rows
        .iter()
        .position(|r| r.metric == after)
        .map_or(rows.len(), |i| i + 1);
    rows.splice(at..at, extra);
}

/// Workload fanout-cluster, one column: the fan-out of `f` through nginx-sse
/// on the run's redis-server, or on a fresh Redis Cluster of
/// [`CLUSTER_MASTERS`] masters started for this run (and stopped after it).
pub fn fanout_cluster(
    env: &mut Env,
    v: ClusterVariant,
    f: &Fanout,
    redis_bin: &str,
) -> io::Result<Vec<Row>> {
    let wl = f.name.as_str();
    let cluster = match v {
        ClusterVariant::Standalone => None,
        _ => {
            let dir = env.tmp.join(format!("{wl}-{}-redis", v.label()));
            let _ = std::fs::remove_dir_all(&dir);
            Some(RedisCluster::start(redis_bin, &dir, CLUSTER_MASTERS)?)
        }
    };
    let col = Column {
        target: Target::Sse,
        label: v.label().to_string(),
        redis: cluster
            .as_ref()
            .map_or(Backend::Standalone(env.redis), Backend::Cluster),
        command: v.command(),
    };
    let names = chan_names(env, wl, &col.label, f.channels);
    let per_master = match &cluster {
        Some(c) => {
            c.check_slots(&names)?;
            cluster::per_master(&cluster::route(&names, &c.ranges), c.nodes.len())
        }
        None => vec![names.len()],
    };
    let ngx = start_nginx(env, wl, &col, None)?;
    // What the redis-servers use with nginx connected and nothing to do.
    let (idle0, w0) = (col.redis.cpu_ns(), sys::now_ns());
    std::thread::sleep(Duration::from_secs(2));
    let idle_ns_per_s =
        col.redis.cpu_ns().saturating_sub(idle0) as f64 / ((sys::now_ns() - w0) as f64 / 1e9);
    let (mut rows, out) = fanout_on(env, &col, f, &ngx, false)?;
    let each: Vec<String> = out
        .redis_cpu_ns
        .iter()
        .map(|ns| format!("{:.0}", *ns as f64 / 1e6))
        .collect();
    let spread: Vec<String> = per_master.iter().map(usize::to_string).collect();
    insert_after(
        &mut rows,
        "redis CPU per message (us)",
        vec![
            Row::num(
                "redis CPU idle, nginx connected (ms/s)",
                idle_ns_per_s / 1e6,
                1,
            ),
            Row::num("redis-server processes", out.redis_cpu_ns.len() as f64, 0),
            Row::text("redis CPU per process (ms)", each.join(" / ")),
            Row::text("channels per redis-server", spread.join(" / ")),
        ],
    );
    finish(env, wl, &col, ngx, &mut rows);
    drop(cluster);
    Ok(rows)
}

/// Workload "churn": many short connect / first bytes / close cycles. A
/// warm-up of 2 x `concurrency` cycles first, so the baseline includes what
/// the allocators keep after the first connections.
pub fn churn(
    env: &mut Env,
    t: Target,
    cycles: u64,
    concurrency: usize,
    channels: u32,
) -> io::Result<Vec<Row>> {
    let wl = "churn";
    let col = Column::standalone(env, t);
    let ngx = start_nginx(env, wl, &col, None)?;
    let names = chan_names(env, wl, &col.label, channels);
    let mut eng = Engine::new(ngx.port, env.run, t.sub_prefix(), names)?;
    let m_fresh = ngx.mem();
    let warm = 2 * concurrency as u64;
    eng.churn(warm, concurrency, channels, 60_000);
    let warm_ok = eng.sink.st.connected;
    eng.sink.st = Default::default();
    eng.sink.ttfb = Default::default();
    std::thread::sleep(Duration::from_millis(1000));
    let (m0, fd0) = (ngx.mem(), ngx.workers_fds());
    let cpu0 = ngx.workers_cpu_ns();
    let (drops0, synr0) = (sys::tcp_ext("ListenDrops"), sys::tcp_ext("TCPSynRetrans"));
    let meter = Meter::start(&ngx, col.redis);
    let half = cycles / 2;
    let s1 = eng.churn(half, concurrency, channels, 600_000);
    std::thread::sleep(Duration::from_millis(500));
    let m1 = ngx.mem();
    let s2 = eng.churn(cycles - half, concurrency, channels, 600_000);
    let cpu1 = ngx.workers_cpu_ns();
    let (drops1, synr1) = (sys::tcp_ext("ListenDrops"), sys::tcp_ext("TCPSynRetrans"));
    let (others, irq) = meter.others(&ngx, col.redis);
    std::thread::sleep(Duration::from_millis(1000));
    let (m2, fd2) = (ngx.mem(), ngx.workers_fds());
    let st = &eng.sink.st;
    let d = m2.rss_kb as f64 - m0.rss_kb as f64;
    let mut rows = vec![
        Row::text(
            "cycles completed (200 seen)",
            format!("{}/{}", st.connected, cycles),
        ),
        Row::num(
            "connect errors + non-200",
            (st.connect_errors + st.bad_status) as f64,
            0,
        ),
        Row::num("cycles/s", cycles as f64 / (s1 + s2), 0),
        Row::num(OTHERS_METRIC, others, 0),
        Row::num("irq + softirq CPU (% of one CPU)", irq, 0),
        Row::num(
            "time to first byte p50 (ms)",
            eng.sink.ttfb.quantile(0.5) as f64 / 1e6,
            2,
        ),
        Row::num(
            "time to first byte p99 (ms)",
            eng.sink.ttfb.quantile(0.99) as f64 / 1e6,
            2,
        ),
        Row::num(
            "time to first byte max (ms)",
            eng.sink.ttfb.max as f64 / 1e6,
            2,
        ),
        Row::num(
            "kernel listen drops (machine-wide)",
            (drops1 - drops0) as f64,
            0,
        ),
        Row::num(
            "TCP SYN retransmits (machine-wide)",
            (synr1 - synr0) as f64,
            0,
        ),
        Row::num(
            "worker CPU per cycle (us)",
            (cpu1 - cpu0) as f64 / 1e3 / cycles.max(1) as f64,
            1,
        ),
        Row::num("RSS fresh (MB)", mb(m_fresh.rss_kb), 1),
        Row::num(
            &format!("RSS after {warm} warm-up cycles = baseline (MB)"),
            mb(m0.rss_kb),
            1,
        ),
        Row::num(&format!("RSS after {half} cycles (MB)"), mb(m1.rss_kb), 1),
        Row::num(&format!("RSS after {cycles} cycles (MB)"), mb(m2.rss_kb), 1),
        Row::num("RSS after - baseline (MB)", d / 1024.0, 2),
        Row::text(
            "RSS back to baseline +-2 MB",
            if d.abs() <= 2048.0 { "yes" } else { "NO" }.into(),
        ),
        Row::num(
            "RSS after - fresh (MB)",
            (m2.rss_kb as f64 - m_fresh.rss_kb as f64) / 1024.0,
            2,
        ),
        Row::text("worker fds baseline / after", format!("{fd0} / {fd2}")),
    ];
    if warm_ok != warm {
        env.notes.push(format!(
            "{wl} / {}: only {warm_ok}/{warm} warm-up cycles saw a 200",
            t.label()
        ));
    }
    note_client_errors(env, wl, &col, &eng.sink.st);
    finish(env, wl, &col, ngx, &mut rows);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_inserted_after_their_neighbour() {
        let names = |rows: &[Row]| rows.iter().map(|r| r.metric.clone()).collect::<Vec<_>>();
        let mut rows = vec![Row::num("a", 1.0, 0), Row::num("c", 3.0, 0)];
        insert_after(&mut rows, "a", vec![Row::num("b", 2.0, 0)]);
        assert_eq!(names(&rows), ["a", "b", "c"]);
        insert_after(&mut rows, "zz", vec![Row::num("d", 4.0, 0)]);
        assert_eq!(names(&rows), ["a", "b", "c", "d"]);
    }

    #[test]
    fn cluster_columns() {
        let labels: Vec<&str> = ClusterVariant::ALL.iter().map(|v| v.label()).collect();
        assert_eq!(
            labels,
            ["standalone", "cluster-SPUBLISH", "cluster-PUBLISH"]
        );
        // Labels go into channel names and directory names.
        assert!(labels
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')));
        assert_eq!(ClusterVariant::Sharded.command(), "SPUBLISH");
        assert_eq!(ClusterVariant::Broadcast.command(), "PUBLISH");
    }
}
