// ioredis connections. BullMQ needs `maxRetriesPerRequest: null` on the connections it blocks on; every
// other client fails commands after a few retries so that a Redis outage surfaces as an error, not a hang.
// Every connection made here has an 'error' listener: ioredis without one prints "[ioredis] Unhandled error
// event" stack traces on every reconnect attempt. An outage is logged once (warn) and its end once (info).
import { Redis, type RedisOptions } from 'ioredis';
import { withTimeout } from './errors.js';
import type { Logger } from './logger.js';

export type { Redis };

export interface RedisConnectionOptions {
  /** For BullMQ workers: retry commands forever while reconnecting. Default false. */
  blocking?: boolean;
  /**
   * For lock nodes: a command to an unreachable node fails at once (no offline queue, no per-request
   * retries) and a command that gets no answer fails after `commandTimeoutMs`, so that a dead Redlock
   * node costs milliseconds, not the reconnect backoff. Default false.
   */
  failFast?: boolean;
  /** With failFast: how long a command may wait for its answer. Default 500. */
  commandTimeoutMs?: number;
  /** A name shown in `CLIENT LIST`, and in the connection's log lines. */
  name?: string;
  /** Where the connection's outages are logged. Default: nowhere (the error is still handled). */
  log?: Logger;
}

/**
 * What a pub/sub subscriber connection needs (pass to `duplicate()`): retry forever while reconnecting, and
 * no ready check, whose INFO a connection already in subscriber mode refuses (a SUBSCRIBE sent while
 * connecting can get there first). Give the duplicate its own listener with `logRedisErrors`.
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
    ...(options.failFast && {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: 1_000,
      commandTimeout: options.commandTimeoutMs ?? 500,
      // A lock node that comes back is used again within a second.
      retryStrategy: (times: number) => Math.min(times * 100, 1_000),
    }),
  };
  const client = new Redis(url, redisOptions);
  logRedisErrors(client, options.log, options.name);
  return client;
}

/**
 * Handles a connection's 'error' events: the first error of an outage is logged as a warning with its
 * cause, the rest are dropped until the connection is ready again (logged once as info).
 */
export function logRedisErrors(client: Redis, log: Logger | undefined, name = client.options.connectionName) {
  let failing = false;
  client.on('error', (err: Error) => {
    if (failing) return;
    failing = true;
    log?.warn(
      { err, redis: name, url: redactUrl(redisUrlOf(client)) },
      'Redis connection failed; reconnecting',
    );
  });
  client.on('ready', () => {
    if (!failing) return;
    failing = false;
    log?.info({ redis: name }, 'Redis connection restored');
  });
}

function redisUrlOf(client: Redis): string {
  const { host, port, db } = client.options;
  return `redis://${host ?? '127.0.0.1'}:${port ?? 6379}/${db ?? 0}`;
}

/** A URL fit for a log line or an error message: its password (and user) replaced by `***`. */
export function redactUrl(raw: string): string {
  try {
    const url = new URL(raw);
    if (url.password) url.password = '***';
    return url.toString();
  } catch {
    return '(unparsable URL)';
  }
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
