// Issue 11: 10,000 starts waiting in one worker process. 10,000 stopped workspaces started through the
// producer (in a process of its own, as the chat backend: bench/producer-process.ts), ONE WorkspaceWorker (concurrency 10,000) in this process and no provisioner daemon, so every job
// creates its build and then waits on it, pending. Once every job has told its chat `build_queued`, an idle
// window longer than the hub's 10 s ping interval measures what waiting costs: RSS and heap per waiter,
// the process's CPU, the worker's Postgres queries/s against a computed 2 s poll (Coder's), and how evenly
// the chat-lock refreshes are spread (per 100 ms, and per tick of the batched refresh; the 100 ms after a GC
// pause of 50 ms or more are told apart: the first tick after it is late and catches up). Then ONE statement completes every build as the provisioner and the
// simulated agents would (job succeeded, its resource and a ready agent) and times the results' arrival.
// It runs issue 11's 10,000 waiters by default (about 45 s on a quiet machine, 75 s on a slow one, with the worker's default lock
// settings; since 2026-12-03: admission, the batched chat-lock refresh and batched reads made the ramp
// survive); BENCH_WAITERS (10 to 10,000) runs fewer. BENCH_HEAP_SNAPSHOT=<file>
// writes a heap snapshot at the end of the idle window and one before the enqueue (<file>.before.heapsnapshot,
// to diff: what the waiters hold); writing one leaves about 90 MiB of RSS behind, so such a run's RSS figures
// are not measurements. BENCH_CPU_PROFILE=<dir> writes V8 CPU profiles of the idle window (from 1 s before
// it: starting the profiler stops the event loop for a few hundred ms) and of the results (the sampler adds a
// little to the windows' CPU figures). JOB_LOCK_MS, STALLED_INTERVAL_MS, CHAT_LOCK_TTL_MS and
// WORKER_ADMITTED_JOBS, when set, configure the worker. BENCH_HEAP_PROFILE=<file> writes V8's sampling heap
// profile from before the enqueue to the end of the idle window (after its GC): what is live, by allocation
// site; with BENCH_HEAP_PROFILE_PROMOTED=1 also what a major GC collected, so every object that survived a
// scavenge (promoted). The two runs' difference is what the ramp promotes and then lets die in old space.
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { writeHeapSnapshot } from 'node:v8';
import { Queue } from 'bullmq';
import { insertTemplate, insertUser } from '../src/cli/fixtures.js';
import { loadConfig } from '../src/shared/config.js';
import { QUEUE_NAME, type EventDraft } from '../src/shared/contract.js';
import type { Pool } from '../src/shared/postgres.js';
import { startWorkspacesElsewhere } from './producer-process.js';
import {
  REDIS_URL,
  benchDatabase,
  benchRedis,
  check,
  countCalls,
  flag,
  insertStoppedWorkspaces,
  memory,
  memoryBreakdown,
  settledRssAfterGc,
  report,
  runBench,
  sleep,
  startCpuProfile,
  stats,
  threadsCpuMs,
  sum,
  ticksOf,
  uniquePrefix,
  until,
  type CallCounts,
} from './lib.js';

/**
 * What the worker runs: src/ through tsx (the default), or with BENCH_COMPILED=1 the JavaScript that
 * `npm run build` makes in dist/, as bin/workspace-jobs.js runs it in production. tsx wraps every function
 * of ours in `__name`, which gives each closure a property array of its own: a cost only a bench pays.
 */
const COMPILED = process.env.BENCH_COMPILED === '1';
const CODE = COMPILED ? '../dist/src' : '../src';
if (COMPILED) assertBuildIsCurrent();
// Everything that lives in the waiting worker comes from CODE; the seed and the producer stay in src/.
const [
  { EventPublisher },
  { ChatLocks },
  { createLogger },
  { closeRedis, createRedis },
  { WorkspaceWorker },
  { compactHeapOnFullGc },
] = await Promise.all([
  import(`${CODE}/shared/events.js`) as Promise<typeof import('../src/shared/events.js')>,
  import(`${CODE}/shared/lock.js`) as Promise<typeof import('../src/shared/lock.js')>,
  import(`${CODE}/shared/logger.js`) as Promise<typeof import('../src/shared/logger.js')>,
  import(`${CODE}/shared/redis.js`) as Promise<typeof import('../src/shared/redis.js')>,
  import(`${CODE}/worker/worker.js`) as Promise<typeof import('../src/worker/worker.js')>,
  import(`${CODE}/worker/heap-compaction.js`) as Promise<typeof import('../src/worker/heap-compaction.js')>,
]);
// As `workspace-jobs worker` does before it starts its worker; `node --no-compact-on-every-full-gc` turns it off.
const HEAP_COMPACTION = compactHeapOnFullGc();

