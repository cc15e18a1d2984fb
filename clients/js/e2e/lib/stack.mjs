// One complete stack per test file: redis-server (AOF) with sse.lua loaded,
// the auth service, nginx with the module (2 workers) serving the bundled
// pages; and headless Chromium pages opened on it.

import { chromium } from 'playwright-core';
import { AuthService, DEFAULT_GRANTS } from './auth.mjs';
import { bundlePages, missingPackages } from './bundle.mjs';
import { Nginx, missingPrerequisite } from './nginx.mjs';
import { killAll, removeTempDirs, waitUntil, serverSockets, sleep, within } from './procs.mjs';
import { RedisServer } from './redis.mjs';

export { sleep, waitUntil };

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** Why the e2e suite must be skipped here, or null. */
export function skipReason() {
  return missingPrerequisite() || missingPackages();
}

/** Starts redis, auth and nginx; returns the stack. `log` receives timing lines. */
export async function startStack({ grants = DEFAULT_GRANTS, workers = 2, session = true, log = () => {} } = {}) {
  const t0 = Date.now();
  const stack = { redis: null, auth: null, nginx: null, browser: null, timings: {} };
  const step = (name, since) => { stack.timings[name] = Date.now() - since; };
  stack.stop = async () => {
    const ts = Date.now();
    const errs = [];
    for (const f of [
      async () => stack.browser && (await within(stack.browser.close(), 5000)),
      async () => stack.nginx && (await stack.nginx.stop()),
      async () => stack.auth && (await stack.auth.stop()),
      async () => stack.redis && (await stack.redis.stop()),
    ]) {
      try { await f(); } catch (e) { errs.push(e); }
    }
    killAll();
    removeTempDirs();
    log(`stack stopped in ${Date.now() - ts} ms`);
    if (errs.length) throw errs[0];
  };
  try {
    let t = Date.now();
    const pages = await bundlePages();
    step('bundle', t);
    t = Date.now();
    stack.redis = await new RedisServer({ persist: true }).start();
    await stack.redis.loadFunction();
    step('redis', t);
    t = Date.now();
    stack.auth = await new AuthService(grants).start();
    step('auth', t);
    t = Date.now();
    stack.nginx = await new Nginx({
      redisPort: stack.redis.port, authPort: stack.auth.port, pagesDir: pages.dir, workers, session,
    }).start();
    // Every worker subscribes to sse:control once connected to Redis.
    const up = await waitUntil(async () => (await stack.redis.numsub('sse:control'))['sse:control'] >= workers, 10000, 25);
    if (!up) throw new Error(`nginx workers did not connect to redis:\n${stack.nginx.errorLog}`);
    step('nginx', t);
    t = Date.now();
    stack.browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], timeout: 20000 });
    step('browser', t);
    stack.base = `http://127.0.0.1:${stack.nginx.port}`;
    stack.timings.total = Date.now() - t0;
    log(`stack up in ${stack.timings.total} ms (${Object.entries(stack.timings).map(([k, v]) => `${k} ${v}`).join(', ')}); `
      + `redis :${stack.redis.port}, auth :${stack.auth.port}, nginx :${stack.nginx.port} (${stack.nginx.prefix})`);
    return stack;
  } catch (e) {
    await stack.stop().catch(() => {});
    throw e;
  }
}

/** Stream connections currently established to nginx (server side): the
 * established sockets on nginx's port that received a request. Static pages
 * are served without keep-alive, and sockets Chromium opens ahead of need
 * (preconnect) have received nothing, so these are the event streams (plus,
 * in scenarios with refused requests, idle keep-alive connections). */
export async function openStreams(stack) {
  const socks = await serverSockets(stack.nginx.port);
  const used = socks.filter((s) => s.bytesReceived > 0);
  if (used.length !== 1 || socks.length !== used.length) {
    stack.log?.(`sockets established to nginx: ${JSON.stringify(socks.map((s) => [s.peer, s.bytesReceived, s.bytesSent]))}`);
  }
  return used.length;
}

