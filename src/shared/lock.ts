// The per-chat distributed lock (docs/design.md §5): a thin wrapper over redis-semaphore 5.8.
//
// What redis-semaphore does by itself (read from its lib/, version 5.8.0), and what this file adds:
// - Key: it writes `mutex:<key>`. The contract names the key `<prefix>:lock:chat:<chatId>` (and keeping it
//   under the prefix keeps Redis Cluster hash tags and prefix-wide cleanup working), so the subclasses below
//   overwrite the protected `_key` with the bare resource name.
// - tryAcquire: a loop of `SET key id PX ttl NX` bounded by acquireTimeout/acquireAttemptsLimit, sleeping
//   retryInterval after every miss. One attempt with retryInterval 0 = "try once": the library still
//   awaits a 0 ms timer after the miss, so a refusal costs about 1 ms (bench/lock.ts), not a real wait.
//   Mutex: a connection error rejects (here: a LockUnavailableError, so it is never mistaken for "busy").
// - Refresh: an unref'd setInterval per lock runs a Lua "PEXPIRE if the value is still ours": one command per
//   lock per refresh (562 commands/s, most of a worker's idle CPU at 1,000 waiting jobs), and a Mutex refresh
//   that cannot reach Redis *rejects* inside the interval callback, unhandled (Node's default then kills the
//   process) while the key silently expires. So it is turned off (`refreshInterval: 0`: tryAcquire starts
//   the interval only when it is above 0), and lock-refresher.ts
//   refreshes every lock of a ChatLocks in batches, one script per node per tick, with the loss, quorum and
//   watchdog rules below; releases go in batches too (lock-releaser.ts). The library is kept for what it still
//   does well: the acquire loop, the identifier, and Lock's acquired state.
// - Release: one compare-and-delete script per lock. Released in a burst (10,000 builds completed at once),
//   that was a write and a round trip per lock, so lock-releaser.ts deletes the locks let go in one turn of
//   the event loop with one script per node, voted per lock as below. A Redlock acquire that loses its
//   vote deletes the keys it took there too, with the same script.
// - Redlock: RedlockMutex sends each step to every node and awaits them all (Promise.all), swallowing
//   per-node errors. So one dead or hung node makes every acquire and release as slow as that node's
//   timeout (with a client's offline queue: its reconnect backoff), and an unreachable majority looks like
//   "held by someone else". QuorumMutex replaces both steps with votes (lock-vote.ts) decided by the first
//   majority of answers, with each node bounded by `nodeTimeoutMs`, and tells an unreachable quorum
//   (LockUnavailableError) from a refusal; the batched refresh and release vote the same way, per lock.
// - Loss: a lock is lost when a refresh finds it not ours (on a quorum), or by the clock (the watchdog: no
//   confirmed refresh for WATCHDOG_SHARE of the TTL). Its key is left alone until release(), which every
//   job path calls: the compare-and-delete then frees what is still ours, on every node.
import { Mutex, RedlockMutex, type LockOptions } from 'redis-semaphore';
import { redisKeys } from './keys.js';
import { LockRefresher, takeLock, type RefreshedLock } from './lock-refresher.js';
import { LockReleaser, type ReleaseOutcome } from './lock-releaser.js';
import { askNodes, countVotes, describeVote, quorumOf, unreachableReason, type Vote } from './lock-vote.js';
import type { Logger } from './logger.js';
import type { RedisClient } from './redis.js';

export class LockLostError extends Error {
  override name = 'LockLostError';
}

/** The lock nodes cannot be reached (one node down; a Redlock majority down): nobody can take the lock now. */
export class LockUnavailableError extends Error {
  override name = 'LockUnavailableError';
}

