// @nginx-sse/publisher: one call to send an event to nginx-sse streams (Node).
//
//   import { createClient } from 'redis';
//   import { publish } from '@nginx-sse/publisher';
//   const redis = await createClient({ url: 'redis://127.0.0.1:6379' }).connect();
//   await publish(redis, 'logs:w1:nightly', { level: 'INFO', msg: 'loaded' });     // PUBLISH
//   await publish(redis, 'dashboards:7', { v: 17 }, { to: ['u42', 'u43'] });        // only these users
//   const id = await publish(redis, 'logs:w1:nightly', 'line', { history: true }); // FCALL sse_publish
//
//   const cluster = await createCluster({ rootNodes: [{ url: 'redis://10.0.0.5:6379' }] }).connect();
//   await publish(cluster, 'logs:w1:nightly', { msg: 'loaded' });                   // SPUBLISH
//   await publish(cluster, 'logs:w1:nightly', 'line', { history: true });            // FCALL sse_publish 1

export { publish, createPublisher, loadFunction, sseLua, isClusterClient } from './publish.js';
export type {
  PublishOptions, Publisher, RedisCommandClient, RedisClusterCommandClient, RedisPublishClient,
} from './publish.js';
export { encodeData, plainPayload, fcallArgs, ENVELOPE_BYTE } from './payload.js';
export {
  PublishArgumentError, validateChannel, validateUserId, validatePrefix, MAX_NAME_LEN, RESERVED_PREFIX,
} from './validate.js';
export type { PublishArgumentField } from './validate.js';
