// The admission bound on its own (no Redis or Postgres involved): slots, their order, a wait given up, and
// an attempt's ticket around its waits.
import { describe, expect, it } from 'vitest';
import { WaitTimeoutError } from '../../src/shared/errors.js';
import { Admission, AdmissionClosedError } from '../../src/worker/admission.js';
import type { ChangeWaiter } from '../../src/worker/ports.js';

/** Whether `promise` has settled by the time the queued callbacks ran. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  await new Promise((resolve) => setImmediate(resolve));
  return done;
}

describe('Admission', () => {
  describe('when every slot is taken', () => {
    it('admits the next job once one is given back, a job going on before a new one', async () => {
      const admission = new Admission({ limit: 1, resumeLimit: 1 });
      await admission.acquire('start');
      const starting = admission.acquire('start');
      const resuming = admission.acquire('resume');
      expect(admission.waiting).toBe(1);

      admission.release();
      expect(await settled(resuming)).toBe(true);
      expect(await settled(starting)).toBe(false);
      admission.release();
      expect(await settled(starting)).toBe(true);
      expect(admission.admitted).toBe(1);
    });

    it('lets jobs going on take slots up to the resume limit, and new ones wait until slots drop below the limit', async () => {
      const admission = new Admission({ limit: 1, resumeLimit: 3 });
      await admission.acquire('start');
      await admission.acquire('resume');
      await admission.acquire('resume');
      const resuming = admission.acquire('resume');
      const starting = admission.acquire('start');
      expect(await settled(resuming)).toBe(false);

      admission.release();
      expect(await settled(resuming)).toBe(true);
      admission.release();
      admission.release();
      // One slot still taken: the limit's.
      expect(admission.admitted).toBe(1);
      expect(await settled(starting)).toBe(false);
      admission.release();
      expect(await settled(starting)).toBe(true);
      expect(admission.admitted).toBe(1);
    });

    it('lets a wait given up (aborted, timed out) leave without taking a slot', async () => {
      const admission = new Admission({ limit: 1, timeoutMs: 50 });
      await admission.acquire('start');
      const aborted = new AbortController();
      const gaveUp = admission.acquire('start', aborted.signal);
      aborted.abort(new Error('canceled'));
      await expect(gaveUp).rejects.toThrow('canceled');
      await expect(admission.acquire('start')).rejects.toBeInstanceOf(WaitTimeoutError);
      expect(admission.waiting).toBe(0);

      admission.release();
      expect(admission.admitted).toBe(0);
    });
    it('times out each waiter its own timeout after it began waiting, in the order they came', async () => {
      const admission = new Admission({ limit: 1, timeoutMs: 200 });
      await admission.acquire('start');
      const began = performance.now();
      const first = admission.acquire('start');
      await new Promise((resolve) => setTimeout(resolve, 100));
      const second = admission.acquire('start');
      const timedOutAfter = (wait: Promise<void>) =>
        wait.then(
          () => Number.NaN,
          (error: unknown) => {
            expect(error).toBeInstanceOf(WaitTimeoutError);
            return performance.now() - began;
          },
        );
      const [firstAfter, secondAfter] = await Promise.all([timedOutAfter(first), timedOutAfter(second)]);
      expect(firstAfter).toBeGreaterThanOrEqual(195);
      expect(firstAfter).toBeLessThan(290);
      expect(secondAfter).toBeGreaterThanOrEqual(295);
      expect(secondAfter).toBeLessThan(385);
      expect(admission.waiting).toBe(0);
    });
  });

  describe('when it closes', () => {
    it('refuses the jobs waiting to start and lets the jobs going on through', async () => {
      const admission = new Admission({ limit: 1 });
      await admission.acquire('start');
      const starting = admission.acquire('start');
      const resuming = admission.acquire('resume');

      admission.close();
      await expect(starting).rejects.toBeInstanceOf(AdmissionClosedError);
      await expect(resuming).resolves.toBeUndefined();
      await expect(admission.acquire('start')).rejects.toBeInstanceOf(AdmissionClosedError);
      await expect(admission.acquire('resume')).resolves.toBeUndefined();
    });
  });
});

describe('AdmissionTicket', () => {
  /** A waiter whose wait runs its check once, then blocks until `end` is called. */
  function blockingWaiter() {
    let end!: () => void;
    const ended = new Promise<void>((resolve) => (end = resolve));
    const waiter: ChangeWaiter = {
      async waitFor(_topics, check) {
        await check();
        await ended;
        return (await check()) as never;
      },
    };
    return { waiter, end: () => end() };
  }

  describe('while its job waits on a change', () => {
    it('gives its slot back, runs each check under a slot, and takes one again to go on', async () => {
      const admission = new Admission({ limit: 1 });
      const ticket = admission.ticket();
      await ticket.enter();
      const { waiter, end } = blockingWaiter();
      const seen: number[] = [];
      const waiting = ticket.waiter(waiter).waitFor(
        ['topic'],
        async () => {
          seen.push(admission.admitted);
          return seen.length === 2 ? 'done' : undefined;
        },
        { timeoutMs: 1_000 },
      );
      expect(await settled(waiting)).toBe(false);
      // Its slot is free while it waits: another job is admitted.
      expect(admission.admitted).toBe(0);
      const other = admission.ticket();
      await other.enter();
      other.done();

      end();
      await expect(waiting).resolves.toBe('done');
      expect(seen).toEqual([1, 1]);
      expect(admission.admitted).toBe(1);
      ticket.done();
      expect(admission.admitted).toBe(0);
    });

    it('goes on under the slot of the check that ended its wait, before a job that asked meanwhile', async () => {
      const admission = new Admission({ limit: 1 });
      const ticket = admission.ticket();
      await ticket.enter();
      const { waiter, end } = blockingWaiter();
      const other = admission.ticket();
      let otherEntered: Promise<void> | undefined;
      let checks = 0;
      const waiting = ticket.waiter(waiter).waitFor(
        ['topic'],
        async () => {
          if (++checks === 1) return undefined;
          // Asked while the last check holds the only slot.
          otherEntered = other.enter();
          return 'done';
        },
        { timeoutMs: 1_000 },
      );
      expect(await settled(waiting)).toBe(false);
      end();

      // It kept the slot: given back and asked for again, the slot would have gone to the other job first.
      await expect(waiting).resolves.toBe('done');
      expect(admission.admitted).toBe(1);
      expect(await settled(otherEntered!)).toBe(false);
      ticket.done();
      await otherEntered;
      other.done();
      expect(admission.admitted).toBe(0);
    });
  });
});
