//! The servers under test: a private redis-server and nginx instances in
//! temporary prefixes, and what /proc says about them.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::RedisCluster;
use crate::publish::redis_cmd;
use crate::sys::{self, Mem};

/// A loopback port nobody listens on right now.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> io::Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("timed out waiting for {what}"),
    ))
}

pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start(bin: &str, dir: &Path) -> io::Result<Redis> {
        Redis::start_with(bin, dir, &[])
    }

    /// A redis-server with `extra` arguments (cluster mode), its files in `dir`.
    pub fn start_with(bin: &str, dir: &Path, extra: &[&str]) -> io::Result<Redis> {
        let port = free_port()?;
        let mut cmd = Command::new(bin);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args([
                "--daemonize",
                "no",
                "--logfile",
                &dir.join("redis.log").to_string_lossy(),
            ])
            .args(["--dir", &dir.to_string_lossy()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let r = Redis { child, port };
        wait_for("redis-server", Duration::from_secs(10), || {
            redis_cmd(port, &["PING"]).is_ok()
        })?;
        Ok(r)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        sys::kill(self.pid(), libc::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Redis an nginx reads: the run's redis-server, or a Redis Cluster.
#[derive(Clone, Copy)]
pub enum Backend<'a> {
    Standalone(&'a Redis),
    Cluster(&'a RedisCluster),
}

impl Backend<'_> {
    /// Client ports: the server, or every master.
    pub fn ports(&self) -> Vec<u16> {
        match self {
            Backend::Standalone(r) => vec![r.port],
            Backend::Cluster(c) => c.ports(),
        }
    }

    pub fn pids(&self) -> Vec<i32> {
        match self {
            Backend::Standalone(r) => vec![r.pid()],
            Backend::Cluster(c) => c.nodes.iter().map(Redis::pid).collect(),
        }
    }

    /// utime + stime of each redis-server process, ns.
    pub fn cpu_ns_each(&self) -> Vec<u64> {
        self.pids()
            .into_iter()
            .map(|p| sys::proc_stat(p).map(|s| s.cpu_ns).unwrap_or(0))
            .collect()
    }

    /// utime + stime of all its redis-server processes, ns.
    pub fn cpu_ns(&self) -> u64 {
        self.cpu_ns_each().iter().sum()
    }

    /// What nginx-sse's `sse_redis_url` says.
    pub fn url(&self) -> String {
        match self {
            Backend::Standalone(r) => format!("redis://127.0.0.1:{}", r.port),
            Backend::Cluster(c) => c.url(),
        }
    }

    fn clients(&self) -> u64 {
        self.ports().into_iter().map(redis_clients).sum()
    }
}

/// What an nginx instance serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Sse,
    /// nchan with Redis, in nchan's default `distributed` storage mode.
    Nchan,
    /// nchan with `nchan_redis_storage_mode nostore` (pub/sub only).
    NchanNostore,
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "sse" | "nginx-sse" => Some(Target::Sse),
            "nchan" => Some(Target::Nchan),
            "nchan-nostore" => Some(Target::NchanNostore),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Target::Sse => "nginx-sse",
            Target::Nchan => "nchan",
            Target::NchanNostore => "nchan-nostore",
        }
    }

    /// The subscriber path, to which the channel name is appended.
    pub fn sub_prefix(self) -> &'static str {
        match self {
            Target::Sse => "/sub?channels=",
            _ => "/sub?id=",
        }
    }
}

pub struct NginxOpts<'a> {
    pub nginx_bin: &'a str,
    pub sse_module: &'a str,
    pub nchan_module: &'a str,
    pub nofile: u64,
    /// Pin master and workers to these CPUs.
    pub cpus: Option<Vec<usize>>,
}

