// Admission control (issue 11, docs/design.md §8): a bound on the jobs of one worker that are doing their work
// at once, as opposed to waiting on a change. At WORKER_CONCURRENCY 10,000 every job picked up would
// otherwise run its start phase (order, chat lock, reads, the build's insert) at the same moment through a
// pool of 20 connections: the pool's queue outwaits its connect timeout, the heap fills with half-done
// starts and the event loop stalls long enough for chat locks to go unrefreshed. A job is admitted before
// it takes its chat lock, so one waiting for admission holds nothing to refresh; it gives its slot back
// while it waits on notifications (AdmissionTicket.waiter) and goes on under the slot of the check that
// ended the wait. Jobs that go on (and the checks of their waits) come before new ones, as they hold a chat
// lock already, and may take more slots than new ones (resumeLimit): their reads are batched.
import { WaitTimeoutError } from '../shared/errors.js';
import type { ChangeWaiter } from './ports.js';

/** How long a job waits for a slot before it gives up (default of AdmissionOptions.timeoutMs). */
export const DEFAULT_ADMISSION_TIMEOUT_MS = 300_000;
/**
 * Slots for jobs going on and the checks of waits, at least (default of AdmissionOptions.resumeLimit): what
 * they read is batched, 500 keys a query (read-batcher.ts), and their events are pipelined, so a burst of
 * wake-ups is bounded by whole batches rather than by the pool. At the start phase's 80, 10,000 builds ending
 * at once took 8.6 s, the worker idle a quarter of it waiting on batches of 60 (issue 11).
 */
export const DEFAULT_RESUME_LIMIT = 500;

/** The worker is closing: a job not admitted yet goes back to the queue. */
export class AdmissionClosedError extends Error {
  override name = 'AdmissionClosedError';
}

export interface AdmissionOptions {
  /** Jobs doing their work at once (WORKER_ADMITTED_JOBS); new ones are admitted only below it. */
  limit: number;
  /**
   * Slots that jobs going on and the checks of their waits may take, new ones' included. Default the larger
   * of `limit` and DEFAULT_RESUME_LIMIT.
   */
  resumeLimit?: number;
  /** How long a job waits for a slot before the wait fails. Default DEFAULT_ADMISSION_TIMEOUT_MS. */
  timeoutMs?: number;
  /** Told the number of jobs waiting to start whenever it changes (a gauge). */
  onWaiting?: (waiting: number) => void;
}

/**
 * A job waiting for a slot. One object, its own abort listener (handleEvent), no closures and no timer of
 * its own (its queue's one timer times it out): at WORKER_CONCURRENCY 10,000 every job picked up waits here
 * for seconds, long enough for V8 to move it to old space, where it dies once admitted (issue 11: the ramp's
 * garbage in old space is what its RSS keeps).
 */
class Waiter {
  /** Set once it was granted, timed out or aborted: skipped when its turn comes. */
  settled = false;

  constructor(
    private readonly queue: WaiterQueue,
    /** When it times out (performance.now()). */
    readonly deadline: number,
    private readonly resolve: () => void,
    private readonly reject: (error: unknown) => void,
    private readonly signal: AbortSignal | undefined,
  ) {
    signal?.addEventListener('abort', this, { once: true });
  }

  grant(): void {
    if (this.settle()) this.resolve();
  }

  refuse(error: unknown): void {
    if (this.settle()) this.reject(error);
  }

  /** Its signal aborted. */
  handleEvent(): void {
    this.refuse(this.signal!.reason);
  }

  private settle(): boolean {
    if (this.settled) return false;
    this.settled = true;
    this.signal?.removeEventListener('abort', this);
    this.queue.settled();
    return true;
  }
}

/**
 * A FIFO of waiters; one that gave up stays in it, settled, and is skipped (removal in O(1)). Every waiter
 * waits the same timeout, so deadlines come in queue order: one timer, for the first waiter not settled.
 */
class WaiterQueue {
  private items: Waiter[] = [];
  private head = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Waiters not settled. */
  size = 0;

  constructor(
    private readonly timeoutMs: number,
    /** Told the waiters not settled whenever their number changes. */
    private readonly onSize?: (size: number) => void,
  ) {}

  /** A new waiter at the end; it settles with `resolve` when granted, `reject` otherwise. */
  push(resolve: () => void, reject: (error: unknown) => void, signal: AbortSignal | undefined): void {
    this.items.push(new Waiter(this, performance.now() + this.timeoutMs, resolve, reject, signal));
    this.size++;
    this.onSize?.(this.size);
    this.timer ??= setTimeout(this.expire, this.timeoutMs);
  }

  /** Counts a waiter out as it settles. */
  settled(): void {
    this.size--;
    this.onSize?.(this.size);
    if (this.size === 0) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  /** The first waiter not settled, taken out. */
  shift(): Waiter | undefined {
    while (this.head < this.items.length) {
      const waiter = this.items[this.head++]!;
      // Emptied, or mostly taken: the waiters taken must not stay referenced (each holds its promise's
      // callbacks; 10,000 starts admitted left about 0.35 KiB each behind, issue 11).
      if (this.head === this.items.length) {
        this.items = [];
        this.head = 0;
      } else if (this.head > 1_024 && this.head * 2 > this.items.length) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
      if (!waiter.settled) return waiter;
    }
    return undefined;
  }

  /** Every waiter not settled, taken out (each settles itself, which counts it out of `size`). */
  drain(): Waiter[] {
    const rest = this.items.slice(this.head).filter((w) => !w.settled);
    this.items = [];
    this.head = 0;
    return rest;
  }

  /** Times out the waiters whose deadline has come, then waits for the next one's. */
  private readonly expire = (): void => {
    this.timer = undefined;
    const now = performance.now();
    for (let i = this.head; i < this.items.length; i++) {
      const waiter = this.items[i]!;
      if (waiter.settled) continue;
      if (waiter.deadline > now) {
        this.timer = setTimeout(this.expire, waiter.deadline - now);
        return;
      }
      waiter.refuse(new WaitTimeoutError(`no worker slot free after ${this.timeoutMs} ms`, this.timeoutMs));
    }
  };
}

export class Admission {
  readonly limit: number;
  readonly resumeLimit: number;
  private inUse = 0;
  /** Jobs going on after a wait, and the checks of waits: served first. */
  private readonly resuming: WaiterQueue;
  /** Jobs not admitted yet. */
  private readonly starting: WaiterQueue;
  private closed = false;

