// ioredis connections. BullMQ needs `maxRetriesPerRequest: null` on the connections it blocks on; every
// other client fails commands after a few retries so that a Redis outage surfaces as an error, not a hang.
// Every connection made here has an 'error' listener: ioredis without one prints "[ioredis] Unhandled error
// event" stack traces on every reconnect attempt. An outage is logged once (warn) and its end once (info).
// With `cluster` the connection is an ioredis Cluster (REDIS_CLUSTER): the same options apply to each of its
// node connections, and it is used like a single Redis everywhere (`RedisClient`).
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { withTimeout } from './errors.js';
import type { Logger } from './logger.js';

export { Cluster };
export type { Redis };

/** A single Redis or a Redis Cluster: whatever createRedis returns. */
export type RedisClient = Redis | Cluster;

/** By ioredis' own flag, not instanceof: a client made by another copy of ioredis is told apart too. */
export function isCluster(client: RedisClient): client is Cluster {
  return client.isCluster;
}

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
  /**
   * Commands sent in one turn of the event loop go out in one write and one round trip (ioredis's
   * auto-pipelining), for a connection that many concurrent jobs share and nothing blocks on. Default false.
   */
  pipelined?: boolean;
  /** A name shown in `CLIENT LIST`, and in the connection's log lines. */
  name?: string;
  /** Where the connection's outages are logged. Default: nowhere (the error is still handled). */
  log?: Logger;
  /** `url` is a Redis Cluster: a comma-separated list of seed node URLs. Default false. */
  cluster?: boolean;
}

/**
 * What a pub/sub subscriber connection needs (duplicateSubscriber): retry forever while reconnecting, and
 * no ready check, whose INFO a connection already in subscriber mode refuses (a SUBSCRIBE sent while
 * connecting can get there first).
 */
const SUBSCRIBER_OPTIONS = {
  maxRetriesPerRequest: null,
  enableReadyCheck: false,
  enableAutoPipelining: false,
} satisfies RedisOptions;