/// `redis_url` is nginx-sse's `sse_redis_url`; nchan gets `redis_port`.
pub fn config(
    t: Target,
    o: &NginxOpts,
    prefix: &Path,
    port: u16,
    redis_url: &str,
    redis_port: u16,
) -> String {
    let p = prefix.display();
    let common_head = format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\n\
         worker_rlimit_nofile {nofile};\nerror_log {p}/error.log warn;\npid {p}/nginx.pid;\n\
         events {{ worker_connections 65536; }}\n",
        nofile = o.nofile
    );
    let http_head = format!(
        "    access_log off;\n    client_body_temp_path {p}/client_body;\n    proxy_temp_path {p}/proxy;\n\
         \x20   fastcgi_temp_path {p}/fastcgi;\n    uwsgi_temp_path {p}/uwsgi;\n    scgi_temp_path {p}/scgi;\n\
         \x20   default_type application/octet-stream;\n"
    );
    match t {
        Target::Sse => format!(
            "load_module {module};\n{common_head}\nhttp {{\n{http_head}\n    sse_redis_url {redis_url};\n\n    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n        keepalive_requests 1000000;\n        location = /sub {{\n            sse_channel $arg_channels;\n            sse_heartbeat 30s;\n            sse_max_backlog 4m;\n        }}\n    }}\n}}\n",
            module = o.sse_module
        ),
        Target::Nchan | Target::NchanNostore => {
            let mode = if t == Target::NchanNostore { "        nchan_redis_storage_mode nostore;\n" } else { "" };
            format!(
                "load_module {module};\n{common_head}\nhttp {{\n{http_head}\n    upstream bench_redis {{\n        nchan_redis_server redis://127.0.0.1:{redis_port};\n{mode}    }}\n\n    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n        keepalive_requests 1000000;\n        location = /pub {{\n            nchan_publisher;\n            nchan_channel_id $arg_id;\n            nchan_channel_group bench;\n            nchan_redis_pass bench_redis;\n        }}\n        location = /sub {{\n            nchan_subscriber eventsource;\n            nchan_channel_id $arg_id;\n            nchan_channel_group bench;\n            nchan_redis_pass bench_redis;\n            nchan_subscriber_first_message newest;\n            nchan_eventsource_ping_interval 30;\n        }}\n    }}\n}}\n",
                module = o.nchan_module
            )
        }
    }
}

pub struct Nginx {
    child: Child,
    pub port: u16,
    pub prefix: PathBuf,
    pub master: i32,
}

