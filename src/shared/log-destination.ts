// The daemons' log destination (issue 11): the lines logged in one turn of the event loop go out in one
// write, at the end of that turn, instead of one write per line (the provisioner spent 14 % of its time in
// them). The write is a synchronous call on the main thread, which never waits on a piped stderr: Node makes
// it non-blocking, so a full pipe is EAGAIN, and what it did not take is held and retried. pino's
// asynchronous destination keeps a write in flight in the threadpool instead, and its flushSync writes the
// rest past it, so lines logged just before exit came out of order (sonic-boom #101). Here they cannot.
import { writeSync } from 'node:fs';

export interface LogDestinationOptions {
  /** The file descriptor written to. Default: 2 (stderr). */
  fd?: number;
  /**
   * The most characters held while the descriptor takes nothing (a pipe whose reader is slow or stopped;
   * Node makes a piped stderr non-blocking). Beyond it lines are dropped, and a line saying how many follows
   * the ones held. Default: 16 Mi.
   */
  maxHeldChars?: number;
  /**
   * How long flushSync (and the flush at exit) waits for a descriptor that takes nothing. Once it has waited
   * in vain, later flushes try once without waiting, until a write goes through. Default: 3000 ms.
   */
  flushTimeoutMs?: number;
}

/** How soon a background write retries a descriptor that took nothing. */
const RETRY_MS = 10;
const SLEEP_CELL = new Int32Array(new SharedArrayBuffer(4));

/** Flushed on `exit`, whether the process ends by itself or by process.exit; held weakly. */
const live = new Set<WeakRef<LogDestination>>();
let processExiting = false;
process.once('exit', () => {
  processExiting = true;
  for (const ref of live) ref.deref()?.flushSync();
});

/** A pino destination stream (`pino(options, destination)`) that writes once per event-loop turn. */
export class LogDestination {
  private readonly fd: number;
  private readonly maxHeldChars: number;
  private readonly flushTimeoutMs: number;
  private held: string[] = [];
  private heldChars = 0;
  /** What the descriptor has not taken of the last write (it took part, or would block). */
  private unwritten: string | Buffer | undefined;
  private dropped = 0;
  private nextTurn: NodeJS.Immediate | undefined;
  private retry: NodeJS.Timeout | undefined;
  private gone = false;
  /** A flush waited in vain, and no write has gone through since. */
  private stalled = false;

  constructor(options: LogDestinationOptions = {}) {
    this.fd = options.fd ?? 2;
    this.maxHeldChars = options.maxHeldChars ?? 16 * 1024 * 1024;
    this.flushTimeoutMs = options.flushTimeoutMs ?? 3_000;
    for (const ref of live) if (ref.deref() === undefined) live.delete(ref);
    live.add(new WeakRef(this));
  }

  write(line: string): boolean {
    if (this.gone) return false;
    // Once lines are dropped, later ones are too until a write frees room: the count says where the gap is.
    if (this.dropped || this.heldChars + (this.unwritten?.length ?? 0) + line.length > this.maxHeldChars) {
      this.dropped++;
      return false;
    }
    this.held.push(line);
    this.heldChars += line.length;
    // Lines logged by other `exit` listeners have no later turn to wait for.
    if (processExiting) this.flushSync();
    else if (this.retry === undefined) this.nextTurn ??= setImmediate(this.writeInBackground);
    return true;
  }

  /**
   * Writes everything held, now, in order, waiting up to flushTimeoutMs for a descriptor that takes nothing.
   * What it could not write stays held, in order, for the writes in the background.
   */
  flushSync(): void {
    this.cancelScheduled();
    const deadline = Date.now() + (this.stalled ? 0 : this.flushTimeoutMs);
    while (!this.writeHeld()) {
      if (Date.now() >= deadline) {
        this.stalled = true;
        this.retryLater();
        return;
      }
      Atomics.wait(SLEEP_CELL, 0, 0, 1);
    }
  }

  private readonly writeInBackground = (): void => {
    this.nextTurn = undefined;
    this.retry = undefined;
    if (!this.writeHeld()) this.retryLater();
  };

  private retryLater(): void {
    // Unref'd: a reader that stopped must not keep the process alive; the flush at exit has the last go.
    this.retry ??= setTimeout(this.writeInBackground, RETRY_MS).unref();
  }

  /** Writes what is held; false when the descriptor would block and something is still held. */
  private writeHeld(): boolean {
    while (!this.gone) {
      if (this.unwritten === undefined) {
        if (!this.held.length && !this.dropped) return true;
        this.unwritten = this.held.join('') + (this.dropped ? droppedLine(this.dropped) : '');
        this.held = [];
        this.heldChars = 0;
        this.dropped = 0;
      }
      const text = this.unwritten;
      let written: number;
      try {
        // The same call: one overload takes a string, the other a Buffer.
        written = typeof text === 'string' ? writeSync(this.fd, text) : writeSync(this.fd, text);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' || code === 'EINTR') return false;
        // EPIPE, EBADF: the reader is gone; nothing more can be written, and logging must not throw.
        this.gone = true;
        this.held = [];
        this.unwritten = undefined;
        return true;
      }
      if (written === 0) return false;
      this.stalled = false;
      const bytes = typeof text === 'string' ? Buffer.byteLength(text) : text.length;
      if (written >= bytes) this.unwritten = undefined;
      else this.unwritten = (typeof text === 'string' ? Buffer.from(text) : text).subarray(written);
    }
    return true;
  }

  private cancelScheduled(): void {
    clearImmediate(this.nextTurn);
    clearTimeout(this.retry);
    this.nextTurn = undefined;
    this.retry = undefined;
  }
}

/** The line in place of the dropped ones, at pino's warn level so that log shippers keep it. */
function droppedLine(count: number): string {
  return `${JSON.stringify({ level: 40, time: Date.now(), msg: `${count} log line(s) dropped: the log's reader took nothing for too long` })}\n`;
}