export interface ChatLocksOptions {
  /** Lock TTL in ms, refreshed while held. Default 30000. */
  lockTimeoutMs?: number;
  /** How often the TTL is refreshed, at most. Default lockTimeoutMs / 3. */
  refreshIntervalMs?: number;
  /**
   * Each lock refreshes every refreshIntervalMs shortened by up to this share, drawn once per lock: never
   * later than refreshIntervalMs, and locks taken in the same instant drift apart instead of refreshing in
   * one burst for as long as they are held. From 0 (no jitter) to below 1. Default 0.2 (on average 11 %
   * more refreshes).
   */
  refreshJitter?: number;
  /**
   * How long a node may take to answer before it counts as unreachable; the vote does not wait for it longer.
   * Every step on Redlock nodes; on one node, the refresh (a batch that does not answer in time keeps its
   * locks until their watchdog) and the release (one not answered in time is logged, and its key expires
   * unless the late answer deleted it). Default 500 (createRedis' failFast command timeout).
   */
  nodeTimeoutMs?: number;
  /**
   * Called with the duration of every acquire, refresh and release (benchmarks, metrics). A refresh is one
   * lock's: from its batch being sent to its vote, so the locks of one batch share its start.
   */
  onOperation?: (operation: LockOperation, ms: number) => void;
  log?: Logger;
}

export type LockOperation = 'acquire' | 'refresh' | 'release';

/** Told of a lock's loss (HeldLock.onLoss). */
export interface LockLossListener {
  lockLost(reason: LockLostError): void;
}

export interface HeldLock {
  readonly resource: string;
  /**
   * Aborted, with a LockLostError as reason, when the lock is lost (refresh failed / expired / taken). Made
   * when first read: a holder told through onLoss makes none (an AbortSignal with a listener is about
   * 0.94 KiB in Node 20, and a worker holds 10,000 locks, issue 11).
   */
  readonly signal: AbortSignal;
  /**
   * Tells `listener` of the loss as `signal` aborts, with the same reason; at once when the lock is lost
   * already. One listener at a time (undefined: none), until the lock is released.
   */
  onLoss(listener: LockLossListener | undefined): void;
  /**
   * Whether the lock is still ours by the clock: not lost or released, and its last confirmed acquire or
   * refresh younger than the watchdog's share of the TTL. Unlike `signal`, right even when the process was
   * paused and the watchdog timer has not run yet (I/O callbacks can run first); past the bound it reports
   * the loss through `signal` at once. Checked before every write a holder makes.
   */
  isHeld(): boolean;
  /** Releases (idempotent, never throws; logs a failure). Stops refreshing. */
  release(): Promise<void>;
}

/**
 * Without a confirmed refresh, the holder gives the lock up after this share of the TTL, counted from when the
 * last successful acquire/refresh was *sent* (Redis set the expiry no earlier than that). The rest of the TTL
 * is the margin for clock drift and for the job to react to the abort before another worker can get in.
 */
const WATCHDOG_SHARE = 0.9;
/** refreshIntervalMs shortened by a random share of at most `jitter` (0 <= jitter < 1): in (interval × (1 − jitter), interval]. */
export function jitteredRefreshInterval(intervalMs: number, jitter: number, random = Math.random): number {
  return intervalMs * (1 - jitter * random());
}

class SingleNodeMutex extends Mutex {
  constructor(client: RedisClient, key: string, options: LockOptions) {
    super(client, key, options);
    this._key = key; // not `mutex:<key>`: see the top of the file
  }

  protected override async _acquire(abortSignal?: AbortSignal): Promise<boolean> {
    try {
      return await super._acquire(abortSignal);
    } catch (error) {
      const cause = error instanceof Error ? error.message : String(error);
      throw new LockUnavailableError(`the lock node is unreachable: ${cause}`, { cause: error });
    }
  }
}

class QuorumMutex extends RedlockMutex {
  constructor(
    clients: RedisClient[],
    key: string,
    options: LockOptions,
    private readonly nodeTimeoutMs: number,
    /** Deletes what a lost attempt took: its key, where it still holds our identifier. */
    private readonly undo: () => void,
  ) {
    super(clients, key, options);
    this._key = key;
  }