  constructor(private readonly options: AdmissionOptions) {
    if (!Number.isInteger(options.limit) || options.limit < 1) {
      throw new RangeError(`the admission limit must be a whole number of at least 1, got ${options.limit}`);
    }
    this.limit = options.limit;
    this.resumeLimit = options.resumeLimit ?? Math.max(options.limit, DEFAULT_RESUME_LIMIT);
    if (!Number.isInteger(this.resumeLimit) || this.resumeLimit < this.limit) {
      throw new RangeError(
        `the resume limit must be a whole number of at least the limit (${this.limit}), got ${this.resumeLimit}`,
      );
    }
    const timeoutMs = options.timeoutMs ?? DEFAULT_ADMISSION_TIMEOUT_MS;
    this.resuming = new WaiterQueue(timeoutMs);
    this.starting = new WaiterQueue(timeoutMs, options.onWaiting);
  }

  /** Slots taken now. */
  get admitted(): number {
    return this.inUse;
  }

  /** Jobs waiting for their first slot. */
  get waiting(): number {
    return this.starting.size;
  }

  /**
   * A slot, once one is free: `start` for a job not admitted yet (rejects with AdmissionClosedError once
   * the worker closes), else for one going on. Rejects with a WaitTimeoutError after the timeout and with
   * the signal's reason when it aborts. After close() a job going on is let through unbounded: the worker
   * is draining, and what still runs must end.
   */
  acquire(kind: 'start' | 'resume', signal?: AbortSignal): Promise<void> {
    if (kind === 'start' && this.closed) return Promise.reject(closedError());
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.closed || this.inUse < this.capOf(kind)) {
      this.inUse++;
      return Promise.resolve();
    }
    const queue = kind === 'start' ? this.starting : this.resuming;
    return new Promise((resolve, reject) => queue.push(resolve, reject, signal));
  }

  /** Gives a slot back: to the next job going on, else to the next one to start while below the limit. */
  release(): void {
    const next = this.resuming.shift() ?? (this.inUse <= this.limit ? this.starting.shift() : undefined);
    if (next) next.grant();
    else this.inUse--;
  }

  /** The slots taken below which a job of `kind` is admitted. */
  private capOf(kind: 'start' | 'resume'): number {
    return kind === 'start' ? this.limit : this.resumeLimit;
  }

  /**
   * The worker closes: jobs waiting to start are refused (AdmissionClosedError: they go back to the queue),
   * and from now on no job is held up.
   */
  close(): void {
    this.closed = true;
    const error = closedError();
    for (const waiter of this.starting.drain()) waiter.refuse(error);
    for (const waiter of this.resuming.drain()) {
      this.inUse++;
      waiter.grant();
    }
  }

  /** One attempt's hold on a slot. */
  ticket(): AdmissionTicket {
    return new AdmissionTicket(this);
  }
}

function closedError(): AdmissionClosedError {
  return new AdmissionClosedError('the worker is closing; the job goes back to the queue');
}

/**
 * One attempt's slot: taken by enter(), given back while one of its waits blocks, and for good by done().
 * A wait that begins while the slot is already given back (a side wait beside the main one, build-watch.ts)
 * leaves it alone, so that an attempt holds at most one slot besides those of its checks.
 */
export class AdmissionTicket {
  private held = false;
  private finished = false;

  constructor(private readonly admission: Admission) {}

  /** Admits the attempt (see Admission.acquire, kind `start`). */
  async enter(signal?: AbortSignal): Promise<void> {
    await this.admission.acquire('start', signal);
    this.held = true;
  }

  /** Gives the slot back for good; safe to call when none is held. */
  done(): void {
    this.finished = true;
    this.giveBack();
  }

  /**
   * `waiter`, giving this attempt's slot back while a wait blocks and taking one again before it returns;
   * each check of the wait runs under a slot of its own (10,000 builds ending at once must not all read at
   * once either). The check that ends the wait keeps its slot for the attempt to go on with: given back and
   * asked for again, it queued behind every other check of the burst, so that no job went on before all of
   * them had been read (issue 11).
   */
  waiter(waiter: ChangeWaiter): ChangeWaiter {
    // Not an async function: a suspended one would hold its frame for the whole wait (issue 11).
    return {
      waitFor: (topics, check, options) => {
        const gaveBack = this.giveBack();
        let kept = false;
        const waited = waiter.waitFor(
          topics,
          async (notice) => {
            await this.admission.acquire('resume', options.signal);
            let answer;
            try {
              answer = await check(notice);
            } finally {
              kept = answer !== undefined && gaveBack && !this.finished;
              if (kept) this.held = true;
              else this.admission.release();
            }
            return answer;
          },
          options,
        );
        return gaveBack ? waited.finally(() => kept || this.retake()) : waited;
      },
    };
  }

  private giveBack(): boolean {
    if (!this.held) return false;
    this.held = false;
    this.admission.release();
    return true;
  }

  private async retake(): Promise<void> {
    if (this.finished) return;
    await this.admission.acquire('resume');
    if (this.finished) this.admission.release();
    else this.held = true;
  }
}
