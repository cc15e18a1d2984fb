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

/**
 * What `publish` needs of a Redis Cluster client, as a connected node-redis
 * `createCluster()` has it: `sendCommand` sent to the master of `firstKey`'s
 * slot (following MOVED), and the masters with a client for each (to load
 * the function on every one).
 */
export interface RedisClusterCommandClient {
  readonly masters: readonly unknown[];
  nodeClient(node: unknown): Promise<RedisCommandClient> | RedisCommandClient;
  sendCommand(firstKey: string | Buffer | undefined, isReadonly: boolean | undefined, args: Array<string | Buffer>): Promise<unknown>;
}

/** A client `publish` takes: one Redis (or anything that routes for it), or a cluster. */
export type RedisPublishClient = RedisCommandClient | RedisClusterCommandClient;

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
  /**
   * Redis Cluster mode: `SPUBLISH` and `FCALL sse_publish 1 <prefix>:{<channel>}:s`. Default:
   * detected (true for a node-redis cluster client). `true` with another
   * client sends the cluster commands through it; `false` with a cluster
   * client is refused.
   */
  cluster?: boolean;
  /** Without history: `SPUBLISH` (true) or `PUBLISH` (false); default: `SPUBLISH` in cluster mode only. */
  sharded?: boolean;
}

const OPTIONS = new Set(['to', 'history', 'maxlen', 'ttl', 'prefix', 'cluster', 'sharded']);

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
 * Whether `client` is a node-redis cluster client (`createCluster`): it has
 * `masters` and `nodeClient`, which a single-node client has not.
 */
export function isClusterClient(client: unknown): client is RedisClusterCommandClient {
  const c = client as Partial<RedisClusterCommandClient> | null | undefined;
  return typeof c?.nodeClient === 'function' && Array.isArray(c.masters) && typeof c.sendCommand === 'function';
}

/**
 * `FUNCTION LOAD REPLACE` of the shipped sse.lua (what nginx workers with
 * `sse_history on` do when they connect). With a cluster client, on every
 * master (a function lives on each node, and each channel's calls run on the
 * master of its slot). Resolves with the library name.
 */
export async function loadFunction(client: RedisPublishClient): Promise<unknown> {
  const args = ['FUNCTION', 'LOAD', 'REPLACE', sseLua()];
  if (!isClusterClient(client)) return client.sendCommand(args);
  if (client.masters.length === 0) throw new Error('loadFunction: the cluster client knows no masters (connect it first)');
  const replies = await Promise.all(client.masters.map(async (node) => (await client.nodeClient(node)).sendCommand(args)));
  return replies[0];
}

/** Sends a command; a cluster client sends it to the master of `key`'s slot. */
type Send = (key: string, args: Array<string | Buffer>) => Promise<unknown>;

function sender(client: RedisPublishClient): Send {
  if (isClusterClient(client)) return (key, args) => client.sendCommand(key, false, args);
  const single = client;
  return (_key, args) => single.sendCommand(args);
}

/** `cluster` as given, else whether the client is a cluster client. */
function clusterMode(client: RedisPublishClient, cluster: unknown): boolean {
  const detected = isClusterClient(client);
  if (cluster == null) return detected;
  if (typeof cluster !== 'boolean') {
    throw new PublishArgumentError('cluster', cluster, 'must be true or false (or left out: detected from the client)');
  }
  if (detected && !cluster) {
    throw new PublishArgumentError('cluster', cluster, 'a cluster client is always in cluster mode (for a plain PUBLISH, pass sharded: false)');
  }
  return cluster;
}

/** SPUBLISH (sharded pub/sub, what nginx subscribes with in a cluster) or PUBLISH. */
function plainCommand(sharded: unknown, cluster: boolean): 'SPUBLISH' | 'PUBLISH' {
  if (sharded == null) return cluster ? 'SPUBLISH' : 'PUBLISH';
  if (typeof sharded !== 'boolean') {
    throw new PublishArgumentError('sharded', sharded, 'must be true or false (or left out: SPUBLISH in cluster mode)');
  }
  if (sharded && !cluster) {
    throw new PublishArgumentError('sharded', sharded,
      'SPUBLISH reaches nginx only in a Redis Cluster (a redis-cluster:// sse_redis_url): use a cluster client or cluster: true');
  }
  return sharded ? 'SPUBLISH' : 'PUBLISH';
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
 * - `cluster`: Redis Cluster mode, detected by default (a node-redis cluster
 *   client). In cluster mode history is `FCALL sse_publish 1 <prefix>:{<channel>}:s ...`
 *   (a per-channel sequence) and a plain publish is `SPUBLISH`
 *   (`sharded: false`: `PUBLISH`); a cluster client sends each to the master
 *   of the channel's slot.
 *
 * Throws `PublishArgumentError` (synchronously checked, before anything is
 * sent; the returned promise rejects with it) when an argument breaks
 * nginx-sse's rules; Redis errors reject as node-redis reports them.
 */
export async function publish(
  client: RedisPublishClient,
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
  const { to, history = false, maxlen, ttl, prefix, sharded } = options;
  if (typeof history !== 'boolean') throw new PublishArgumentError('history', history, 'must be true or false');
  const cluster = clusterMode(client, options.cluster);
  const users = to != null ? audience(to) : undefined;
  const send = sender(client);

  if (!history) {
    for (const [field, value] of [['maxlen', maxlen], ['ttl', ttl], ['prefix', prefix]] as const) {
      if (value != null) {
        throw new PublishArgumentError(field, value, 'only applies with history: true (a plain PUBLISH keeps no history)');
      }
    }
    const command = plainCommand(sharded, cluster);
    const payload = plainPayload(encodeData(data), users);
    return Number(await send(name, [command, name, payload]));
  }

  if (sharded != null) {
    throw new PublishArgumentError('sharded', sharded,
      'only applies without history (sse_publish itself publishes with SPUBLISH in cluster mode, PUBLISH otherwise)');
  }
  const args = fcallArgs(name, encodeData(data), {
    audience: users,
    maxlen: maxlen != null ? checkInt('maxlen', maxlen, 1) : undefined,
    ttl: ttl != null ? checkInt('ttl', ttl, 0) : undefined,
    prefix: prefix != null ? validatePrefix(prefix) : undefined,
    cluster,
  });
  try {
    return Number(await send(name, args));
  } catch (e) {
    if (!functionMissing(e)) throw e;
  }
  await loadFunction(client);
  return Number(await send(name, args));
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
