// Live build logs (issue 10): lines/s from the provisioner daemon (simulator, no delays) to SSE clients
// following the dashboard's GET /builds/:id/logs?follow=1, every line checked against the table once and in
// order; and how much a chatty build grows its chat's replay stream (build_log events per 1,000 lines) at a
// burst and at a slow drip, with a worker running the start job, against the worker's bound of one
// build_log event per BUILD_LOG_INTERVAL_MS (plus the first and the last). All in one process.
import { randomBytes } from 'node:crypto';
import { insertBuild, insertTemplate, insertUser, insertWorkspace } from '../src/cli/fixtures.js';
import { startDashboard } from '../src/dashboard/server.js';
import { WorkspaceJobsProducer } from '../src/producer/producer.js';
import { loadProvisionerConfig, startProvisioner } from '../src/provisioner/index.js';
import type { BuildLogLine } from '../src/shared/build-logs.js';
import { loadConfig, type Config, type Env } from '../src/shared/config.js';
import type { BuildLogData } from '../src/shared/contract.js';
import { readChatEvents } from '../src/shared/events.js';
import { redisKeys } from '../src/shared/keys.js';
import { createLogger } from '../src/shared/logger.js';
import type { Pool } from '../src/shared/postgres.js';
import { BUILD_LOG_INTERVAL_MS } from '../src/worker/build-watch.js';
import { WorkspaceWorker } from '../src/worker/worker.js';
import {
  BenchFailure,
  REDIS_URL,
  benchDatabase,
  benchRedis,
  check,
  insertStoppedWorkspaces,
  ms,
  report,
  runBench,
  stats,
  uniquePrefix,
  until,
  type Cleanup,
} from './lib.js';

/** Lines per simulated build: the daemon keeps 10,000 lines of a job (JobLogWriter), so no more per build. */
const LINES = 10_000;
/** Builds followed at once in the second throughput case: 50,000 lines in all. */
const PARALLEL = 5;
/** The chat stream cases: a burst (every line in one tick) and a slow drip. */
const DRIP = { lines: 1_000, buildMs: 5_000 };
/** build_log events beyond one per interval: the first check when following starts, the last flush. */
const BOUND_EXTRA = 2;
const WAIT_MS = 30_000;

const log = createLogger('silent');

/** What one SSE client got from a build's log stream. */
interface Followed {
  lines: BuildLogLine[];
  /** Date.now() when each line's `lines` event arrived. */
  receivedAt: number[];
  events: number;
  end?: { build_id: string; done: boolean; last_log_id: string };
}

/** Per line, from its storing (created_at: its INSERT's start) to its arrival at the client, in ms. */
const lagsOf = (f: Followed) => f.lines.map((l, i) => f.receivedAt[i]! - Date.parse(l.at));

/**
 * Opens the stream; resolves once the server has committed to it (200, the first page read), with the
 * reading of it until the server ends it (after `end`). Every `lines` event's id must be its last line's.
 */
async function followLog(url: string, authorization: string): Promise<{ done: Promise<Followed> }> {
  const res = await fetch(url, {
    headers: { Accept: 'text/event-stream', Authorization: authorization },
    signal: AbortSignal.timeout(WAIT_MS),
  });
  if (!res.ok || !res.body) throw new BenchFailure(`GET ${url} answered ${res.status}: ${await res.text()}`);
  const body = res.body;
  const done = (async () => {
    const followed: Followed = { lines: [], receivedAt: [], events: 0 };
    let buffer = '';
    for await (const chunk of body.pipeThrough(new TextDecoderStream())) {
      buffer += chunk;
      let blockEnd: number;
      while ((blockEnd = buffer.indexOf('\n\n')) >= 0) {
        const fields = new Map<string, string>();
        for (const line of buffer.slice(0, blockEnd).split('\n')) {
          const colon = line.indexOf(': ');
          if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 2));
        }
        buffer = buffer.slice(blockEnd + 2);
        const data = fields.get('data');
        if (fields.get('event') === 'end') followed.end = JSON.parse(data!) as Followed['end'];
        if (fields.get('event') !== 'lines') continue;
        const lines = JSON.parse(data!) as BuildLogLine[];
        check(fields.get('id') === lines.at(-1)?.id, `a lines event's id is not its last line's id`);
        const at = Date.now();
        for (const line of lines) {
          followed.lines.push(line);
          followed.receivedAt.push(at);
        }
        followed.events++;
      }
    }
    return followed;
  })();
  // Awaited later; until then a failure must not be an unhandled rejection, which would skip the cleanup.
  done.catch(() => {});
  return { done };
}

/**
 * Fails unless the client got exactly the stored lines of the job, once and in order, the simulator's in
 * their sequence, and an `end` naming the last one. Returns how many lines are stored.
 */
