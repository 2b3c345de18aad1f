// Configuration from the environment (docs/design.md §3). Every variable is optional; a bad value
// stops the process at start-up with a message naming the variable.

/** Configuration (docs/design.md §3): what loadConfig reads from the environment. */
export interface Config {
  /**
   * Queue, events. Default `redis://127.0.0.1:6379`. With `redisCluster`, the cluster's seed nodes,
   * comma-separated (one is enough; the others are discovered).
   */
  redisUrl: string;
  /** REDIS_CLUSTER: `redisUrl` is a Redis Cluster. Default false. */
  redisCluster?: boolean;
  /** Independent Redis nodes for the chat lock; 3 or more = Redlock quorum. Default `[redisUrl]`. */
  lockRedisUrls: string[];
  /**
   * The lock's one node (`lockRedisUrls[0]`, then `redisUrl`) is a Redis Cluster: REDIS_CLUSTER without
   * LOCK_REDIS_URLS. Default false.
   */
  lockRedisCluster?: boolean;
  /** Default `postgres://postgres@127.0.0.1:5432/workspace_jobs`. */
  databaseUrl: string;
  /**
   * BullMQ prefix and prefix of every Redis key and channel. Default `wsjobs` (`{wsjobs}` on a cluster,
   * where it must carry a hash tag).
   */
  queuePrefix: string;
  /** Jobs one worker process runs at once. Default 50. */
  workerConcurrency: number;
  /**
   * Of those, jobs doing their work at once (not waiting on a change): the rest wait for a slot before their
   * chat lock (src/worker/admission.ts). Default: 4 × the worker's Postgres pool (80 from concurrency 100).
   */
  workerAdmittedJobs?: number;
  /** Default 600000 (Coder's 10 minutes). */
  buildTimeoutMs: number;
  /** Default 120000 (Coder's 2 minutes). */
  agentConnectTimeoutMs: number;
  /** Default 600000 (Coder's 10 minutes). */
  startupScriptTimeoutMs: number;
  /** Attempts for transient failures, exponential backoff with jitter. Default 5. */
  jobAttempts: number;
  /** BullMQ's job lock (lockDuration): a dead worker's jobs are recoverable once it expires. Default 5000. */
  jobLockMs: number;
  /** How often each worker looks for jobs whose lock expired (BullMQ's stalledInterval). Default 2000. */
  stalledIntervalMs: number;
  /** The chat lock's TTL, refreshed every third of it; a dead holder's lock is free after it. Default 6000. */
  chatLockTtlMs: number;
  /** Base URL of the workspace web UI; manual-update errors then carry a settings link. */
  accessUrl?: string;
  logLevel: string;
  dashboardPort: number;
  dashboardHost: string;
  dashboardUser?: string;
  dashboardPassword?: string;
  dashboardReadOnly: boolean;
  /** Origins the dashboard is also reached at (behind a proxy that rewrites Host), for its cross-site check. */
  dashboardAllowedOrigins?: string[];
  /** Open event streams allowed per client address (default 32) and in total (default 1000). */
  dashboardSseMaxPerClient?: number;
  dashboardSseMaxStreams?: number;
  /** The worker serves /metrics and /healthz on this port when set (0 = any free port). */
  metricsPort?: number;
  /**
   * Where the worker's metrics server listens. Default 0.0.0.0: scrapers and probes come from outside the
   * container, and nothing it serves is sensitive (see metrics-server.ts).
   */
  metricsHost?: string;
}

/** JOB_ATTEMPTS when unset: attempts for transient failures. */
export const DEFAULT_JOB_ATTEMPTS = 5;
/** DASHBOARD_SSE_MAX_PER_CLIENT and DASHBOARD_SSE_MAX_STREAMS when unset. */
export const DEFAULT_SSE_MAX_PER_CLIENT = 32;
export const DEFAULT_SSE_MAX_STREAMS = 1_000;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export type Env = Record<string, string | undefined>;

