// What a chat sees while its build waits, on real Redis, Postgres and provisioner daemons: queue positions
// as earlier builds finish, estimates from a template's history, bounded build_log previews of a chatty
// build, and the job's story in Bull Board's Logs tab (job.log).
import { setTimeout as pace } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { insertBuild, insertChat, insertWorkspace } from '../../src/cli/fixtures.js';
import {
  buildEstimateSchema,
  buildLogDataSchema,
  queuePositionDataSchema,
} from '../../src/jobs/contract-schemas.js';
import type { ProgressEvent, QueuePositionData } from '../../src/shared/contract.js';
import { BUILD_LOG_INTERVAL_MS, BUILD_LOG_LINES } from '../../src/worker/build-watch.js';
import { completeJob, startJob } from '../helpers/fixtures.js';
import { POLL, WAIT_MS, WorkerHarness, type SeededOwner } from '../helpers/worker-harness.js';

/** A workspace of the owner's template whose only build is a succeeded stop: no start history. */
async function stoppedWithoutStartHistory(h: WorkerHarness, owner: SeededOwner) {
  const { workspaceId } = await insertWorkspace(h.db.pool, {
    ownerId: owner.ownerId,
    templateId: owner.templateId,
  });
  const stop = await insertBuild(h.db.pool, {
    workspaceId,
    templateVersionId: owner.versionId,
    transition: 'stop',
    status: 'succeeded',
    initiatorId: owner.ownerId,
  });
  const { chatId } = await insertChat(h.db.pool, {
    ownerId: owner.ownerId,
    workspaceId,
    buildId: stop.buildId,
  });
  return { workspaceId, chatId };
}

async function progressEvents(h: WorkerHarness, chatId: string, jobId: string): Promise<ProgressEvent[]> {
  return (await h.jobEvents(chatId, jobId)).filter((e): e is ProgressEvent => e.type === 'progress');
}

/** The job's BullMQ log entries (Bull Board's Logs tab), oldest first. */
async function jobLog(h: WorkerHarness, jobId: string): Promise<string[]> {
  return (await h.queue.getJobLogs(jobId, 0, -1, true)).logs;
}

/** The stage a job log entry starts with (`stage: message`). */
const stageOf = (entry: string) => entry.slice(0, entry.indexOf(':'));

