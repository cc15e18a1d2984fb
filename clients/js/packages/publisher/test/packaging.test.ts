// The package ships redis/sse.lua, the one copy in git of the sse_publish
// Redis Function: the build embeds its text in dist/index.js and copies it to
// dist/sse.lua. Both must be that file, byte for byte. If this fails, build
// again: `npm run build` (in clients/js, or in this package).
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const REPO_LUA = fileURLToPath(new URL('../../../../../redis/sse.lua', import.meta.url));
const DIST = fileURLToPath(new URL('../dist/', import.meta.url));
const BUILD_FIRST = 'the package is not built: run `npm run build` in clients/js first';

describe('shipped sse.lua', () => {
  const repo = readFileSync(REPO_LUA, 'utf8');

  it('dist/sse.lua is redis/sse.lua', () => {
    expect(existsSync(`${DIST}sse.lua`), BUILD_FIRST).toBe(true);
    expect(readFileSync(`${DIST}sse.lua`, 'utf8') === repo, 'dist/sse.lua differs from redis/sse.lua: build again').toBe(true);
  });

  it('the text the built module loads is redis/sse.lua', async () => {
    expect(existsSync(`${DIST}index.js`), BUILD_FIRST).toBe(true);
    const built = (await import(/* @vite-ignore */ `${DIST}index.js`)) as { sseLua(): string };
    expect(built.sseLua() === repo, 'the sse.lua embedded in dist/index.js differs from redis/sse.lua: build again').toBe(true);
    expect(readFileSync(`${DIST}index.js`, 'utf8')).not.toContain('redis/sse.lua'); // no path into the repository
  });
});
