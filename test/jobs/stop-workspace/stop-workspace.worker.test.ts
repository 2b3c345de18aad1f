// stop-workspace end to end: the producer enqueues, a real worker runs it under the chat lock, and the real
// provisioner daemon (simulated executor) builds, on real Redis and Postgres. The daemon is started only once
// a test has set up what it wants to see in flight, so nothing is decided by timing.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { insertBuild } from '../../../src/cli/fixtures.js';
import { cancelJob } from '../../helpers/fixtures.js';
import type { JobResult } from '../../../src/shared/contract.js';
import {
  POLL,
  WAIT_MS,
  WorkerHarness,
  stagesOf,
  type SeededWorkspace,
} from '../../helpers/worker-harness.js';

describe('stop-workspace through the worker', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    // The SQL stand-in stays paused: the simulated daemon builds, when a test starts it.
    h = await WorkerHarness.create({ provisioner: { paused: true } });
  });

  afterEach(async () => {
    await h.close();
  });

  async function run(job: Promise<{ jobId: string }>): Promise<{ jobId: string; result: JobResult }> {
    const { jobId } = await job;
    return { jobId, result: await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS }) };
  }

  const start = (ws: SeededWorkspace) =>
    h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
  const stop = (ws: SeededWorkspace) => h.producer.stopWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });

  interface BuildRow {
    id: string;
    build_number: number;
    transition: string;
    job_status: string;
  }

  async function builds(workspaceId: string): Promise<BuildRow[]> {
    const { rows } = await h.db.pool.query<BuildRow>(
      `SELECT b.id, b.build_number, b.transition, j.job_status::text
         FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
        WHERE b.workspace_id = $1 ORDER BY b.build_number`,
      [workspaceId],
    );
    return rows;
  }

  /** The agents of one build, as the daemon and the simulated agents left them. */
  async function agentsOf(buildId: string) {
    const { rows } = await h.db.pool.query<{ lifecycle_state: string; disconnected: boolean }>(
      `SELECT a.lifecycle_state::text, a.disconnected_at IS NOT NULL AS disconnected
         FROM workspace_agents a JOIN workspace_resources r ON r.id = a.resource_id
         JOIN workspace_builds b ON b.job_id = r.job_id WHERE b.id = $1`,
      [buildId],
    );
    return rows;
  }

  /** A seeded stopped workspace started by a start job on the simulated daemon, its agent ready. */
  async function runningWorkspace() {
    const daemon = await h.startProvisionerDaemon();
    const ws = await h.seedStoppedWorkspace();
    const { result } = await run(start(ws));
    expect(result).toMatchObject({ kind: 'start-workspace', ok: true, started: true });
    const startBuildId = (result as { build_id: string }).build_id;
    expect(await agentsOf(startBuildId)).toEqual([{ lifecycle_state: 'ready', disconnected: false }]);
    return { ws, startBuildId, daemon };
  }

  it('a running workspace › a stop build, its agents disconnected and off, the result with the build', async () => {
    await h.startWorker();
    const { ws, startBuildId } = await runningWorkspace();

    const { jobId, result } = await run(stop(ws));

    const latest = (await builds(ws.workspaceId)).at(-1)!;
    expect(latest).toMatchObject({ build_number: 4, transition: 'stop', job_status: 'succeeded' });
    expect(result).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: ws.workspaceName,
      build_id: latest.id,
    });
    expect(await agentsOf(startBuildId)).toEqual([{ lifecycle_state: 'off', disconnected: true }]);
    const events = await h.jobEvents(ws.chatId, jobId);
    expect(stagesOf(events)).toEqual(
      expect.arrayContaining([
        'queued',
        'lock_acquired',
        'checking',
        'build_queued',
        'build_succeeded',
        'completed',
      ]),
    );
    for (const event of events.filter((e) => e.stage.startsWith('build_'))) {
      expect(event).toMatchObject({ data: { build_id: latest.id, transition: 'stop' } });
    }
    expect(events.at(-1)).toMatchObject({ type: 'result', stage: 'completed', data: result });
    expect((await h.waitForState(jobId, ['completed'])).returnvalue).toEqual(result);
  });

  it('a stopped workspace › no_build, no new build', async () => {
    await h.startWorker();
    const ws = await h.seedStoppedWorkspace();

    const { result } = await run(stop(ws));

    expect(result).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: ws.workspaceName,
      no_build: true,
    });
    expect(await builds(ws.workspaceId)).toHaveLength(2);
  });

  it('a deleted workspace › workspace_deleted; the job completes (an expected failure)', async () => {
    await h.startWorker();
    const ws = await h.seedStoppedWorkspace();
    await h.db.pool.query('UPDATE workspaces SET deleted = true WHERE id = $1', [ws.workspaceId]);

    const { jobId, result } = await run(stop(ws));

    expect(result).toEqual({
      kind: 'stop-workspace',
      ok: false,
      error: 'workspace was deleted; use create_workspace to make a new one',
      code: 'workspace_deleted',
      is_error: true,
    });
    expect((await h.waitForState(jobId, ['completed'])).returnvalue).toEqual(result);
    expect(await builds(ws.workspaceId)).toHaveLength(2);
  });

  it.each(['pending', 'canceling'] as const)(
    'a %s start build not made by a job › waits for it, then stops what it left',
    async (status) => {
      await h.startWorker();
      const ws = await h.seedStoppedWorkspace();
      const { rows } = await h.db.pool.query<{ template_version_id: string }>(
        'SELECT template_version_id FROM workspace_builds WHERE id = $1',
        [ws.stopBuildId],
      );
      // As a click in the UI would: a start build, not through our queue.
      const inFlight = await insertBuild(h.db.pool, {
        workspaceId: ws.workspaceId,
        templateVersionId: rows[0]!.template_version_id,
        transition: 'start',
        status,
        initiatorId: ws.ownerId,
      });

      const { jobId } = await stop(ws);
      await h.waitForEvent(ws.chatId, 'waiting_for_existing_build', (e) => e.job.id === jobId);
      expect(await builds(ws.workspaceId)).toHaveLength(3);
      // The in-flight build ends: built by the daemon, or its cancellation settles.
      if (status === 'canceling') await cancelJob(h.db.pool, inFlight.jobId);
      await h.startProvisionerDaemon();
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });

      const all = await builds(ws.workspaceId);
      expect(all.map((b) => [b.transition, b.job_status])).toEqual([
        ['start', 'succeeded'],
        ['stop', 'succeeded'],
        ['start', status === 'pending' ? 'succeeded' : 'canceled'],
        ['stop', 'succeeded'],
      ]);
      expect(result).toEqual({
        kind: 'stop-workspace',
        ok: true,
        stopped: true,
        workspace_name: ws.workspaceName,
        build_id: all[3]!.id,
      });
      if (status === 'pending') {
        // The start's agent came up and went off with the stop.
        expect(await agentsOf(inFlight.buildId)).toEqual([{ lifecycle_state: 'off', disconnected: true }]);
      }
    },
  );

  it.each([
    { order: ['start', 'stop'], from: 'stopped', final: 'stop' },
    { order: ['stop', 'start'], from: 'running', final: 'start' },
  ] as const)(
    '$order.0 then $order.1 for one chat › one after the other, in enqueue order; the last one decides',
    async ({ order, from, final }) => {
      const held: { jobId: string; phase: 'acquired' | 'released' }[] = [];
      await h.startWorker({ processor: { onLockHeld: ({ jobId, phase }) => held.push({ jobId, phase }) } });
      let ws: SeededWorkspace;
      if (from === 'running') {
        const running = await runningWorkspace();
        // No builds until both jobs are in: the first holds the lock while its build waits.
        await running.daemon.stop(1_000);
        ws = running.ws;
      } else {
        ws = await h.seedStoppedWorkspace();
      }
      held.length = 0;
      const enqueue = (kind: 'start' | 'stop') => (kind === 'start' ? start(ws) : stop(ws));

      const first = await enqueue(order[0]);
      await h.waitForEvent(ws.chatId, 'build_queued', (e) => e.job.id === first.jobId);
      const second = await enqueue(order[1]);
      await h.waitForEvent(ws.chatId, 'waiting_for_lock', (e) => e.job.id === second.jobId);
      await h.startProvisionerDaemon();
      const results = await Promise.all(
        [first, second].map(({ jobId }) => h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })),
      );

      for (const [index, result] of results.entries()) {
        expect(result).toMatchObject({ kind: `${order[index]}-workspace`, ok: true });
      }
      // Never both at once: acquired and released strictly alternate, the first enqueued first. (The
      // result is out before the lock is let go.)
      await vi.waitFor(() => expect(held).toHaveLength(4), POLL);
      expect(held).toEqual([
        { jobId: first.jobId, phase: 'acquired' },
        { jobId: first.jobId, phase: 'released' },
        { jobId: second.jobId, phase: 'acquired' },
        { jobId: second.jobId, phase: 'released' },
      ]);
      const latest = (await builds(ws.workspaceId)).at(-1)!;
      expect(latest).toMatchObject({ transition: final, job_status: 'succeeded' });
    },
  );
});
