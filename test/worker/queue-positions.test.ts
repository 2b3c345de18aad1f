// The worker process's shared reads of the build queue (src/worker/queue-positions.ts), on real Postgres and
// a real notification hub: every wait that follows its build's place is answered by the same read, one per
// interval however many follow, and a failed read costs the waits nothing but an interval.
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { WaitTimeoutError } from '../../src/shared/errors.js';
import { PgNotificationHub } from '../../src/shared/notifications.js';
import type { QueuePosition } from '../../src/shared/contract.js';
import { PgWorkspaceStore } from '../../src/worker/pg-store.js';
import { QueuePositions } from '../../src/worker/queue-positions.js';
import type { WorkspaceStore } from '../../src/worker/ports.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { completeJob } from '../helpers/fixtures.js';
import { CountingPool } from '../provisioner/helpers.js';

const READ = 'worker.get_queue_positions';
const INTERVAL_MS = 100;
const POLL = { timeout: 5_000, interval: 10 };

/** One follow of a job: every position it was told, and how the follow ended. */
interface Followed {
  seen: (QueuePosition | null)[];
  ended?: { value?: unknown; error?: unknown };
  stop: AbortController;
}

describe('queue positions', () => {
  let db: TestDatabase;
  let hub: PgNotificationHub;
  let counting: CountingPool;
  /** Every read's answered job ids, in order. */
  let answered: string[][];
  let queue: QueuePositions;
  let follows: Followed[];

  const pendingJob = async (): Promise<string> => {
    const { rows } = await db.pool.query<{ id: string }>(
      `INSERT INTO provisioner_jobs (type) VALUES ('workspace_build') RETURNING id`,
    );
    return rows[0]!.id;
  };

  const start = (store: Pick<WorkspaceStore, 'getQueuePositions'>, logs?: string[]) => {
    const log = logs && pino({ level: 'info' }, { write: (line: string) => void logs.push(line) });
    queue = new QueuePositions(store, hub, { intervalMs: INTERVAL_MS, log });
  };

  const follow = (jobId: string): Followed => {
    const followed: Followed = { seen: [], stop: new AbortController() };
    follows.push(followed);
    queue
      .follow(
        jobId,
        async (position) => {
          followed.seen.push(position);
          return position ? undefined : 'left';
        },
        { timeoutMs: 10_000, signal: followed.stop.signal },
      )
      .then(
        (value) => (followed.ended = { value }),
        (error: unknown) => (followed.ended = { error }),
      );
    return followed;
  };

  beforeEach(async () => {
    db = await createTestDatabase();
    hub = new PgNotificationHub(db.url, { reconnectDelayMs: 50 });
    await hub.start();
    answered = [];
    counting = new CountingPool(db.pool, async (name, rows) => {
      if (name === READ) answered.push(rows.map((r) => r.id as string).sort());
    });
    follows = [];
    start(new PgWorkspaceStore(counting.pool));
  });

  afterEach(async () => {
    for (const f of follows) f.stop.abort(new Error('test finished'));
    await queue.close();
    await hub.stop();
    await db.drop();
  });

  it('when several builds follow the queue as jobs change › one read per interval tells each its own place', async () => {
    const jobs: string[] = [];
    for (let i = 0; i < 4; i++) jobs.push(await pendingJob());
    const began = Date.now();
    const [second, third, fourth] = jobs.slice(1).map(follow);

    // Ten changes in a row, then the first job done: every follower moves up one place.
    for (let i = 0; i < 10; i++) await pendingJob();
    await completeJob(db.pool, jobs[0]!);
    await vi.waitFor(() => {
      expect(second!.seen.at(-1)).toEqual({ position: 1, pending: 13 });
      expect(third!.seen.at(-1)).toEqual({ position: 2, pending: 13 });
      expect(fourth!.seen.at(-1)).toEqual({ position: 3, pending: 13 });
    }, POLL);
    const elapsed = Date.now() - began;

    const reads = counting.count(READ);
    // Each read answered all three, and the reads came an interval apart at most once, not per follower
    // and change (33 reads when each follower read for itself on every change).
    for (const f of [second, third, fourth]) expect(f!.seen).toHaveLength(reads);
    expect(answered.every((ids) => ids.length === 3)).toBe(true);
    expect(reads).toBeLessThanOrEqual(Math.floor(elapsed / INTERVAL_MS) + 1);
  });

  it('when a follower leaves › the next reads no longer ask for its job, and its follow ends', async () => {
    const [first, second] = [await pendingJob(), await pendingJob()];
    const staying = follow(second);
    const leaving = follow(first);
    const reason = new Error('the build started');
    leaving.stop.abort(reason);
    await vi.waitFor(() => expect(leaving.ended).toEqual({ error: reason }), POLL);

    const readsBefore = counting.count(READ);
    await pendingJob();
    await vi.waitFor(() => expect(counting.count(READ)).toBeGreaterThan(readsBefore), POLL);
    await vi.waitFor(() => expect(staying.seen.at(-1)).toEqual({ position: 2, pending: 3 }), POLL);
    expect(answered.at(-1)).toEqual([second]);
  });

  it('when the job leaves the queue › its follower is told null and its follow ends with the answer', async () => {
    const job = await pendingJob();
    const followed = follow(job);
    await completeJob(db.pool, job);
    await vi.waitFor(() => expect(followed.ended).toEqual({ value: 'left' }), POLL);
    expect(followed.seen.at(-1)).toBeNull();
  });

  it('when a read fails › the follows go on, and the next interval reads again without a change', async () => {
    const real = new PgWorkspaceStore(counting.pool);
    let failing = false;
    let failures = 0;
    const logs: string[] = [];
    start(
      {
        getQueuePositions: async (jobIds) => {
          if (failing) {
            failures++;
            throw new Error('connection terminated unexpectedly');
          }
          return real.getQueuePositions(jobIds);
        },
      },
      logs,
    );
    const job = await pendingJob();
    const followed = follow(job);
    failing = true;
    await pendingJob();
    await vi.waitFor(() => expect(failures).toBeGreaterThanOrEqual(1), POLL);
    failing = false;

    // No change since: the read after the failure is the retry.
    await vi.waitFor(() => expect(followed.seen.at(-1)).toEqual({ position: 1, pending: 2 }), POLL);
    expect(followed.ended).toBeUndefined();
    expect(logs.some((l) => l.includes('could not read the queue positions'))).toBe(true);
    expect(logs.some((l) => l.includes('connection terminated unexpectedly'))).toBe(true);
  });

  it('when builds ask their first position together › those asked while a read runs share the next one', async () => {
    const jobs = [await pendingJob(), await pendingJob(), await pendingJob()];
    await completeJob(db.pool, jobs[0]!);
    const asked = [...jobs, jobs[2]!, jobs[1]!].map((id) => queue.position(id));
    expect(await Promise.all(asked)).toEqual([
      null,
      { position: 1, pending: 2 },
      { position: 2, pending: 2 },
      { position: 2, pending: 2 },
      { position: 1, pending: 2 },
    ]);
    // The first asked alone, the other four while it ran.
    expect(counting.count(READ)).toBe(2);
  });

  it('when a follow outlives its timeout › it ends with a WaitTimeoutError', async () => {
    const job = await pendingJob();
    const ended = queue.follow(job, async () => undefined, { timeoutMs: 50 });
    await expect(ended).rejects.toBeInstanceOf(WaitTimeoutError);
  });

  it('when closed › the follows end with its error, and no position is read any more', async () => {
    const job = await pendingJob();
    const followed = follow(job);
    await queue.close();
    await vi.waitFor(() => expect(String(followed.ended?.error)).toMatch(/queue positions closed/), POLL);
    await expect(queue.position(job)).rejects.toThrow(/queue positions closed/);
    await expect(queue.follow(job, async () => 'never', { timeoutMs: 1_000 })).rejects.toThrow(
      /queue positions closed/,
    );
  });
});