const WAITERS = Number(process.env.BENCH_WAITERS ?? 10_000);
if (!Number.isInteger(WAITERS) || WAITERS < 10 || WAITERS > 10_000) {
  throw new RangeError(
    `BENCH_WAITERS must be a whole number from 10 to 10000, got ${process.env.BENCH_WAITERS}`,
  );
}
/** A build older than a source file would be measured under the compiled label: refused, naming the file. */
function assertBuildIsCurrent(): void {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const mtime = (path: string) => statSync(root + path, { throwIfNoEntry: false })?.mtimeMs;
  const built = mtime('dist/src/worker/worker.js');
  if (built === undefined) throw new Error('BENCH_COMPILED=1 needs dist/: run npm run build first');
  const newer = readdirSync(root + 'src', { recursive: true, encoding: 'utf8' })
    .filter((file) => file.endsWith('.ts'))
    .find((file) => mtime(`src/${file}`)! > built);
  if (newer !== undefined) {
    throw new Error(`BENCH_COMPILED=1: src/${newer} is newer than dist/: run npm run build first`);
  }
}
/** Longer than the hub's ping interval (10 s), so the window holds at least one ping. */
const IDLE_MS = 13_000;
/** After the last build_queued, for the last followers' first checks to drain before the window opens. */
const SETTLE_MS = 3_000;
const POLL_MS = 2_000;
const BUCKET_MS = 100;
// Issue 11's targets.
const MAX_RSS_MB = 500;
const MAX_KIB_PER_WAITER = 25;
const MAX_CPU_PERCENT = 5;
const MIN_FEWER_THAN_POLL = 100;
const MAX_LAST_RESULT_MS = 5_000;
/** A 100 ms bucket holding more than this many times its even share of a refresh period's refreshes is a burst. */
const BURST_FACTOR = 2;
/**
 * A GC pause this long (the refresher's batch window at the default TTL) makes the first tick after it a late
 * one, sending every lock that fell due meanwhile: a catch-up, not refreshes whose phases came together.
 */
const CATCH_UP_PAUSE_MS = 50;

/**
 * `BENCH_CPU_PROFILE=dir` writes V8 CPU profiles of this process (the worker's) there: of the idle window
 * and from the completing statement to the last result.
 */
const PROFILE_DIR = process.env.BENCH_CPU_PROFILE;

/** V8's sampling heap profiler (see BENCH_HEAP_PROFILE above); the returned function writes it to `file`. */
async function startHeapProfile(promoted: boolean): Promise<(file: string) => Promise<void>> {
  const session = new Session();
  session.connect();
  await session.post('HeapProfiler.enable');
  await session.post('HeapProfiler.startSampling', {
    includeObjectsCollectedByMajorGC: promoted,
    includeObjectsCollectedByMinorGC: false,
  });
  return async (file) => {
    const { profile } = await session.post('HeapProfiler.stopSampling');
    writeFileSync(file, JSON.stringify(profile));
    session.disconnect();
    console.log(`waiters: sampling heap profile (${promoted ? 'promoted' : 'live'}) written to ${file}`);
  };
}

/** The cleanup's bound on the worker's close. */
const WORKER_CLOSE_MS = 60_000;

/** Passed through from the environment when set. */
const WORKER_SETTINGS = [
  'JOB_LOCK_MS',
  'STALLED_INTERVAL_MS',
  'CHAT_LOCK_TTL_MS',
  'WORKER_ADMITTED_JOBS',
] as const;
const SETTING_FIELDS = {
  JOB_LOCK_MS: 'jobLockMs',
  STALLED_INTERVAL_MS: 'stalledIntervalMs',
  CHAT_LOCK_TTL_MS: 'chatLockTtlMs',
  WORKER_ADMITTED_JOBS: 'workerAdmittedJobs',
} as const;
/** How long every job may take to tell build_queued, and how often the ramp says how far it is. */
const RAMP_LIMIT_MS = 480_000;
const RAMP_PROGRESS_MS = 15_000;