  protected override async _acquire(): Promise<boolean> {
    const vote = await this.vote((client) => this.take(client));
    if (vote.won) return true;
    // Undo the nodes this attempt took; on each connection the delete queues behind its SET.
    this.undo();
    if (vote.quorumUnavailable) throw unavailable(vote);
    return false;
  }

  /** `command` on every node, one answer each, decided by the first majority. */
  private vote(command: (client: RedisClient) => Promise<boolean>): Promise<Vote> {
    const { answers } = askNodes(this._clients as RedisClient[], command, onNodeError);
    return countVotes(answers, this.nodeTimeoutMs);
  }

  private take(client: Pick<RedisClient, 'set'>): Promise<boolean> {
    const { identifier, lockTimeout } = this._acquireOptions;
    return takeLock(client, this._key, identifier, lockTimeout);
  }
}

function unavailable(vote: Vote): LockUnavailableError {
  return new LockUnavailableError(`lock quorum unavailable: ${describeVote(vote)}`);
}

/**
 * A Redlock node's command failed. A command timeout means the node is hung: alive to TCP, answering nothing
 * (a stopped process, a black-holed network). Its client would keep queueing unanswered commands for as long
 * as it hangs; reconnecting drops them, and until the node answers the ready check again its commands fail
 * at once, like a dead node's.
 */
function onNodeError(client: RedisClient, error: unknown): void {
  if (error instanceof Error && error.message === 'Command timed out') reconnect(client);
}

/** Clients being reconnected: each of a hung node's many timed-out commands would otherwise ask again. */
const reconnecting = new WeakSet<RedisClient>();

function reconnect(client: RedisClient): void {
  if (reconnecting.has(client)) return;
  reconnecting.add(client);
  client.once('close', () => reconnecting.delete(client));
  client.disconnect(true);
}

/** `undo`: a lost Redlock attempt's clean-up (one node's SET NX takes nothing when it is refused). */
type MutexFactory = (key: string, options: LockOptions, undo: () => void) => Mutex | RedlockMutex;

class ChatLock implements HeldLock, RefreshedLock {
  readonly identifier: string;
  private readonly controller = new AbortController();
  private readonly mutex: Mutex | RedlockMutex;
  /** Until when the last confirmed acquire/refresh keeps the lock ours (the watchdog's deadline). */
  heldUntil = 0;
  /** Why the lock was lost, once it was. */
  private lost: LockLostError | undefined;
  private lossListener: LockLossListener | undefined;
  private released = false;
  private releasing: Promise<void> | undefined;
  /** Why the last refresh could not reach Redis, while refreshes fail; named when the watchdog fires. */
  private refreshFailure: string | undefined;

  constructor(
    readonly resource: string,
    private readonly lockTimeoutMs: number,
    readonly refreshIntervalMs: number,
    factory: MutexFactory,
    private readonly refresher: LockRefresher,
    private readonly releaser: LockReleaser,
    private readonly log: Logger | undefined,
    private readonly onOperation: ChatLocksOptions['onOperation'],
  ) {
    this.mutex = factory(
      resource,
      {
        lockTimeout: lockTimeoutMs,
        // The refresher refreshes every lock of the ChatLocks (see the top of the file).
        refreshInterval: 0,
        // Try once (only a 0 ms timer after a miss): a busy chat is re-delayed by the caller instead.
        acquireAttemptsLimit: 1,
        acquireTimeout: lockTimeoutMs,
        retryInterval: 0,
      },
      () => this.undoAcquire(),
    );
    this.identifier = this.mutex.identifier;
  }

  /** The controller makes its signal when first read (Node 20). */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  onLoss(listener: LockLossListener | undefined): void {
    this.lossListener = listener;
    if (this.lost) listener?.lockLost(this.lost);
  }

  async acquire(): Promise<boolean> {
    const sentAt = Date.now();
    const acquired = await this.timed('acquire', () => this.mutex.tryAcquire());
    if (acquired) {
      this.heldUntil = this.confirmedUntil(sentAt);
      this.refresher.add(this, sentAt);
    }
    return acquired;
  }

