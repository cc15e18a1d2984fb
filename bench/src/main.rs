//! sse-bench: nginx-sse and nchan side by side.
//!
//! Starts its own redis-server and, per workload and target, a fresh nginx
//! (same binary, one config loading nginx-sse, one loading nchan), drives it
//! with thousands of SSE subscribers on one epoll loop and a paced publisher
//! thread, and prints a table. Workload fanout-cluster runs nginx-sse only,
//! on that redis-server and on Redis Clusters it starts, in a second table.
//! See bench/README.md.

/// println!/eprintln! that never panic (a closed pipe must not abort the
/// run before it has stopped its servers).
macro_rules! outln {
    ($($t:tt)*) => {{ use std::io::Write as _; let _ = writeln!(std::io::stdout(), $($t)*); }};
}
macro_rules! errln {
    ($($t:tt)*) => {{ use std::io::Write as _; let _ = writeln!(std::io::stderr(), $($t)*); }};
}
macro_rules! err {
    ($($t:tt)*) => {{ use std::io::Write as _; let _ = write!(std::io::stderr(), $($t)*); }};
}

mod acct;
mod client;
mod cluster;
mod http;
mod publish;
mod report;
mod server;
mod sys;
mod workloads;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use client::ClientInject;
use publish::Msg;
use report::{Row, Section};
use server::{NginxOpts, Redis, Target};
use workloads::{ClusterVariant, Env, Fanout};

static STOP: AtomicBool = AtomicBool::new(false);

/// Ctrl-C / SIGTERM was received: loops end and everything is torn down.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

const USAGE: &str = "\
sse-bench: nginx-sse vs nchan, side by side

usage: sse-bench [run] [options]        all workloads, both targets, a table
       sse-bench self-check [options]   inject loss/duplication/reordering and
                                        check the accounting reports exactly that
options:
  --quick                 small sizes (a smoke run, under a minute)
  --only W1,W2            workloads: idle,fanout-1,fanout-100,large,churn,fanout-100-pinned,
                          fanout-cluster (nginx-sse on one redis-server vs a 3-master
                          Redis Cluster; its own table, nchan not involved)
  --targets T1,T2         sse, nchan, nchan-nostore (default: sse,nchan; self-check: sse)
  --module PATH           nginx-sse module (default: target/release/libngx_http_sse_module.so)
  --nchan-module PATH     (default: /usr/lib/nginx/modules/ngx_nchan_module.so)
  --nginx PATH            nginx binary (default: /usr/sbin/nginx)
  --redis-server PATH     (default: redis-server from PATH)
  --churn-cycles N         cycles of the churn workload (default 100000, quick 5000)
  --fanout-rate N          msg/s of fanout-100 and its pinned variant (default 1000, quick 500)
  --cluster-rate N         msg/s of fanout-cluster (default 2000, quick 500)
  --retries N             run a workload again, up to N times, when other processes
                          used > 25% of a CPU during it (default 2; the least
                          disturbed run is kept)
  --quiet-wait S          before each run, wait up to S s for an idle machine (default 60)
  --out FILE              also write the report (markdown) to FILE
  --keep                  keep the temporary nginx prefixes and logs
";

struct Args {
    self_check: bool,
    quick: bool,
    only: Option<Vec<String>>,
    targets: Option<Vec<Target>>,
    module: String,
    nchan_module: String,
    nginx: String,
    redis: String,
    out: Option<PathBuf>,
    keep: bool,
    churn_cycles: Option<u64>,
    fanout_rate: Option<f64>,
    cluster_rate: Option<f64>,
    retries: u32,
    quiet_wait: u64,
}

/// More CPU than this (% of one CPU) used by other processes during a
/// measured phase makes the run suspect.
const OTHERS_LIMIT: f64 = 25.0;

