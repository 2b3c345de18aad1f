import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  JobLogWriter,
  type JobState,
  type JobLogWriterOptions,
} from '../../src/provisioner/job-log-writer.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import type { Pool, PoolClient } from '../../src/shared/postgres.js';
import { CountingPool, POLL, getLogs, synchronousCommit } from './helpers.js';

describe('JobLogWriter', () => {
  let db: TestDatabase;
  let counting: CountingPool;
  let jobId: string;
  const daemon = randomUUID();
  const claimId = randomUUID();
  const writers: JobLogWriter[] = [];

  beforeEach(async () => {
    db = await createTestDatabase();
    counting = new CountingPool(db.pool);
    // A job this daemon claimed once and is running.
    const { rows } = await db.pool.query<{ id: string }>(
      `INSERT INTO provisioner_jobs (started_at, worker_id, claims, claim_id) VALUES (now(), $1, 1, $2)
       RETURNING id`,
      [daemon, claimId],
    );
    jobId = rows[0]!.id;
  });

  afterEach(async () => {
    for (const writer of writers.splice(0)) await writer.close();
    await db.drop();
  });

  function writer(options: Partial<JobLogWriterOptions> = {}): JobLogWriter {
    const created = new JobLogWriter({
      pool: counting.pool,
      jobId,
      claim: { workerId: daemon, claimId },
      ...options,
    });
    writers.push(created);
    return created;
  }

  /** The writer's statements on `client`: inside a transaction the test keeps open, to look at its settings. */
  const inTransaction = (client: PoolClient) =>
    ({ query: (config: unknown) => client.query(config as never) }) as unknown as Pool;
  const inserts = () => counting.count('provisioner.insert_logs');
  const outputs = async () => (await getLogs(db.pool, jobId)).map((l) => l.output);

  it('when lines come within the flush interval › the first goes out at once, the rest wait for the next write', async () => {
    // An interval no test outlasts: what waits for it is left to close().
    const logs = writer({ flushIntervalMs: 60_000 });
    const first = ['a', 'b', 'c'].map((line) => logs.append('provisioner', 'info', line));
    await Promise.all(first);
    const later = ['d', 'e'].map((line) => logs.append('provisioner', 'info', line, 'Stage'));

    expect(await outputs()).toEqual(['a', 'b', 'c']);
    expect(await logs.close()).toEqual({
      sources: ['provisioner', 'provisioner'],
      levels: ['info', 'info'],
      stages: ['Stage', 'Stage'],
      outputs: ['d', 'e'],
    });
    await Promise.all(later); // handed over: the caller stores them with the job's end
    expect(inserts()).toBe(1);
    // Closed: nothing more is queued or written.
    await logs.append('provisioner', 'info', 'too late');
    expect(await logs.close()).toEqual({ sources: [], levels: [], stages: [], outputs: [] });
    expect(await outputs()).toEqual(['a', 'b', 'c']);
  });

  it('when a batch fills › it goes out without waiting for the interval, at most maxBatchLines per INSERT', async () => {
    const logs = writer({ flushIntervalMs: 60_000, maxBatchLines: 10 });
    const appended = Array.from({ length: 25 }, (_, i) => logs.append('provisioner', 'info', `line ${i}`));

    await Promise.all(appended.slice(0, 20));

    expect(inserts()).toBe(2);
    expect(await outputs()).toEqual(Array.from({ length: 20 }, (_, i) => `line ${i}`));
    expect((await logs.close()).outputs).toEqual(Array.from({ length: 5 }, (_, i) => `line ${20 + i}`));
  });

  it('when closed with more than a batch queued › full batches are written, the completion gets one at most', async () => {
    const logs = writer({ flushIntervalMs: 60_000, maxBatchLines: 10 });
    for (let i = 0; i < 25; i++) void logs.append('provisioner', 'info', `line ${i}`);

    const rest = await logs.close();

    expect(rest.outputs).toEqual(Array.from({ length: 5 }, (_, i) => `line ${20 + i}`));
    expect(inserts()).toBe(2);
    expect(await outputs()).toEqual(Array.from({ length: 20 }, (_, i) => `line ${i}`));
  });

  it('when the interval passes › the waiting lines are written without a flush', async () => {
    const logs = writer({ flushIntervalMs: 50 });
    await logs.append('provisioner', 'info', 'first');
    await Promise.all(['second', 'third'].map((line) => logs.append('provisioner', 'info', line)));

    expect(await outputs()).toEqual(['first', 'second', 'third']);
    expect(inserts()).toBe(2);
  });

  it.each([
    ['canceled', 'canceled', ['line'], `UPDATE provisioner_jobs SET canceled_at = now() WHERE id = $1`],
    [
      'claimed again by another daemon',
      'lost',
      [],
      `UPDATE provisioner_jobs SET worker_id = gen_random_uuid(), claims = 2, claim_id = gen_random_uuid()
       WHERE id = $1`,
    ],
    [
      'claimed again by this daemon (its claim lost in a Postgres crash)',
      'lost',
      [],
      `UPDATE provisioner_jobs SET claim_id = gen_random_uuid() WHERE id = $1`,
    ],
    [
      'completed by the reaper',
      'lost',
      [],
      `UPDATE provisioner_jobs SET completed_at = now(), error = 'stale' WHERE id = $1`,
    ],
  ] as const)(
    'when the job was %s › a write says %s (its lines stored only if still its claim’s)',
    async (_what, state, stored, change) => {
      const states: JobState[] = [];
      const logs = writer({ onJobState: (s) => states.push(s) });
      await db.pool.query(change, [jobId]);

      await logs.append('provisioner', 'info', 'line');

      expect(states).toEqual([state]);
      expect(await outputs()).toEqual(stored);
    },
  );

  it('when a batch is written › its transaction commits without waiting for the WAL flush, and only it', async () => {
    const client = await db.pool.connect();
    try {
      const show = () => synchronousCommit(client);
      const before = await show();
      await client.query('BEGIN');
      await writer({ pool: inTransaction(client) }).append('provisioner', 'info', 'line');

      expect(await show()).toBe('off');
      await client.query('COMMIT');
      expect(await show()).toBe(before);
      expect(before).not.toBe('off');
      expect(await outputs()).toEqual(['line']);
    } finally {
      client.release();
    }
  });

  describe('after the Postgres server started again (migrations/0011)', () => {
    const JUMP = 1_000_000_000n;
    // What a restarted server shows the trigger: a start time other than the one it last jumped on.
    const restart = () =>
      db.pool.query(
        `UPDATE provisioner_job_logs_server_start SET started_at = started_at - interval '1 hour'`,
      );
    const ids = async () =>
      (await db.pool.query<{ id: string }>(`SELECT id FROM provisioner_job_logs ORDER BY id`)).rows.map((r) =>
        BigInt(r.id),
      );

    it('when the first batch is written › its ids are 10^9 past every one handed out before, flushed, and the next batch follows on', async () => {
      await writer().append('provisioner', 'info', 'before');
      await restart();
      const client = await db.pool.connect();
      try {
        await client.query('BEGIN');
        await writer({ pool: inTransaction(client) }).append('provisioner', 'info', 'first after');

        // The jump commits flushed: a crash that lost it would let the next start jump from the same place.
        expect(await synchronousCommit(client)).toBe('on');
        await client.query('COMMIT');
      } finally {
        client.release();
      }
      const next = writer();
      await next.append('provisioner', 'info', 'second after');
      await next.append('provisioner', 'info', 'third after');

      const [before, first, second, third] = await ids();
      expect(first! - before!).toBeGreaterThan(JUMP);
      expect([second! - first!, third! - second!]).toEqual([1n, 1n]);
    });

    it('when a second statement comes before the first one’s jump is committed › it waits, and the sequence jumps once', async () => {
      await writer().append('provisioner', 'info', 'before');
      await restart();
      const client = await db.pool.connect();
      let second: Promise<void> | undefined;
      try {
        await client.query('BEGIN');
        await writer({ pool: inTransaction(client) }).append('provisioner', 'info', 'first after');
        second = writer().append('provisioner', 'info', 'second after');
        await expect
          .poll(async () => {
            const { rows } = await db.pool.query<{ waiting: number }>(
              `SELECT count(*)::int AS waiting FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'`,
            );
            return rows[0]!.waiting;
          }, POLL)
          .toBe(1);
        await client.query('COMMIT');
      } finally {
        client.release();
      }
      await second;

      const [before, first, secondId] = await ids();
      expect(first! - before!).toBeGreaterThan(JUMP);
      expect(secondId! - first!).toBe(1n);
      expect(await outputs()).toEqual(['before', 'first after', 'second after']);
    });
  });

  it('when the job is still its claim’s and not canceled › a write says nothing', async () => {
    const states: JobState[] = [];
    const logs = writer({ onJobState: (s) => states.push(s) });

    await logs.append('provisioner', 'info', 'line');

    expect(states).toEqual([]);
    expect(await outputs()).toEqual(['line']);
  });

  it('when given a bad batch size or interval › throws, naming it', () => {
    expect(() => writer({ maxBatchLines: 0 })).toThrow('maxBatchLines must be a whole number ≥ 1, got 0');
    expect(() => writer({ flushIntervalMs: -1 })).toThrow(
      'flushIntervalMs must be a whole number ≥ 0, got -1',
    );
  });
});
