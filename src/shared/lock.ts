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
// - Refresh: an unref'd setInterval runs a Lua "PEXPIRE if the value is still ours". A refresh that answers
//   "not ours" (key deleted, expired or taken) calls onLockLost with a LostLockError and stops refreshing.
//   But a Mutex refresh that cannot reach Redis *rejects*, and the interval callback leaves that rejection
//   unhandled (Node's default then kills the process) while the key silently expires: loss is never
//   reported. Hence the refresh guard and the watchdog below.
// - Redlock: RedlockMutex sends each step to every node and awaits them all (Promise.all), swallowing
//   per-node errors. So one dead or hung node makes every acquire, refresh and release as slow as that
//   node's timeout (with a client's offline queue: its reconnect backoff), and an unreachable majority
//   looks like "held by someone else". QuorumMutex replaces the three steps with votes (lock-vote.ts)
//   decided by the first majority of answers, with each node bounded by `nodeTimeoutMs`, and tells an
//   unreachable quorum (LockUnavailableError) from a refusal or a loss.
import { Mutex, RedlockMutex, type LockOptions } from 'redis-semaphore';
import { expireIfEqualLua } from 'redis-semaphore/lib/mutex/refresh.js';
import { delIfEqualLua } from 'redis-semaphore/lib/mutex/release.js';
import { withTimeout } from './errors.js';
import { redisKeys } from './keys.js';
import { countVotes, describeVote, quorumOf, type Vote } from './lock-vote.js';
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
   * Redlock: how long a node may take to answer before it counts as unreachable; the vote does not wait for
   * it longer. Default 500 (createRedis' failFast command timeout).
   */
  nodeTimeoutMs?: number;
  /** Called with the duration of every acquire, refresh and release (benchmarks, metrics). */
  onOperation?: (operation: LockOperation, ms: number) => void;
  log?: Logger;
}

export type LockOperation = 'acquire' | 'refresh' | 'release';

export interface HeldLock {
  readonly resource: string;
  /** Aborted, with a LockLostError as reason, when the lock is lost (refresh failed / expired / taken). */
  readonly signal: AbortSignal;
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

/** A release waits at most this long for Redis; the key expires on its own anyway. */
const MAX_RELEASE_WAIT_MS = 5_000;

type Refresh = () => Promise<boolean>;
type RefreshGuard = (refresh: Refresh) => Promise<boolean>;

class SingleNodeMutex extends Mutex {
  constructor(
    client: RedisClient,
    key: string,
    options: LockOptions,
    private readonly guard: RefreshGuard,
  ) {
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

  protected override _refresh(): Promise<boolean> {
    return this.guard(() => super._refresh());
  }
}

class QuorumMutex extends RedlockMutex {
  constructor(
    clients: RedisClient[],
    key: string,
    options: LockOptions,
    private readonly guard: RefreshGuard,
    private readonly nodeTimeoutMs: number,
  ) {
    super(clients, key, options);
    this._key = key;
  }

  protected override async _acquire(): Promise<boolean> {
    const vote = await this.vote((client) => this.take(client));
    if (vote.won) return true;
    // Undo the nodes this attempt took; on each connection the delete queues behind its SET.
    void this.deleteEverywhere();
    if (vote.quorumUnavailable) throw unavailable(vote);
    return false;
  }

  protected override _refresh(): Promise<boolean> {
    return this.guard(async () => {
      const { identifier, lockTimeout } = this._acquireOptions;
      const answers = this.ask((client) =>
        expireIfEqualLua(client, [this._key, identifier, lockTimeout]).then((result) => +result === 1),
      );
      const vote = await countVotes(answers, this.nodeTimeoutMs);
      if (vote.won) {
        // A node that lost the key (restarted empty, or was down at acquire) holds it again from here on.
        answers.forEach((answer, i) =>
          answer.then((ours) => (ours ? undefined : this.take(this._clients[i]!).catch(ignore)), ignore),
        );
        return true;
      }
      // Unreachable is not lost: the guard keeps the lock until the watchdog, in case the nodes come back.
      if (vote.quorumUnavailable) throw unavailable(vote);
      await this.deleteEverywhere();
      return false;
    });
  }

  protected override async _release(): Promise<void> {
    const vote = await this.deleteEverywhere();
    if (vote.quorumUnavailable) throw unavailable(vote);
  }

  private vote(command: (client: RedisClient) => Promise<boolean>): Promise<Vote> {
    return countVotes(this.ask(command), this.nodeTimeoutMs);
  }

  /** `command` on every node, one answer each. */
  private ask(command: (client: RedisClient) => Promise<boolean>): Promise<boolean>[] {
    return this._clients.map((client) =>
      command(client as RedisClient).catch((error: unknown) => {
        // A command timeout means the node is hung: alive to TCP, answering nothing (a stopped process, a
        // black-holed network). Its client would keep queueing unanswered commands for as long as it hangs;
        // reconnecting drops them, and until the node answers the ready check again its commands fail at
        // once, like a dead node's.
        if (error instanceof Error && error.message === 'Command timed out') reconnect(client as RedisClient);
        throw error;
      }),
    );
  }

  private take(client: Pick<RedisClient, 'set'>): Promise<boolean> {
    const { identifier, lockTimeout } = this._acquireOptions;
    return client.set(this._key, identifier, 'PX', lockTimeout, 'NX').then((result) => result === 'OK');
  }