let lastProgress: { at: number; counts: CallCounts } | undefined;
async function rampProgress(pool: Pool, calls: () => CallCounts, queued: number, started: number) {
  const { rows } = await pool.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM workspace_builds WHERE build_number = 3',
  );
  const at = performance.now();
  const counts = calls();
  const since = lastProgress ?? {
    at: started,
    counts: { pg: {}, pgStatements: {}, redis: {}, redisTrips: {} },
  };
  lastProgress = { at, counts };
  const seconds = (at - since.at) / 1000;
  const workerQueries = diff(counts.pg, since.counts.pg)[WORKER_APPLICATION] ?? 0;
  console.log(
    `waiters: ramp ${((at - started) / 1000).toFixed(0)} s: ${rows[0]!.n} builds made, ${queued} build_queued; ` +
      `worker ${(workerQueries / seconds).toFixed(0)} queries/s (` +
      `${top(diff(counts.pgStatements, since.counts.pgStatements), seconds)}); ${memory().rssMb.toFixed(0)} MiB RSS`,
  );
}

const WORKER_APPLICATION = 'workspace-jobs-worker';
const diff = (after: Record<string, number>, before: Record<string, number>) =>
  Object.fromEntries(Object.entries(after).map(([k, n]) => [k, n - (before[k] ?? 0)]));
/** A rate with a decimal below 10/s, so that the hub's 0.1 ping/s does not read as 0. */
const perSecond = (rate: number) => rate.toFixed(rate < 10 ? 1 : 0);
/** The table's `n` largest counts above 0, largest first. */
const largest = (table: Record<string, number>, n: number) =>
  Object.entries(table)
    .filter(([, count]) => count > 0)
    .sort((a, b) => b[1] - a[1])
    .slice(0, n);
const top = (table: Record<string, number>, seconds: number, n = 4) =>
  largest(table, n)
    .map(([name, count]) => `${name} ${perSecond(count / seconds)}/s`)
    .join(', ');

/** Redis commands / round trips per result on each connection between two counts. */
const perConnection = (before: CallCounts, after: CallCounts) => {
  const commands = diff(after.redis, before.redis);
  const trips = diff(after.redisTrips, before.redisTrips);
  return Object.entries(commands)
    .filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1])
    .map(
      ([name, n]) =>
        `${name.replace(/^workspace-jobs-/, '')} ${(n / WAITERS).toFixed(1)}/${((trips[name] ?? 0) / WAITERS).toFixed(2)}`,
    )
    .join(', ');
};

