// The bytes a publish sends: the data, the audience envelope of a plain
// PUBLISH (or SPUBLISH), the arguments of FCALL sse_publish. See the main
// README, "Publishing" (envelope), "Delivery guarantees" (sse_publish) and
// "Redis Cluster".

import { PublishArgumentError } from './validate.js';

/** The first byte of an audience envelope (ASCII record separator). */
export const ENVELOPE_BYTE = 0x1e;

/**
 * The payload: a Buffer (or any Uint8Array) as it is, a string as UTF-8,
 * anything else as JSON (`JSON.stringify`).
 */
export function encodeData(data: unknown): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  let text: string | undefined;
  try {
    text = JSON.stringify(data);
  } catch (e) {
    throw new PublishArgumentError('data', data, `cannot be JSON-encoded (${(e as Error).message})`);
  }
  if (text === undefined) throw new PublishArgumentError('data', data, `cannot be JSON-encoded (${typeof data})`);
  return Buffer.from(text, 'utf8');
}

/**
 * What a plain PUBLISH sends: the audience envelope when there is an
 * audience, an empty envelope around a payload that starts with 0x1E (else
 * nginx-sse would read it as an envelope), the payload itself otherwise.
 */
export function plainPayload(payload: Buffer, audience?: string): Buffer {
  if (audience !== undefined) return Buffer.concat([Buffer.from(`\x1esse1 to=${audience}\n`, 'latin1'), payload]);
  if (payload[0] === ENVELOPE_BYTE) return Buffer.concat([Buffer.from('\x1esse1\n', 'latin1'), payload]);
  return payload;
}

/**
 * The arguments of `FCALL sse_publish 0 <channel> <payload> [options]`, or
 * with `cluster` of `FCALL sse_publish 1 <prefix>:{<channel>}:s <payload>
 * [options]`: the call's one key is the channel's state (its per-channel
 * sequence), which shares the channel's slot, so the cluster runs the call on
 * the node serving it, also while the slot migrates; the prefix is part of
 * that key.
 */
export function fcallArgs(
  channel: string,
  payload: Buffer,
  { audience, maxlen, ttl, prefix, cluster = false }:
  { audience?: string; maxlen?: number; ttl?: number; prefix?: string; cluster?: boolean } = {},
): Array<string | Buffer> {
  const args: Array<string | Buffer> = cluster
    ? ['FCALL', 'sse_publish', '1', `${prefix ?? 'sse'}:{${channel}}:s`, payload]
    : ['FCALL', 'sse_publish', '0', channel, payload];
  if (maxlen !== undefined) args.push(`maxlen=${maxlen}`);
  if (ttl !== undefined) args.push(`ttl=${ttl}`);
  if (audience !== undefined) args.push(`to=${audience}`);
  if (prefix !== undefined && !cluster) args.push(`prefix=${prefix}`);
  return args;
}