/** A browser context whose cookie says who the user is (or none). */
export async function newContext(stack, user) {
  const context = await stack.browser.newContext();
  if (user) await context.addCookies([{ name: 'user', value: user, url: stack.base }]);
  return context;
}

/**
 * Opens the test app in a new page of `context` with the page config `cfg`
 * (see pages/app.tsx) and waits until it rendered. The returned object keeps
 * the page's /events requests ({ t, url, channels, lei }), its console errors
 * and page errors.
 */
export async function openApp(stack, context, cfg = {}, { timeoutMs = 10000 } = {}) {
  const page = await context.newPage();
  const app = new AppPage(page, stack);
  await page.goto(`${stack.base}/?cfg=${encodeURIComponent(JSON.stringify(cfg))}`, { timeout: timeoutMs });
  const ok = await page.waitForFunction(() => window.__app && window.__app.ready, null, { timeout: timeoutMs })
    .then(() => true, () => false);
  if (!ok) {
    throw new Error(`the test app did not start: ${JSON.stringify(app.problems())}`);
  }
  return app;
}

export class AppPage {
  constructor(page, stack) {
    this.page = page;
    this.stack = stack;
    this.requests = [];
    this.changes = [];
    this.consoleErrors = [];
    this.pageErrors = [];
    page.on('request', (r) => {
      const url = r.url();
      if (!url.includes('/events')) return;
      const u = new URL(url);
      const h = r.headers();
      if (u.pathname === '/events/subscribe') {
        // A live channel change: its form, as sent.
        this.changes.push({ t: Date.now(), method: r.method(), form: Object.fromEntries(new URLSearchParams(r.postData() || '')) });
        return;
      }
      this.requests.push({ t: Date.now(), url: u.pathname + u.search, channels: u.searchParams.get('channels'), lei: h['last-event-id'] ?? null });
    });
    page.on('console', (m) => { if (m.type() === 'error') this.consoleErrors.push(m.text()); });
    page.on('pageerror', (e) => this.pageErrors.push(String(e)));
  }

  problems() {
    return { consoleErrors: this.consoleErrors.slice(0, 10), pageErrors: this.pageErrors.slice(0, 10) };
  }

  snapshot(withSeen = true) {
    return this.page.evaluate((w) => window.__app.snapshot(w), withSeen);
  }

  seen(id) { return this.page.evaluate((i) => window.__app.seen(i), id); }

  views() { return this.page.evaluate(() => window.__views); }

  set(specs) { return this.page.evaluate((s) => window.__app.set(s), specs); }

  mount(spec) { return this.page.evaluate((s) => window.__app.mount(s), spec); }

  unmount(id) { return this.page.evaluate((i) => window.__app.unmount(i), id); }

  subStatus(sub) { return this.page.evaluate((s) => window.__app.subStatus(s), sub); }

  /** Waits until fn(snapshot-without-seen) is truthy; returns it or false. */
  waitFor(fn, timeoutMs = 5000, intervalMs = 50) {
    return waitUntil(async () => {
      const s = await this.snapshot(false);
      return fn(s) ? s : false;
    }, timeoutMs, intervalMs);
  }

  /** Waits until every listed component reports `status`. */
  waitViews(ids, status, timeoutMs = 5000) {
    return this.waitFor((s) => ids.every((id) => s.views[id] && s.views[id].status === status), timeoutMs);
  }

  /** The text a component shows (DOM). */
  domOf(id) {
    return this.page.evaluate((i) => {
      const el = document.querySelector(`section[data-id="${i}"]`);
      if (!el) return null;
      return { status: el.getAttribute('data-status'), error: el.getAttribute('data-error'), count: Number(el.getAttribute('data-count')), text: el.textContent };
    }, id);
  }
}

