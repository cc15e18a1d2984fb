// Processes, ports, temporary directories and bounded waiting.
//
// Every process started here runs in its own process group (detached) and is
// remembered until it is stopped: killAll() (called on exit, on SIGINT/SIGTERM
// and by the stacks' stop()) SIGKILLs every group still alive, so nothing
// outlives a test file, even one that fails or times out.

import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const groups = new Map(); // pid -> { name, child }
const tempDirs = new Set();
const KEEP = !!process.env.TEST_KEEP;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** promise, or `fallback` after ms (the timer is cleared either way, so it
 * keeps nothing alive). */
export function within(promise, ms, fallback = undefined) {
  let timer;
  const t = new Promise((r) => { timer = setTimeout(() => r(fallback), ms); });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

/** Polls cond() (sync or async) every intervalMs until it returns a truthy
 * value (returned) or timeoutMs passes (returns false). Never unbounded. */
export async function waitUntil(cond, timeoutMs, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let v;
    try { v = await cond(); } catch { v = false; }
    if (v) return v;
    if (Date.now() >= deadline) return false;
    await sleep(Math.min(intervalMs, Math.max(1, deadline - Date.now())));
  }
}

const portsGiven = new Set();
/** A loopback TCP port that was free a moment ago, never handed out twice by
 * this process. */
export async function freePort() {
  for (let i = 0; i < 50; i++) {
    const port = await new Promise((resolve, reject) => {
      const srv = net.createServer();
      srv.once('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const p = srv.address().port;
        srv.close(() => resolve(p));
      });
    });
    if (portsGiven.has(port)) continue;
    portsGiven.add(port);
    return port;
  }
  throw new Error('no free loopback port found');
}

export function portOpen(port, timeoutMs = 500) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const done = (ok) => { s.destroy(); resolve(ok); };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** A fresh directory under the system temp dir, mode 0755 (nginx workers run
 * as "nobody" when the master is root and must read what is inside). Removed
 * by removeTempDirs() unless TEST_KEEP is set. */
export function tempDir(what) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `nginx-sse-e2e-${what}-`));
  fs.chmodSync(dir, 0o755);
  tempDirs.add(dir);
  if (KEEP) console.error(`# TEST_KEEP: ${what} files in ${dir}`);
  return dir;
}

export function removeTempDirs() {
  if (KEEP) return;
  for (const d of tempDirs) {
    try { fs.rmSync(d, { recursive: true, force: true }); } catch { /* ignore */ }
  }
  tempDirs.clear();
}

/** Starts cmd in its own process group with stdout+stderr appended to logFile. */
export function spawnLogged(name, cmd, args, logFile) {
  const fd = fs.openSync(logFile, 'a');
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  if (!child.pid) throw new Error(`cannot start ${cmd}`);
  const info = { name, child, exited: null };
  child.on('exit', (code, signal) => { info.exited = { code, signal }; });
  groups.set(child.pid, info);
  return child;
}

export function exited(child) {
  const info = groups.get(child.pid);
  return child.exitCode !== null || child.signalCode !== null || (info && info.exited);
}

/** Waits up to timeoutMs for the child to exit; true if it did. */
export async function waitExit(child, timeoutMs) {
  if (child.exitCode !== null || child.signalCode !== null) return true;
  return new Promise((resolve) => {
    const t = setTimeout(() => { child.off('exit', on); resolve(false); }, timeoutMs);
    const on = () => { clearTimeout(t); resolve(true); };
    child.once('exit', on);
  });
}

function killGroup(pid, sig) {
  try { process.kill(-pid, sig); } catch { /* gone */ }
}

/** Sends sig to the child's process group, waits, then SIGKILLs the group
 * (stragglers such as nginx workers included). Returns ms until the leader
 * exited, or null if it had to be killed. */
export async function stopGroup(child, sig = 'SIGTERM', timeoutMs = 10000) {
  const t0 = Date.now();
  let took = null;
  if (child.exitCode === null && child.signalCode === null) {
    killGroup(child.pid, sig);
    if (await waitExit(child, timeoutMs)) took = Date.now() - t0;
  } else {
    took = 0;
  }
  killGroup(child.pid, 'SIGKILL');
  await waitExit(child, 5000);
  groups.delete(child.pid);
  return took;
}

/** SIGKILLs every process group still registered (synchronous, for exit). */
export function killAll() {
  for (const [pid] of groups) killGroup(pid, 'SIGKILL');
  groups.clear();
}

let hooked = false;
export function installExitHooks() {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => { killAll(); removeTempDirs(); });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => { killAll(); removeTempDirs(); process.exit(128 + (os.constants.signals[sig] || 1)); });
  }
}
installExitHooks();

/** Runs a command to completion: { code, out }. Bounded by timeoutMs. */
export function run(cmd, args, timeoutMs = 15000) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, out: String(stdout) + String(stderr) });
    });
  });
}

/** Pids whose parent is ppid (from /proc/<pid>/stat), zombies left out. */
export function childrenOf(ppid) {
  const kids = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat;
    try { stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8'); } catch { continue; }
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const [state, parent] = rest;
    if (Number(parent) === ppid && state !== 'Z' && state !== 'X') kids.push(Number(name));
  }
  return kids.sort((a, b) => a - b);
}

export function alive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export function slurp(file) {
  try { return fs.readFileSync(file, 'utf8'); } catch { return ''; }
}

/** Aborts every TCP connection to 127.0.0.1:port from the client side (`ss -K`,
 * needs root and a kernel with INET_DIAG_DESTROY): what a network drop does to
 * the browser's connections. Returns the number of sockets killed. */
export async function killClientSockets(port) {
  const r = await run('ss', ['-K', '-t', 'dst', '127.0.0.1', 'dport', '=', `:${port}`]);
  return r.out.split('\n').filter((l) => /ESTAB/.test(l)).length;
}

/** The server side of established TCP connections on 127.0.0.1:port, from
 * `ss -tin`: [{ peer, bytesReceived, bytesSent }]. A stream has received a
 * request; a socket a browser opened ahead of need (preconnect) has not. */
export async function serverSockets(port) {
  const r = await run('ss', ['-Htin', 'state', 'established', 'sport', '=', `:${port}`]);
  const out = [];
  let cur = null;
  for (const line of r.out.split('\n')) {
    const m = /^\s*\d+\s+\d+\s+(\S+)\s+(\S+)/.exec(line);
    if (m && !line.startsWith('\t')) {
      cur = { local: m[1], peer: m[2], bytesReceived: 0, bytesSent: 0 };
      out.push(cur);
      continue;
    }
    if (cur) {
      const rcv = /bytes_received:(\d+)/.exec(line);
      const snt = /bytes_sent:(\d+)/.exec(line);
      if (rcv) cur.bytesReceived = Number(rcv[1]);
      if (snt) cur.bytesSent = Number(snt[1]);
    }
  }
  return out;
}