describe('build events', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    // The tests play the provisioner themselves (daemons, or rows written by the test).
    h = await WorkerHarness.create({ provisioner: { paused: true } });
  });

  afterEach(async () => {
    await h.close();
  });

  it('a pending build is told its queue position, 3 → 2 → 1, as earlier builds finish, then runs', async () => {
    await h.startWorker();
    const owner = await h.seedOwner();
    const starts: { chatId: string; jobId: string }[] = [];
    // Four builds queued one after the other, before any provisioner runs: positions 1 to 4.
    for (let i = 0; i < 4; i++) {
      const ws = await stoppedWithoutStartHistory(h, owner);
      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: owner.ownerId });
      const queued = await h.waitForEvent(ws.chatId, 'build_queued', (e) => e.job.id === jobId);
      expect(queued.data).toMatchObject({ position: i + 1, pending: i + 1 });
      starts.push({ chatId: ws.chatId, jobId });
    }
    // One daemon, one build at a time, each well past the position check's throttle (1 s).
    await h.startProvisionerDaemon({ PROVISIONER_CONCURRENCY: '1', SIM_BUILD_MS: '2000' });

    const last = starts.at(-1)!;
    // After the result: each event's job.log entry is written once the event is out, before the next one.
    await h.producer.waitForResult(last.jobId, { timeoutMs: WAIT_MS });
    const events = await progressEvents(h, last.chatId, last.jobId);
    const told = events.filter((e) => ['build_queued', 'queue_position', 'build_running'].includes(e.stage));
    expect(
      told.map((e) =>
        e.stage === 'build_running' ? 'running' : (e.data as unknown as QueuePositionData).position,
      ),
    ).toEqual([4, 3, 2, 1, 'running']);
    for (const e of told.filter((x) => x.stage === 'queue_position')) {
      expect(queuePositionDataSchema.parse(e.data)).toMatchObject({ build_id: expect.any(String) });
      expect(e.message).toMatch(/^Build #\d+ is \d+(st|nd|rd|th) of \d+ in the queue$/);
    }
    // Builds after the first had history by the time they ran: the last one's build_running estimates.
    expect((told.at(-1)!.data as { estimate?: unknown }).estimate).toBeDefined();

    // Bull Board's Logs tab tells the job's story: every stage it published, in order.
    // (`queued` is the producer's when it comes first, so not always the worker's to log.)
    const logged = (await jobLog(h, last.jobId)).map(stageOf);
    const byWorker = (stages: string[]) => stages.filter((stage) => stage !== 'queued');
    expect(byWorker(logged)).toEqual(byWorker(events.map((e) => e.stage)));
  });

  it("a build's estimate comes from its template's earlier builds of the transition, none without them", async () => {
    await h.startWorker();
    await h.startProvisionerDaemon({ SIM_BUILD_MS: '300' });
    const owner = await h.seedOwner();
    const estimates: unknown[] = [];
    for (let i = 0; i < 3; i++) {
      const ws = await stoppedWithoutStartHistory(h, owner);
      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: owner.ownerId });
      await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      const events = await progressEvents(h, ws.chatId, jobId);
      const running = events.find((e) => e.stage === 'build_running')!;
      const queued = events.find((e) => e.stage === 'build_queued')!;
      estimates.push(queued.data?.estimate, running.data?.estimate);
    }
    // The template's stop builds are no history for a start.
    expect(estimates.slice(0, 2)).toEqual([undefined, undefined]);
    const after = estimates.slice(2).map((e) => buildEstimateSchema.parse(e));
    expect(after.map((e) => e.samples)).toEqual([1, 1, 2, 2]);
    for (const e of after) {
      // Simulated builds take SIM_BUILD_MS at least; the simulated agent connects and starts after it.
      expect(e.build_ms).toBeGreaterThanOrEqual(300);
      expect(e.agent_ms).toBeGreaterThan(0);
      expect(Date.parse(e.ready_at!) - Date.parse(e.done_at)).toBe(e.agent_ms);
    }
  });

  it('a build whose claim a Postgres crash lost is told it is queued again, its run interrupted, then succeeds', async () => {
    await h.startWorker();
    const ws = await h.seedStoppedWorkspace();
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const queued = await h.waitForEvent(ws.chatId, 'build_queued', (e) => e.job.id === jobId);
    const {
      rows: [build],
    } = await h.db.pool.query<{ job_id: string }>('SELECT job_id FROM workspace_builds WHERE id = $1', [
      queued.data!.build_id,
    ]);
    const buildJobId = build!.job_id;
    await startJob(h.db.pool, buildJobId);
    await h.waitForEvent(ws.chatId, 'build_running', (e) => e.job.id === jobId);

    // The crash: the job is pending again without a notification (recovery runs no trigger), and every
    // connection ends, the worker's LISTEN connection among them.
    const client = await h.db.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('SET LOCAL session_replication_role = replica');
      await client.query('UPDATE provisioner_jobs SET started_at = NULL WHERE id = $1', [buildJobId]);
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    await h.db.pool.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'workspace-jobs-listener'`,
    );

    const again = await vi.waitFor(async () => {
      const found = (await progressEvents(h, ws.chatId, jobId)).filter((e) => e.stage === 'build_queued');
      expect(found).toHaveLength(2);
      return found[1]!;
    }, POLL);
    expect(again.message).toBe(
      `Build #${String(queued.data!.build_number)} is queued again: its run was interrupted (its provisioner stopped responding or shut down, or the database restarted)`,
    );
    await completeJob(h.db.pool, buildJobId);
    expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toMatchObject({ ok: true });
    const stages = (await progressEvents(h, ws.chatId, jobId)).map((e) => e.stage);
    expect(stages.filter((x) => x.startsWith('build_')).join(' ')).toMatch(
      /^build_queued build_running build_queued (build_running )?build_succeeded$/,
    );
  });

  it('a build writing 10,000 log lines in 5 s adds a bounded number of build_log events, the last at its last line', async () => {
    await h.startWorker();
    const ws = await h.seedStoppedWorkspace();
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const queued = await h.waitForEvent(ws.chatId, 'build_queued', (e) => e.job.id === jobId);
    const buildId = queued.data!.build_id as string;
    const {
      rows: [job],
    } = await h.db.pool.query<{ job_id: string }>('SELECT job_id FROM workspace_builds WHERE id = $1', [
      buildId,
    ]);
    await h.db.pool.query('UPDATE provisioner_jobs SET started_at = now() WHERE id = $1', [job!.job_id]);
    await h.waitForEvent(ws.chatId, 'build_running', (e) => e.job.id === jobId);

    // The build's output: 50 batches of 200 lines, one every 100 ms (the load's pace, not a wait).
    const began = Date.now();
    for (let batch = 0; batch < 50; batch++) {
      await h.db.pool.query(
        `INSERT INTO provisioner_job_logs (job_id, stage, output)
         SELECT $1, 'Applying', 'line ' || n FROM generate_series($2::int, $2::int + 199) AS n`,
        [job!.job_id, batch * 200],
      );
      await pace(100);
    }
    const wrote = Date.now() - began;
    await completeJob(h.db.pool, job!.job_id);
    await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });

    const events = await progressEvents(h, ws.chatId, jobId);
    const logs = events.filter((e) => e.stage === 'build_log').map((e) => buildLogDataSchema.parse(e.data));
    // One event per interval while the lines came, and the last one when the build ended.
    expect(logs.length).toBeGreaterThanOrEqual(2);
    expect(logs.length).toBeLessThanOrEqual(Math.ceil(wrote / BUILD_LOG_INTERVAL_MS) + 2);
    // Every line is either carried or counted as skipped, once: no gap, no overlap between events.
    expect(logs.reduce((n, l) => n + l.lines.length + l.skipped, 0)).toBe(10_000);
    const ids = logs.flatMap((l) => l.lines.map((x) => BigInt(x.id)));
    expect(ids).toEqual([...ids].sort((a, b) => (a < b ? -1 : 1)));
    for (const l of logs) {
      expect(l.lines.length).toBeLessThanOrEqual(BUILD_LOG_LINES);
      expect(l.last_log_id).toBe(l.lines.at(-1)!.id);
    }
    const {
      rows: [newest],
    } = await h.db.pool.query<{ id: string }>(
      'SELECT max(id)::text AS id FROM provisioner_job_logs WHERE job_id = $1',
      [job!.job_id],
    );
    expect(logs.at(-1)!.last_log_id).toBe(newest!.id);
    expect(logs.at(-1)!.lines.at(-1)!.output).toBe('line 9999');
    // The last preview comes before the build's success.
    const stages = events.map((e) => e.stage);
    expect(stages.lastIndexOf('build_log')).toBeLessThan(stages.indexOf('build_succeeded'));

    // Bull Board's Logs tab: the stages and, per build_log event, the lines it carried.
    await vi.waitFor(async () => {
      const entries = await jobLog(h, jobId);
      expect(entries.map(stageOf).filter((x) => x !== 'queued')).toEqual(
        stages.filter((x) => x !== 'queued'),
      );
      const previews = entries.filter((x) => x.startsWith('build_log:'));
      expect(previews.at(-1)).toContain('line 9999');
    }, POLL);
  });
});
