// The Redis the tests run on, a unique key prefix per test, and cleanup of everything under it. In the
// `cluster` test project (test/**/*.cluster.test.ts) that Redis is a Redis Cluster (redis-cluster-setup.ts):
// connections are ioredis Clusters and prefixes carry a hash tag, as REDIS_CLUSTER requires.
import { randomBytes } from 'node:crypto';
import { inject } from 'vitest';
import {
  closeRedis,
  createRedis,
  isCluster,
  type Redis,
  type RedisClient,
  type RedisConnectionOptions,
} from '../../src/shared/redis.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Seed URL of the test Redis Cluster; provided only to the `cluster` project. */
    redisClusterUrl?: string;
  }
}

/** The single Redis (never a cluster): tests of what only a single node has (databases, CLIENT LIST). */
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

const CLUSTER_URL = inject('redisClusterUrl');

/** True in the `cluster` project: testClient, TEST_REDIS_ENV and uniquePrefix then target the cluster. */
export const ON_CLUSTER = CLUSTER_URL !== undefined;

/** REDIS_URL (and REDIS_CLUSTER) of the Redis under test, for a Config or a CLI process. */
export const TEST_REDIS_ENV: Record<string, string> =
  CLUSTER_URL !== undefined
    ? { REDIS_URL: CLUSTER_URL, REDIS_CLUSTER: 'true' }
    : { REDIS_URL: TEST_REDIS_URL };

/** On a cluster the prefix is one hash tag, so that all of a test's keys share a slot. */
export function uniquePrefix(label = 't'): string {
  const prefix = `wsjtest-${label}-${randomBytes(5).toString('hex')}`;
  return ON_CLUSTER ? `{${prefix}}` : prefix;
}

export async function deleteKeys(redis: RedisClient, prefix: string): Promise<void> {
  // SCAN sees one node's keys: on a cluster, scan every master.
  const nodes = isCluster(redis) ? redis.nodes('master') : [redis];
  for (const node of nodes) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length) await node.del(...keys);
    } while (cursor !== '0');
  }
}

/** Deletes a prefix's keys on a connection of its own: for a test whose processes wrote under the prefix. */
export async function removePrefix(prefix: string): Promise<void> {
  const redis = testClient();
  try {
    await deleteKeys(redis, prefix);
  } finally {
    await closeRedis(redis);
  }
}

/** A connection to the single test Redis. */
export function testRedis(): Redis {
  return createRedis(TEST_REDIS_URL, { name: 'workspace-jobs-test' });
}

/** A connection to the Redis under test: the Redis Cluster in the `cluster` project, else testRedis's. */
export function testClient(options: RedisConnectionOptions = {}): RedisClient {
  return createRedis(CLUSTER_URL ?? TEST_REDIS_URL, {
    name: 'workspace-jobs-test',
    ...options,
    cluster: ON_CLUSTER,
  });
}
