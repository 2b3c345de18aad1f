// Shared helpers of the benchmarks: timing and percentiles, one result line per measurement, a throwaway
// Redis key prefix and Postgres database per run, and a bounded runner that always cleans up and exits
// non-zero when a benchmark fails or runs out of time.
import { randomBytes, randomUUID } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import { Redis as RedisClient } from 'ioredis';
import pg from 'pg';
import { insertBuild, insertChat, insertWorkspace } from '../src/cli/fixtures.js';
import type { EventDraft } from '../src/shared/contract.js';
import { migrate } from '../src/shared/migrate.js';
import { createPool, type Pool } from '../src/shared/postgres.js';
import { closeRedis, createRedis, type Redis } from '../src/shared/redis.js';

export const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';
/** Any database on the server; the benchmarks create (and drop) their own next to it. */
export const DATABASE_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

// ---------------------------------------------------------------------------------------------------
// Measuring

export const now = (): number => performance.now();

export interface Stats {
  n: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
  mean: number;
}

/** Nearest-rank percentiles of `samples` (milliseconds). */
export function stats(samples: number[]): Stats {
  if (samples.length === 0) return { n: 0, p50: NaN, p95: NaN, p99: NaN, max: NaN, mean: NaN };
  const sorted = Float64Array.from(samples).sort();
  const at = (p: number) =>
    sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
  let sum = 0;
  for (const s of sorted) sum += s;
  return {
    n: sorted.length,
    p50: at(0.5),
    p95: at(0.95),
    p99: at(0.99),
    max: sorted[sorted.length - 1]!,
    mean: sum / sorted.length,
  };
}

/**
 * Resident set size and V8 heap in MiB. With `afterGc` and node's --expose-gc (bench/run.ts passes it), a
 * full collection runs first, so the heap is what is still retained.
 */
export function memory(afterGc = false): { rssMb: number; heapMb: number } {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (afterGc && gc) gc();
  const { rss, heapUsed } = process.memoryUsage();
  return { rssMb: rss / 2 ** 20, heapMb: heapUsed / 2 ** 20 };
}

/** Runs `fn` over `items` with at most `limit` calls in flight; results in input order. */
export async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T, index: number) => Promise<R>) {
  const results = new Array<R>(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await fn(items[index]!, index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  return results;
}

/** Times each call of `fn` over `items` (at most `concurrency` in flight): per-call latencies and wall time. */
export async function timed<T, R>(
  items: T[],
  concurrency: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<{ results: R[]; latencies: number[]; elapsedMs: number; opsPerSec: number }> {
  const latencies = new Array<number>(items.length);
  const started = now();
  const results = await mapLimit(items, concurrency, async (item, index) => {
    const t0 = now();
    const result = await fn(item, index);
    latencies[index] = now() - t0;
    return result;
  });
  const elapsedMs = now() - started;
  return { results, latencies, elapsedMs, opsPerSec: (items.length / elapsedMs) * 1000 };
}

export class BenchFailure extends Error {
  override name = 'BenchFailure';
}

export function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new BenchFailure(message);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Polls `probe` every 10 ms until it returns a value, failing the run after `timeoutMs`. A loop, not
 * vi.waitFor: the benchmarks run outside vitest.
 */
export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs: number,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    check(Date.now() < deadline, `no ${what} within ${timeoutMs} ms`);
    await sleep(10);
  }
}

/** The `i`-th event of a chat, as a build in progress sends them (`data.i` = i). */
export function progressDraft(chatId: string, i: number): EventDraft {
  return {
    type: 'progress',
    stage: 'build_running',
    job: { id: randomUUID(), name: 'start-workspace', attempt: 1 },
    chatId,
    workspaceId: chatId,
    message: `Build #${i} is running`,
    data: { i, build_number: i, transition: 'start' },
  };
}

// ---------------------------------------------------------------------------------------------------
// Reporting: one line per measurement on stdout, and a JSON line for bench/run.ts's summary table.

export interface Result {
  case: string;
  /** Operations measured. */
  n: number;
  opsPerSec?: number;
  /** Latency percentiles in ms. */
  latency?: Stats;
  /** Anything else worth a column: dedup share, memory, queries... */
  notes?: string;
}

let currentBench = 'bench';

const num = (value: number, digits = 0) =>
  value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

export const ms = (value: number) => (value < 10 ? num(value, 2) : value < 100 ? num(value, 1) : num(value));

export function formatOps(value: number): string {
  return value >= 100 ? num(value) : num(value, 1);
}

export function report(result: Result): void {
  const parts = [`${currentBench}: ${result.case}`.padEnd(52), `n=${result.n}`.padEnd(8)];
  if (result.opsPerSec !== undefined) parts.push(`${formatOps(result.opsPerSec)} ops/s`.padStart(14));
  if (result.latency) {
    const l = result.latency;
    parts.push(`p50 ${ms(l.p50)}  p95 ${ms(l.p95)}  p99 ${ms(l.p99)}  max ${ms(l.max)} ms`);
  }
  if (result.notes) parts.push(`(${result.notes})`);
  console.log(parts.join('  '));
  const file = process.env.BENCH_RESULTS_FILE;
  if (file) appendFileSync(file, `${JSON.stringify({ bench: currentBench, ...result })}\n`);
}

// ---------------------------------------------------------------------------------------------------
// Throwaway resources

export function uniquePrefix(label: string): string {
  return `wsjbench-${label}-${randomBytes(5).toString('hex')}`;
}

/** Deletes every key under `<prefix>:`. */
export async function deleteKeys(redis: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) deleted += await redis.del(...keys);
  } while (cursor !== '0');
  return deleted;
}