async function checkComplete(
  pool: Pool,
  build: { buildId: string; jobId: string },
  followed: Followed,
): Promise<number> {
  const { rows: stored } = await pool.query<{ id: string; output: string }>(
    'SELECT l.id::text AS id, l.output FROM provisioner_job_logs l WHERE l.job_id = $1 ORDER BY l.id',
    [build.jobId],
  );
  const got = followed.lines.map((l) => l.id);
  const unique = new Set(got);
  const outOfOrder = got.filter((id, i) => i > 0 && BigInt(id) <= BigInt(got[i - 1]!)).length;
  const missing = stored.filter((r) => !unique.has(r.id)).length;
  const what = `build ${build.buildId}: ${stored.length} stored, ${got.length} received`;
  check(
    missing === 0 && unique.size === got.length && outOfOrder === 0,
    `${what}: ${missing} missing, ${got.length - unique.size} duplicated, ${outOfOrder} out of order`,
  );
  const differs = stored.findIndex(
    (r, i) => followed.lines[i]!.id !== r.id || followed.lines[i]!.output !== r.output,
  );
  check(
    differs < 0,
    `${what}: line ${differs + 1} differs from the stored one: ${JSON.stringify(followed.lines[differs])} vs ${JSON.stringify(stored[differs])}`,
  );
  const simulated = followed.lines.filter((l) => l.output.startsWith('Simulated output line '));
  check(
    simulated.every((l, i) => l.output.startsWith(`Simulated output line ${i + 1} of `)),
    `${what}: the simulated lines are not in their sequence`,
  );
  const last = stored.at(-1)?.id ?? '0';
  check(
    followed.end?.done === true && followed.end.last_log_id === last,
    `${what}: end was ${JSON.stringify(followed.end)}, expected done with last_log_id ${last}`,
  );
  return stored.length;
}

async function runProvisioner(cleanup: Cleanup, config: Config, env: Env) {
  const provisioner = await startProvisioner(config, loadProvisionerConfig(env), log);
  cleanup.add('provisioner', () => provisioner.stop(5_000));
  return provisioner;
}

