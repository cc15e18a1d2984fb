// Bundles the demo page with esbuild: node demo/app/build.mjs OUT_DIR
// The client packages are taken from their sources in clients/js (no build
// step needed), React from clients/js/node_modules.
import { copyFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const js = resolve(here, '../../clients/js');
// esbuild (and React) come from the clients/js workspace's node_modules.
const { build } = createRequire(join(js, 'package.json'))('esbuild');
const out = resolve(process.argv[2] ?? join(here, 'dist'));
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(here, 'main.tsx')],
  outfile: join(out, 'app.js'),
  bundle: true,
  format: 'esm',
  minify: true,
  sourcemap: true,
  target: 'es2020',
  jsx: 'automatic',
  define: { 'process.env.NODE_ENV': '"production"' },
  nodePaths: [join(js, 'node_modules')],
  alias: {
    '@nginx-sse/client': join(js, 'packages/client/src/index.ts'),
    '@nginx-sse/react': join(js, 'packages/react/src/index.tsx'),
  },
  logLevel: 'warning',
});
copyFileSync(join(here, 'index.html'), join(out, 'index.html'));
console.log(`demo: page bundled into ${out}`);