/**
 * Runs one scenario on its own stack: starts it, calls fn(stack), and always
 * stops everything. On failure prints what usually explains it (each page's
 * status log, /events requests and errors, the access log's /events lines,
 * the end of error.log). Fails if nginx logged [alert]/[emerg] or lost a
 * worker to a signal. Prints timings.
 */
export async function scenario(t, opts, fn) {
  const t0 = Date.now();
  const log = (m) => t.diagnostic(m);
  const stack = await startStack({ ...opts, log });
  stack.pages = [];
  stack.log = log;
  const origOpen = openApp;
  stack.open = async (context, cfg, o) => {
    const app = await origOpen(stack, context, cfg, o);
    stack.pages.push(app);
    return app;
  };
  let failed = null;
  try {
    await fn(stack);
  } catch (e) {
    failed = e;
  }
  try {
    if (!failed) {
      // Uncaught exceptions and unhandled rejections in a page are failures too.
      const pageProblems = [];
      for (const [i, app] of stack.pages.entries()) {
        let errs = [...app.pageErrors];
        if (!app.page.isClosed()) {
          const inPage = await within(app.page.evaluate(() => window.__app.errors).catch(() => []), 2000, []);
          errs = errs.concat(inPage.filter((e) => !errs.some((x) => x.includes(e.replace(/^\w+: /, '')))));
        }
        for (const e of errs) pageProblems.push(`page ${i}: ${e}`);
      }
      if (pageProblems.length) failed = new Error(`errors in the page:\n${pageProblems.slice(0, 10).join('\n')}`);
    }
    if (failed) await dumpDiagnostics(stack, log);
    const alerts = stack.nginx ? stack.nginx.newAlerts() : [];
    if (!failed && alerts.length) {
      failed = new Error(`nginx error.log has [alert]/[emerg] or a crashed worker:\n${alerts.join('\n')}`);
    }
  } finally {
    await stack.stop();
    log(`scenario took ${Date.now() - t0} ms`);
  }
  if (failed) throw failed;
}

async function dumpDiagnostics(stack, log) {
  for (const [i, app] of stack.pages.entries()) {
    if (app.page.isClosed()) { log(`page ${i}: closed; /events requests ${JSON.stringify(app.requests.slice(-8))}`); continue; }
    let snap = null;
    try { snap = await within(app.snapshot(false), 2000, null); } catch { /* page gone */ }
    if (snap) {
      log(`page ${i}: client status ${snap.status}, lastEventId ${snap.lastEventId}, active ${JSON.stringify(snap.active)}`);
      log(`page ${i}: status log (last 12) ${JSON.stringify(snap.statusLog.slice(-12).map((s) => [s.t - snap.now, s.s, s.lastEventId, s.active.join(',')]))}`);
      log(`page ${i}: views ${JSON.stringify(snap.views)}`);
      if (snap.errors.length) log(`page ${i}: errors ${JSON.stringify(snap.errors.slice(0, 8))}`);
    }
    log(`page ${i}: /events requests (last 8) ${JSON.stringify(app.requests.slice(-8))}`);
    if (app.changes.length) log(`page ${i}: changes (last 8) ${JSON.stringify(app.changes.slice(-8).map((c) => ({ ...c, form: { ...c.form, session: '…' } })))}`);
    const p = app.problems();
    if (p.consoleErrors.length || p.pageErrors.length) log(`page ${i}: ${JSON.stringify(p)}`);
  }
  if (stack.nginx) {
    const ev = stack.nginx.accessLog().filter((l) => l.path === '/events').slice(-12);
    log(`access.log /events (last 12): ${JSON.stringify(ev.map((l) => [l.t, l.status, l.channels, l.lei, l.user]))}`);
    const ch = stack.nginx.changes().slice(-12);
    if (ch.length) log(`access.log /events/subscribe (last 12): ${JSON.stringify(ch.map((l) => [l.t, l.status, l.pid]))}`);
    const el = stack.nginx.errorLog.split('\n').filter(Boolean).slice(-25);
    log(`error.log (last 25):\n${el.join('\n')}`);
  }
}
