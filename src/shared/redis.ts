// ioredis connections. BullMQ needs `maxRetriesPerRequest: null` on the connections it blocks on; every
// other client fails commands after a few retries so that a Redis outage surfaces as an error, not a hang.
import { Redis, type RedisOptions } from 'ioredis';
import { withTimeout } from './errors.js';

export type { Redis };

export interface RedisConnectionOptions {
  /** For BullMQ workers: retry commands forever while reconnecting. Default false. */
  blocking?: boolean;
  /** A name shown in `CLIENT LIST`. */
  name?: string;
}

/**
 * What a pub/sub subscriber connection needs (pass to `duplicate()`): retry forever while reconnecting, and
 * no ready check, whose INFO a connection already in subscriber mode refuses (a SUBSCRIBE sent while
 * connecting can get there first).
 */
export const SUBSCRIBER_OPTIONS = {
  maxRetriesPerRequest: null,
  enableReadyCheck: false,
} satisfies RedisOptions;

export function createRedis(url: string, options: RedisConnectionOptions = {}): Redis {
  const redisOptions: RedisOptions = {
    connectionName: options.name,
    maxRetriesPerRequest: options.blocking ? null : 3,
    connectTimeout: 10_000,
    // Reconnect with a capped backoff rather than giving up.
    retryStrategy: (times) => Math.min(times * 200, 5_000),
  };
  return new Redis(url, redisOptions);
}

/** Closes a connection, falling back to a hard disconnect when QUIT does not answer in time. */
export async function closeRedis(client: Redis, timeoutMs = 2_000): Promise<void> {
  if (client.status === 'end') return;
  try {
    await withTimeout(client.quit(), timeoutMs, 'QUIT');
  } catch {
    client.disconnect();
  }
}
