// The D6 claim (docs/start-workspace.md): 1,000 jobs waiting on 1,000 builds via one PgNotificationHub. Each
// waiter runs the worker's own check (PgWorkspaceStore.getBuild, on a pool of 10 as a worker with
// concurrency 50 has) and every check is counted: while idle (a window that covers one round of the hub's
// 10 s ping; the run fails on any check there), on single wake-ups and on a herd of 800 builds completing in
// one UPDATE. The wake-up latency
// runs from sending `UPDATE provisioner_jobs SET completed_at` to the waiter resolving. A 2 s poll per
// waiter (Coder's loop) is computed for comparison, not run.
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { insertTemplate, insertUser } from '../src/cli/fixtures.js';
import { completeJob } from '../test/helpers/fixtures.js';
import { topics } from '../src/worker/ports.js';
import { createLogger } from '../src/shared/logger.js';
import { PgNotificationHub } from '../src/shared/notifications.js';
import { PgWorkspaceStore } from '../src/worker/pg-store.js';
import {
  benchDatabase,
  check,
  countCalls,
  memory,
  report,
  runBench,
  sleep,
  stats,
  sum,
  until,
} from './lib.js';

const WAITERS = 1_000;
const SINGLE_WAKES = 200;
/** The hub's default ping interval is 10 s; the idle window covers one round of it. */
const PING_INTERVAL_MS = 10_000;
const IDLE_MS = PING_INTERVAL_MS + 1_500;
const POLL_MS = 2_000;
/** The application_name of the hub's LISTEN connection, whose queries are its pings. */
const HUB_APPLICATION = 'workspace-jobs-listener';
const POOL_SIZE = 10;

type Phase = 'initial' | 'idle' | 'single' | 'herd';