export function value(env: Env, name: string): string | undefined {
  const raw = env[name]?.trim();
  return raw === '' ? undefined : raw;
}

export function url(env: Env, name: string, fallback: string, protocols: string[]): string {
  const raw = value(env, name) ?? fallback;
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new ConfigError(`${name} is not a URL: ${JSON.stringify(raw)}`);
  }
  if (!protocols.includes(parsed.protocol)) {
    throw new ConfigError(
      `${name} must be a ${protocols.join(' or ')} URL, got ${JSON.stringify(parsed.protocol)}`,
    );
  }
  return raw;
}

/** A comma-separated list of at least one URL, each checked like `url`. */
function urlList(env: Env, name: string, fallback: string, protocols: string[]): string[] {
  const urls = (value(env, name) ?? fallback)
    .split(',')
    .map((u) => u.trim())
    .filter(Boolean)
    .map((u) => url({ [name]: u }, name, u, protocols));
  if (urls.length === 0) throw new ConfigError(`${name} names no URL`);
  return urls;
}

/**
 * The part of a key Redis Cluster hashes (its hash tag): what is between the first `{` and the next `}`,
 * when that is not empty. Every key made from such a prefix lands in the slot of that tag.
 */
export function hashTag(key: string): string | undefined {
  const open = key.indexOf('{');
  if (open < 0) return undefined;
  const close = key.indexOf('}', open + 1);
  return close > open + 1 ? key.slice(open + 1, close) : undefined;
}