await runBench('waiters', 600_000, async (cleanup) => {
  // Pool of 10 for the seed and the bench's reads; the worker makes its own (20 at this concurrency).
  const db = await benchDatabase(cleanup, 10);
  const prefix = uniquePrefix('waiters');
  const redis = benchRedis(cleanup, prefix);
  const log = createLogger('silent');

  const seedStarted = performance.now();
  const { userId } = await insertUser(db.pool);
  const template = await insertTemplate(db.pool, { versions: [{}] });
  const seeded = await insertStoppedWorkspaces(
    db.pool,
    { ownerId: userId, templateId: template.templateId, versionId: template.versionIds[0]! },
    WAITERS,
  );
  const seedMs = performance.now() - seedStarted;

  const config = loadConfig({
    REDIS_URL,
    DATABASE_URL: db.url,
    QUEUE_PREFIX: prefix,
    LOG_LEVEL: 'silent',
    WORKER_CONCURRENCY: String(WAITERS),
    // The worker's lock and admission settings, as an operator would set them for this many jobs; unset = the
    // defaults.
    ...Object.fromEntries(
      WORKER_SETTINGS.flatMap((name) => (process.env[name] ? [[name, process.env[name]]] : [])),
    ),
  });
  const settings = WORKER_SETTINGS.map((name) => `${name}=${config[SETTING_FIELDS[name]] ?? 'default'}`).join(
    ' ',
  );
  console.log(
    `waiters: ${WAITERS} waiters, ${settings}; the worker's code from ${COMPILED ? 'dist/ (compiled)' : 'src/ (tsx)'}; ` +
      `heap compaction on every full GC ${HEAP_COMPACTION ? 'on (as the worker command)' : 'off'}`,
  );
  // The worker's own lock and publisher, as WorkspaceWorker makes them, but observed: every refresh's start,
  // every job's first build_queued and each result.
  const lockRedis = createRedis(config.redisUrl, { name: 'workspace-jobs-lock', failFast: true, log });
  cleanup.add('lock connection', () => closeRedis(lockRedis));
  // Auto-pipelined like the worker's own events connection: without it every event was a write of its own.
  const eventsRedis = createRedis(config.redisUrl, { name: 'workspace-jobs-events', pipelined: true, log });
  cleanup.add('events connection', () => closeRedis(eventsRedis));
  let refreshes: number[] | undefined;
  const locks = new ChatLocks([lockRedis], prefix, {
    lockTimeoutMs: config.chatLockTtlMs,
    log,
    onOperation: (operation, ms) => {
      if (operation === 'refresh') refreshes?.push(performance.now() - ms);
    },
  });
  const refreshPeriodMs = Math.round(config.chatLockTtlMs / 3);
  const publisher = new EventPublisher(eventsRedis, prefix, { log, validate: false });
  const queuedAt = new Map<string, number>();
  const results = new Map<string, { at: number; ok: boolean; count: number; data: unknown }>();
  const publish = publisher.publish.bind(publisher);
  publisher.publish = async (draft: EventDraft, options) => {
    const event = await publish(draft, options);
    const at = performance.now();
    if (draft.type === 'progress' && draft.stage === 'build_queued' && !queuedAt.has(draft.job.id)) {
      queuedAt.set(draft.job.id, at);
    } else if (draft.type === 'result') {
      const seen = results.get(draft.job.id);
      results.set(draft.job.id, { at, ok: draft.data.ok, count: (seen?.count ?? 0) + 1, data: draft.data });
    }
    return event;
  };

  const worker = await WorkspaceWorker.start(config, log, { processor: { locks, publisher } });
  // Its close hands up to 10,000 jobs back (5 s grace, then up to 10 s for the hand-back) and then closes its
  // connections: the keys and the database are removed only after, or the jobs being handed back leave keys.
  cleanup.add('worker', () => worker.close(5_000), WORKER_CLOSE_MS);
  const queue = new Queue(QUEUE_NAME, { connection: redis, prefix });
  cleanup.add('queue', () => queue.close());

  const before = await settledRssAfterGc();
  const breakdownBefore = memoryBreakdown();
  if (process.env.BENCH_HEAP_SNAPSHOT) {
    const file = process.env.BENCH_HEAP_SNAPSHOT.replace(/(\.heapsnapshot)?$/, '.before.heapsnapshot');
    console.log(`heap snapshot before the enqueue: ${writeHeapSnapshot(file)}`);
  }
  const heapProfile = process.env.BENCH_HEAP_PROFILE;
  const stopHeapProfile =
    heapProfile === undefined
      ? undefined
      : await startHeapProfile(process.env.BENCH_HEAP_PROFILE_PROMOTED === '1');
  const calls = countCalls();
  const started = performance.now();
  const rampCpu = process.cpuUsage();
  // Through the producer in a process of its own, as the chat backend enqueues: not the worker's garbage.
  const enqueued = await startWorkspacesElsewhere(
    { redisUrl: REDIS_URL, databaseUrl: db.url, prefix, inputs: seeded, inFlight: 64 },
    RAMP_LIMIT_MS,
    cleanup,
  );
  const enqueueMs = performance.now() - started;
  check(
    enqueued.every((e) => !e.deduplicated),
    'a start of a distinct workspace was deduplicated',
  );
  const jobIds = enqueued.map((e) => e.jobId);
  // The ramp can take minutes at 10,000 (BullMQ's stalled check and lock extension walk every active job):
  // say how far it is.
  const ramp = setInterval(() => {
    void rampProgress(db.pool, calls, queuedAt.size, started).catch(() => {});
  }, RAMP_PROGRESS_MS);
  cleanup.add('ramp progress', async () => clearInterval(ramp));
  // A job that fails while it should wait (its BullMQ lock or a pool connection timed out under the load)
  // fails the run at once: it never gets its ok result.
  let failedCheckedAt = 0;
  const noneFailed = async (when: string) => {
    if (performance.now() - failedCheckedAt < 1_000) return;
    failedCheckedAt = performance.now();
    const [first] = await queue.getJobs(['failed'], 0, 0);
    if (!first) return;
    const failedCount = await queue.getFailedCount();
    check(
      false,
      `${failedCount} jobs failed ${when}, ${queuedAt.size} of ${WAITERS} having told build_queued after ` +
        `${((performance.now() - started) / 1000).toFixed(0)} s; the first: ${first.failedReason} ` +
        `(${first.stacktrace?.at(0)?.split('\n')[0] ?? 'no stack'})`,
    );
  };
  await until(
    'build_queued from every job',
    async () => {
      await noneFailed('before every build was waited on');
      return queuedAt.size >= WAITERS ? true : undefined;
    },
    RAMP_LIMIT_MS,
  );
  clearInterval(ramp);
  const rampMs = performance.now() - started;
  // The worker's alone (the producer runs in its own process): a figure to compare runs by, e.g. GC settings.
  const rampCpuUsed = process.cpuUsage(rampCpu);
  const rampCpuMs = (rampCpuUsed.user + rampCpuUsed.system) / 1000;
  const rampCalls = calls();
  const breakdownRamp = memoryBreakdown();
  const { rows: pending } = await db.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM provisioner_jobs WHERE started_at IS NULL AND completed_at IS NULL`,
  );
  check(pending[0]!.n === WAITERS, `${pending[0]!.n} pending provisioner jobs, expected ${WAITERS}`);
  check(results.size === 0, `${results.size} jobs ended before any build completed`);
  await sleep(SETTLE_MS);

  // The idle window: nothing changes in the database; only timers (the hub's ping, lock refreshes,
  // BullMQ's lock extension) do anything.
  const stopIdleProfile = PROFILE_DIR === undefined ? undefined : await startCpuProfile();
  // Starting the profiler stops the event loop for a few hundred ms: not in the window.
  if (stopIdleProfile) await sleep(1_000);
  const gcPauses: { endedAt: number; ms: number }[] = [];
  const keepPauses = (entries: PerformanceEntry[]) => {
    for (const entry of entries)
      gcPauses.push({ endedAt: entry.startTime + entry.duration, ms: entry.duration });
  };
  const gcObserver = new PerformanceObserver((list) => keepPauses(list.getEntries()));
  gcObserver.observe({ entryTypes: ['gc'] });
  refreshes = [];
  const windowCalls = calls();
  const cpu = process.cpuUsage();
  const threadsBefore = threadsCpuMs();
  const windowStarted = performance.now();
  let peakRssMb = memory().rssMb;
  const sampler = setInterval(() => (peakRssMb = Math.max(peakRssMb, memory().rssMb)), 200);
  await sleep(IDLE_MS);
  clearInterval(sampler);
  const breakdownWindow = memoryBreakdown();
  const windowSeconds = (performance.now() - windowStarted) / 1000;
  const used = process.cpuUsage(cpu);
  const threadsAfter = threadsCpuMs();
  const idleCalls = calls();
  const idleRefreshes = refreshes;
  refreshes = undefined;
  // Entries are delivered after the fact: the last ones are still queued (as in fanout.ts).
  keepPauses(gcObserver.takeRecords());
  gcObserver.disconnect();
  await stopIdleProfile?.(`${PROFILE_DIR}/waiters-${WAITERS}-idle.cpuprofile`, 'the idle window');
  const during = memory(true);
  const breakdownDuring = memoryBreakdown();
  await stopHeapProfile?.(heapProfile!);
  const fmt = (b: Record<string, number>) =>
    Object.entries(b)
      .map(([k, v]) => `${k} ${v.toFixed(1)}`)
      .join(', ');
  console.log(`waiters: MiB before the enqueue (after GC): ${fmt(breakdownBefore)}`);
  console.log(`waiters: MiB at the end of the ramp (no GC): ${fmt(breakdownRamp)}`);
  console.log(`waiters: MiB at the end of the idle window (no GC): ${fmt(breakdownWindow)}`);
  console.log(`waiters: MiB at the end of the idle window (right after a GC): ${fmt(breakdownDuring)}`);
  if (process.env.BENCH_HEAP_SNAPSHOT)
    console.log(`heap snapshot: ${writeHeapSnapshot(process.env.BENCH_HEAP_SNAPSHOT)}`);
  check(results.size === 0, `${results.size} jobs ended while nothing changed`);
  failedCheckedAt = 0;
  await noneFailed('while nothing changed');

  const cpuPercent = ((used.user + used.system) / 1000 / (windowSeconds * 1000)) * 100;
  // The RSS the process held while it waited, not after the bench's own GC: a compacting GC maps the pages it
  // moves objects to before the ones it empties are given back (by a V8 thread, within about a second).
  const rssPerWaiterKb = ((peakRssMb - before.rssMb) * 1024) / WAITERS;
  const heapPerWaiterKb = ((during.heapMb - before.heapMb) * 1024) / WAITERS;
  const perWaiterKb = (field: string) =>
    ((breakdownDuring[field]! - breakdownBefore[field]!) * 1024) / WAITERS;
  const queuedTimes = [...queuedAt.values()].map((t) => t - started);
  report({
    case: `${WAITERS} starts enqueued -> all waiting on their builds`,
    n: WAITERS,
    opsPerSec: (WAITERS / rampMs) * 1000,
    latency: stats(queuedTimes),
    notes:
      `seed ${(seedMs / 1000).toFixed(1)} s; enqueue ${(enqueueMs / 1000).toFixed(1)} s, the last build_queued ` +
      `after ${(rampMs / 1000).toFixed(1)} s; the worker's Postgres queries meanwhile ` +
      `${((rampCalls.pg[WORKER_APPLICATION] ?? 0) / (rampMs / 1000)).toFixed(0)}/s ` +
      `(${top(rampCalls.pgStatements, rampMs / 1000)}); this process's CPU ${(rampCpuMs / WAITERS).toFixed(2)} ms ` +
      `per start; latency = enqueue start -> the job's build_queued`,
  });
  const memoryMet = peakRssMb < MAX_RSS_MB && rssPerWaiterKb <= MAX_KIB_PER_WAITER;
  report({
    case: `memory with ${WAITERS} waiting${COMPILED ? ', compiled (dist/)' : ''}`,
    n: WAITERS,
    notes:
      `RSS ${before.rssMb.toFixed(0)} -> ${peakRssMb.toFixed(0)} MiB (the most in the window; ${during.rssMb.toFixed(0)} ` +
      `right after the bench's GC), ` +
      `${rssPerWaiterKb.toFixed(1)} KiB/waiter; heap ${before.heapMb.toFixed(0)} -> ${during.heapMb.toFixed(0)} MiB ` +
      `after GC, ${heapPerWaiterKb.toFixed(1)} KiB/waiter (committed ${perWaiterKb('heapTotal').toFixed(1)}, ` +
      `the rest of the RSS outside the heap after that GC ${perWaiterKb('rest').toFixed(1)}); target RSS < ${MAX_RSS_MB} MiB and <= ` +
      `${MAX_KIB_PER_WAITER} KiB/waiter: ${flag(memoryMet)}`,
  });

  const windowOf = (pick: (c: CallCounts) => Record<string, number>) =>
    diff(pick(idleCalls), pick(windowCalls));
  const pgWindow = windowOf((c) => c.pg);
  const workerQueries = (pgWindow[WORKER_APPLICATION] ?? 0) + (pgWindow['workspace-jobs-listener'] ?? 0);
  const workerQps = workerQueries / windowSeconds;
  const pollQps = WAITERS / (POLL_MS / 1000);
  const fewer = pollQps / Math.max(workerQps, 1 / windowSeconds);
  const redisWindow = windowOf((c) => c.redis);
  report({
    case: `idle ${windowSeconds.toFixed(1)} s with ${WAITERS} waiting: CPU`,
    n: WAITERS,
    notes:
      `this process ${cpuPercent.toFixed(1)} % of a core (user ${(used.user / 1000).toFixed(0)} ms, system ` +
      `${(used.system / 1000).toFixed(0)} ms; the main thread ${(threadsAfter.mainMs - threadsBefore.mainMs).toFixed(0)} ms, ` +
      `the others ${(threadsAfter.otherMs - threadsBefore.otherMs).toFixed(0)} ms); Redis ${(sum(redisWindow) / windowSeconds).toFixed(0)} commands/s ` +
      `(${top(redisWindow, windowSeconds)}); target < ${MAX_CPU_PERCENT} %: ${flag(cpuPercent < MAX_CPU_PERCENT)}`,
  });
  report({
    case: `idle: the worker's Postgres queries vs a 2 s poll (computed)`,
    n: workerQueries,
    opsPerSec: workerQps,
    notes:
      `${top(
        windowOf((c) => c.pgStatements),
        windowSeconds,
      )}; a 2 s poll of ${WAITERS}: ${pollQps.toFixed(0)}/s, ` +
      `${fewer.toFixed(1)}x more; target >= ${MIN_FEWER_THAN_POLL}x fewer: ${flag(fewer >= MIN_FEWER_THAN_POLL)}`,
  });

  // Refreshes per 100 ms bucket; an even spread puts BUCKET_MS / period of a period's refreshes in each. The
  // bucket a long GC pause ended in, and the next, hold the late tick's catch-up: told apart, not a burst.
  const buckets = new Map<number, number>();
  for (const t of idleRefreshes) {
    const bucket = Math.floor((t - windowStarted) / BUCKET_MS);
    buckets.set(bucket, (buckets.get(bucket) ?? 0) + 1);
  }
  const longPauses = gcPauses.filter((pause) => pause.ms >= CATCH_UP_PAUSE_MS);
  const catchUps = new Set(
    longPauses.flatMap((pause) => {
      const bucket = Math.floor((pause.endedAt - windowStarted) / BUCKET_MS);
      return [bucket, bucket + 1];
    }),
  );
  const perPeriod = idleRefreshes.length / ((windowSeconds * 1000) / refreshPeriodMs);
  const shareOf = (n: number) => (perPeriod > 0 ? n / perPeriod : 0);
  const percent = (n: number) => `${(shareOf(n) * 100).toFixed(1)} %`;
  const busiest = Math.max(0, ...buckets.values());
  const elsewhere = [...buckets].filter(([bucket]) => !catchUps.has(bucket)).map(([, n]) => n);
  const busiestElsewhere = Math.max(0, ...elsewhere);
  const evenShare = BUCKET_MS / refreshPeriodMs;
  const bursts = elsewhere.filter((n) => shareOf(n) > BURST_FACTOR * evenShare).length;
  const spread = shareOf(busiestElsewhere) <= BURST_FACTOR * evenShare;
  const ticks = ticksOf(idleRefreshes);
  const busiestCatchUp = Math.max(0, ...[...catchUps].map((bucket) => buckets.get(bucket) ?? 0));
  const pauses =
    gcPauses.length === 0
      ? 'no GC pause in the window'
      : `GC pauses in the window ${gcPauses.length}, the longest ` +
        `${Math.max(...gcPauses.map((pause) => pause.ms)).toFixed(0)} ms` +
        (longPauses.length === 0
          ? ''
          : `; ${longPauses.length} of ${CATCH_UP_PAUSE_MS} ms or more, after which a late tick caught up ` +
            `(the busiest of the 100 ms after each: ${percent(busiestCatchUp)}), so the busiest elsewhere ` +
            percent(busiestElsewhere));
  report({
    case: `idle: chat-lock refreshes per ${BUCKET_MS} ms`,
    n: idleRefreshes.length,
    opsPerSec: idleRefreshes.length / windowSeconds,
    notes:
      `every ${refreshPeriodMs} ms per lock (TTL ${config.chatLockTtlMs} ms): the busiest ${BUCKET_MS} ms held ` +
      `${busiest} = ${percent(busiest)} of a period's ${perPeriod.toFixed(0)} (even: ` +
      `${(evenShare * 100).toFixed(0)} %); ${pauses}; ${bursts} of ` +
      `${Math.ceil((windowSeconds * 1000) / BUCKET_MS)} buckets over ${BURST_FACTOR}x even` +
      `${catchUps.size > 0 ? ' but for a catch-up' : ''}; in ${ticks.length} ticks ` +
      `(${(ticks.length / windowSeconds).toFixed(1)}/s), ` +
      `${(idleRefreshes.length / Math.max(ticks.length, 1)).toFixed(0)} locks per tick, the most ` +
      `${Math.max(0, ...ticks)}; spread, not bursts: ${flag(spread)}${spread ? '' : ' (bursts)'}`,
  });

  // Every build done at once, in one statement (one transaction), as the provisioner's completion writes it
  // for a start build (the job completed, its resource, its agent) with the simulated agent already ready.
  const stopResultsProfile = PROFILE_DIR === undefined ? undefined : await startCpuProfile();
  const resultsBefore = calls();
  const completeCpu = process.cpuUsage();
  const completeStarted = performance.now();
  const { rowCount } = await db.pool.query(
    `WITH jobs AS (
       UPDATE provisioner_jobs j SET started_at = now(), completed_at = now(), updated_at = now()
         FROM workspace_builds b
        WHERE b.job_id = j.id AND b.build_number = 3 AND j.completed_at IS NULL
       RETURNING j.id
     ), resources AS (
       INSERT INTO workspace_resources (job_id, transition, type, name)
       SELECT id, 'start', 'sim_container', 'dev' FROM jobs RETURNING id
     )
     INSERT INTO workspace_agents (resource_id, name, lifecycle_state, first_connected_at, last_connected_at,
                                   started_at, ready_at)
     SELECT id, 'main', 'ready', now(), now(), now(), now() FROM resources`,
  );
  const updateMs = performance.now() - completeStarted;
  check(rowCount === WAITERS, `the completing statement made ${rowCount} agents, expected ${WAITERS}`);
  await until(
    () => `every result (${results.size} of ${WAITERS} came)`,
    async () => {
      await noneFailed('after their builds completed');
      return results.size >= WAITERS ? true : undefined;
    },
    60_000,
  );
  const resultTimes = [...results.values()].map((r) => r.at - completeStarted);
  const lastResultMs = Math.max(...resultTimes);
  const completedCalls = calls();
  const completeUsed = process.cpuUsage(completeCpu);
  await stopResultsProfile?.(`${PROFILE_DIR}/waiters-${WAITERS}-results.cpuprofile`, 'the results');

  const failures = jobIds.filter((id) => !results.get(id)?.ok);
  check(
    failures.length === 0,
    `${failures.length} jobs did not start their workspace, e.g. ${JSON.stringify(results.get(failures[0]!)?.data)}`,
  );
  const repeated = [...results.values()].filter((r) => r.count !== 1).length;
  check(repeated === 0, `${repeated} jobs published more than one result`);
  const notReady = [...results.values()].filter(
    (r) => (r.data as { agent_status?: string }).agent_status,
  ).length;
  check(notReady === 0, `${notReady} results report an agent that is not ready`);
  // No job left to run or failed; not the completed count, which removeOnComplete caps at 5,000.
  await until(
    'every job completed in the queue',
    async () => {
      const counts = await queue.getJobCounts('active', 'waiting', 'delayed', 'failed');
      return Object.values(counts).every((n) => n === 0) ? true : undefined;
    },
    30_000,
  );
  const perResult = (pick: (c: CallCounts) => Record<string, number>) =>
    (sum(pick(completedCalls)) - sum(pick(resultsBefore))) / WAITERS;
  // The statements the results cost, in all: what the burst's reads coalesced into (or did not).
  const statements = largest(diff(completedCalls.pgStatements, resultsBefore.pgStatements), 6)
    .map(([name, count]) => `${name} ${count}`)
    .join(', ');
  report({
    case: `${WAITERS} builds completed by one statement -> every result`,
    n: WAITERS,
    opsPerSec: (WAITERS / lastResultMs) * 1000,
    latency: stats(resultTimes),
    notes:
      `the statement ${updateMs.toFixed(0)} ms, the last result after ${(lastResultMs / 1000).toFixed(2)} s; ` +
      `per result ${perResult((c) => c.pg).toFixed(1)} Postgres queries, ${perResult((c) => c.redis).toFixed(1)} ` +
      `Redis commands in ${perResult((c) => c.redisTrips).toFixed(1)} round trips (${perConnection(resultsBefore, completedCalls)}), ` +
      `CPU ${((completeUsed.user + completeUsed.system) / 1000 / WAITERS).toFixed(2)} ms per result ` +
      `(user ${(completeUsed.user / 1000).toFixed(0)} ms, system ${(completeUsed.system / 1000).toFixed(0)} ms in all) ` +
      `(statements in all: ${statements}); every job one ok result; target all within ${MAX_LAST_RESULT_MS / 1000} s: ` +
      `${flag(lastResultMs <= MAX_LAST_RESULT_MS)}`,
  });
});