/** Cleanup steps, run last-in first-out, each bounded, whatever happened before. */
export class Cleanup {
  private readonly steps: { label: string; fn: () => Promise<unknown> }[] = [];

  add(label: string, fn: () => Promise<unknown>): void {
    this.steps.push({ label, fn });
  }

  async run(): Promise<boolean> {
    let ok = true;
    while (this.steps.length > 0) {
      const { label, fn } = this.steps.pop()!;
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          fn(),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error('timed out after 15 s')), 15_000);
          }),
        ]);
      } catch (error) {
        ok = false;
        console.error(`${currentBench}: cleanup "${label}" failed: ${(error as Error).message}`);
      } finally {
        clearTimeout(timer);
      }
    }
    return ok;
  }
}

/** A Redis connection closed at cleanup, after everything under `prefix` has been deleted. */
export function benchRedis(cleanup: Cleanup, prefix: string, name = 'workspace-jobs-bench'): Redis {
  const redis = createRedis(REDIS_URL, { name });
  cleanup.add('redis connection', () => closeRedis(redis));
  cleanup.add(`redis keys ${prefix}:*`, () => deleteKeys(redis, prefix));
  return redis;
}

export interface BenchDatabase {
  name: string;
  url: string;
  pool: Pool;
}

function urlOf(database: string): string {
  const url = new URL(DATABASE_URL);
  url.pathname = `/${database}`;
  return url.toString();
}

/**
 * A migrated database of its own (`migrate()` creates it), dropped WITH (FORCE) at cleanup, and a pool on
 * it (`max` connections, default 10) closed before the drop.
 */