  isHeld(): boolean {
    if (!this.lost && !this.released && Date.now() >= this.heldUntil) this.markLostByClock();
    return !this.lost && !this.released;
  }

  release(): Promise<void> {
    this.releasing ??= this.doRelease();
    return this.releasing;
  }

  onRefreshed(sentAt: number): void {
    if (this.lost || this.released) return;
    this.refreshFailure = undefined;
    this.heldUntil = this.confirmedUntil(sentAt);
  }

  onNotOurs(): void {
    this.markLost('the lock was deleted, expired or taken by another holder');
  }

  /** Keeps the lock for now: the next refresh may get through, and the watchdog gives it up in time. */
  onUnreachable(reason: string): void {
    this.refreshFailure = reason;
  }

  onWatchdog(): void {
    this.markLostByClock();
  }

  private async doRelease(): Promise<void> {
    this.released = true;
    this.refresher.remove(this);
    // Deletes the key only while it still holds our identifier (Lua compare-and-delete, on every node), so
    // releasing a lost lock never frees someone else's. Each node is waited for nodeTimeoutMs at most.
    const outcome = await this.timed('release', () => this.releaser.release(this));
    // Refreshing stopped first, so a lock we could not free just expires.
    this.warnUnlessDeleted(outcome, 'could not release the chat lock; it expires on its own');
  }

  /** A lost Redlock attempt: its keys are deleted with the releases of this turn, as a release's are. */
  private undoAcquire(): void {
    void this.releaser
      .release(this)
      .then((outcome) =>
        this.warnUnlessDeleted(
          outcome,
          'could not undo a lost acquire of the chat lock; its keys expire on their own',
        ),
      );
  }

  private warnUnlessDeleted({ vote, cause }: ReleaseOutcome, message: string): void {
    if (vote.won) return;
    const reason = unreachableReason(vote, cause ?? 'no answer');
    this.log?.warn({ err: new LockUnavailableError(reason), resource: this.resource }, message);
  }

  private async timed<T>(operation: LockOperation, run: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      return await run();
    } finally {
      this.onOperation?.(operation, performance.now() - started);
    }
  }

  private confirmedUntil(sentAt: number): number {
    return sentAt + this.lockTimeoutMs * WATCHDOG_SHARE;
  }

  private markLostByClock(): void {
    const failure = this.refreshFailure === undefined ? '' : ` (${this.refreshFailure})`;
    this.markLost(`not refreshed for ${Math.round(this.lockTimeoutMs * WATCHDOG_SHARE)} ms${failure}`);
  }

  private markLost(reason: string): void {
    if (this.lost || this.released) return;
    this.lost = new LockLostError(`lost the lock ${this.resource}: ${reason}`);
    this.refresher.remove(this);
    // The key is not deleted here: the job has not stopped yet. release() deletes it if it is still ours.
    this.log?.warn({ resource: this.resource, reason }, 'lost the chat lock');
    this.controller.abort(this.lost);
    this.lossListener?.lockLost(this.lost);
  }
}

export class ChatLocks {
  private readonly keys: ReturnType<typeof redisKeys>;
  private readonly lockTimeoutMs: number;
  private readonly refreshIntervalMs: number;
  private readonly refreshJitter: number;
  private readonly factory: MutexFactory;
  private readonly refresher: LockRefresher;
  private readonly releaser: LockReleaser;
  private readonly log: Logger | undefined;
  private readonly onOperation: ChatLocksOptions['onOperation'];
  private readonly clients: RedisClient[];

