// A unique key prefix per test on the real Redis, and cleanup of everything under it.
import { randomBytes } from 'node:crypto';
import { createRedis, type Redis } from '../../src/shared/redis.js';

export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

export function uniquePrefix(label = 't'): string {
  return `wsjtest-${label}-${randomBytes(5).toString('hex')}`;
}

export async function deleteKeys(redis: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) await redis.del(...keys);
  } while (cursor !== '0');
}

export function testRedis(): Redis {
  return createRedis(TEST_REDIS_URL, { name: 'workspace-jobs-test' });
}