await runBench('logs', 50_000, async (cleanup) => {
  const db = await benchDatabase(cleanup, 10);
  const prefix = uniquePrefix('logs');
  const redis = benchRedis(cleanup, prefix);
  // The dashboard as the auth tests run it: Basic credentials on every route but /healthz.
  const password = randomBytes(12).toString('hex');
  const authorization = `Basic ${Buffer.from(`bench:${password}`).toString('base64')}`;
  const config = loadConfig({
    REDIS_URL,
    DATABASE_URL: db.url,
    QUEUE_PREFIX: prefix,
    LOG_LEVEL: 'silent',
    DASHBOARD_HOST: '127.0.0.1',
    DASHBOARD_PORT: '0',
    DASHBOARD_USER: 'bench',
    DASHBOARD_PASSWORD: password,
  });
  const dashboard = await startDashboard(config, log);
  cleanup.add('dashboard', () => dashboard.close());
  const logsUrl = (buildId: string) => `${dashboard.url}/builds/${buildId}/logs?follow=1`;

  const { userId } = await insertUser(db.pool);
  const { templateId, versionIds } = await insertTemplate(db.pool, { versions: [{}] });
  const versionId = versionIds[0]!;

  // -------------------------------------------------------------------------------------------------
  // Throughput: pending builds, a client following each, then a daemon that runs them with no delays.
  for (const count of [1, PARALLEL]) {
    const builds = [];
    for (let i = 0; i < count; i++) {
      const { workspaceId } = await insertWorkspace(db.pool, { ownerId: userId, templateId });
      builds.push(
        await insertBuild(db.pool, {
          workspaceId,
          templateVersionId: versionId,
          initiatorId: userId,
          transition: 'start',
          status: 'pending',
        }),
      );
    }
    const clients = await Promise.all(builds.map((b) => followLog(logsUrl(b.buildId), authorization)));
    const daemon = await runProvisioner(cleanup, config, {
      SIM_BUILD_MS: '0',
      SIM_LOG_LINES: String(LINES),
      SIM_AGENT_NAMES: 'none',
      PROVISIONER_CONCURRENCY: String(count),
    });
    const followed = await Promise.all(clients.map((c) => c.done));
    await daemon.stop(5_000);
    let lines = 0;
    for (const [i, build] of builds.entries()) lines += await checkComplete(db.pool, build, followed[i]!);
    const all = followed.flatMap((f) => f.lines);
    const firstWritten = Math.min(...all.map((l) => Date.parse(l.at)));
    const firstReceived = Math.min(...followed.map((f) => f.receivedAt[0]!));
    const lastReceived = Math.max(...followed.map((f) => f.receivedAt.at(-1)!));
    const { rows } = await db.pool.query<{ inserts: number }>(
      `SELECT count(DISTINCT (job_id, created_at))::int AS inserts FROM provisioner_job_logs
        WHERE job_id = ANY($1::uuid[])`,
      [builds.map((b) => b.jobId)],
    );
    report({
      case:
        count === 1
          ? `${LINES} lines at once, one build -> SSE client`
          : `${count} builds x ${LINES} lines at once -> ${count} SSE clients`,
      n: lines,
      opsPerSec: (lines / (lastReceived - firstWritten)) * 1000,
      latency: stats(followed.flatMap(lagsOf)),
      notes:
        `lines/s from the first line written to the last received (${ms(lastReceived - firstWritten)} ms, ` +
        `the first received after ${ms(firstReceived - firstWritten)} ms); ` +
        `latency = line written -> received; ${rows[0]!.inserts} INSERTs, ` +
        `${followed.reduce((n, f) => n + f.events, 0)} lines events; every line once, in order`,
    });
  }

  // -------------------------------------------------------------------------------------------------
  // Chat stream growth: a stopped workspace started through the producer and a worker, the daemon's build
  // followed by a client as well; the chat's replay stream before and after.
  const worker = await WorkspaceWorker.start(config, log);
  cleanup.add('worker', () => worker.close(5_000));
  const producer = new WorkspaceJobsProducer({ connection: redis, pool: db.pool, prefix, log });
  cleanup.add('producer', () => producer.close());
  const keys = redisKeys(prefix);

  for (const { label, lines, buildMs } of [
    { label: 'burst', lines: LINES, buildMs: 0 },
    { label: 'drip', ...DRIP },
  ]) {
    const pace = buildMs === 0 ? 'at once' : `over ${buildMs / 1000} s`;
    const daemon = await runProvisioner(cleanup, config, {
      SIM_BUILD_MS: String(buildMs),
      SIM_LOG_LINES: String(lines),
      SIM_AGENT_CONNECT_MS: '10',
      SIM_STARTUP_MS: '10',
    });
    const seeded = (
      await insertStoppedWorkspaces(db.pool, { ownerId: userId, templateId, versionId }, 1)
    )[0]!;
    const { chatId, workspaceId } = seeded;
    const before = await redis.xlen(keys.chatLog(chatId));

    const { jobId } = await producer.startWorkspace(seeded);
    const build = await until(
      'start build',
      async () => {
        const { rows } = await db.pool.query<{ buildId: string; jobId: string }>(
          `SELECT id AS "buildId", job_id AS "jobId" FROM workspace_builds
            WHERE workspace_id = $1 AND build_number = 3`,
          [workspaceId],
        );
        return rows[0];
      },
      WAIT_MS,
    );
    const { done: following } = await followLog(logsUrl(build.buildId), authorization);
    const result = await producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    check(
      result.kind === 'start-workspace' && result.ok,
      `the ${label} start failed: ${JSON.stringify(result)}`,
    );
    const followed = await following;
    const stored = await checkComplete(db.pool, build, followed);
    await daemon.stop(5_000);

    const after = await redis.xlen(keys.chatLog(chatId));
    const events = (await readChatEvents(redis, prefix, chatId, '0')).filter((e) => e.job.id === jobId);
    const previews = events
      .filter((e) => e.stage === 'build_log')
      .map((e) => e.data as unknown as BuildLogData);
    const accounted = previews.reduce((n, p) => n + p.lines.length + p.skipped, 0);
    check(accounted === stored, `the ${label} build_log events account for ${accounted} of ${stored} lines`);
    // The follower runs from the build's creation until the wait ends, before build_succeeded goes out.
    const succeeded = events.find((e) => e.stage === 'build_succeeded');
    check(succeeded, `no build_succeeded event in the ${label} chat's stream`);
    const { rows } = await db.pool.query<{ created: Date }>(
      'SELECT created_at AS created FROM provisioner_jobs WHERE id = $1',
      [build.jobId],
    );
    const windowMs = Date.parse(succeeded.at) - rows[0]!.created.getTime();
    const bound = Math.floor(windowMs / BUILD_LOG_INTERVAL_MS) + BOUND_EXTRA;
    check(
      previews.length <= bound,
      `the ${label} build wrote ${previews.length} build_log events in ${windowMs} ms, ` +
        `over the bound of ${bound} (one per ${BUILD_LOG_INTERVAL_MS} ms + ${BOUND_EXTRA})`,
    );
    report({
      case: `chat stream growth, ${label}: ${lines} lines ${pace}`,
      n: stored,
      latency: stats(lagsOf(followed)),
      notes:
        `build_log entries ${previews.length}, ${((previews.length / stored) * 1000).toFixed(1)} per 1,000 lines ` +
        `(bound ${bound}: ${ms(windowMs)} ms / ${BUILD_LOG_INTERVAL_MS} ms + ${BOUND_EXTRA}); ` +
        `stream +${after - before} entries in all; latency = line written -> received by an SSE client, ` +
        `every line once, in order`,
    });
  }
});
