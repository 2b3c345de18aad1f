// The queue positions of a worker process's waiting builds (issue 11). Each pending build's wait follows its
// place in the queue; read per wait, k waits cost k counts of the k pending jobs whenever any job changed,
// O(k²). Here the waits register their job and ONE read of the queue per interval, after a provisioner job
// changed, answers them all; the first positions (at build_queued) asked while a read runs share the next
// read.
import { channelTopic } from '../shared/notifications.js';
import { sleep, WaitTimeoutError } from '../shared/errors.js';
import { Wait, type WaitBounds } from '../shared/wait.js';
import type { Logger } from '../shared/logger.js';
import type { QueuePosition } from '../shared/contract.js';
import type { ChangeWaiter, QueueWatch, WorkspaceStore } from './ports.js';

/**
 * `check`, run at most once per `intervalMs`: a call that comes sooner first waits out the interval. `last`:
 * when it last ran, if it did before (a read the caller made itself).
 */
function throttled<T>(
  intervalMs: number,
  signal: AbortSignal,
  check: () => Promise<T>,
  last = -Infinity,
): () => Promise<T> {
  return async () => {
    const wait = last + intervalMs - Date.now();
    if (wait > 0) await sleep(wait, signal);
    last = Date.now();
    return check();
  };
}

export const QUEUE_CHECK_INTERVAL_MS = 1_000;
/** Every provisioner job's status change: a job that starts, completes or is canceled leaves the pending set. */
const ANY_JOB_CHANGED = channelTopic('provisioner_job_changed');
/** The reads' wait on the changes is renewed this often (every wait is bounded). */
const READS_RENEWED_MS = 600_000;

interface Asked {
  jobId: string;
  resolve: (position: QueuePosition | null) => void;
  reject: (error: unknown) => void;
}

export interface QueuePositionsOptions {
  /** How often the queue is read at most while it changes. Default QUEUE_CHECK_INTERVAL_MS. */
  intervalMs?: number;
  log?: Logger;
}

const unique = (ids: string[]) => [...new Set(ids)];

export class QueuePositions implements QueueWatch {
  private readonly intervalMs: number;
  private readonly followers = new Set<Followed>();
  private asked: Asked[] = [];
  private answering = false;
  /** The reads, while anyone follows. */
  private reading: Promise<void> | undefined;
  private failing = false;
  private readonly closing = new AbortController();

  constructor(
    private readonly store: Pick<WorkspaceStore, 'getQueuePositions'>,
    private readonly waiter: ChangeWaiter,
    private readonly options: QueuePositionsOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? QUEUE_CHECK_INTERVAL_MS;
  }

  position(jobId: string): Promise<QueuePosition | null> {
    return new Promise((resolve, reject) => {
      if (this.closing.signal.aborted) return reject(this.closing.signal.reason);
      this.asked.push({ jobId, resolve, reject });
      void this.answerAsked();
    });
  }

  follow<T>(
    jobId: string,
    check: (position: QueuePosition | null) => Promise<T | undefined>,
    options: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<T> {
    if (options.signal?.aborted) return Promise.reject(options.signal.reason);
    if (this.closing.signal.aborted) return Promise.reject(this.closing.signal.reason);
    const follower = new Follower(jobId, check, options, this.followers);
    this.followers.add(follower);
    this.startReading();
    return follower.promise;
  }

  /** Ends the reads and every follow (they reject); resolves once no read is left running. */
  async close(): Promise<void> {
    this.closing.abort(new Error('queue positions closed: the worker is shutting down'));
    for (const follower of this.followers) follower.end(this.closing.signal.reason);
    await this.reading;
  }

  /** One read for every position asked while the previous one ran. */
  // Not a ReadBatcher: that sends a batch every turn, several at once; here one read runs at a time.
  private async answerAsked(): Promise<void> {
    if (this.answering) return;
    this.answering = true;
    try {
      while (this.asked.length > 0) {
        const batch = this.asked;
        this.asked = [];
        try {
          const positions = await this.store.getQueuePositions(unique(batch.map((a) => a.jobId)));
          for (const a of batch) a.resolve(positions.get(a.jobId) ?? null);
        } catch (error) {
          for (const a of batch) a.reject(error);
        }
      }
    } finally {
      this.answering = false;
    }
  }

  /** Runs the reads while anyone follows; the next follow starts them again once all have left. */
  private startReading(): void {
    if (this.reading || this.followers.size === 0 || this.closing.signal.aborted) return;
    this.reading = this.readWhileFollowed().finally(() => {
      this.reading = undefined;
      this.startReading();
    });
  }

  private async readWhileFollowed(): Promise<void> {
    // A follow begins just after its build's own read (position()): the first look comes an interval later.
    const read = throttled(this.intervalMs, this.closing.signal, () => this.read(), Date.now());
    try {
      await this.waiter.waitFor(
        [ANY_JOB_CHANGED],
        async () => {
          // A failed read is retried an interval later, notified or not.
          while (this.followers.size > 0) if (await read()) return undefined;
          return true;
        },
        { timeoutMs: READS_RENEWED_MS, signal: this.closing.signal },
      );
    } catch (error) {
      if (this.closing.signal.aborted || error instanceof WaitTimeoutError) return;
      this.options.log?.warn({ err: error }, 'queue position reads stopped; starting them again');
    }
  }

  /** Reads the followed jobs' positions and hands each follower its own; false when the read failed. */
  private async read(): Promise<boolean> {
    const followers = [...this.followers];
    if (followers.length === 0) return true;
    let positions: Map<string, QueuePosition>;
    try {
      positions = await this.store.getQueuePositions(unique(followers.map((f) => f.jobId)));
    } catch (error) {
      // Once per outage; the waits go on, and the next interval reads again.
      if (!this.failing)
        this.options.log?.warn({ err: error }, 'could not read the queue positions; retrying');
      this.failing = true;
      return false;
    }
    if (this.failing) this.options.log?.info('queue positions read again');
    this.failing = false;
    for (const f of followers) f.tell(positions.get(f.jobId) ?? null);
    return true;
  }
}

/**
 * One follow (QueueWatch's contract), as one object (wait.ts): a worker follows thousands of builds. It
 * ends early by a field and a wake-up (its timeout, its signal, close()), not by an AbortSignal.any.
 */
class Follower<T> extends Wait<T> {
  /** The newest read's answer for the job, until its check takes it. */
  private unseen: { position: QueuePosition | null } | undefined;

  constructor(
    readonly jobId: string,
    private readonly check: (position: QueuePosition | null) => Promise<T | undefined>,
    bounds: WaitBounds,
    private readonly followers: Set<Followed>,
  ) {
    super(bounds);
  }

  /** A read's answer for the job. */
  tell(position: QueuePosition | null): void {
    this.unseen = { position };
    this.wake();
  }

  protected next(): void {
    if (this.ended) return this.fail(this.ended.reason);
    if (!this.unseen) return;
    const { position } = this.unseen;
    this.unseen = undefined;
    this.runCheck(() => this.check(position));
  }

  protected leave(): void {
    this.followers.delete(this);
  }
}

/** What the reads and close() see of a follow. */
type Followed = Pick<Follower<unknown>, 'jobId' | 'tell' | 'end'>;