export async function benchDatabase(cleanup: Cleanup, max = 10): Promise<BenchDatabase> {
  const name = `wsjobs_bench_${randomBytes(6).toString('hex')}`;
  const url = urlOf(name);
  cleanup.add(`drop database ${name}`, async () => {
    const admin = new pg.Client({ connectionString: DATABASE_URL });
    await admin.connect();
    try {
      await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`);
    } finally {
      await admin.end();
    }
  });
  await migrate(url);
  const pool = createPool(url, { max, applicationName: 'workspace-jobs-bench' });
  cleanup.add('postgres pool', () => pool.end());
  return { name, url, pool };
}

/**
 * A stopped workspace with its chat, as `seed` makes one: start build #1 (its agent ready), stop build #2,
 * so the next start is build #3.
 */
export async function insertStoppedWorkspace(
  pool: Pool,
  template: { ownerId: string; templateId: string; versionId: string },
): Promise<{ chatId: string; workspaceId: string; ownerId: string }> {
  const { ownerId, templateId, versionId } = template;
  const { workspaceId } = await insertWorkspace(pool, { ownerId, templateId });
  const common = {
    workspaceId,
    templateVersionId: versionId,
    initiatorId: ownerId,
    status: 'succeeded',
  } as const;
  await insertBuild(pool, {
    ...common,
    transition: 'start',
    agents: [{ name: 'main', lifecycleState: 'ready', connected: true }],
  });
  const stop = await insertBuild(pool, { ...common, transition: 'stop' });
  const { chatId } = await insertChat(pool, { ownerId, workspaceId, buildId: stop.buildId });
  return { chatId, workspaceId, ownerId };
}

// ---------------------------------------------------------------------------------------------------
// Running one benchmark file

/**
 * Runs `fn` with a cleanup list and a time budget. Prints the failure and exits 1 when it throws or runs
 * over budget; cleans up either way. A process kept alive by handles the cleanup did not close is reported
 * and exited.
 */
export async function runBench(
  name: string,
  budgetMs: number,
  fn: (cleanup: Cleanup) => Promise<void>,
): Promise<void> {
  currentBench = name;
  const cleanup = new Cleanup();
  const started = now();
  let timer: NodeJS.Timeout | undefined;
  const overBudget = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new BenchFailure(`did not finish within its budget of ${budgetMs / 1000} s`)),
      budgetMs,
    );
  });
  let failed = false;
  try {
    await Promise.race([fn(cleanup), overBudget]);
  } catch (error) {
    failed = true;
    console.error(`${name}: FAILED: ${error instanceof BenchFailure ? error.message : String(error)}`);
    if (!(error instanceof BenchFailure) && error instanceof Error && error.stack) console.error(error.stack);
  } finally {
    clearTimeout(timer);
  }
  if (!(await cleanup.run())) failed = true;
  console.log(`${name}: ${failed ? 'FAILED' : 'done'} in ${((now() - started) / 1000).toFixed(1)} s`);
  process.exitCode = failed ? 1 : 0;
  // Everything was closed above; a handle that is still open is a leak worth knowing about.
  setTimeout(() => {
    const open = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap' && r !== 'Timeout');
    console.error(`${name}: still alive 3 s after cleanup (open: ${open.join(', ') || 'timers'}); exiting`);
    process.exit(process.exitCode ?? 1);
  }, 3_000).unref();
}

// ---------------------------------------------------------------------------------------------------
// Counting round trips (in-process instrumentation for the end-to-end benchmark)

export interface CallCounts {
  /** Postgres queries per application_name (worker, provisioner, producer, bench). */
  pg: Record<string, number>;
  /** Redis commands per connection name. */
  redis: Record<string, number>;
}

/**
 * Counts every pg Client query and every ioredis command sent from this process, by application or
 * connection name, from now on. Returns a function that reads the counts.
 */
export function countCalls(): () => CallCounts {
  const counts: CallCounts = { pg: {}, redis: {} };
  const bump = (table: Record<string, number>, key: string | undefined) => {
    const name = key ?? '(unnamed)';
    table[name] = (table[name] ?? 0) + 1;
  };
  type Patchable = Record<string, (...args: unknown[]) => unknown>;
  const pgProto = pg.Client.prototype as unknown as Patchable;
  const query = pgProto.query!;
  pgProto.query = function (this: { connectionParameters?: { application_name?: string } }, ...args) {
    bump(counts.pg, this.connectionParameters?.application_name);
    return query.apply(this, args);
  };
  const redisProto = RedisClient.prototype as unknown as Patchable;
  const sendCommand = redisProto.sendCommand!;
  redisProto.sendCommand = function (this: { options?: { connectionName?: string } }, ...args) {
    bump(counts.redis, this.options?.connectionName);
    return sendCommand.apply(this, args);
  };
  return () => structuredClone(counts);
}
