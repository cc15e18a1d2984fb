// Bundles pages/app.tsx with esbuild's JS API into a directory nginx serves.
//
// Where @nginx-sse/client and @nginx-sse/react come from: by default from
// their TypeScript sources (packages/<name>/src/index.ts[x]) through a small
// esbuild resolve plugin, so the tests always run the code as it is in the
// tree (a stale or missing dist/ cannot mask a change), and both the page and
// @nginx-sse/react get the same single copy of the client. Everything else
// (react, react-dom, eventsource-parser) resolves from clients/js/node_modules
// as usual. E2E_USE_DIST=1 bundles the packages' built dist/ instead (plain
// node_modules resolution through the workspace links: what users get).

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { tempDir } from './procs.mjs';

const E2E = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const JS = path.resolve(E2E, '..');
const PACKAGES = { '@nginx-sse/client': 'client', '@nginx-sse/react': 'react' };

export function packageEntry(name, useDist = process.env.E2E_USE_DIST === '1') {
  const dir = path.join(JS, 'packages', PACKAGES[name]);
  const candidates = useDist
    ? [path.join(dir, 'dist/index.js')]
    : ['src/index.ts', 'src/index.tsx'].map((f) => path.join(dir, f));
  return candidates.find((f) => fs.existsSync(f)) || null;
}

/** Why the pages cannot be bundled yet (a package not written), or null. */
export function missingPackages() {
  const missing = Object.keys(PACKAGES).filter((n) => !packageEntry(n));
  if (!missing.length) return null;
  const where = process.env.E2E_USE_DIST === '1' ? 'dist/index.js' : 'src/index.ts(x)';
  return `not written yet: ${missing.map((n) => `${n} (${where})`).join(', ')}`;
}

const fromSources = {
  name: 'nginx-sse-sources',
  setup(build) {
    build.onResolve({ filter: /^@nginx-sse\/(client|react)$/ }, (args) => {
      const entry = packageEntry(args.path, false);
      if (!entry) return { errors: [{ text: `${args.path}: no src/index.ts(x) in packages/${PACKAGES[args.path]}` }] };
      return { path: entry };
    });
  },
};

let cached = null;

/** Builds the pages once per process; returns { dir, ms }. */
export async function bundlePages() {
  // (Rebuilt when a previous stack of this process removed its directory.)
  if (cached && fs.existsSync(cached.dir)) return cached;
  const t0 = Date.now();
  const dir = tempDir('pages');
  const useDist = process.env.E2E_USE_DIST === '1';
  const result = await esbuild.build({
    entryPoints: [path.join(E2E, 'pages/app.tsx')],
    absWorkingDir: E2E,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'chrome110',
    jsx: 'automatic',
    // The development build of React: StrictMode double-mounts only there.
    define: { 'process.env.NODE_ENV': '"development"' },
    sourcemap: 'inline',
    outfile: path.join(dir, 'app.js'),
    plugins: useDist ? [] : [fromSources],
    logLevel: 'silent',
    metafile: true,
  });
  fs.copyFileSync(path.join(E2E, 'pages/index.html'), path.join(dir, 'index.html'));
  for (const f of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, f), 0o644);
  const inputs = Object.keys(result.metafile.inputs).filter((f) => f.includes('packages/'));
  cached = { dir, ms: Date.now() - t0, inputs, warnings: result.warnings.map((w) => w.text) };
  return cached;
}
