// A wait as one object (issue 11): its state in fields and its callbacks as methods, so that a wait that is
// waiting is this object, its promise and its timer, not a suspended async loop with its closures and a
// promise per sleep. A worker holds three per waiting start (the hub's two waitFors, the queue follow).
import { WaitTimeoutError } from './errors.js';

export interface WaitBounds {
  timeoutMs: number;
  signal?: AbortSignal;
}

/**
 * Runs its checks one at a time until one answers (anything but `undefined`), and rejects with a
 * WaitTimeoutError after `timeoutMs`, with the signal's reason when `signal` aborts (an abort while a check
 * runs wins over its answer), or with the check's error. A subclass says when to check (`next`) and
 * stops listening in `leave`.
 */
export abstract class Wait<T> {
  readonly promise: Promise<T>;
  private resolveWait!: (value: T) => void;
  private rejectWait!: (reason: unknown) => void;
  /** A check runs, or is about to: what comes meanwhile waits for next(). */
  private checking = false;
  /** Why the wait ends early (the caller's abort, the timeout, the owner's close), once it does. */
  protected ended: { reason: unknown } | undefined;
  protected settled = false;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly bounds: WaitBounds) {
    this.promise = new Promise<T>((resolve, reject) => {
      this.resolveWait = resolve;
      this.rejectWait = reject;
    });
    this.timer = setTimeout(timedOut, bounds.timeoutMs, this);
    bounds.signal?.addEventListener('abort', this, { once: true });
  }

  /** Ends the wait early with `reason`, once no check runs. */
  end(reason: unknown): void {
    this.ended ??= { reason };
    this.wake();
  }

  /** Its timer: the wait has taken timeoutMs. */
  timeOut(): void {
    const { timeoutMs } = this.bounds;
    this.end(new WaitTimeoutError(`timed out after ${timeoutMs} ms`, timeoutMs));
  }

  /** Its signal's abort. */
  handleEvent(): void {
    this.end(this.bounds.signal?.reason);
  }

  /** Calls next() a microtask later (what comes together shares it), unless a check runs. */
  protected wake(): void {
    if (this.checking || this.settled) return;
    this.checking = true;
    queueMicrotask(() => {
      this.checking = false;
      if (!this.settled) this.next();
    });
  }

  /** What to do now that no check runs: check (runCheck), end (fail with `ended`), or wait for a wake(). */
  protected abstract next(): void;

  /** Stops listening for what wakes the wait; called once, as it settles. */
  protected abstract leave(): void;

  protected runCheck(check: () => Promise<T | undefined>): void {
    this.checking = true;
    let checked: Promise<T | undefined>;
    try {
      checked = Promise.resolve(check());
    } catch (error) {
      return this.fail(error);
    }
    checked.then(
      (result) => {
        this.checking = false;
        const { signal } = this.bounds;
        // An abort that came while the check ran wins: its answer is too late for the caller.
        if (signal?.aborted) return this.fail(signal.reason);
        if (result !== undefined) return this.settle(() => this.resolveWait(result));
        this.next();
      },
      (error: unknown) => this.fail(error),
    );
  }

  protected fail(error: unknown): void {
    this.settle(() => this.rejectWait(error));
  }

  private settle(answer: () => void): void {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timer);
    this.bounds.signal?.removeEventListener('abort', this);
    this.leave();
    answer();
  }
}

function timedOut(wait: Pick<Wait<unknown>, 'timeOut'>): void {
  wait.timeOut();
}