await runBench('waits', 60_000, async (cleanup) => {
  const db = await benchDatabase(cleanup, POOL_SIZE);
  const log = createLogger('silent');

  // 1,000 workspaces, each with a pending start build.
  const { userId } = await insertUser(db.pool);
  const template = await insertTemplate(db.pool, { versions: [{}] });
  const workspaceIds = Array.from({ length: WAITERS }, () => randomUUID());
  const jobIds = Array.from({ length: WAITERS }, () => randomUUID());
  const buildIds = Array.from({ length: WAITERS }, () => randomUUID());
  await db.pool.query(
    `INSERT INTO workspaces (id, owner_id, template_id, name)
     SELECT w, $2, $3, 'ws-' || n FROM unnest($1::uuid[]) WITH ORDINALITY AS t(w, n)`,
    [workspaceIds, userId, template.templateId],
  );
  await db.pool.query(
    `INSERT INTO provisioner_jobs (id, input)
     SELECT j, jsonb_build_object('workspace_build_id', b) FROM unnest($1::uuid[], $2::uuid[]) AS t(j, b)`,
    [jobIds, buildIds],
  );
  await db.pool.query(
    `INSERT INTO workspace_builds (id, workspace_id, template_version_id, build_number, transition, initiator_id, job_id)
     SELECT b, w, $4, 1, 'start', $5, j FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS t(b, w, j)`,
    [buildIds, workspaceIds, jobIds, template.versionIds[0], userId],
  );

  const hub = new PgNotificationHub(db.url, { log, pingIntervalMs: PING_INTERVAL_MS });
  await hub.start();
  cleanup.add('notification hub', () => hub.stop());
  const updater = new pg.Client({ connectionString: db.url });
  await updater.connect();
  cleanup.add('updater connection', () => updater.end());
  const store = new PgWorkspaceStore(db.pool);

  let phase: Phase = 'initial';
  const checks: Record<Phase, number> = { initial: 0, idle: 0, single: 0, herd: 0 };
  const resolvedAt = new Float64Array(WAITERS);
  let resolved = 0;
  // Read through a function: a check() on the counter would narrow its type for the rest of the scope.
  const woken = () => resolved;

  const heapBefore = memory(true).heapMb;
  const setupStarted = performance.now();
  const waiters = buildIds.map((buildId, i) =>
    hub
      .waitFor(
        [topics.provisionerJob(jobIds[i]!)],
        async () => {
          checks[phase]++;
          const build = await store.getBuild(buildId);
          return build?.jobStatus === 'succeeded' ? true : undefined;
        },
        { timeoutMs: 55_000 },
      )
      .then(() => {
        resolvedAt[i] = performance.now();
        resolved++;
      }),
  );
  // Any waiter that fails fails the run (reported by the awaits below).
  const everyone = Promise.all(waiters);
  everyone.catch(() => {});

  await until('every first check', () => (checks.initial >= WAITERS ? true : undefined), 20_000);
  await until(
    'an idle pool',
    () => (db.pool.waitingCount === 0 && db.pool.idleCount >= db.pool.totalCount ? true : undefined),
    20_000,
  );
  const setupMs = performance.now() - setupStarted;
  const heapPerWaiterKb = ((memory(true).heapMb - heapBefore) * 1024) / WAITERS;
  report({
    case: `${WAITERS} waiters start: one check each`,
    n: WAITERS,
    opsPerSec: (WAITERS / setupMs) * 1000,
    notes: `${setupMs.toFixed(0)} ms, pool of ${POOL_SIZE}, heap ${heapPerWaiterKb.toFixed(1)} KiB/waiter`,
  });

  // Idle: nothing changes. Only the hub's ping should query, once per interval for all waiters.
  phase = 'idle';
  const calls = countCalls();
  const idleStarted = performance.now();
  await sleep(IDLE_MS);
  const idleSeconds = (performance.now() - idleStarted) / 1000;
  const idleQueries = calls().pg;
  const pings = idleQueries[HUB_APPLICATION] ?? 0;
  const queries = sum(idleQueries);
  check(woken() === 0, `${woken()} waiters resolved while nothing changed`);
  check(checks.idle === 0, `${checks.idle} checks while nothing changed: only the hub's ping should query`);
  check(pings >= 1, `the hub did not ping in ${idleSeconds.toFixed(1)} s`);
  report({
    case: `idle ${idleSeconds.toFixed(1)} s with ${WAITERS} waiting`,
    n: queries,
    opsPerSec: queries / idleSeconds,
    notes:
      `${checks.idle} checks; ${pings} hub ping(s), ${queries} queries in all; ` +
      `a 2 s poll: ${Math.round((WAITERS * IDLE_MS) / POLL_MS).toLocaleString('en-US')} queries, ` +
      `${(WAITERS / (POLL_MS / 1000)).toFixed(0)}/s`,
  });

  // Single wake-ups: complete one build at a time and time UPDATE -> waiter resolved.
  phase = 'single';
  const singleLatencies: number[] = [];
  const updateLatencies: number[] = [];
  for (let i = 0; i < SINGLE_WAKES; i++) {
    const t0 = performance.now();
    await completeJob(updater, jobIds[i]!);
    updateLatencies.push(performance.now() - t0);
    await waiters[i];
    singleLatencies.push(resolvedAt[i]! - t0);
  }
  check(woken() === SINGLE_WAKES, `${woken()} waiters resolved after ${SINGLE_WAKES} single wake-ups`);
  report({
    case: 'wake-up: UPDATE completed_at -> waiter resolved, one at a time',
    n: SINGLE_WAKES,
    latency: stats(singleLatencies),
    notes:
      `${checks.single} checks for ${SINGLE_WAKES} wake-ups; the UPDATE alone p50 ` +
      `${stats(updateLatencies).p50.toFixed(2)} ms; a 2 s poll: ~1000 ms mean, ~2000 ms max`,
  });

  // Herd: the other 800 complete in one statement.
  phase = 'herd';
  const rest = jobIds.slice(SINGLE_WAKES);
  const t0 = performance.now();
  await updater.query(
    `UPDATE provisioner_jobs SET started_at = now(), completed_at = now(), updated_at = now()
      WHERE id = ANY($1::uuid[])`,
    [rest],
  );
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    everyone,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`only ${resolved}/${WAITERS} waiters woke`)), 20_000);
    }),
  ]).finally(() => clearTimeout(timer));
  const herdLatencies = Array.from(resolvedAt.subarray(SINGLE_WAKES), (at) => at - t0);
  report({
    case: `wake-up: ${rest.length} builds completed by one UPDATE`,
    n: rest.length,
    opsPerSec: (rest.length / Math.max(...herdLatencies)) * 1000,
    latency: stats(herdLatencies),
    notes: `${checks.herd} checks, pool of ${POOL_SIZE}`,
  });

  // Queries issued while waiting: every check that was neither a waiter's first nor its last, and the pings.
  const total = checks.initial + checks.idle + checks.single + checks.herd;
  const allPings = calls().pg[HUB_APPLICATION] ?? 0;
  const whileWaiting = total - 2 * WAITERS + allPings;
  const waitedSeconds = (t0 + Math.max(...herdLatencies) - idleStarted) / 1000;
  const polled = Math.round((WAITERS * waitedSeconds * 1000) / POLL_MS);
  report({
    case: `queries while waiting: hub vs a 2 s poll (computed)`,
    n: WAITERS,
    notes:
      `hub ${whileWaiting} over ${waitedSeconds.toFixed(1)} s (${total} checks in all, ${allPings} pings); ` +
      `a 2 s poll per waiter: ${polled.toLocaleString('en-US')} (${Math.round(polled / Math.max(1, whileWaiting))}x)`,
  });
});