  /**
   * One client → redis-semaphore Mutex; 3+ independent clients → RedlockMutex (quorum). 2 clients: throw.
   * Give Redlock nodes clients made with `createRedis(url, { failFast: true })`: a dead node must refuse
   * commands at once rather than queue them, or each vote that needs its answer waits `nodeTimeoutMs`.
   */
  constructor(clients: RedisClient[], prefix: string, options: ChatLocksOptions = {}) {
    if (clients.length === 0) throw new Error('ChatLocks needs at least one Redis client');
    if (clients.length === 2) {
      // A quorum of 2 is both nodes: no more available than one node, and twice the ways to fail.
      throw new Error('ChatLocks needs 1 Redis node or 3 or more (Redlock quorum), not 2');
    }
    this.lockTimeoutMs = options.lockTimeoutMs ?? 30_000;
    this.refreshIntervalMs = options.refreshIntervalMs ?? Math.round(this.lockTimeoutMs / 3);
    if (!Number.isInteger(this.lockTimeoutMs) || this.lockTimeoutMs <= 0) {
      throw new RangeError(`lockTimeoutMs must be a positive whole number, got ${this.lockTimeoutMs}`);
    }
    if (!(this.refreshIntervalMs > 0) || this.refreshIntervalMs >= this.lockTimeoutMs * WATCHDOG_SHARE) {
      // Otherwise the watchdog would give the lock up before the first refresh could confirm it.
      throw new RangeError(
        `refreshIntervalMs must be above 0 and below ${WATCHDOG_SHARE * 100}% of lockTimeoutMs, got ${this.refreshIntervalMs}`,
      );
    }
    this.refreshJitter = options.refreshJitter ?? 0.2;
    if (!(this.refreshJitter >= 0 && this.refreshJitter < 1)) {
      throw new RangeError(`refreshJitter must be from 0 to below 1, got ${this.refreshJitter}`);
    }
    this.keys = redisKeys(prefix);
    this.log = options.log;
    this.onOperation = options.onOperation;
    this.clients = clients;
    const nodeTimeoutMs = options.nodeTimeoutMs ?? 500;
    if (!(nodeTimeoutMs > 0)) throw new RangeError(`nodeTimeoutMs must be above 0, got ${nodeTimeoutMs}`);
    const [first] = clients;
    this.factory =
      clients.length === 1
        ? (key, lockOptions) => new SingleNodeMutex(first!, key, lockOptions)
        : (key, lockOptions, undo) => new QuorumMutex(clients, key, lockOptions, nodeTimeoutMs, undo);
    this.refresher = new LockRefresher({
      clients,
      lockTimeoutMs: this.lockTimeoutMs,
      refreshIntervalMs: this.refreshIntervalMs,
      nodeTimeoutMs,
      ...(clients.length > 1 && { onNodeError }),
      onOperation: options.onOperation,
      log: options.log,
    });
    this.releaser = new LockReleaser({
      clients,
      nodeTimeoutMs,
      ...(clients.length > 1 && { onNodeError }),
    });
  }

  /**
   * Resolves once enough lock nodes are connected to take a lock (a quorum, or the one node): true, or false
   * after `timeoutMs`. A failFast client refuses commands until it is connected, so a worker that takes jobs
   * before this would re-delay its first ones as "lock unavailable".
   */
  whenReachable(timeoutMs: number): Promise<boolean> {
    const needed = quorumOf(this.clients.length);
    const ready = () => this.clients.filter((client) => client.status === 'ready').length >= needed;
    if (ready()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (reachable: boolean) => {
        clearTimeout(timer);
        for (const client of this.clients) client.off('ready', check);
        resolve(reachable);
      };
      const check = () => {
        if (ready()) done(true);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      for (const client of this.clients) client.on('ready', check);
    });
  }

  /**
   * Tries once, without waiting: a HeldLock, or null when someone else holds it. Rejects with a
   * LockUnavailableError when the lock node (a Redlock quorum) cannot be reached: nobody can take it then.
   * Resource = redisKeys(prefix).chatLock(chatId).
   */
  async tryAcquire(chatId: string): Promise<HeldLock | null> {
    const lock = new ChatLock(
      this.keys.chatLock(chatId),
      this.lockTimeoutMs,
      jitteredRefreshInterval(this.refreshIntervalMs, this.refreshJitter),
      this.factory,
      this.refresher,
      this.releaser,
      this.log,
      this.onOperation,
    );
    return (await lock.acquire()) ? lock : null;
  }
}
