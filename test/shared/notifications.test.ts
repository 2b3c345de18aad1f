import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { WaitTimeoutError } from '../../src/shared/errors.js';
import {
  channelTopic,
  PENDING_JOB_TOPIC,
  PgNotificationHub,
  type NotificationPayload,
} from '../../src/shared/notifications.js';
import { Admission } from '../../src/worker/admission.js';
import { topics } from '../../src/worker/ports.js';
import { startFreezableProxy } from '../helpers/freezable-proxy.js';
import { useListeningDatabase } from '../helpers/listening-database.js';

describe('PgNotificationHub', () => {
  const t = useListeningDatabase();

  async function insertJob(): Promise<string> {
    const { rows } = await t.db.pool.query<{ id: string }>(
      'INSERT INTO provisioner_jobs DEFAULT VALUES RETURNING id',
    );
    return rows[0]!.id;
  }

  async function status(jobId: string): Promise<string> {
    const { rows } = await t.db.pool.query<{ job_status: string }>(
      'SELECT job_status FROM provisioner_jobs WHERE id = $1',
      [jobId],
    );
    return rows[0]!.job_status;
  }

  it('when a provisioner job changes › wakes the waiter on that job at once', async () => {
    const jobId = await insertJob();
    let checks = 0;
    const waiting = t.hub.waitFor(
      [topics.provisionerJob(jobId)],
      async () => {
        checks++;
        const s = await status(jobId);
        return s === 'succeeded' ? s : undefined;
      },
      { timeoutMs: 10_000 },
    );
    await t.db.pool.query('UPDATE provisioner_jobs SET started_at = now() WHERE id = $1', [jobId]);
    await t.db.pool.query('UPDATE provisioner_jobs SET completed_at = now() WHERE id = $1', [jobId]);
    await expect(waiting).resolves.toBe('succeeded');
    // The first check, plus at most one per notification (the insert's may arrive late, then two updates).
    expect(checks).toBeGreaterThanOrEqual(2);
    expect(checks).toBeLessThanOrEqual(4);
  });

  it('when a new job is inserted › wakes channel-wide listeners', async () => {
    const woken = new Promise<void>((resolve) =>
      t.hub.on(channelTopic('provisioner_job_changed'), () => resolve()),
    );
    await insertJob();
    await expect(woken).resolves.toBeUndefined();
  });

  it('when a job becomes pending › reaches the pending-job topic, and only then', async () => {
    const pending: number[] = [];
    let changes = 0;
    t.hub.on(PENDING_JOB_TOPIC, () => pending.push(changes));
    t.hub.on(channelTopic('provisioner_job_changed'), () => changes++);

    // Inserted pending (1), claimed (2), handed back (3), claimed again (4), completed (5).
    const jobId = await insertJob();
    await t.db.pool.query('UPDATE provisioner_jobs SET started_at = now() WHERE id = $1', [jobId]);
    await t.db.pool.query('UPDATE provisioner_jobs SET started_at = NULL WHERE id = $1', [jobId]);
    await t.db.pool.query('UPDATE provisioner_jobs SET started_at = now() WHERE id = $1', [jobId]);
    await t.db.pool.query('UPDATE provisioner_jobs SET completed_at = now() WHERE id = $1', [jobId]);
    // A job inserted already running is no work for anyone (6).
    await t.db.pool.query('INSERT INTO provisioner_jobs (started_at) VALUES (now())');

    await expect.poll(() => changes).toBe(6);
    // Channel-wide listeners run first, so each entry is the count including the pending notification.
    expect(pending).toEqual([1, 3]);
  });

  describe('when a wait has minIntervalMs', () => {
    const INTERVAL_MS = 300;
    /** A change of the job's status (pending ⇄ running): each one notifies. */
    const update = (jobId: string) =>
      t.db.pool.query(
        'UPDATE provisioner_jobs SET started_at = CASE WHEN started_at IS NULL THEN now() END WHERE id = $1',
        [jobId],
      );

    it('begins its checks that far apart, one check answering what came in between', async () => {
      const jobId = await insertJob();
      const began: number[] = [];
      let answer: string | undefined = undefined;
      const waiting = t.hub.waitFor(
        [topics.provisionerJob(jobId)],
        async () => {
          began.push(performance.now());
          return answer;
        },
        { timeoutMs: 10_000, minIntervalMs: INTERVAL_MS },
      );
      await expect.poll(() => began.length).toBe(1);
      for (let i = 0; i < 3; i++) await update(jobId);
      await expect.poll(() => began.length, { timeout: 2_000 }).toBe(2);
      answer = 'done';
      await update(jobId);

      await expect(waiting).resolves.toBe('done');
      expect(began).toHaveLength(3);
      // A timer may fire a millisecond before its time on another clock.
      expect(began[1]! - began[0]!).toBeGreaterThanOrEqual(INTERVAL_MS - 2);
      expect(began[2]! - began[1]!).toBeGreaterThanOrEqual(INTERVAL_MS - 2);
    });

    it("waits out the interval outside the check: an attempt's admission slot is free meanwhile", async () => {
      const jobId = await insertJob();
      const admission = new Admission({ limit: 1 });
      const ticket = admission.ticket();
      await ticket.enter();
      let checks = 0;
      let notified = 0;
      const waiting = ticket
        .waiter(t.hub)
        .waitFor([topics.provisionerJob(jobId)], async () => (++checks === 2 ? 'done' : undefined), {
          timeoutMs: 10_000,
          minIntervalMs: INTERVAL_MS,
        });
      t.hub.on(topics.provisionerJob(jobId), () => notified++);
      await expect.poll(() => checks).toBe(1);
      await update(jobId);
      await expect.poll(() => notified).toBe(1);

      // Notified, its next check not due yet: nothing of the wait holds a slot.
      expect(checks).toBe(1);
      expect(admission.admitted).toBe(0);
      await expect(waiting).resolves.toBe('done');
      ticket.done();
    });
  });

  it('when nothing changes › rejects with WaitTimeoutError after the timeout', async () => {
    const jobId = await insertJob();
    await expect(
      t.hub.waitFor([topics.provisionerJob(jobId)], async () => undefined, { timeoutMs: 150 }),
    ).rejects.toBeInstanceOf(WaitTimeoutError);
  });

  it('when a check is woken by a notification › gets its payload; the first check and a timed re-check get none', async () => {
    const jobId = randomUUID();
    // The insert's own notification is out of the way before the wait begins.
    const inserted = new Promise<void>((resolve) => {
      const off = t.hub.on(topics.provisionerJob(jobId), () => {
        off();
        resolve();
      });
    });
    await t.db.pool.query('INSERT INTO provisioner_jobs (id) VALUES ($1)', [jobId]);
    await inserted;
    const notices: (NotificationPayload | undefined)[] = [];
    const waiting = t.hub.waitFor(
      [topics.provisionerJob(jobId)],
      async (notice) => {
        notices.push(notice);
        // Done at the first check without a payload after the running notification's.
        return notice === undefined && notices.some((n) => n?.job_status === 'running') ? 'done' : undefined;
      },
      { timeoutMs: 10_000, recheckMs: 100 },
    );
    await expect.poll(() => notices.length).toBe(1);
    await t.db.pool.query('UPDATE provisioner_jobs SET started_at = now() WHERE id = $1', [jobId]);
    await expect(waiting).resolves.toBe('done');
    expect(notices[0]).toBeUndefined();
    expect(notices.filter((n) => n !== undefined)).toEqual([{ id: jobId, job_status: 'running' }]);
  });

  it('when nothing changes › a wait with recheckMs re-checks on its timer, a default wait never, however many pings go by', async () => {
    const hub = new PgNotificationHub(t.db.url, { pingIntervalMs: 20, pingTimeoutMs: 200 });
    await hub.start();
    const stop = new AbortController();
    try {
      let defaultChecks = 0;
      let timedChecks = 0;
      const waits = [
        hub.waitFor(['nothing-will-notify-this'], async () => void defaultChecks++, {
          timeoutMs: 10_000,
          signal: stop.signal,
        }),
        hub.waitFor(['nothing-will-notify-this'], async () => void timedChecks++, {
          timeoutMs: 10_000,
          signal: stop.signal,
          recheckMs: 50,
        }),
      ].map((wait) => wait.catch(() => {}));
      // The hub pings while anyone waits (its listener's last statement says so) ...
      await expect
        .poll(async () => {
          const { rows } = await t.db.pool.query<{ query: string }>(
            `SELECT query FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'workspace-jobs-listener'`,
          );
          return rows.map((r) => r.query).join('\n');
        })
        .toContain('pg_notify');
      // ... and by the timed wait's fifth re-check (about 10 pings), every ping came back: a lost one would
      // have reconnected and re-checked the default wait.
      await expect.poll(() => timedChecks).toBeGreaterThanOrEqual(6);
      expect(defaultChecks).toBe(1);
      stop.abort();
      await Promise.all(waits);
    } finally {
      await hub.stop();
    }
  });

  it('when the signal aborts › rejects with its reason', async () => {
    const controller = new AbortController();
    const waiting = t.hub.waitFor(['x'], async () => undefined, {
      timeoutMs: 10_000,
      signal: controller.signal,
    });
    controller.abort(new Error('lock lost'));
    await expect(waiting).rejects.toThrow('lock lost');
  });

  it('when the signal aborts while a check runs › rejects with the abort, not the late answer', async () => {
    const controller = new AbortController();
    const waiting = t.hub.waitFor(
      ['x'],
      async () => {
        controller.abort(new Error('lock lost'));
        return 'found it';
      },
      { timeoutMs: 10_000, signal: controller.signal },
    );
    await expect(waiting).rejects.toThrow('lock lost');
  });

  /**
   * A waiter on a topic nothing notifies is re-checked once `breakConnection` has broken the hub's LISTEN
   * connection (only the reconnect can wake it), and notifications flow on the new connection.
   */
  async function expectReconnectRechecks(hub: PgNotificationHub, breakConnection: () => Promise<unknown>) {
    let ready = false;
    let checks = 0;
    const waiting = hub.waitFor(
      ['nothing-will-notify-this'],
      async () => {
        checks++;
        return ready ? 'rechecked' : undefined;
      },
      { timeoutMs: 10_000 },
    );
    await expect.poll(() => checks).toBe(1);
    ready = true;
    await breakConnection();
    await expect(waiting).resolves.toBe('rechecked');

    const jobId = await insertJob();
    const woken = new Promise<void>((resolve) => hub.on(topics.provisionerJob(jobId), () => resolve()));
    await t.db.pool.query('UPDATE provisioner_jobs SET started_at = now() WHERE id = $1', [jobId]);
    await expect(woken).resolves.toBeUndefined();
  }

  it('when the LISTEN connection is killed › reconnects and re-checks every waiter', async () => {
    await expectReconnectRechecks(t.hub, () =>
      t.db.pool.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'workspace-jobs-listener'`,
      ),
    );
  });

  it('when the LISTEN connection stops delivering without an error › its ping finds out: it reconnects and re-checks every waiter', async () => {
    const proxy = await startFreezableProxy(t.db.url);
    const hub = new PgNotificationHub(proxy.url, {
      pingIntervalMs: 50,
      pingTimeoutMs: 200,
      reconnectDelayMs: 50,
    });
    try {
      await hub.start();
      await expectReconnectRechecks(hub, async () => proxy.freezeOpen());
    } finally {
      await hub.stop();
      await proxy.close();
    }
  });
});