/// Waits until the machine has been almost idle (< 10 % of all CPUs busy)
/// for a second, at most `max_s` seconds. Returns whether it was.
fn wait_quiet(max_s: u64) -> bool {
    let t0 = Instant::now();
    loop {
        let (a, w0) = (sys::machine_cpu(), sys::now_ns());
        std::thread::sleep(std::time::Duration::from_millis(1000));
        let (b, w1) = (sys::machine_cpu(), sys::now_ns());
        let busy = ((b.procs + b.irq) - (a.procs + a.irq)) as f64
            / (w1 - w0) as f64
            / sys::num_cpus() as f64;
        if busy < 0.10 {
            return true;
        }
        if t0.elapsed().as_secs() >= max_s || stopping() {
            return false;
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let mut a = Args {
        self_check: false,
        quick: false,
        only: None,
        targets: None,
        module: ws
            .join("target/release/libngx_http_sse_module.so")
            .to_string_lossy()
            .into_owned(),
        nchan_module: "/usr/lib/nginx/modules/ngx_nchan_module.so".into(),
        nginx: "/usr/sbin/nginx".into(),
        redis: "redis-server".into(),
        out: None,
        keep: false,
        churn_cycles: None,
        fanout_rate: None,
        cluster_rate: None,
        retries: 2,
        quiet_wait: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "run" => {}
            "self-check" | "--self-check" => a.self_check = true,
            "--quick" => a.quick = true,
            "--keep" => a.keep = true,
            "--retries" => {
                a.retries = val("--retries")?
                    .parse()
                    .map_err(|_| "--retries needs a number")?
            }
            "--quiet-wait" => {
                a.quiet_wait = val("--quiet-wait")?
                    .parse()
                    .map_err(|_| "--quiet-wait needs seconds")?
            }
            "--fanout-rate" => {
                a.fanout_rate = Some(
                    val("--fanout-rate")?
                        .parse()
                        .map_err(|_| "--fanout-rate needs a number")?,
                )
            }
            "--cluster-rate" => {
                a.cluster_rate = Some(
                    val("--cluster-rate")?
                        .parse()
                        .map_err(|_| "--cluster-rate needs a number")?,
                )
            }
            "--churn-cycles" => {
                a.churn_cycles = Some(
                    val("--churn-cycles")?
                        .parse()
                        .map_err(|_| "--churn-cycles needs a number")?,
                )
            }
            "--only" => a.only = Some(val("--only")?.split(',').map(str::to_string).collect()),
            "--targets" => {
                let v = val("--targets")?;
                let ts: Option<Vec<Target>> = v.split(',').map(Target::parse).collect();
                a.targets = Some(ts.ok_or(format!("unknown target in {v}"))?);
            }
            "--module" => a.module = val("--module")?,
            "--nchan-module" => a.nchan_module = val("--nchan-module")?,
            "--nginx" => a.nginx = val("--nginx")?,
            "--redis-server" => a.redis = val("--redis-server")?,
            "--out" => a.out = Some(val("--out")?.into()),
            "-h" | "--help" | "help" => return Err(String::new()),
            x => return Err(format!("unknown argument {x}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                errln!("sse-bench: {e}\n");
            }
            err!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as usize);
        libc::signal(libc::SIGTERM, on_signal as *const () as usize);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let (soft, hard) = sys::raise_nofile();
    let targets = args.targets.clone().unwrap_or(if args.self_check {
        vec![Target::Sse]
    } else {
        vec![Target::Sse, Target::Nchan]
    });
    // The modules the run loads: those of --targets if a workload other
    // than fanout-cluster runs; fanout-cluster runs nginx-sse whatever
    // --targets says.
    let only = |keep: &dyn Fn(&str) -> bool| {
        args.only
            .as_ref()
            .map_or(true, |o| o.iter().any(|w| keep(w)))
    };
    let wants_targets = args.self_check || only(&|w| w != CLUSTER_WORKLOAD);
    let wants_cluster = !args.self_check && only(&|w| w == CLUSTER_WORKLOAD);
    let mut modules = if wants_targets {
        targets.clone()
    } else {
        Vec::new()
    };
    if wants_cluster && !modules.contains(&Target::Sse) {
        modules.push(Target::Sse);
    }
    for t in &modules {
        let m = if *t == Target::Sse {
            &args.module
        } else {
            &args.nchan_module
        };
        if !Path::new(m).exists() {
            errln!(
                "sse-bench: module {m} not found (for {}); build it with `make build`",
                t.label()
            );
            return ExitCode::from(2);
        }
    }
    let tmp = std::env::temp_dir().join(format!("sse-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        errln!("sse-bench: {}: {e}", tmp.display());
        return ExitCode::from(2);
    }
    // nginx loads a private copy: a rebuild of the module during the run
    // cannot change what is measured.
    let module_copy = tmp.join("libngx_http_sse_module.so");
    if modules.contains(&Target::Sse) {
        if let Err(e) = std::fs::copy(&args.module, &module_copy) {
            errln!("sse-bench: copying {}: {e}", args.module);
            return ExitCode::from(2);
        }
    }
    let module_copy = module_copy.to_string_lossy().into_owned();
    let code = match Redis::start(&args.redis, &tmp) {
        Err(e) => {
            errln!("sse-bench: starting {}: {e}", args.redis);
            ExitCode::from(2)
        }
        Ok(redis) => {
            let run = (std::process::id() ^ (sys::now_ns() as u32)) % 1_000_000;
            let mut env = Env {
                opts: NginxOpts {
                    nginx_bin: &args.nginx,
                    sse_module: &module_copy,
                    nchan_module: &args.nchan_module,
                    // worker_rlimit_nofile 65536 where allowed; nginx runs as
                    // root here and cannot go above the hard limit.
                    nofile: hard.min(65536),
                    cpus: None,
                },
                redis: &redis,
                tmp: tmp.clone(),
                run,
                notes: Vec::new(),
                log_notes: Vec::new(),
            };
            errln!(
                "sse-bench: RLIMIT_NOFILE {soft}/{hard}, redis-server on 127.0.0.1:{}, work dir {}",
                redis.port,
                tmp.display()
            );
            if args.self_check {
                self_check(&mut env, &targets)
            } else {
                run_all(&mut env, &args, &targets, hard)
            }
        }
    };
    if args.keep {
        errln!("sse-bench: kept {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    code
}

struct Plan {
    idle: (u32, u32),
    f1: Fanout,
    f100: Fanout,
    large: Fanout,
    churn: (u64, usize, u32),
    cluster: Fanout,
}

const CLUSTER_WORKLOAD: &str = "fanout-cluster";

fn fanout(name: &str, channels: u32, subs: u32, rate: f64, secs: f64, size: usize) -> Fanout {
    Fanout {
        name: name.into(),
        channels,
        subs,
        rate,
        secs,
        size,
        pin: false,
        client_inject: ClientInject::default(),
        plan_inject: None,
    }
}

fn plan(quick: bool) -> Plan {
    if quick {
        Plan {
            idle: (1000, 10),
            f1: fanout("fanout-1", 1, 200, 100.0, 2.0, 128),
            f100: fanout("fanout-100", 100, 1000, 500.0, 2.0, 128),
            large: fanout("large", 5, 100, 20.0, 2.0, 16384),
            churn: (5000, 100, 100),
            cluster: fanout(CLUSTER_WORKLOAD, 30, 1000, 500.0, 2.0, 128),
        }
    } else {
        Plan {
            idle: (10_000, 100),
            f1: fanout("fanout-1", 1, 1000, 100.0, 10.0, 128),
            f100: fanout("fanout-100", 100, 10_000, 1000.0, 10.0, 128),
            large: fanout("large", 10, 1000, 50.0, 10.0, 16384),
            churn: (100_000, 500, 100),
            cluster: fanout(CLUSTER_WORKLOAD, 300, 10_000, 2000.0, 10.0, 128),
        }
    }
}

fn describe(f: &Fanout) -> String {
    format!(
        "{} channel(s) x {} subscribers each ({} streams), {} msg/s for {} s, {} B payloads{}",
        f.channels,
        f.subs / f.channels,
        f.subs,
        f.rate,
        f.secs,
        f.size,
        if f.pin {
            "; nginx and redis on CPU 0, sse-bench on CPU 1"
        } else {
            ""
        }
    )
}

fn run_all(env: &mut Env, args: &Args, targets: &[Target], hard: u64) -> ExitCode {
    let mut p = plan(args.quick);
    if let Some(n) = args.churn_cycles {
        p.churn.0 = n;
    }
    if let Some(r) = args.fanout_rate {
        p.f100.rate = r;
    }
    if let Some(r) = args.cluster_rate {
        p.cluster.rate = r;
    }
    let mut pinned = p.f100.clone();
    pinned.name = "fanout-100-pinned".into();
    pinned.pin = true;
    let all = [
        "idle",
        "fanout-1",
        "fanout-100",
        "large",
        "churn",
        "fanout-100-pinned",
        CLUSTER_WORKLOAD,
    ];
    let wanted: Vec<&str> = all
        .iter()
        .copied()
        .filter(|w| {
            args.only
                .as_ref()
                .map_or(true, |o| o.iter().any(|x| x == w))
        })
        .collect();
    if let Some(o) = &args.only {
        if let Some(bad) = o.iter().find(|x| !all.contains(&x.as_str())) {
            errln!("sse-bench: unknown workload {bad}");
            return ExitCode::from(2);
        }
    }
    // Workloads with a column per target (all but fanout-cluster).
    let side_by_side = wanted.iter().any(|w| *w != CLUSTER_WORKLOAD);
    let mut title: Vec<String> = Vec::new();
    if side_by_side {
        title.push(
            targets
                .iter()
                .map(|t| t.label())
                .collect::<Vec<_>>()
                .join(" vs "),
        );
    }
    if wanted.contains(&CLUSTER_WORKLOAD) {
        title.push("nginx-sse on one redis-server vs on a Redis Cluster".into());
    }
    let mut header = String::new();
    header.push_str(&format!(
        "sse-bench{} — {}\n\n",
        if args.quick { " --quick" } else { "" },
        title.join("; ")
    ));
    header.push_str(&format!(
        "- nginx: {} ({})\n",
        args.nginx,
        cmd_out(&args.nginx, &["-v"]).trim()
    ));
    header.push_str(&format!(
        "- nginx-sse module: {} ({})\n",
        args.module,
        module_provenance(&args.module),
    ));
    if side_by_side && targets.iter().any(|&t| t != Target::Sse) {
        header.push_str(&format!(
            "- nchan module: {} (Debian libnginx-mod-nchan {})\n",
            args.nchan_module,
            cmd_out("dpkg-query", &["-W", "-f=${Version}", "libnginx-mod-nchan"]).trim()
        ));
    }
    header.push_str(&format!(
        "- redis-server: {}\n",
        cmd_out(&args.redis, &["--version"]).trim()
    ));
    header.push_str(&format!(
        "- nginx configs: worker_processes 2, worker_connections 65536, worker_rlimit_nofile {}, access_log off; nchan: Redis via upstream (nchan_redis_pass), subscriber eventsource, first message newest, ping 30 s\n",
        hard.min(65536)
    ));
    header.push_str(&format!(
        "- {} CPUs, load average at start: {}\n",
        sys::num_cpus(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    ));
    header.push_str("\nworkloads:\n");
    let list_from = header.len();
    for w in &wanted {
        let d = match *w {
            "idle" => format!("{} idle streams over {} channels, no messages: memory per connection", p.idle.0, p.idle.1),
            "fanout-1" => describe(&p.f1),
            "fanout-100" => describe(&p.f100),
            "large" => describe(&p.large),
            "churn" => format!(
                "{} connect / first bytes / close cycles, {} at a time, over {} channels (client closes with RST)",
                p.churn.0, p.churn.1, p.churn.2
            ),
            CLUSTER_WORKLOAD => format!(
                "{}; nginx-sse on the run's redis-server (PUBLISH) vs a Redis Cluster of {} masters on loopback, no replicas (SPUBLISH to the channel's master; then plain PUBLISH there)",
                describe(&p.cluster),
                workloads::CLUSTER_MASTERS
            ),
            _ => describe(&pinned),
        };
        header.push_str(&format!("- {w}: {d}\n"));
    }
    err!("{}", &header[list_from..]);
    let t_all = Instant::now();
    let mut sections = Vec::new();
    let mut cluster_sections = Vec::new();
    for w in &wanted {
        let mut sec = Section {
            workload: w.to_string(),
            results: Vec::new(),
        };
        if *w == CLUSTER_WORKLOAD {
            for v in ClusterVariant::ALL {
                let who = format!("{}/{}", Target::Sse.label(), v.label());
                let mut run =
                    |env: &mut Env| workloads::fanout_cluster(env, v, &p.cluster, &args.redis);
                let Some(r) = run_kept(env, args, w, &who, t_all, &mut run) else {
                    break;
                };
                sec.results.push((v.label().to_string(), r));
            }
            cluster_sections.push(sec);
            continue;
        }
        for &t in targets {
            let mut run = |env: &mut Env| match *w {
                "idle" => workloads::idle(env, t, p.idle.0, p.idle.1),
                "fanout-1" => workloads::fanout(env, t, &p.f1).map(|r| r.0),
                "fanout-100" => workloads::fanout(env, t, &p.f100).map(|r| r.0),
                "large" => workloads::fanout(env, t, &p.large).map(|r| r.0),
                "churn" => workloads::churn(env, t, p.churn.0, p.churn.1, p.churn.2),
                _ => workloads::fanout(env, t, &pinned).map(|r| r.0),
            };
            let Some(r) = run_kept(env, args, w, t.label(), t_all, &mut run) else {
                break;
            };
            sec.results.push((t.label().to_string(), r));
        }
        sections.push(sec);
    }
    let mut out = header;
    out.push_str(&format!(
        "\ntotal time: {:.0} s\n\n",
        t_all.elapsed().as_secs_f64()
    ));
    if !sections.is_empty() {
        let cols: Vec<&str> = targets.iter().map(|t| t.label()).collect();
        out.push_str(&report::table(&cols, Some((0, 1)), &sections));
    }
    if !cluster_sections.is_empty() {
        if !sections.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "{CLUSTER_WORKLOAD}: nginx-sse only (nchan has no comparable Redis Cluster support), \
             the same load on one redis-server and on a Redis Cluster of {} masters; \
             redis CPU sums all redis-server processes of the column\n\n",
            workloads::CLUSTER_MASTERS
        ));
        let cols: Vec<&str> = ClusterVariant::ALL.iter().map(|v| v.label()).collect();
        out.push_str(&report::table(&cols, Some((1, 0)), &cluster_sections));
    }
    if !env.notes.is_empty() || !env.log_notes.is_empty() {
        out.push_str("\nnotes (error.log lines, client errors, anomalies):\n");
        for (n, wls) in &env.log_notes {
            out.push_str(&format!("- {n} [{}]\n", wls.join(", ")));
        }
        for n in &env.notes {
            out.push_str(&format!("- {n}\n"));
        }
    }
    outln!("{out}");
    if let Some(path) = &args.out {
        if let Err(e) = std::fs::write(path, &out) {
            errln!("sse-bench: writing {}: {e}", path.display());
        }
    }
    if stopping() {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs one column (`who`) of workload `w`. On this shared machine other
/// sessions' jobs come and go: it waits for a quiet moment, and runs again
/// (up to --retries times) if something else took more than a quarter of a
/// CPU meanwhile; the run with the least interference is kept, with its
/// notes. `None` if stopped before any run.
fn run_kept(
    env: &mut Env,
    args: &Args,
    w: &str,
    who: &str,
    t_all: Instant,
    run: &mut dyn FnMut(&mut Env) -> std::io::Result<Vec<Row>>,
) -> Option<Result<Vec<Row>, String>> {
    #[allow(clippy::type_complexity)]
    let mut best: Option<(
        f64,
        std::io::Result<Vec<Row>>,
        Vec<String>,
        Vec<(String, Vec<String>)>,
    )> = None;
    for attempt in 0..=args.retries {
        if stopping() {
            break;
        }
        let quiet = wait_quiet(args.quiet_wait);
        // Notes of this attempt are kept only if the attempt is.
        let (notes0, log_notes0) = (env.notes.len(), env.log_notes.clone());
        let t0 = Instant::now();
        err!(
            "[{:>6.1}s] {w} / {who}{} ...",
            t_all.elapsed().as_secs_f64(),
            if attempt > 0 {
                format!(" (attempt {})", attempt + 1)
            } else {
                String::new()
            }
        );
        if !quiet {
            err!(
                " (machine not quiet after {} s, running anyway)",
                args.quiet_wait
            );
        }
        let r = run(env);
        let others = r
            .as_ref()
            .ok()
            .and_then(|rows| rows.iter().find(|r| r.metric == workloads::OTHERS_METRIC))
            .and_then(|r| match r.val {
                report::Val::Num(v, _) => Some(v),
                _ => None,
            })
            .unwrap_or(0.0);
        errln!(
            " {:.1}s{}{}",
            t0.elapsed().as_secs_f64(),
            if r.is_err() { " FAILED" } else { "" },
            if others > OTHERS_LIMIT {
                format!(" (other processes used {others:.0}% of a CPU)")
            } else {
                String::new()
            }
        );
        let notes = env.notes.split_off(notes0);
        let log_notes = std::mem::replace(&mut env.log_notes, log_notes0);
        let better = match &best {
            None => true,
            Some((b, Err(_), _, _)) => r.is_ok() || others < *b,
            Some((b, Ok(_), _, _)) => r.is_ok() && others < *b,
        };
        if better {
            best = Some((others, r, notes, log_notes));
        }
        if best
            .as_ref()
            .is_some_and(|(o, r, _, _)| r.is_ok() && *o <= OTHERS_LIMIT)
        {
            break;
        }
    }
    let (others, r, notes, log_notes) = best?;
    env.notes.extend(notes);
    env.log_notes = log_notes;
    if others > OTHERS_LIMIT {
        env.notes.push(format!(
            "{w} / {who}: other processes used {others:.0}% of a CPU during the kept run (the least of {} attempts)",
            args.retries + 1
        ));
    }
    if let Err(e) = &r {
        env.notes.push(format!("{w} / {who}: FAILED: {e}"));
    }
    Some(r.map_err(|e| e.to_string()))
}

/// When the module file was built, and the workspace commit it sits in.
fn module_provenance(module: &str) -> String {
    let built = std::fs::metadata(module)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| {
            cmd_out(
                "date",
                &[
                    "-u",
                    "-d",
                    &format!("@{}", d.as_secs()),
                    "+%Y-%m-%d %H:%M:%S UTC",
                ],
            )
        })
        .unwrap_or_default();
    let dir = Path::new(module).parent().unwrap_or(Path::new("."));
    let head = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["log", "-1", "--format=%h %cI"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // Uncommitted changes to the module's sources are part of the build.
    let dirty = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain", "--", ":/src", ":/crates"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    let sha = cmd_out("sha256sum", &[module]);
    format!(
        "sha256 {}, file built {}; workspace HEAD {}{}",
        sha.get(..12).unwrap_or("?"),
        built.trim(),
        if head.is_empty() { "?" } else { &head },
        if dirty > 0 {
            format!(" plus uncommitted changes to {dirty} files of src/ and crates/")
        } else {
            String::new()
        }
    )
}

fn cmd_out(bin: &str, args: &[&str]) -> String {
    std::process::Command::new(bin)
        .args(args)
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_else(|e| format!("({e})"))
}

// ---- self-check ---------------------------------------------------------

const SC_CHANNELS: u32 = 10;
const SC_SUBS: u32 = 200;
const SC_DROP: (u32, u64) = (3, 10);
const SC_DOUBLE: (u32, u64) = (4, 5);

/// Publisher-side faults: skip channel 0's sequence 5, send channel 1's
/// sequence 7 twice, send channel 2's 11 before its 10.
fn sc_plan_inject(plan: &mut Vec<Msg>) {
    plan.retain(|m| !(m.chan == 0 && m.seq == 5));
    let pos = |p: &Vec<Msg>, c, s| p.iter().position(|m| m.chan == c && m.seq == s).unwrap();
    let i = pos(plan, 1, 7);
    plan.insert(i + 1, plan[i]);
    let (a, b) = (pos(plan, 2, 10), pos(plan, 2, 11));
    plan.swap(a, b);
}

/// What a perfect transport would make the accounting report, worked out
/// independently (hash sets over the plan) of acct::SubAcct.
fn sc_oracle(plan: &[Msg], subs: u32, channels: u32, inject: ClientInject) -> acct::Totals {
    let mut t = acct::Totals::default();
    for sub in 0..subs {
        let chan = sub % channels;
        let stream: Vec<u64> = plan
            .iter()
            .filter(|m| m.chan == chan)
            .map(|m| m.seq)
            .collect();
        let last = stream.iter().copied().max().unwrap_or(0);
        let mut seen = HashSet::new();
        let mut max = 0;
        for (k, &s) in stream.iter().enumerate() {
            let k = k as u64 + 1;
            if let Some((c, n)) = inject.drop_every {
                if c == chan && k % n == 0 {
                    continue;
                }
            }
            let times = if inject.double == Some((sub, k)) {
                2
            } else {
                1
            };
            for _ in 0..times {
                t.received += 1;
                if !seen.insert(s) {
                    t.duplicated += 1;
                } else if s < max {
                    t.out_of_order += 1;
                } else {
                    max = s;
                }
            }
        }
        t.expected += last;
        t.missing += (1..=last).filter(|s| !seen.contains(s)).count() as u64;
    }
    t
}

fn self_check(env: &mut Env, targets: &[Target]) -> ExitCode {
    let inject = ClientInject {
        drop_every: Some(SC_DROP),
        double: Some(SC_DOUBLE),
    };
    let f = Fanout {
        name: "self-check".into(),
        channels: SC_CHANNELS,
        subs: SC_SUBS,
        rate: 500.0,
        secs: 2.0,
        size: 128,
        pin: false,
        client_inject: inject,
        plan_inject: Some(sc_plan_inject),
    };
    let mut plan = publish::round_robin(f.channels, (f.rate * f.secs) as u64);
    sc_plan_inject(&mut plan);
    let want = sc_oracle(&plan, f.subs, f.channels, inject);
    let per = SC_SUBS / SC_CHANNELS;
    outln!(
        "self-check: {} channels x {per} subscribers, {} messages ({} per channel) at {} msg/s",
        f.channels,
        plan.len(),
        plan.len() as u32 / f.channels,
        f.rate
    );
    outln!("injected by the publisher: channel 0 skips s=5 (-> {per} missing), channel 1 sends s=7 twice (-> {per} duplicated), channel 2 sends s=11 before s=10 (-> {per} out of order)");
    outln!(
        "injected by the client: subscribers of channel {} drop every {}th event they receive (-> {} missing), subscriber {} counts its {}th event twice (-> 1 duplicated)",
        SC_DROP.0,
        SC_DROP.1,
        per as u64 * (plan.iter().filter(|m| m.chan == SC_DROP.0).count() as u64 / SC_DROP.1),
        SC_DOUBLE.0,
        SC_DOUBLE.1
    );
    let want_drops =
        per as u64 * (plan.iter().filter(|m| m.chan == SC_DROP.0).count() as u64 / SC_DROP.1);
    let mut ok = true;
    for &t in targets {
        let r = workloads::fanout(env, t, &f);
        let (rows, out) = match r {
            Ok(x) => x,
            Err(e) => {
                outln!("{}: FAILED to run: {e}", t.label());
                ok = false;
                continue;
            }
        };
        let got = out.totals;
        outln!("\n{}:", t.label());
        outln!("| counter | expected | reported | |");
        outln!("|---|---:|---:|---|");
        let mut line = |name: &str, e: u64, g: u64| {
            let good = e == g;
            ok &= good;
            outln!(
                "| {name} | {e} | {g} | {} |",
                if good { "ok" } else { "MISMATCH" }
            );
        };
        line("deliveries expected", want.expected, got.expected);
        line("received", want.received, got.received);
        line("missing", want.missing, got.missing);
        line("duplicated", want.duplicated, got.duplicated);
        line("out of order", want.out_of_order, got.out_of_order);
        line("misrouted", 0, got.misrouted);
        line(
            "client drops injected",
            want_drops,
            out.client.injected_drops,
        );
        line(
            "client double counts injected",
            1,
            out.client.injected_doubles,
        );
        line("streams closed by server", 0, out.client.server_closed);
        line("publish errors", 0, out.publisher.errors);
        let lat = rows
            .iter()
            .find(|r| r.metric == "latency p50 (ms)")
            .and_then(|r| match r.val {
                report::Val::Num(v, _) => Some(format!("{v:.2} ms")),
                _ => None,
            })
            .unwrap_or_default();
        outln!("(latency p50 {lat})");
    }
    for (n, _) in &env.log_notes {
        outln!("note: {n}");
    }
    for n in &env.notes {
        outln!("note: {n}");
    }
    outln!("\nself-check: {}", if ok { "PASS" } else { "FAIL" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_check_oracle_matches_the_documented_numbers() {
        let mut plan = publish::round_robin(SC_CHANNELS, 1000);
        sc_plan_inject(&mut plan);
        let t = sc_oracle(
            &plan,
            SC_SUBS,
            SC_CHANNELS,
            ClientInject {
                drop_every: Some(SC_DROP),
                double: Some(SC_DOUBLE),
            },
        );
        // 20 subscribers per channel, 100 sequences per channel.
        assert_eq!(t.expected, 20_000);
        assert_eq!(t.missing, 20 + 20 * 10);
        assert_eq!(t.duplicated, 20 + 1);
        assert_eq!(t.out_of_order, 20);
        assert_eq!(t.received, 20 * (99 + 101 + 100 + 90 + 6 * 100) + 1);
    }

    #[test]
    fn accounting_agrees_with_the_oracle_on_an_injected_stream() {
        // Feed SubAcct the oracle's per-subscriber streams directly.
        let mut plan = publish::round_robin(SC_CHANNELS, 1000);
        sc_plan_inject(&mut plan);
        let inject = ClientInject {
            drop_every: Some(SC_DROP),
            double: Some(SC_DOUBLE),
        };
        let mut subs: Vec<acct::SubAcct> = (0..SC_SUBS)
            .map(|s| acct::SubAcct::new(s % SC_CHANNELS))
            .collect();
        for (sub, a) in subs.iter_mut().enumerate() {
            let mut k = 0;
            let chan = a.chan;
            for m in plan.iter().filter(|m| m.chan == chan) {
                k += 1;
                if chan == SC_DROP.0 && k % SC_DROP.1 == 0 {
                    continue;
                }
                let times = if (sub as u32, k) == SC_DOUBLE { 2 } else { 1 };
                for _ in 0..times {
                    a.record(m.chan, m.seq);
                }
            }
        }
        let last = publish::last_seqs(&plan, SC_CHANNELS);
        assert_eq!(
            acct::totals(&subs, &last),
            sc_oracle(&plan, SC_SUBS, SC_CHANNELS, inject)
        );
    }
}
