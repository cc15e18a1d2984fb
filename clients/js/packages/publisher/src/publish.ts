import { readFileSync } from 'node:fs';
import { createClient } from 'redis';
import { encodeData, fcallArgs, plainPayload } from './payload.js';
import { PublishArgumentError, audience, checkInt, validateChannel, validatePrefix } from './validate.js';

/**
 * What `publish` needs of a Redis client: `sendCommand`, as a connected
 * client of the official `redis` package has it (tested with node-redis 5).
 */
export interface RedisCommandClient {
  sendCommand(args: Array<string | Buffer>): Promise<unknown>;
}

export interface PublishOptions {
  /** Only streams whose `sse_user` is one of these receive the event. */
  to?: string | readonly string[];
  /** `FCALL sse_publish`: stored in the channel's history, then published. */
  history?: boolean;
  /** With history: entries kept per channel (default 1000). */
  maxlen?: number;
  /** With history: seconds an idle channel's history lives (default 86400, 0 = forever). */
  ttl?: number;
  /** With history: the `sse_redis_prefix` of the nginx that serves it (default `sse`). */
  prefix?: string;
}

const OPTIONS = new Set(['to', 'history', 'maxlen', 'ttl', 'prefix']);

// Replaced by the text of redis/sse.lua when build.mjs bundles dist/index.js
// (esbuild `define`), so the published package carries the function itself.
declare const __SSE_LUA__: string | undefined;
let luaText: string | undefined;

/**
 * The source of the `sse_publish` Redis Function this package ships (the
 * build's copy of the repository's redis/sse.lua).
 */
export function sseLua(): string {
  if (luaText === undefined) {
    luaText = typeof __SSE_LUA__ === 'string'
      ? __SSE_LUA__
      // Running from the TypeScript sources in the repository (unit tests).
      : readFileSync(new URL('../../../../../redis/sse.lua', import.meta.url), 'utf8');
  }
  return luaText;
}

/**
 * `FUNCTION LOAD REPLACE` of the shipped sse.lua (what nginx workers with
 * `sse_history on` do when they connect). Resolves with the library name.
 */
export function loadFunction(client: RedisCommandClient): Promise<unknown> {
  return client.sendCommand(['FUNCTION', 'LOAD', 'REPLACE', sseLua()]);
}

function functionMissing(error: unknown): boolean {
  // Redis 7: "ERR Function not found".
  return /function not found/i.test(String((error as { message?: unknown } | null)?.message ?? ''));
}

/**
 * Publishes `data` on `channel` for nginx-sse, with one Redis command.
 *
 * - `data`: a Buffer (Uint8Array) or string is sent as it is (strings as
 *   UTF-8); anything else as JSON.
 * - `to`: a user id or an array of user ids: only their streams receive it.
 * - `history: true`: `FCALL sse_publish` (stored in the channel's history,
 *   then published); resolves with the event id. Loads the shipped function
 *   first if Redis does not have it. `maxlen`, `ttl` and `prefix` only exist
 *   with history.
 * - otherwise a plain `PUBLISH`; resolves with the number of receivers
 *   (nginx workers subscribed to the channel, not browsers).
 *
 * Throws `PublishArgumentError` (synchronously checked, before anything is
 * sent; the returned promise rejects with it) when an argument breaks
 * nginx-sse's rules; Redis errors reject as node-redis reports them.
 */
export async function publish(
  client: RedisCommandClient,
  channel: string,
  data: unknown,
  options: PublishOptions = {},
): Promise<number> {
  const name = validateChannel(channel);
  if (options === null || typeof options !== 'object') {
    throw new PublishArgumentError('options', options, 'must be an object');
  }
  for (const key of Object.keys(options)) {
    if (!OPTIONS.has(key)) {
      throw new PublishArgumentError('options', key, `unknown option; known: ${[...OPTIONS].join(', ')}`);
    }
  }
  const { to, history = false, maxlen, ttl, prefix } = options;
  if (typeof history !== 'boolean') throw new PublishArgumentError('history', history, 'must be true or false');
  const users = to != null ? audience(to) : undefined;

  if (!history) {
    for (const [field, value] of [['maxlen', maxlen], ['ttl', ttl], ['prefix', prefix]] as const) {
      if (value != null) {
        throw new PublishArgumentError(field, value, 'only applies with history: true (a plain PUBLISH keeps no history)');
      }
    }
    const payload = plainPayload(encodeData(data), users);
    return Number(await client.sendCommand(['PUBLISH', name, payload]));
  }

  const args = fcallArgs(name, encodeData(data), {
    audience: users,
    maxlen: maxlen != null ? checkInt('maxlen', maxlen, 1) : undefined,
    ttl: ttl != null ? checkInt('ttl', ttl, 0) : undefined,
    prefix: prefix != null ? validatePrefix(prefix) : undefined,
  });
  try {
    return Number(await client.sendCommand(args));
  } catch (e) {
    if (!functionMissing(e)) throw e;
  }
  await loadFunction(client);
  return Number(await client.sendCommand(args));
}

export interface Publisher {
  /** The node-redis client (connected). */
  readonly client: ReturnType<typeof createClient>;
  /** `publish(client, ...)` on this publisher's client. */
  publish(channel: string, data: unknown, options?: PublishOptions): Promise<number>;
  /** Closes the connection (pending commands complete first). */
  close(): Promise<void>;
}

/**
 * A connected node-redis client for publishing, and `publish` bound to it.
 * Commands are not queued while the connection is down (`disableOfflineQueue`):
 * a publish then rejects at once, so the service knows and can retry. The
 * client reconnects by itself; connection errors go to `onError` (default:
 * logged with console.error). Resolves once connected (it keeps trying until then).
 */
export async function createPublisher(
  url: string,
  { onError = (err: Error) => console.error(`nginx-sse publisher: redis connection error: ${err.message}`) }:
  { onError?: (err: Error) => void } = {},
): Promise<Publisher> {
  const client = createClient({ url, disableOfflineQueue: true });
  client.on('error', onError);
  await client.connect();
  return {
    client,
    publish: (channel, data, options) => publish(client, channel, data, options),
    close: async () => { await client.close(); },
  };
}
