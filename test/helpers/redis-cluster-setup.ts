// Global setup of the `cluster` test project: the Redis Cluster its tests run on. TEST_REDIS_CLUSTER_URL
// (set by .ci/run) names one that is running; without it, a 3-master cluster is started on free loopback
// ports with scripts/redis-cluster.sh and stopped after the run. No redis-server and no cluster: the run
// fails, saying so (the cluster tests are never skipped silently).
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestProject } from 'vitest/node';
import { withTimeout } from '../../src/shared/errors.js';
import { closeRedis, createRedis, redactUrl } from '../../src/shared/redis.js';
import { REPO_ROOT } from './cli-process.js';

const run = promisify(execFile);
const SCRIPT = join(REPO_ROOT, 'scripts/redis-cluster.sh');
const MASTERS = 3;
/** Cluster bus port = port + 10000, so ports come from below 55535. */
const PORT_RANGE = [20_000, 30_000] as const;
const START_TIMEOUT_MS = 60_000;
/** How long a cluster may take to answer CLUSTER INFO. */
const CHECK_TIMEOUT_MS = 15_000;

export default async function setup(project: TestProject): Promise<(() => Promise<void>) | undefined> {
  const given = process.env.TEST_REDIS_CLUSTER_URL;
  if (given) {
    await assertClusterOk(given);
    project.provide('redisClusterUrl', given);
    return undefined;
  }
  await run('redis-server', ['--version']).catch((error: unknown) => {
    throw new Error(
      'the cluster tests need a Redis Cluster: set TEST_REDIS_CLUSTER_URL, or install redis-server ' +
        '(apt-get install redis-server) so that they start one',
      { cause: error },
    );
  });
  const dir = await mkdtemp(join(tmpdir(), 'wsjobs-test-cluster-'));
  const stop = async () => {
    await run(SCRIPT, ['stop', dir], { timeout: START_TIMEOUT_MS });
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const ports = await freePorts(MASTERS);
    await run(SCRIPT, ['start', dir, ...ports.map(String)], { timeout: START_TIMEOUT_MS });
    const url = ports.map((port) => `redis://127.0.0.1:${port}`).join(',');
    await assertClusterOk(url);
    project.provide('redisClusterUrl', url);
  } catch (error) {
    await stop();
    throw error;
  }
  return stop;
}

async function assertClusterOk(url: string): Promise<void> {
  const cluster = createRedis(url, { cluster: true, name: 'workspace-jobs-test-setup' });
  try {
    const info = (await withTimeout(
      cluster.cluster('INFO'),
      CHECK_TIMEOUT_MS,
      `CLUSTER INFO on the test Redis Cluster at ${redactUrl(url)}`,
    )) as string;
    if (!/^cluster_state:ok/m.test(info)) {
      throw new Error(`the test Redis Cluster at ${redactUrl(url)} is not ok:\n${info}`);
    }
  } finally {
    await closeRedis(cluster);
  }
}

/** `count` ports that are free, each with its cluster bus port (+10000) free too. */
async function freePorts(count: number): Promise<number[]> {
  const ports: number[] = [];
  for (let tries = 0; ports.length < count && tries < 200; tries++) {
    const port = PORT_RANGE[0] + Math.floor(Math.random() * (PORT_RANGE[1] - PORT_RANGE[0]));
    if (ports.includes(port) || ports.includes(port + 10_000)) continue;
    if ((await isFree(port)) && (await isFree(port + 10_000))) ports.push(port);
  }
  if (ports.length < count) throw new Error(`found no ${count} free port pairs for a Redis Cluster`);
  return ports;
}

function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}
