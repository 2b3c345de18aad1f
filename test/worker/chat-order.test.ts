// The jobs of one chat take its lock in enqueue order (chat-order.ts), on real Redis and Postgres: piled up
// behind a holder on two workers they run one by one as they were enqueued, whichever re-delay fires first;
// a head that will never run (removed by hand, never added) holds the chat no longer than the grace.
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ChatOrder } from '../../src/shared/chat-order.js';
import type { JobName } from '../../src/shared/contract.js';
import { redisKeys } from '../../src/shared/keys.js';
import { POLL, WAIT_MS, WorkerHarness, type SeededWorkspace } from '../helpers/worker-harness.js';

describe('the chat order', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create();
  });

  afterEach(async () => {
    await h.close();
  });

  /** The chat's order set, oldest first. */
  const orderOf = (chatId: string) => h.redis.zrange(redisKeys(h.prefix).chatOrder(chatId), 0, -1);

  async function latestBuild(workspaceId: string) {
    const { rows } = await h.db.pool.query<{ transition: string; job_status: string }>(
      `SELECT b.transition, j.job_status::text FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
        WHERE b.workspace_id = $1 ORDER BY b.build_number DESC LIMIT 1`,
      [workspaceId],
    );
    return rows[0];
  }

  /** Holds the chat's lock as another job would, until released. */
  async function holdChat(chatId: string) {
    const holder = await h.locks().tryAcquire(chatId);
    if (!holder) throw new Error(`the lock of chat ${chatId} is taken`);
    return holder;
  }

  it('start, create and stop piled up behind a holder, on two workers › take the lock one by one in enqueue order; the last start or stop decides', async () => {
    const held: { jobId: string; phase: 'acquired' | 'released' }[] = [];
    const onLockHeld = ({ jobId, phase }: (typeof held)[number]) => held.push({ jobId, phase });
    await h.startWorker({ processor: { onLockHeld } }, { WORKER_CONCURRENCY: '2' });
    await h.startWorker({ processor: { onLockHeld } }, { WORKER_CONCURRENCY: '2' });
    const owner = await h.seedOwner();
    const ws = await h.seedStoppedWorkspace(owner);
    const inputs = {
      'start-workspace': { chatId: ws.chatId, ownerId: ws.ownerId },
      'stop-workspace': { chatId: ws.chatId, ownerId: ws.ownerId },
      'create-workspace': { chatId: ws.chatId, ownerId: ws.ownerId, templateId: owner.templateId },
    };
    const rounds: { names: JobName[]; final: 'start' | 'stop' }[] = [
      { names: ['start-workspace', 'create-workspace', 'stop-workspace'], final: 'stop' },
      { names: ['stop-workspace', 'create-workspace', 'start-workspace'], final: 'start' },
    ];

    for (const { names, final } of rounds) {
      held.length = 0;
      const holder = await holdChat(ws.chatId);
      const jobIds: string[] = [];
      for (const name of names) {
        const enqueued = await h.producer.enqueue(name, inputs[name] as never);
        expect(enqueued.deduplicated).toBe(false);
        jobIds.push(enqueued.jobId);
      }
      for (const jobId of jobIds) {
        await h.waitForEvent(ws.chatId, 'waiting_for_lock', (e) => e.job.id === jobId);
      }
      expect(await orderOf(ws.chatId)).toEqual(jobIds);
      await holder.release();

      const results = await Promise.all(
        jobIds.map((jobId) => h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })),
      );
      for (const [index, result] of results.entries()) {
        expect(result).toMatchObject({ kind: names[index], ok: true });
      }
      // Never two at once, and in enqueue order: each job's acquired and released before the next one's.
      await vi.waitFor(() => expect(held).toHaveLength(2 * jobIds.length), POLL);
      expect(held).toEqual(
        jobIds.flatMap((jobId) => [
          { jobId, phase: 'acquired' },
          { jobId, phase: 'released' },
        ]),
      );
      expect(await latestBuild(ws.workspaceId)).toEqual({ transition: final, job_status: 'succeeded' });
      await expect.poll(() => orderOf(ws.chatId), POLL).toEqual([]);
    }
  });

  const stop = (ws: SeededWorkspace) => h.producer.stopWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
  const noBuild = (ws: SeededWorkspace) => ({
    kind: 'stop-workspace',
    ok: true,
    stopped: true,
    workspace_name: ws.workspaceName,
    no_build: true,
  });

  it('a job removed by hand while it waits › the job behind it runs once the grace has passed', async () => {
    await h.startWorker({ processor: { orderGraceMs: 1_000 } });
    const ws = await h.seedStoppedWorkspace();
    const holder = await holdChat(ws.chatId);
    const removed = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    await h.waitForEvent(ws.chatId, 'waiting_for_lock', (e) => e.job.id === removed.jobId);
    const behind = await stop(ws);
    const waiting = await h.waitForEvent(ws.chatId, 'waiting_for_lock', (e) => e.job.id === behind.jobId);
    expect(waiting.message).toContain(removed.jobId);

    const job = await h.queue.getJob(removed.jobId);
    // Refused while a worker has it (between two re-delays): tried again until it is delayed.
    await vi.waitFor(() => job!.remove(), POLL);
    await holder.release();

    expect(await h.producer.waitForResult(behind.jobId, { timeoutMs: WAIT_MS })).toEqual(noBuild(ws));
    await expect.poll(() => orderOf(ws.chatId), POLL).toEqual([]);
  });

  it('an entry whose job was never added (its producer died) › holds the chat only for the grace', async () => {
    await h.startWorker({ processor: { orderGraceMs: 2_000 } });
    const ws = await h.seedStoppedWorkspace();
    const neverAdded = randomUUID();
    await new ChatOrder(h.connection(), h.prefix).enter(ws.chatId, neverAdded);

    const { jobId } = await stop(ws);

    expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toEqual(noBuild(ws));
    const waited = (await h.jobEvents(ws.chatId, jobId)).find((e) => e.stage === 'waiting_for_lock');
    expect(waited?.message).toContain(neverAdded);
    await expect.poll(() => orderOf(ws.chatId), POLL).toEqual([]);
  });

  it("a job leaves its chat's order before its result is out › a job enqueued after the result waits for nothing", async () => {
    await h.startWorker();
    const ws = await h.seedStoppedWorkspace();
    const { jobId } = await stop(ws);
    expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toEqual(noBuild(ws));
    expect(await orderOf(ws.chatId)).toEqual([]);
  });

  it('an enqueue deduplicated onto a waiting job › leaves no entry of its own', async () => {
    const ws = await h.seedStoppedWorkspace();
    const first = await stop(ws);
    const again = await stop(ws);
    expect(again).toMatchObject({ jobId: first.jobId, deduplicated: true });
    expect(await orderOf(ws.chatId)).toEqual([first.jobId]);
  });
});