export function createRedis(url: string, options: RedisConnectionOptions & { cluster: true }): Cluster;
export function createRedis(url: string, options?: RedisConnectionOptions & { cluster?: false }): Redis;
export function createRedis(url: string, options?: RedisConnectionOptions): RedisClient;
export function createRedis(url: string, options: RedisConnectionOptions = {}): RedisClient {
  const { retryStrategy, ...redisOptions }: RedisOptions = {
    connectionName: options.name,
    maxRetriesPerRequest: options.blocking ? null : 3,
    connectTimeout: 10_000,
    enableAutoPipelining: options.pipelined ?? false,
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
  const client = options.cluster
    ? createCluster(url, redisOptions, retryStrategy)
    : new Redis(url, { ...redisOptions, retryStrategy });
  logRedisErrors(client, options.log, options.name);
  return client;
}

/**
 * The cluster takes the offline queue, auto-pipelining and the reconnect backoff for itself (its node connections get
 * neither: a node that fails is dropped and rediscovered); every other option goes to each node connection.
 * Credentials and TLS come from the first seed URL, since discovered nodes have no URL of their own.
 */
function createCluster(
  urls: string,
  { enableOfflineQueue, enableAutoPipelining, ...nodeOptions }: RedisOptions,
  retryStrategy: RedisOptions['retryStrategy'],
): Cluster {
  const seeds = urls.split(',').map((u) => new URL(u.trim()));
  const first = seeds[0]!;
  const clusterOptions: ClusterOptions = {
    ...(enableOfflineQueue !== undefined && { enableOfflineQueue }),
    ...(enableAutoPipelining !== undefined && { enableAutoPipelining }),
    clusterRetryStrategy: retryStrategy,
    redisOptions: {
      ...nodeOptions,
      ...(first.username && { username: decodeURIComponent(first.username) }),
      ...(first.password && { password: decodeURIComponent(first.password) }),
      ...(first.protocol === 'rediss:' && { tls: {} }),
    },
  };
  const cluster = new Cluster(
    seeds.map((seed) => ({ host: seed.hostname, port: Number(seed.port || 6379) })),
    clusterOptions,
  );
  clusterUrls.set(cluster, urls);
  return cluster;
}

/** The seed URLs each cluster was made from, for log lines (a Cluster keeps its seeds private). */
const clusterUrls = new WeakMap<Cluster, string>();

/**
 * A connection for pub/sub subscriber mode with the options of `client` (URL, TLS, password) and
 * SUBSCRIBER_OPTIONS, named `name`, its errors handled like createRedis's. A Cluster's duplicate takes
 * its node options under `redisOptions`, a Redis's at the top.
 */
export function duplicateSubscriber(client: RedisClient, name: string, log?: Logger): RedisClient {
  const subscriber = isCluster(client)
    ? client.duplicate([], {
        redisOptions: { ...client.options.redisOptions, ...SUBSCRIBER_OPTIONS, connectionName: name },
      })
    : client.duplicate({ ...SUBSCRIBER_OPTIONS, connectionName: name });
  if (isCluster(client)) clusterUrls.set(subscriber as Cluster, clusterUrls.get(client) ?? '');
  logRedisErrors(subscriber, log, name);
  return subscriber;
}

/**
 * Follows a pub/sub subscriber connection: `onMessage` for each message, `onReconnect` each time it is ready
 * again after losing its connection (ioredis resubscribes by itself, but what was published meanwhile is
 * lost, and its 'ready' comes before that resubscription). Returns the function that stops following.
 */
export function followSubscriber(
  client: RedisClient,
  onMessage: (channel: string, message: string) => void,
  onReconnect: () => void,
): () => void {
  let lost = false;
  const onClose = () => {
    lost = true;
  };
  const onReady = () => {
    if (!lost) return;
    lost = false;
    onReconnect();
  };
  client.on('message', onMessage);
  client.on('close', onClose);
  client.on('ready', onReady);
  return () => {
    client.off('message', onMessage);
    client.off('close', onClose);
    client.off('ready', onReady);
  };
}

/** How long unsubscribe() waits for Redis to confirm; the local subscription is gone at once either way. */
const UNSUBSCRIBE_WAIT_MS = 2_000;

/** UNSUBSCRIBE, bounded; a failure is logged, not thrown (the connection's owner closes it either way). */
export async function unsubscribe(client: RedisClient, channels: string[], log?: Logger): Promise<void> {
  try {
    await withTimeout(client.unsubscribe(...channels), UNSUBSCRIBE_WAIT_MS, 'UNSUBSCRIBE');
  } catch (error) {
    log?.warn({ err: error, channels }, 'could not unsubscribe from pub/sub channels');
  }
}

/** The name given to createRedis (shown in `CLIENT LIST`), for a Redis or a Cluster alike. */
export function connectionNameOf(client: RedisClient): string | undefined {
  return isCluster(client) ? client.options.redisOptions?.connectionName : client.options.connectionName;
}

/**
 * Handles a connection's 'error' events: the first error of an outage is logged as a warning with its
 * cause, the rest are dropped until the connection is ready again (logged once as info).
 */
export function logRedisErrors(
  client: RedisClient,
  log: Logger | undefined,
  name = connectionNameOf(client),
) {
  let failing = false;
  client.on('error', (err: Error) => {
    if (failing) return;
    failing = true;
    log?.warn(
      { err, redis: name, url: redactUrl(redisUrlOf(client)) },
      'Redis connection failed; reconnecting',
    );
  });
  // A connection the server closed (CLIENT KILL, a restart) emits no 'error' before it reconnects.
  client.on('reconnecting', () => {
    if (failing) return;
    failing = true;
    log?.warn({ redis: name, url: redactUrl(redisUrlOf(client)) }, 'Redis connection lost; reconnecting');
  });
  client.on('ready', () => {
    if (!failing) return;
    failing = false;
    log?.info({ redis: name }, 'Redis connection restored');
  });
}

function redisUrlOf(client: RedisClient): string {
  if (isCluster(client)) {
    // A Cluster made elsewhere (passed to the producer): the nodes it knows now.
    return clusterUrls.get(client) ?? client.nodes().map(redisUrlOf).join(',');
  }
  const { host, port, db } = client.options;
  return `redis://${host ?? '127.0.0.1'}:${port ?? 6379}/${db ?? 0}`;
}

/**
 * A URL fit for a log line or an error message: its password (and user) replaced by `***`. A comma-separated
 * list (a cluster's seeds) is redacted URL by URL.
 */
export function redactUrl(raw: string): string {
  if (raw.includes(',')) return raw.split(',').map(redactUrl).join(',');
  try {
    const url = new URL(raw);
    if (url.password) url.password = '***';
    return url.toString();
  } catch {
    return '(unparsable URL)';
  }
}

/** Closes a connection, falling back to a hard disconnect when QUIT does not answer in time. */
export async function closeRedis(client: RedisClient, timeoutMs = 2_000): Promise<void> {
  if (client.status === 'end') return;
  try {
    await withTimeout(client.quit(), timeoutMs, 'QUIT');
  } catch {
    client.disconnect();
  }
}
