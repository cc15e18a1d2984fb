// A Redis Cluster of three masters (no replicas) on loopback: cluster-enabled
// redis-servers, each in its own temporary --dir, joined by
// `redis-cli --cluster create`. Like every process of procs.mjs, the nodes
// are killed when the file ends, whatever happened; start() stops the nodes
// it started when the cluster does not come up.

import { execFile } from 'node:child_process';
import path from 'node:path';
import { redisCmd } from './resp.mjs';
import { exited, freePort, slurp, spawnLogged, stopGroup, tempDir, waitUntil } from './procs.mjs';
import { REDIS_BIN } from './redis.mjs';

export const REDIS_CLI = process.env.REDIS_CLI || 'redis-cli';

/** `echo yes | redis-cli --cluster create ...`: { code, out }, bounded by timeoutMs. */
function clusterCreate(ports, timeoutMs = 30000) {
  return new Promise((resolve) => {
    const args = ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0'];
    const child = execFile(REDIS_CLI, args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out: String(stdout) + String(stderr) });
    });
    child.stdin.end('yes\n');
  });
}

export class RedisCluster {
  constructor({ masters = 3 } = {}) {
    this.nodes = Array.from({ length: masters }, () => ({ dir: tempDir('redis-cluster'), port: 0, child: null }));
  }

  get ports() { return this.nodes.map((n) => n.port); }

  async start(timeoutMs = 15000) {
    try {
      for (const node of this.nodes) {
        node.port = await freePort();
        // The bus port is set: the default, port + 10000, may be taken or beyond 65535.
        const bus = await freePort();
        node.child = spawnLogged('redis-server', REDIS_BIN, [
          '--port', String(node.port), '--bind', '127.0.0.1', '--daemonize', 'no',
          '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-port', String(bus),
          '--save', '', '--appendonly', 'no', '--dir', node.dir, '--logfile', path.join(node.dir, 'redis.log'),
        ], path.join(node.dir, 'redis.out'));
      }
      for (const node of this.nodes) {
        const up = await waitUntil(async () => {
          if (exited(node.child)) throw new Error('exited');
          return (await redisCmd(node.port, 'PING')) === 'PONG';
        }, timeoutMs, 30);
        if (!up) throw new Error(`redis-server ${node.port} did not start:\n${slurp(path.join(node.dir, 'redis.log'))}`);
      }
      const created = await clusterCreate(this.ports);
      if (created.code !== 0) throw new Error(`redis-cli --cluster create failed:\n${created.out}`);
      const ok = await waitUntil(async () => {
        const infos = await Promise.all(this.ports.map((p) => redisCmd(p, 'CLUSTER', 'INFO')));
        return infos.every((i) => i.includes('cluster_state:ok'));
      }, timeoutMs, 50);
      if (!ok) throw new Error('the cluster did not reach cluster_state:ok');
    } catch (e) {
      await this.stop();
      throw e;
    }
    return this;
  }

  async stop() {
    for (const node of this.nodes) {
      if (node.child) await stopGroup(node.child, 'SIGTERM', 5000);
      node.child = null;
    }
  }

  cmd(port, ...args) { return redisCmd(port, ...args); }

  /** The port of the master that serves `key`'s hash slot. */
  async ownerOf(key) {
    const slot = await redisCmd(this.ports[0], 'CLUSTER', 'KEYSLOT', key);
    const ranges = await redisCmd(this.ports[0], 'CLUSTER', 'SLOTS');
    const range = ranges.find(([from, to]) => slot >= from && slot <= to);
    if (!range) throw new Error(`no master serves slot ${slot}`);
    return Number(range[2][1]);
  }

  /** { port: channel } with one channel `${stem}:N` on each master. */
  async oneChannelPerMaster(stem) {
    const found = {};
    for (let i = 0; i < 1000 && Object.keys(found).length < this.nodes.length; i++) {
      const channel = `${stem}:${i}`;
      found[await this.ownerOf(channel)] ??= channel;
    }
    if (Object.keys(found).length < this.nodes.length) throw new Error(`no ${stem}:N channel for every master`);
    return found;
  }
}
