//! Thin wrappers over the libc calls the benchmark needs: clocks, rlimits,
//! non-blocking sockets, epoll, CPU affinity and /proc.

use std::io;
use std::os::fd::RawFd;

pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns (soft, hard).
pub fn raise_nofile() -> (u64, u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
    }
    (rl.rlim_cur, rl.rlim_max)
}

/// This process's user+system CPU time (all threads), in ns.
pub fn self_cpu_ns() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A non-blocking TCP socket to 127.0.0.1:`port`, bound to source address
/// `src` (any 127.x.y.z) with the port chosen at connect time, closing with
/// RST (SO_LINGER 0) so no TIME_WAIT is left behind. The connect is under
/// way when this returns.
pub fn connect_nb(port: u16, src: [u8; 4]) -> io::Result<RawFd> {
    unsafe {
        let fd = cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let close_err = |fd| {
            let e = io::Error::last_os_error();
            libc::close(fd);
            e
        };
        let one: libc::c_int = 1;
        let lg = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &lg as *const _ as *const _,
            std::mem::size_of::<libc::linger>() as u32,
        ) < 0
            || libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const _ as *const _,
                4,
            ) < 0
        {
            return Err(close_err(fd));
        }
        if src != [127, 0, 0, 1] {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const _,
                4,
            );
            let sa = sockaddr(src, 0);
            if libc::bind(
                fd,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            ) < 0
            {
                return Err(close_err(fd));
            }
        }
        let sa = sockaddr([127, 0, 0, 1], port);
        let r = libc::connect(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                libc::close(fd);
                return Err(e);
            }
        }
        Ok(fd)
    }
}

fn sockaddr(ip: [u8; 4], port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    }
}

/// The pending error of a socket whose non-blocking connect finished.
pub fn so_error(fd: RawFd) -> Option<io::Error> {
    let mut err: libc::c_int = 0;
    let mut len = 4u32;
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut _ as *mut _,
            &mut len,
        )
    };
    (err != 0).then(|| io::Error::from_raw_os_error(err))
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut _, buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let n = unsafe { libc::send(fd, buf.as_ptr() as *const _, buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub fn close(fd: RawFd) {
    unsafe { libc::close(fd) };
}

pub fn would_block(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
}

pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

pub const EV_IN: u32 = libc::EPOLLIN as u32;
pub const EV_OUT: u32 = libc::EPOLLOUT as u32;
pub const EV_ERR: u32 = (libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) as u32;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 4096],
        })
    }

    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        cvt(unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(|_| ())
    }

    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        cvt(unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_MOD, fd, &mut ev) }).map(|_| ())
    }

    /// Waits up to `timeout_ms`; returns (token, events) pairs.
    pub fn wait(&mut self, timeout_ms: i32, out: &mut Vec<(u64, u32)>) {
        out.clear();
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        for ev in &self.events[..n.max(0) as usize] {
            out.push((ev.u64, ev.events));
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        close(self.fd);
    }
}

/// Pins thread `tid` (0: the calling thread; or a process id) to `cpus`
/// (None: every CPU of the machine).
pub fn set_affinity(tid: i32, cpus: Option<&[usize]>) -> io::Result<()> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        match cpus {
            Some(list) => list.iter().for_each(|&c| libc::CPU_SET(c, &mut set)),
            None => (0..num_cpus()).for_each(|c| libc::CPU_SET(c, &mut set)),
        }
        cvt(libc::sched_setaffinity(
            tid,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))
        .map(|_| ())
    }
}

/// Pins every thread of process `pid`.
pub fn set_process_affinity(pid: i32, cpus: Option<&[usize]>) -> io::Result<()> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = t?.file_name().to_str().and_then(|s| s.parse().ok()) {
            set_affinity(tid, cpus)?;
        }
    }
    Ok(())
}

pub fn num_cpus() -> usize {
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize }
}

fn clk_tck() -> u64 {
    unsafe { libc::sysconf(libc::_SC_CLK_TCK).max(1) as u64 }
}

/// Fields of /proc/PID/stat that the benchmark reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    pub ppid: i32,
    /// utime + stime, in ns (clock-tick resolution).
    pub cpu_ns: u64,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after "comm)": state(0) ppid(1) ... utime(11) stime(12)
    let ppid = f.get(1)?.parse().ok()?;
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ProcStat {
        ppid,
        cpu_ns: ticks * 1_000_000_000 / clk_tck(),
    })
}

/// A TcpExt counter of /proc/net/netstat (e.g. ListenDrops), machine-wide.
pub fn tcp_ext(name: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = s.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    if lines.len() < 2 {
        return 0;
    }
    let names = lines[0].split_whitespace();
    let vals = lines[1].split_whitespace();
    names
        .zip(vals)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Machine-wide CPU time from /proc/stat (all CPUs), ns.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    /// user + nice + system + steal: time charged to processes.
    pub procs: u64,
    /// irq + softirq (e.g. loopback networking not charged to a process).
    pub irq: u64,
}

pub fn machine_cpu() -> MachineCpu {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let sum = |idx: &[usize]| {
        idx.iter().filter_map(|&i| f.get(i)).sum::<u64>() * 1_000_000_000 / clk_tck()
    };
    MachineCpu {
        procs: sum(&[0, 1, 2, 7]),
        irq: sum(&[5, 6]),
    }
}

/// Children of `parent` (scans /proc).
pub fn children(parent: i32) -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                if proc_stat(pid).map(|s| s.ppid) == Some(parent) {
                    v.push(pid);
                }
            }
        }
    }
    v.sort();
    v
}

/// Resident and proportional set size of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss_kb: u64,
    pub pss_kb: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            rss_kb: self.rss_kb + o.rss_kb,
            pss_kb: self.pss_kb + o.pss_kb,
        }
    }
}

pub fn proc_mem(pid: i32) -> Mem {
    let field = |path: &str, name: &str| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    Mem {
        rss_kb: field(&format!("/proc/{pid}/status"), "VmRSS:"),
        pss_kb: field(&format!("/proc/{pid}/smaps_rollup"), "Pss:"),
    }
}

/// Open file descriptors of a process.
pub fn proc_fds(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

pub fn kill(pid: i32, sig: libc::c_int) {
    unsafe { libc::kill(pid, sig) };
}