export function integer(
  env: Env,
  name: string,
  fallback: number | undefined,
  min: number,
  max: number,
): number | undefined {
  const raw = value(env, name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new ConfigError(`${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return n;
}

/**
 * A comma-separated list of web origins (`https://host[:port]`, nothing after it), normalised as browsers send
 * them in the Origin header.
 */
function originList(env: Env, name: string): string[] {
  return (value(env, name) ?? '')
    .split(',')
    .map((o) => o.trim())
    .filter(Boolean)
    .map((o) => {
      const parsed = new URL(url({ [name]: o }, name, o, ['http:', 'https:']));
      if (parsed.pathname !== '/' || parsed.search || parsed.hash || parsed.username || parsed.password) {
        throw new ConfigError(
          `${name} takes origins (scheme, host and port only, e.g. https://jobs.example.com), got ${JSON.stringify(o)}`,
        );
      }
      return parsed.origin;
    });
}

function boolean(env: Env, name: string): boolean {
  const raw = value(env, name)?.toLowerCase();
  if (raw === undefined || raw === 'false' || raw === '0') return false;
  if (raw === 'true' || raw === '1') return true;
  throw new ConfigError(`${name} must be true or false, got ${JSON.stringify(env[name])}`);
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const REDIS = ['redis:', 'rediss:'];
export const DAY_MS = 24 * 60 * 60 * 1000;

export function loadConfig(env: Env = process.env): Config {
  const redisCluster = boolean(env, 'REDIS_CLUSTER');
  const redisUrl = redisCluster
    ? urlList(env, 'REDIS_URL', 'redis://127.0.0.1:6379', REDIS).join(',')
    : url(env, 'REDIS_URL', 'redis://127.0.0.1:6379', REDIS);
  const lockRedisUrls = value(env, 'LOCK_REDIS_URLS')
    ? urlList(env, 'LOCK_REDIS_URLS', '', REDIS)
    : [redisUrl];
  if (lockRedisUrls.length === 2) {
    throw new ConfigError(
      'LOCK_REDIS_URLS names 2 nodes: give 1 (a single lock node) or 3 or more (Redlock quorum)',
    );
  }

  const queuePrefix = value(env, 'QUEUE_PREFIX') ?? (redisCluster ? '{wsjobs}' : 'wsjobs');
  if (!/^[\w{}.-]+$/.test(queuePrefix)) {
    throw new ConfigError(
      `QUEUE_PREFIX may only hold letters, digits, _ . - { }, got ${JSON.stringify(queuePrefix)}`,
    );
  }
  if (redisCluster && hashTag(queuePrefix) === undefined) {
    throw new ConfigError(
      `QUEUE_PREFIX ${JSON.stringify(queuePrefix)} has no hash tag, but REDIS_CLUSTER=true: every key of the ` +
        `queue and of a chat must be in one cluster slot, so wrap (part of) it in braces, e.g. "{${queuePrefix.replace(/[{}]/g, '')}}"`,
    );
  }

  const logLevel = value(env, 'LOG_LEVEL') ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError(
      `LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`,
    );
  }

  const accessUrl = value(env, 'ACCESS_URL');
  if (accessUrl !== undefined) url(env, 'ACCESS_URL', accessUrl, ['http:', 'https:']);

  const dashboardUser = value(env, 'DASHBOARD_USER');
  const dashboardPassword = value(env, 'DASHBOARD_PASSWORD');
  if ((dashboardUser === undefined) !== (dashboardPassword === undefined)) {
    throw new ConfigError('DASHBOARD_USER and DASHBOARD_PASSWORD must be set together');
  }

  return {
    redisUrl,
    redisCluster,
    lockRedisUrls,
    // Without LOCK_REDIS_URLS the lock lives on the cluster itself (one logical node).
    lockRedisCluster: redisCluster && value(env, 'LOCK_REDIS_URLS') === undefined,
    databaseUrl: url(env, 'DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/workspace_jobs', [
      'postgres:',
      'postgresql:',
    ]),
    queuePrefix,
    workerConcurrency: integer(env, 'WORKER_CONCURRENCY', 50, 1, 10_000)!,
    workerAdmittedJobs: integer(env, 'WORKER_ADMITTED_JOBS', undefined, 1, 10_000),
    buildTimeoutMs: integer(env, 'BUILD_TIMEOUT_MS', 600_000, 1, DAY_MS)!,
    agentConnectTimeoutMs: integer(env, 'AGENT_CONNECT_TIMEOUT_MS', 120_000, 1, DAY_MS)!,
    startupScriptTimeoutMs: integer(env, 'STARTUP_SCRIPT_TIMEOUT_MS', 600_000, 1, DAY_MS)!,
    jobAttempts: integer(env, 'JOB_ATTEMPTS', DEFAULT_JOB_ATTEMPTS, 1, 100)!,
    jobLockMs: integer(env, 'JOB_LOCK_MS', 5_000, 1_000, 600_000)!,
    stalledIntervalMs: integer(env, 'STALLED_INTERVAL_MS', 2_000, 100, 600_000)!,
    chatLockTtlMs: integer(env, 'CHAT_LOCK_TTL_MS', 6_000, 1_000, 600_000)!,
    accessUrl: accessUrl?.replace(/\/+$/, ''),
    logLevel,
    dashboardPort: integer(env, 'DASHBOARD_PORT', 3000, 0, 65_535)!,
    dashboardHost: value(env, 'DASHBOARD_HOST') ?? '127.0.0.1',
    dashboardUser,
    dashboardPassword,
    dashboardReadOnly: boolean(env, 'DASHBOARD_READ_ONLY'),
    dashboardAllowedOrigins: originList(env, 'DASHBOARD_ALLOWED_ORIGINS'),
    dashboardSseMaxPerClient: integer(
      env,
      'DASHBOARD_SSE_MAX_PER_CLIENT',
      DEFAULT_SSE_MAX_PER_CLIENT,
      1,
      1_000_000,
    )!,
    dashboardSseMaxStreams: integer(env, 'DASHBOARD_SSE_MAX_STREAMS', DEFAULT_SSE_MAX_STREAMS, 1, 1_000_000)!,
    metricsPort: integer(env, 'METRICS_PORT', undefined, 0, 65_535),
    metricsHost: value(env, 'METRICS_HOST') ?? '0.0.0.0',
  };
}
