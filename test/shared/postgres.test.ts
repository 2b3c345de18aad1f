// Pools on real Postgres whose backends are terminated (pg_terminate_backend) while a client is checked out:
// pg-pool listens on idle clients only, so without a listener of ours the 'error' event would crash the
// process (vitest reports such an error as an unhandled one and fails the run).
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createPool, withTransaction, type Pool } from '../../src/shared/postgres.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

interface Logged {
  level: number;
  msg: string;
}

describe('createPool', () => {
  let db: TestDatabase;
  let pool: Pool;
  let logged: Logged[];

  beforeEach(async () => {
    db = await createTestDatabase();
    logged = [];
    const log = pino(
      { level: 'warn' },
      { write: (line: string) => void logged.push(JSON.parse(line) as Logged) },
    );
    pool = createPool(db.url, { max: 2, applicationName: 'workspace-jobs-pooltest', log });
  });

  afterEach(async () => {
    await pool.end();
    await db.drop();
  });

  /** `running`: only a backend running that statement (else any of the pool's). */
  async function terminatePoolBackends(running?: string): Promise<number> {
    const { rows } = await db.pool.query<{ terminated: boolean }>(
      `SELECT pg_terminate_backend(pid) AS terminated FROM pg_stat_activity
        WHERE datname = $1 AND application_name = 'workspace-jobs-pooltest'
          AND ($2::text IS NULL OR (state = 'active' AND query = $2))`,
      [db.name, running ?? null],
    );
    return rows.length;
  }

  describe('when a transaction loses its backend between two queries', () => {
    it('rejects the transaction, logs the loss once, and the pool serves the next query', async () => {
      const transaction = withTransaction(pool, async (client) => {
        await client.query('SELECT 1');
        // Held between queries, as a transaction does while its code decides what to write next.
        expect(await terminatePoolBackends()).toBe(1);
        await expect.poll(() => logged.length, { timeout: 5_000 }).toBeGreaterThan(0);
        await client.query('SELECT 2');
      });
      await expect(transaction).rejects.toThrow();
      expect(logged.filter((l) => l.msg.startsWith('Postgres connection lost while in use'))).toHaveLength(1);

      const { rows } = await pool.query<{ ok: number }>('SELECT 1 AS ok');
      expect(rows).toEqual([{ ok: 1 }]);
    });
  });

  describe('when a transaction loses its backend during a query', () => {
    const SLEEP = 'SELECT pg_sleep(10)';
    it('rejects the transaction with the cause, and the pool serves the next query', async () => {
      // Its rejection is expected from the start: it may come while the backend is still being terminated.
      const rejected = expect(withTransaction(pool, (client) => client.query(SLEEP))).rejects.toThrow(
        /terminat/,
      );
      // Once the backend runs the sleep: terminated during BEGIN, the client would refuse the query instead
      // ("not queryable"), as it did on a loaded machine.
      await expect.poll(() => terminatePoolBackends(SLEEP), { timeout: 5_000 }).toBe(1);
      await rejected;

      const { rows } = await pool.query<{ ok: number }>('SELECT 1 AS ok');
      expect(rows).toEqual([{ ok: 1 }]);
    });
  });

  describe('when an idle client loses its backend', () => {
    it('logs the loss and the pool serves the next query', async () => {
      await pool.query('SELECT 1');
      expect(await terminatePoolBackends()).toBe(1);
      await expect
        .poll(() => logged.some((l) => l.msg.startsWith('idle Postgres connection lost')), { timeout: 5_000 })
        .toBe(true);
      const { rows } = await pool.query<{ ok: number }>('SELECT 1 AS ok');
      expect(rows).toEqual([{ ok: 1 }]);
    });
  });
});