impl Nginx {
    pub fn start(t: Target, o: &NginxOpts, prefix: &Path, redis: Backend) -> io::Result<Nginx> {
        if t != Target::Sse && matches!(redis, Backend::Cluster(_)) {
            return Err(io::Error::other(
                "only nginx-sse is benchmarked on a Redis Cluster",
            ));
        }
        let _ = fs::remove_dir_all(prefix);
        fs::create_dir_all(prefix)?;
        let clients0 = redis.clients();
        let port = free_port()?;
        let conf = prefix.join("nginx.conf");
        let redis_port = redis.ports()[0];
        fs::write(&conf, config(t, o, prefix, port, &redis.url(), redis_port))?;
        let mut cmd = Command::new(o.nginx_bin);
        cmd.arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(prefix.join("error.log"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(prefix.join("stderr.log"))?);
        let cpus = o.cpus.clone();
        unsafe {
            cmd.pre_exec(move || {
                // If sse-bench dies, the master gets SIGTERM and takes its
                // workers down.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                match &cpus {
                    // what `taskset -c CPUS nginx ...` does: the affinity is
                    // inherited by the workers.
                    Some(c) => sys::set_affinity(0, Some(c)),
                    None => Ok(()),
                }
            });
        }
        let child = cmd.spawn()?;
        let master = child.id() as i32;
        let n = Nginx {
            child,
            port,
            prefix: prefix.to_path_buf(),
            master,
        };
        let pidfile = prefix.join("nginx.pid");
        let started = wait_for("nginx", Duration::from_secs(10), || {
            pidfile.exists()
                && sys::children(master).len() >= 2
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if let Err(e) = started {
            let log = read_lossy(&prefix.join("error.log"));
            let err = fs::read_to_string(prefix.join("stderr.log")).unwrap_or_default();
            return Err(io::Error::other(format!("{e}\n{log}{err}")));
        }
        // Each worker connects to Redis once it runs: wait for two more
        // Redis clients than before the start (on any node of a cluster).
        let _ = wait_for(
            "workers' Redis connections",
            Duration::from_secs(10),
            || redis.clients() >= clients0 + 2,
        );
        Ok(n)
    }

    /// Master pid as the pid file says.
    pub fn pid_from_file(&self) -> i32 {
        fs::read_to_string(self.prefix.join("nginx.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(self.master)
    }

    pub fn workers(&self) -> Vec<i32> {
        sys::children(self.pid_from_file())
    }

    /// Master + workers.
    pub fn mem(&self) -> Mem {
        let mut m = sys::proc_mem(self.pid_from_file());
        for w in self.workers() {
            m = m + sys::proc_mem(w);
        }
        m
    }

    /// utime + stime of the workers, ns.
    pub fn workers_cpu_ns(&self) -> u64 {
        self.workers()
            .iter()
            .filter_map(|&w| sys::proc_stat(w))
            .map(|s| s.cpu_ns)
            .sum()
    }

    pub fn workers_fds(&self) -> u64 {
        self.workers().iter().map(|&w| sys::proc_fds(w)).sum()
    }

    pub fn error_log(&self) -> String {
        read_lossy(&self.prefix.join("error.log"))
    }

    pub fn stop(mut self) -> LogSummary {
        let workers = self.workers();
        sys::kill(self.master, libc::SIGTERM);
        let t0 = Instant::now();
        let mut exited = false;
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            for w in workers {
                sys::kill(w, libc::SIGKILL);
            }
        }
        LogSummary::of(&self.error_log())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let workers = sys::children(self.master);
            let _ = self.child.kill();
            let _ = self.child.wait();
            for w in workers {
                sys::kill(w, libc::SIGKILL);
            }
        }
    }
}

/// INFO clients: connected_clients.
fn redis_clients(port: u16) -> u64 {
    redis_cmd(port, &["INFO", "clients"])
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("connected_clients:")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// A log file as text, whatever bytes it holds (nchan can log binary junk).
fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// error.log lines by level, with the first few serious ones.
#[derive(Debug, Clone, Default)]
pub struct LogSummary {
    /// emerg, alert, crit, error
    pub serious: u64,
    pub warn: u64,
    pub samples: Vec<String>,
}

impl LogSummary {
    pub fn of(log: &str) -> LogSummary {
        let mut s = LogSummary::default();
        for line in log.lines() {
            let serious = ["[emerg]", "[alert]", "[crit]", "[error]"]
                .iter()
                .any(|l| line.contains(l));
            if serious {
                s.serious += 1;
                if s.samples.len() < 8 {
                    s.samples.push(line.to_string());
                }
            } else if line.contains("[warn]") {
                s.warn += 1;
                if s.samples.len() < 8 {
                    s.samples.push(line.to_string());
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> NginxOpts<'static> {
        NginxOpts {
            nginx_bin: "/usr/sbin/nginx",
            sse_module: "/m/sse.so",
            nchan_module: "/m/nchan.so",
            nofile: 1024,
            cpus: None,
        }
    }

    #[test]
    fn configs_name_their_redis() {
        let url = "redis-cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";
        let sse = config(Target::Sse, &opts(), Path::new("/p"), 8080, url, 7001);
        assert!(
            sse.contains(&format!("    sse_redis_url {url};\n")),
            "{sse}"
        );
        assert!(sse.contains("load_module /m/sse.so;"));
        assert!(sse.contains("listen 127.0.0.1:8080 backlog=4096;"));
        let nchan = config(Target::Nchan, &opts(), Path::new("/p"), 8080, url, 7001);
        assert!(nchan.contains("nchan_redis_server redis://127.0.0.1:7001;"));
        assert!(!nchan.contains("redis-cluster"));
    }

    #[test]
    fn log_levels() {
        let s = LogSummary::of("a [warn] x\nb [error] y\nc [notice] z\nd [crit] w\n");
        assert_eq!((s.serious, s.warn, s.samples.len()), (2, 1, 3));
    }
}