  /** Compare-and-delete on every node; decided once a quorum has answered (deleted or not ours). */
  private deleteEverywhere(): Promise<Vote> {
    return this.vote((client) =>
      delIfEqualLua(client, [this._key, this._acquireOptions.identifier]).then(() => true),
    );
  }
}

function unavailable(vote: Vote): LockUnavailableError {
  return new LockUnavailableError(`lock quorum unavailable: ${describeVote(vote)}`);
}

function ignore(): void {}

/** Clients being reconnected: each of a hung node's many timed-out commands would otherwise ask again. */
const reconnecting = new WeakSet<RedisClient>();

function reconnect(client: RedisClient): void {
  if (reconnecting.has(client)) return;
  reconnecting.add(client);
  client.once('close', () => reconnecting.delete(client));
  client.disconnect(true);
}

type MutexFactory = (key: string, options: LockOptions, guard: RefreshGuard) => Mutex | RedlockMutex;

class ChatLock implements HeldLock {
  readonly signal: AbortSignal;
  private readonly controller = new AbortController();
  private readonly mutex: Mutex | RedlockMutex;
  private watchdog: NodeJS.Timeout | undefined;
  /** Until when the last confirmed acquire/refresh keeps the lock ours (the watchdog's deadline). */
  private heldUntil = 0;
  private lost = false;
  private released = false;
  private releasing: Promise<void> | undefined;
  /** Why the last refresh could not reach Redis, while refreshes fail; named when the watchdog fires. */
  private refreshFailure: string | undefined;

  constructor(
    readonly resource: string,
    private readonly lockTimeoutMs: number,
    refreshIntervalMs: number,
    factory: MutexFactory,
    private readonly log: Logger | undefined,
    private readonly onOperation: ChatLocksOptions['onOperation'],
  ) {
    this.signal = this.controller.signal;
    this.mutex = factory(
      resource,
      {
        lockTimeout: lockTimeoutMs,
        refreshInterval: refreshIntervalMs,
        // Try once (only a 0 ms timer after a miss): a busy chat is re-delayed by the caller instead.
        acquireAttemptsLimit: 1,
        acquireTimeout: lockTimeoutMs,
        retryInterval: 0,
        // The default throws inside a timer callback; report the loss through the signal instead.
        onLockLost: (error) =>
          this.markLost('the lock was deleted, expired or taken by another holder', error),
      },
      (refresh) => this.guardedRefresh(refresh),
    );
  }

  async acquire(): Promise<boolean> {
    const sentAt = Date.now();
    const acquired = await this.timed('acquire', () => this.mutex.tryAcquire());
    if (acquired) this.armWatchdog(sentAt);
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

  private async doRelease(): Promise<void> {
    this.released = true;
    clearTimeout(this.watchdog);
    try {
      // Deletes the key only while it still holds our identifier (Lua compare-and-delete), so releasing a
      // lost lock never frees someone else's.
      await this.timed('release', () =>
        withTimeout(this.mutex.release(), MAX_RELEASE_WAIT_MS, 'releasing the chat lock'),
      );
    } catch (error) {
      // redis-semaphore stopped refreshing before its first await, so a lock we could not free just expires.
      this.log?.warn(
        { err: error, resource: this.resource },
        'could not release the chat lock; it expires on its own',
      );
    }
  }

  private async guardedRefresh(refresh: Refresh): Promise<boolean> {
    const sentAt = Date.now();
    try {
      const refreshed = await this.timed('refresh', refresh);
      this.refreshFailure = undefined;
      if (refreshed) this.armWatchdog(sentAt);
      return refreshed;
    } catch (error) {
      // The lock node, or a Redlock quorum, is unreachable. Keep the lock for now: the next refresh may get
      // through, and the watchdog declares the lock lost before its TTL can run out.
      this.refreshFailure = error instanceof Error ? error.message : String(error);
      this.log?.warn({ err: error, resource: this.resource }, 'could not refresh the chat lock');
      return true;
    }
  }

  private async timed<T>(operation: LockOperation, run: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      return await run();
    } finally {
      this.onOperation?.(operation, performance.now() - started);
    }
  }

  private armWatchdog(confirmedAt: number): void {
    if (this.lost || this.released) return;
    clearTimeout(this.watchdog);
    this.heldUntil = confirmedAt + this.lockTimeoutMs * WATCHDOG_SHARE;
    this.watchdog = setTimeout(() => this.markLostByClock(), Math.max(0, this.heldUntil - Date.now()));
    // The job holding the lock keeps the process alive, not this timer.
    this.watchdog.unref();
  }

  private markLostByClock(): void {
    const failure = this.refreshFailure === undefined ? '' : ` (${this.refreshFailure})`;
    this.markLost(`not refreshed for ${Math.round(this.lockTimeoutMs * WATCHDOG_SHARE)} ms${failure}`);
  }

  private markLost(reason: string, cause?: unknown): void {
    if (this.lost || this.released) return;
    this.lost = true;
    clearTimeout(this.watchdog);
    this.mutex.stopRefresh();
    // The key is not deleted here: the job has not stopped yet. release() deletes it if it is still ours.
    this.log?.warn({ resource: this.resource, reason }, 'lost the chat lock');
    this.controller.abort(new LockLostError(`lost the lock ${this.resource}: ${reason}`, { cause }));
  }
}

export class ChatLocks {
  private readonly keys: ReturnType<typeof redisKeys>;
  private readonly lockTimeoutMs: number;
  private readonly refreshIntervalMs: number;
  private readonly refreshJitter: number;
  private readonly factory: MutexFactory;
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
        ? (key, lockOptions, guard) => new SingleNodeMutex(first!, key, lockOptions, guard)
        : (key, lockOptions, guard) => new QuorumMutex(clients, key, lockOptions, guard, nodeTimeoutMs);
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
      this.log,
      this.onOperation,
    );
    return (await lock.acquire()) ? lock : null;
  }
}
