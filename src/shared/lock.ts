// The per-chat distributed lock (CONTRACT.md section 5): a thin wrapper over redis-semaphore 5.8.
//
// What redis-semaphore does by itself (read from its lib/, version 5.8.0), and what this file adds:
// - Key: it writes `mutex:<key>`. The contract names the key `<prefix>:lock:chat:<chatId>` (and keeping it
//   under the prefix keeps Redis Cluster hash tags and prefix-wide cleanup working), so the subclasses below
//   overwrite the protected `_key` with the bare resource name.
// - tryAcquire: a loop of `SET key id PX ttl NX` bounded by acquireTimeout/acquireAttemptsLimit, sleeping
//   retryInterval after every miss. One attempt with retryInterval 0 = "try once": the library still
//   awaits a 0 ms timer after the miss, so a refusal costs about 1 ms (bench/lock.ts), not a real wait.
//   Mutex: a connection error rejects. RedlockMutex: an unreachable node counts as a "no" (errors are
//   swallowed per node), so a majority of unreachable nodes looks like "held by someone else" (null here).
// - Refresh: an unref'd setInterval runs a Lua "PEXPIRE if the value is still ours". A refresh that answers
//   "not ours" (key deleted, expired or taken) calls onLockLost with a LostLockError and stops refreshing.
//   RedlockMutex counts an unreachable node as a failed refresh; without a quorum it deletes its keys on
//   every node at once and reports the loss. But a Mutex refresh that cannot reach Redis *rejects*, and the
//   interval callback leaves that rejection unhandled (Node's default then kills the process) while the
//   key silently expires: loss is never reported. Hence the refresh guard and the watchdog below.
import { Mutex, RedlockMutex, type LockOptions } from 'redis-semaphore';
import { withTimeout } from './errors.js';
import { redisKeys } from './keys.js';
import type { Logger } from './logger.js';
import type { RedisClient } from './redis.js';

export class LockLostError extends Error {
  override name = 'LockLostError';
}

export interface ChatLocksOptions {
  /** Lock TTL in ms, refreshed while held. Default 30000. */
  lockTimeoutMs?: number;
  /** How often the TTL is refreshed. Default lockTimeoutMs / 3. */
  refreshIntervalMs?: number;
  log?: Logger;
}

export interface HeldLock {
  readonly resource: string;
  /** Aborted, with a LockLostError as reason, when the lock is lost (refresh failed / expired / taken). */
  readonly signal: AbortSignal;
  /** Releases (idempotent, never throws; logs a failure). Stops refreshing. */
  release(): Promise<void>;
}

/**
 * Without a confirmed refresh, the holder gives the lock up after this share of the TTL, counted from when the
 * last successful acquire/refresh was *sent* (Redis set the expiry no earlier than that). The rest of the TTL
 * is the margin for clock drift and for the job to react to the abort before another worker can get in.
 */
const WATCHDOG_SHARE = 0.9;
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
  ) {
    super(clients, key, options);
    this._key = key;
  }

  protected override _refresh(): Promise<boolean> {
    return this.guard(() => super._refresh());
  }
}

type MutexFactory = (key: string, options: LockOptions, guard: RefreshGuard) => Mutex | RedlockMutex;

class ChatLock implements HeldLock {
  readonly signal: AbortSignal;
  private readonly controller = new AbortController();
  private readonly mutex: Mutex | RedlockMutex;
  private watchdog: NodeJS.Timeout | undefined;
  private lost = false;
  private released = false;
  private releasing: Promise<void> | undefined;

  constructor(
    readonly resource: string,
    private readonly lockTimeoutMs: number,
    refreshIntervalMs: number,
    factory: MutexFactory,
    private readonly log: Logger | undefined,
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
    const acquired = await this.mutex.tryAcquire();
    if (acquired) this.armWatchdog(sentAt);
    return acquired;
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
      await withTimeout(this.mutex.release(), MAX_RELEASE_WAIT_MS, 'releasing the chat lock');
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
      const refreshed = await refresh();
      if (refreshed) this.armWatchdog(sentAt);
      return refreshed;
    } catch (error) {
      // Redis unreachable (single node only; Redlock swallows these). Keep the lock for now: the next
      // refresh may get through, and the watchdog declares the lock lost before its TTL can run out.
      this.log?.warn({ err: error, resource: this.resource }, 'could not refresh the chat lock');
      return true;
    }
  }

  private armWatchdog(confirmedAt: number): void {
    if (this.lost || this.released) return;
    clearTimeout(this.watchdog);
    const delay = confirmedAt + this.lockTimeoutMs * WATCHDOG_SHARE - Date.now();
    this.watchdog = setTimeout(
      () => this.markLost(`not refreshed for ${Math.round(this.lockTimeoutMs * WATCHDOG_SHARE)} ms`),
      Math.max(0, delay),
    );
    // The job holding the lock keeps the process alive, not this timer.
    this.watchdog.unref();
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
  private readonly factory: MutexFactory;
  private readonly log: Logger | undefined;

  /** One client → redis-semaphore Mutex; 3+ independent clients → RedlockMutex (quorum). 2 clients: throw. */
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
    this.keys = redisKeys(prefix);
    this.log = options.log;
    const [first] = clients;
    this.factory =
      clients.length === 1
        ? (key, lockOptions, guard) => new SingleNodeMutex(first!, key, lockOptions, guard)
        : (key, lockOptions, guard) => new QuorumMutex(clients, key, lockOptions, guard);
  }

  /** Tries once, without waiting: a HeldLock, or null when someone else holds it. Resource = redisKeys(prefix).chatLock(chatId). */
  async tryAcquire(chatId: string): Promise<HeldLock | null> {
    const lock = new ChatLock(
      this.keys.chatLock(chatId),
      this.lockTimeoutMs,
      this.refreshIntervalMs,
      this.factory,
      this.log,
    );
    return (await lock.acquire()) ? lock : null;
  }
}
