// Start-up checks: before a command opens its connections, each service it uses must answer within a few
// seconds, or the command stops with one line naming the service, its URL (without password), the cause
// and what to do. Without them a first run without Redis retries forever and floods the log. Outages after
// start-up are the connections' business (redis.ts, postgres.ts, notifications.ts): they are survived.
import pg from 'pg';
import { Redis } from 'ioredis';
import { sleep } from './errors.js';
import type { Config } from './config.js';
import type { Logger } from './logger.js';
import { redactUrl } from './redis.js';
import { quorumOf } from './lock-vote.js';

/** What a command uses, and so must find at start-up. */
export interface ServiceNeeds {
  /** REDIS_URL. */
  redis?: boolean;
  /** LOCK_REDIS_URLS (when they are other nodes than REDIS_URL): a quorum of them. */
  lockNodes?: boolean;
  /**
   * DATABASE_URL: `database` needs the database to exist; `server` only the server (for the commands that
   * create the database when it is missing).
   */
  postgres?: 'database' | 'server';
}

export interface PreflightOptions {
  /** How long each service may take to answer; a refused connection is retried meanwhile. Default 3000. */
  timeoutMs?: number;
  /** Pause between attempts. Default 250. */
  retryDelayMs?: number;
  /** Where a lock node that is down while a quorum answers is reported. */
  log?: Logger;
}

/** A service a command needs did not answer; the message is the one line to show. */
export class ServiceUnavailableError extends Error {
  override name = 'ServiceUnavailableError';
}

/** Resolves when every service in `needs` answers; else rejects with one ServiceUnavailableError. */
export async function preflight(
  config: Config,
  needs: ServiceNeeds,
  options: PreflightOptions = {},
): Promise<void> {
  const checks: Promise<void>[] = [];
  if (needs.redis) checks.push(requireRedis(config.redisUrl, config.redisCluster ?? false, options));
  const lockUrls = config.lockRedisUrls.filter((url) => url !== config.redisUrl);
  if (needs.lockNodes && lockUrls.length > 0) checks.push(requireLockQuorum(config.lockRedisUrls, options));
  if (needs.postgres) checks.push(requirePostgres(config.databaseUrl, needs.postgres, options));
  // All at once, so the wait is one timeout however many services are down; the first failure is the line.
  const results = await Promise.allSettled(checks);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/** A cluster's seed nodes (REDIS_URL, comma-separated) are all asked; one that answers is enough. */
async function requireRedis(url: string, cluster: boolean, options: PreflightOptions): Promise<void> {
  const seeds = cluster ? url.split(',') : [url];
  const failures = await Promise.all(seeds.map((u) => redisFailure(u, options)));
  if (failures.includes(undefined)) return;
  throw unavailable(
    cluster ? 'Redis Cluster' : 'Redis',
    seeds.map(redactUrl).join(','),
    failures[0]!,
    'start it (redis-server) or set REDIS_URL',
  );
}

/** Jobs take the chat lock on a majority of the nodes: a minority may be down (reported), not more. */
async function requireLockQuorum(urls: string[], options: PreflightOptions): Promise<void> {
  const failures = await Promise.all(urls.map((url) => redisFailure(url, options)));
  const down = urls.flatMap((url, i) => (failures[i] ? [{ url, cause: failures[i] }] : []));
  const quorum = quorumOf(urls.length);
  if (urls.length - down.length >= quorum) {
    for (const { url, cause } of down) {
      options.log?.warn(
        { url: redactUrl(url), cause: causeOf(cause) },
        'a lock node is unreachable; locking goes on with the others',
      );
    }
    return;
  }
  const names = down.map(({ url }) => redactUrl(url)).join(', ');
  throw new ServiceUnavailableError(
    `${down.length} of ${urls.length} lock Redis nodes (${names}) are unreachable (${causeOf(down[0]!.cause)}); ` +
      `a lock needs ${quorum}: start them (redis-server) or set LOCK_REDIS_URLS`,
  );
}

/** Undefined when Redis answers PING within the bound, else why not. */
async function redisFailure(url: string, options: PreflightOptions): Promise<Error | undefined> {
  const timeoutMs = options.timeoutMs ?? 3_000;
  const deadline = Date.now() + timeoutMs;
  let lastError: Error | undefined;
  for (;;) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) return lastError ?? new Error(`no answer within ${timeoutMs} ms`);
    const client = new Redis(url, {
      lazyConnect: true,
      connectTimeout: remaining,
      commandTimeout: remaining,
      retryStrategy: () => null,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      connectionName: 'workspace-jobs-preflight',
    });
    // The 'error' event carries the cause (ECONNREFUSED, ...); connect() only says the connection closed.
    let cause: Error | undefined;
    client.on('error', (error: Error) => (cause ??= error));
    try {
      await client.connect();
      await client.ping();
      return undefined;
    } catch (error) {
      lastError = cause ?? (error as Error);
      // The server answered and refused (WRONGPASS, NOAUTH, ...): waiting will not change that.
      if (isServerReply(lastError)) return lastError;
    } finally {
      // A connection that failed has ended already; disconnect() would arm a 2 s timer for a close that
      // never comes, and keep the process alive that long.
      if (client.status !== 'end') client.disconnect();
    }
    await sleep(Math.min(options.retryDelayMs ?? 250, Math.max(0, deadline - Date.now())));
  }
}

function isServerReply(error: Error): boolean {
  return error.name === 'ReplyError';
}

async function requirePostgres(
  url: string,
  need: 'database' | 'server',
  options: PreflightOptions,
): Promise<void> {
  const timeoutMs = options.timeoutMs ?? 3_000;
  const deadline = Date.now() + timeoutMs;
  let lastError: Error | undefined;
  for (;;) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) break;
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: remaining });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('SELECT 1');
      return;
    } catch (error) {
      lastError = error as Error;
      const code = (error as { code?: unknown }).code;
      // invalid_catalog_name: the server answered, the database is missing.
      if (code === '3D000') {
        if (need === 'server') return;
        throw new ServiceUnavailableError(
          `the Postgres database at ${redactUrl(url)} does not exist; create it with 'workspace-jobs migrate'`,
        );
      }
      // Any other SQLSTATE is the server refusing us (authentication, permissions): no use waiting.
      if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) {
        throw new ServiceUnavailableError(
          `Postgres at ${redactUrl(url)} refused the connection (${lastError.message}); check DATABASE_URL`,
        );
      }
    } finally {
      await client.end().catch(() => {});
    }
    await sleep(Math.min(options.retryDelayMs ?? 250, Math.max(0, deadline - Date.now())));
  }
  throw unavailable(
    'Postgres',
    redactUrl(url),
    lastError ?? new Error(`no answer within ${timeoutMs} ms`),
    'start it (e.g. pg_ctlcluster or systemctl start postgresql) or set DATABASE_URL',
  );
}

/** `shownUrl`: already without its password. */
function unavailable(service: string, shownUrl: string, cause: Error, hint: string): ServiceUnavailableError {
  return new ServiceUnavailableError(`${service} at ${shownUrl} is unreachable (${causeOf(cause)}); ${hint}`);
}

/** A one-line cause: ioredis and pg wrap a refused connection as an AggregateError with an empty message. */
function causeOf(error: Error): string {
  if (error.message) return error.message;
  if (error instanceof AggregateError && error.errors[0] instanceof Error) return causeOf(error.errors[0]);
  return (error as { code?: string }).code ?? error.name;
}
