// The built bundle (dist/index.js, built here when missing or older than
// src/): its size, and that importing it, or the source, touches no browser
// global (SSR-safe) until a subscription starts.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeAll, expect, it, vi } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const bundle = join(root, 'dist/index.js');
const LIMIT = 7 * 1024;

beforeAll(() => {
  const src = join(root, 'src');
  const newest = Math.max(...readdirSync(src).map((f) => statSync(join(src, f)).mtimeMs));
  if (!existsSync(bundle) || statSync(bundle).mtimeMs < newest) {
    execFileSync(process.execPath, [join(root, 'build.mjs')], { stdio: 'inherit' });
  }
}, 60000);

it(`min+gzip size of dist/index.js is at most ${LIMIT} bytes, eventsource-parser included`, () => {
  const code = readFileSync(bundle);
  const gz = gzipSync(code).length;
  console.log(`dist/index.js: ${code.length} bytes minified, ${gz} bytes gzipped`);
  expect(gz).toBeLessThanOrEqual(LIMIT);
  const meta = JSON.parse(readFileSync(join(root, 'dist/meta.json'), 'utf8'));
  expect(Object.keys(meta.inputs).some((p) => p.includes('eventsource-parser'))).toBe(true);
  expect(code.toString()).not.toMatch(/from\s*["']eventsource-parser["']/);
  expect(existsSync(join(root, 'dist/index.d.ts'))).toBe(true);
});

const GLOBALS = ['window', 'document', 'navigator', 'sessionStorage', 'localStorage', 'BroadcastChannel', 'fetch', 'addEventListener'];
let restore: (() => void)[] = [];
afterEach(() => {
  restore.forEach((f) => f());
  restore = [];
  vi.useRealTimers();
});

/** Replaces the browser globals with getters that record each access. */
function watchGlobals(): string[] {
  const touched: string[] = [];
  for (const name of GLOBALS) {
    const before = Object.getOwnPropertyDescriptor(globalThis, name);
    Object.defineProperty(globalThis, name, {
      configurable: true,
      get() {
        touched.push(name);
        return undefined;
      },
    });
    restore.push(() => {
      if (before) Object.defineProperty(globalThis, name, before);
      else delete (globalThis as Record<string, unknown>)[name];
    });
  }
  return touched;
}

for (const [what, load] of [
  ['the source', () => import('../src/index')],
  ['the bundle', () => import(/* @vite-ignore */ pathToFileURL(bundle).href + '?ssr')],
] as const) {
  it(`importing ${what}, creating a client and reading views touches no browser global`, async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const touched = watchGlobals();
    const mod = (await load()) as typeof import('../src/index');
    const client = mod.createClient({ url: '/events', persist: 'session', shareAcrossTabs: true, closeWhenHidden: true });
    const view = client.view('c', { persist: 'session', initial: 0 });
    expect(view.getServerSnapshot()).toEqual({ data: 0, status: 'idle' });
    expect(client.status).toBe('idle');
    expect(client.subscriptionStatus('c')).toEqual({ status: 'idle' });
    expect(mod.matches('a:*', 'a:b')).toBe(true);
    expect(touched).toEqual([]);

    // A subscription starts the client: now (and only now) it looks around.
    const fetch = vi.fn(() => new Promise<Response>(() => {}));
    Object.defineProperty(globalThis, 'fetch', { configurable: true, value: fetch });
    client.subscribe('c', () => {});
    vi.advanceTimersByTime(50);
    expect(fetch).toHaveBeenCalledTimes(1);
    expect(touched).toContain('sessionStorage');
    client.close();
  });
}
