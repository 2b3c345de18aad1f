// Shared helpers of the benchmarks: timing and percentiles, one result line per measurement, a throwaway
// Redis key prefix and Postgres database per run, and a bounded runner that always cleans up and exits
// non-zero when a benchmark fails or runs out of time.
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { appendFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { getHeapSpaceStatistics } from 'node:v8';
import { Redis as RedisClient } from 'ioredis';
import pg from 'pg';
import type { EventDraft } from '../src/shared/contract.js';
import { migrate } from '../src/shared/migrate.js';
import { createPool, withTransaction, type Pool } from '../src/shared/postgres.js';
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

/**
 * RSS in MiB after a full collection, once what it emptied is given back: a compacting GC (the worker's,
 * src/worker/heap-compaction.ts) maps the pages it moves objects to first, and a V8 thread releases the old
 * ones within about a second. The least of `ms` of samples, every 50 ms.
 */
export async function settledRssAfterGc(ms = 1_500): Promise<{ rssMb: number; heapMb: number }> {
  const { heapMb } = memory(true);
  let rssMb = memory().rssMb;
  for (let waited = 0; waited < ms; waited += 50) {
    await sleep(50);
    rssMb = Math.min(rssMb, memory().rssMb);
  }
  return { rssMb, heapMb };
}

/**
 * Where the RSS is, in MiB: V8's heap used and committed (heapTotal; per space: new, old, code, large
 * objects), memory outside it that JS objects hold (external, of which arrayBuffers: Buffers), and the
 * rest (rss − heapTotal − external: native code, malloc arenas, thread stacks).
 */
export function memoryBreakdown(): Record<string, number> {
  const { rss, heapTotal, heapUsed, external, arrayBuffers } = process.memoryUsage();
  const mb = (n: number) => n / 2 ** 20;
  const spaces = Object.fromEntries(
    getHeapSpaceStatistics().map((s) => [s.space_name.replace(/_space$/, ''), mb(s.space_size)]),
  );
  return {
    rss: mb(rss),
    heapTotal: mb(heapTotal),
    heapUsed: mb(heapUsed),
    external: mb(external),
    arrayBuffers: mb(arrayBuffers),
    rest: mb(rss - heapTotal - external),
    ...spaces,
  };
}

/**
 * Starts a V8 CPU profile of this process (sampling: a few % of CPU on top of what it measures); the
 * returned stop writes it to `file` (open in Chrome DevTools or speedscope) and says so, naming `what` it covers.
 */
export async function startCpuProfile(): Promise<(file: string, what: string) => Promise<void>> {
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.start');
  return async (file, what) => {
    const { profile } = await session.post('Profiler.stop');
    writeFileSync(file, JSON.stringify(profile));
    session.disconnect();
    console.log(`${currentBench}: CPU profile of ${what} written to ${file}`);
  };
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

/** The sum of a table's counts. */
export const sum = (table: Record<string, number>) => Object.values(table).reduce((a, b) => a + b, 0);

/** How a figure stands against its target, as every benchmark prints it. */
export const flag = (met: boolean) => (met ? 'met' : 'MISSED');

/**
 * The batched lock refresh's ticks, from each lock refresh's start: the locks of one tick share its start
 * (one command per lock node for all of them), and ticks are more than 1 ms apart. Each tick's lock count.
 */
export function ticksOf(starts: number[]): number[] {
  const ticks: number[] = [];
  let previous = -Infinity;
  for (const t of [...starts].sort((a, b) => a - b)) {
    if (t - previous > 1) ticks.push(0);
    ticks[ticks.length - 1]!++;
    previous = t;
  }
  return ticks;
}

/**
 * Polls `probe` every 10 ms until it returns a value, failing the run after `timeoutMs`. A loop, not
 * vi.waitFor: the benchmarks run outside vitest.
 */
export async function until<T>(
  /** What is waited for; a function is asked at the timeout (a count so far). */
  what: string | (() => string),
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs: number,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() >= deadline)
      check(false, `no ${typeof what === 'string' ? what : what()} within ${timeoutMs} ms`);
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

export const num = (value: number, digits = 0) =>
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

/** How long a cleanup step may take unless it says otherwise. */
const CLEANUP_STEP_MS = 15_000;

/** Cleanup steps, run last-in first-out, each bounded, whatever happened before. */
export class Cleanup {
  private readonly steps: { label: string; fn: () => Promise<unknown>; timeoutMs: number }[] = [];

  /**
   * `timeoutMs`: the step's bound (default 15 s). A step that outlives it keeps running beside the next
   * ones: a worker still closing recreates the keys and connections they remove, so bound it generously.
   */
  add(label: string, fn: () => Promise<unknown>, timeoutMs = CLEANUP_STEP_MS): void {
    this.steps.push({ label, fn, timeoutMs });
  }

  async run(): Promise<boolean> {
    let ok = true;
    while (this.steps.length > 0) {
      const { label, fn, timeoutMs } = this.steps.pop()!;
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          fn(),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs / 1000} s`)), timeoutMs);
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
 * `count` stopped workspaces with their chats, as `seed` makes them (start build #1 with a ready agent, stop
 * build #2, a chat bound to it, so the next start is build #3), in bulk: one INSERT … SELECT per table, in
 * one transaction.
 */
export async function insertStoppedWorkspaces(
  pool: Pool,
  template: { ownerId: string; templateId: string; versionId: string },
  count: number,
): Promise<{ chatId: string; workspaceId: string; ownerId: string }[]> {
  if (!Number.isInteger(count) || count < 1)
    throw new RangeError(`count must be a whole number ≥ 1, got ${count}`);
  const { ownerId, templateId, versionId } = template;
  return withTransaction(pool, async (client) => {
    // CREATE TABLE AS takes no parameters; count is a checked integer.
    await client.query(
      `CREATE TEMP TABLE seed ON COMMIT DROP AS
       SELECT n, gen_random_uuid() AS workspace_id, gen_random_uuid() AS chat_id, gen_random_uuid() AS resource_id,
              gen_random_uuid() AS start_job, gen_random_uuid() AS start_build,
              gen_random_uuid() AS stop_job, gen_random_uuid() AS stop_build
       FROM generate_series(1, ${count}) n`,
    );
    // Named by id: an owner's workspace names are unique, and a benchmark may seed the same owner again.
    await client.query(
      `INSERT INTO workspaces (id, owner_id, template_id, name) SELECT workspace_id, $1, $2, 'ws-' || workspace_id FROM seed`,
      [ownerId, templateId],
    );
    await client.query(
      `INSERT INTO provisioner_jobs (id, input, started_at, completed_at)
       SELECT job, jsonb_build_object('workspace_build_id', build), now(), now()
       FROM seed, LATERAL (VALUES (start_job, start_build), (stop_job, stop_build)) AS b(job, build)`,
    );
    await client.query(
      `INSERT INTO workspace_builds (id, workspace_id, template_version_id, build_number, transition, initiator_id, job_id)
       SELECT build, workspace_id, $1, number, transition::workspace_transition, $2, job
       FROM seed, LATERAL (VALUES (start_build, 1, 'start', start_job), (stop_build, 2, 'stop', stop_job))
                  AS b(build, number, transition, job)`,
      [versionId, ownerId],
    );
    await client.query(
      `INSERT INTO workspace_resources (id, job_id, transition, type, name)
       SELECT resource_id, start_job, 'start', 'docker_container', 'dev' FROM seed`,
    );
    await client.query(
      `INSERT INTO workspace_agents (resource_id, name, lifecycle_state, first_connected_at, last_connected_at,
                                     started_at, ready_at)
       SELECT resource_id, 'main', 'ready', now(), now(), now(), now() FROM seed`,
    );
    await client.query(
      `INSERT INTO chats (id, owner_id, workspace_id, build_id, title) SELECT chat_id, $1, workspace_id, stop_build, 'chat-' || n FROM seed`,
      [ownerId],
    );
    const { rows } = await client.query<{ chat_id: string; workspace_id: string }>(
      'SELECT chat_id, workspace_id FROM seed ORDER BY n',
    );
    return rows.map((r) => ({ chatId: r.chat_id, workspaceId: r.workspace_id, ownerId }));
  });
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
  // Ctrl-C or the runner's SIGTERM: the cleanup still runs, so that no worker or provisioner process (in
  // groups of their own), database or key is left behind. A second signal kills at once.
  let onSignal: ((signal: NodeJS.Signals) => void) | undefined;
  const interrupted = new Promise<never>((_, reject) => {
    onSignal = (signal) => reject(new BenchFailure(`interrupted by ${signal}; cleaning up`));
  });
  process.once('SIGINT', onSignal!).once('SIGTERM', onSignal!);
  let failed = false;
  try {
    await Promise.race([fn(cleanup), overBudget, interrupted]);
  } catch (error) {
    failed = true;
    console.error(`${name}: FAILED: ${error instanceof BenchFailure ? error.message : String(error)}`);
    if (!(error instanceof BenchFailure) && error instanceof Error && error.stack) console.error(error.stack);
  } finally {
    clearTimeout(timer);
  }
  if (!(await cleanup.run())) failed = true;
  process.off('SIGINT', onSignal!).off('SIGTERM', onSignal!);
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
  /** Postgres queries per application_name and statement name (`worker worker.get_build`; `(unnamed)`). */
  pgStatements: Record<string, number>;
  /** Redis commands per connection name; a pipeline's or a MULTI's commands each count. */
  redis: Record<string, number>;
  /**
   * Redis round trips per connection name: a command sent on its own is one, a pipeline or MULTI (one write,
   * its replies read together) is one however many commands it holds. An EVALSHA is one command, one trip.
   */
  redisTrips: Record<string, number>;
}

const totals: CallCounts = { pg: {}, pgStatements: {}, redis: {}, redisTrips: {} };
let counting = false;

/** Patches pg's Client.query and ioredis's sendCommand once per process to count into `totals`. */
function startCounting(): void {
  if (counting) return;
  counting = true;
  const bump = (table: Record<string, number>, key: string | undefined) => {
    const name = key ?? '(unnamed)';
    table[name] = (table[name] ?? 0) + 1;
  };
  type Patchable = Record<string, (...args: unknown[]) => unknown>;
  const pgProto = pg.Client.prototype as unknown as Patchable;
  const query = pgProto.query!;
  pgProto.query = function (this: { connectionParameters?: { application_name?: string } }, ...args) {
    const application = this.connectionParameters?.application_name;
    bump(totals.pg, application);
    const statement = (args[0] as { name?: string } | null)?.name ?? '(unnamed)';
    bump(totals.pgStatements, `${application?.replace(/^workspace-jobs-/, '') ?? '(unnamed)'} ${statement}`);
    return query.apply(this, args);
  };
  // ioredis hands each command of a pipeline (and of a MULTI, which is a pipeline) to sendCommand with the
  // pipeline's own stream object, written to the socket once all of them are in: one trip per such object.
  const pipelines = new WeakSet<object>();
  const redisProto = RedisClient.prototype as unknown as Patchable;
  const sendCommand = redisProto.sendCommand!;
  redisProto.sendCommand = function (this: { options?: { connectionName?: string } }, ...args) {
    const name = this.options?.connectionName;
    bump(totals.redis, name);
    const stream = args[1] as { isPipeline?: boolean } | undefined;
    if (!stream?.isPipeline) bump(totals.redisTrips, name);
    else if (!pipelines.has(stream)) {
      pipelines.add(stream);
      bump(totals.redisTrips, name);
    }
    return sendCommand.apply(this, args);
  };
}

/**
 * Counts every pg Client query, every ioredis command and every Redis round trip sent from this process, by
 * application or connection name, from now on. Returns a function that reads the counts so far.
 */
export function countCalls(): () => CallCounts {
  startCounting();
  const base = structuredClone(totals);
  const since = (now: Record<string, number>, then: Record<string, number>) =>
    Object.fromEntries(Object.entries(now).map(([name, n]) => [name, n - (then[name] ?? 0)]));
  return () => ({
    pg: since(totals.pg, base.pg),
    pgStatements: since(totals.pgStatements, base.pgStatements),
    redis: since(totals.redis, base.redis),
    redisTrips: since(totals.redisTrips, base.redisTrips),
  });
}

// ---------------------------------------------------------------------------------------------------
// CPU time of this process and of the servers (when they run on this machine)

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/**
 * utime + stime in ms from /proc/<pid>/stat (or a thread's, /proc/<pid>/task/<tid>/stat), or undefined when
 * it is gone or not ours to see.
 */
function processCpuMs(pid: number | string): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may hold spaces: state is field 3, utime 14.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) / CLK_TCK) * 1000;
  } catch {
    return undefined;
  }
}

/**
 * This process's CPU ms so far, split by thread: the main thread (JS and the syscalls it makes) and the
 * others (V8's concurrent GC and compiler threads, libuv's pool, a CPU profiler's sampler).
 */
export function threadsCpuMs(): { mainMs: number; otherMs: number } {
  let mainMs = 0;
  let otherMs = 0;
  for (const tid of readdirSync(`/proc/${process.pid}/task`)) {
    const ms = processCpuMs(`${process.pid}/task/${tid}`) ?? 0;
    if (Number(tid) === process.pid) mainMs += ms;
    else otherMs += ms;
  }
  return { mainMs, otherMs };
}

/** CPU ms of every process on this machine whose /proc/<pid>/comm is `comm`, by pid. */
function cpuByName(comm: string): Map<number, number> {
  const byPid = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() !== comm) continue;
    } catch {
      continue; // exited while we looked
    }
    const cpu = processCpuMs(Number(entry));
    if (cpu !== undefined) byPid.set(Number(entry), cpu);
  }
  return byPid;
}

export interface CpuSplit {
  /** This Node process (process.cpuUsage: user + system). */
  nodeMs: number;
  /** Each of the `processes` asked for, by label (0 for one gone by the end). */
  processesMs: Record<string, number>;
  /** The Postgres backends of `database` at the end of the window; undefined when Postgres is not on this machine. */
  postgresMs?: number;
  /** Every postgres process on the machine: other databases' backends and the background processes too. */
  postgresAllMs?: number;
  /** The Redis server the connection talks to (INFO's process_id); undefined when it is not on this machine. */
  redisMs?: number;
}

/**
 * Starts measuring CPU time: this process, other `processes` (label -> pid), Redis and (given its database)
 * Postgres, from /proc before and after (processes that exit in between are missed: keep pools open over the
 * window). Returns the function that ends the window. On a shared machine the Redis server and
 * `postgresAllMs` include the neighbours' load.
 */
export async function measureCpu(
  redis: Redis,
  {
    postgres,
    processes = {},
  }: { postgres?: { pool: Pool; database: string }; processes?: Record<string, number> } = {},
): Promise<() => Promise<CpuSplit>> {
  const info = await redis.info('server');
  const redisPid = Number(/^process_id:(\d+)/m.exec(info)?.[1]);
  const node = process.cpuUsage();
  const before = postgres ? cpuByName('postgres') : new Map<number, number>();
  const redisBefore = processCpuMs(redisPid);
  const processesBefore = Object.fromEntries(
    Object.entries(processes).map(([label, pid]) => [label, processCpuMs(pid) ?? 0]),
  );
  return async () => {
    const nodeUsage = process.cpuUsage(node);
    const after = postgres ? cpuByName('postgres') : new Map<number, number>();
    const redisAfter = processCpuMs(redisPid);
    const processesMs = Object.fromEntries(
      Object.entries(processes).map(([label, pid]) => [
        label,
        (processCpuMs(pid) ?? 0) - processesBefore[label]!,
      ]),
    );
    const delta = (pid: number) => (after.get(pid) ?? 0) - (before.get(pid) ?? 0);
    let ours: number[] = [];
    if (postgres) {
      const { rows } = await postgres.pool.query<{ pid: number }>(
        'SELECT pid FROM pg_stat_activity WHERE datname = $1',
        [postgres.database],
      );
      ours = rows.map((r) => r.pid).filter((pid) => after.has(pid));
    }
    return {
      nodeMs: (nodeUsage.user + nodeUsage.system) / 1000,
      processesMs,
      postgresMs: ours.length > 0 ? ours.reduce((sum, pid) => sum + delta(pid), 0) : undefined,
      postgresAllMs: after.size > 0 ? [...after.keys()].reduce((sum, pid) => sum + delta(pid), 0) : undefined,
      redisMs: redisBefore !== undefined && redisAfter !== undefined ? redisAfter - redisBefore : undefined,
    };
  };
}

// ---------------------------------------------------------------------------------------------------
// What a database's backends wait on

/** How often waitEvents() looks at pg_stat_activity. */
const WAIT_SAMPLE_MS = 20;

/** What the backends of a window waited on (waitEvents), and the server's WAL flushes meanwhile. */
export interface BackendStates {
  /** Each state's share of the active backends' samples, the largest first. */
  shares: Record<string, number>;
  /** `pg_stat_wal.wal_sync` over the window: every flush of the server's WAL (the neighbours' too). */
  walFlushes: number;
}

/**
 * Starts sampling what the active backends of `database` do, every 20 ms, from a connection to
 * DATABASE_URL's database (so that it is no backend of the run, whose CPU measureCpu counts): on CPU, or the
 * wait event they wait on (`Lock:object` is the lock every transaction that sent a NOTIFY holds from its commit
 * until the commit is flushed to disk, so notifying transactions commit one at a time). Returns the function
 * that ends the window and gives each state's share of the samples, the largest first, and the WAL flushes of
 * the window; `cleanup` ends it too when the run fails first.
 */
export async function waitEvents(cleanup: Cleanup, database: string): Promise<() => Promise<BackendStates>> {
  const client = new pg.Client({
    connectionString: DATABASE_URL,
    application_name: 'workspace-jobs-bench-sampler',
  });
  client.on('error', () => undefined);
  await client.connect();
  const walFlushes = async () =>
    Number((await client.query<{ wal_sync: string }>('SELECT wal_sync FROM pg_stat_wal')).rows[0]!.wal_sync);
  const flushesBefore = await walFlushes();
  let flushesAfter: number | undefined;
  const counts: Record<string, number> = {};
  let running = true;
  const sampling = (async () => {
    while (running) {
      const { rows } = await client.query<{ state: string }>(
        `SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS state FROM pg_stat_activity
          WHERE datname = $1 AND state = 'active'`,
        [database],
      );
      for (const { state } of rows) counts[state] = (counts[state] ?? 0) + 1;
      await sleep(WAIT_SAMPLE_MS);
    }
  })();
  // Seen when the window ends; a failure before that must not be an unhandled rejection.
  const sampled = sampling.then(
    () => undefined,
    (error: unknown) => error,
  );
  let ended: Promise<unknown> | undefined;
  const end = () =>
    (ended ??= (async () => {
      running = false;
      const error = await sampled;
      flushesAfter = await walFlushes().catch(() => undefined);
      await client.end();
      return error;
    })());
  cleanup.add('wait-event sampler', async () => {
    await end();
  });
  return async () => {
    const error = await end();
    if (error) throw error;
    if (flushesAfter === undefined) throw new Error('could not read pg_stat_wal at the end of the window');
    const total = sum(counts);
    const shares = Object.fromEntries(
      Object.entries(counts)
        .sort((a, b) => b[1] - a[1])
        .map(([state, n]) => [state, total === 0 ? 0 : n / total]),
    );
    return { shares, walFlushes: flushesAfter - flushesBefore };
  };
}
