// Keeps every chat lock of one ChatLocks (one process) alive with one command per lock node per tick, for
// all the locks due, instead of one command per lock and refresh (redis-semaphore's own refresh: 562
// commands/s and most of a worker's idle CPU at 1,000 waiting jobs, bench/waiters.ts).
//
// Each lock keeps its own (jittered) interval and is refreshed at the latest when it is due: a tick sends
// the locks due by then plus those due within BATCH_SHARE of the interval after it was meant to run (a
// little early), so that locks due close together share one command. The next tick is at the next lock due, so ticks are at
// least that window apart and each carries about its share of the locks (their phases spread by the
// jitter and kept through late ticks), not a burst. The same one timer is every held lock's watchdog: at the earliest `heldUntil` it
// reports the lock lost by the clock. The timer is unref'd (the jobs holding locks keep the process alive)
// and stopped while no lock is held.
//
// Per lock, per node answer, the vote is the one every other step takes (lock-vote.ts): a quorum of "ours"
// confirms it, as of when the batch was sent (a node that answered "not ours" is written to again, as it
// is by an acquire); enough "not ours" loses it; too few nodes reached (a refused, failed or timed-out
// command) keeps it until its watchdog, in case the nodes come back. On a Redis Cluster one script's keys
// must be in one slot: every chat lock key is under the prefix, whose hash tag REDIS_CLUSTER requires.
import type { LockOperation } from './lock.js';
import { countBatchVotes, describeVote, type Vote } from './lock-vote.js';
import type { Logger } from './logger.js';
import { LuaScript } from './lua-script.js';
import type { RedisClient } from './redis.js';

/**
 * A script that runs `action` (Lua, on `key`) on each key still holding its token, ARGV[i] KEYS[i]'s; ARGV
 * after the tokens are the action's. It answers 1 (ours, done) or 0 (not ours) per key.
 */
export function eachKeyStillOurs(action: string): LuaScript {
  return new LuaScript(`
local answers = {}
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then
    ${action}
    answers[i] = 1
  else
    answers[i] = 0
  end
end
return answers
`);
}

/** PEXPIRE each key still ours by the TTL after the tokens. */
const refreshEach = eachKeyStillOurs("redis.call('pexpire', key, ARGV[#KEYS + 1])");

/**
 * A lock is refreshed up to this share of the refresh interval before it is due, with the others due by
 * then: ticks are at least that far apart (50 ms, at most 20 a second, for the default 2 s interval). Half
 * of bench/waiters.ts's 100 ms buckets, so that one late tick and the next on time do not put two ticks'
 * worth in one bucket.
 */
export const BATCH_SHARE = 0.025;
/** Keys per script: Redis runs one script at a time, so a tick of thousands of locks goes in chunks. */
export const MAX_KEYS_PER_COMMAND = 1_000;

/** What the refresher needs of a held lock, and how it tells the lock each outcome. */
export interface RefreshedLock {
  readonly resource: string;
  readonly identifier: string;
  /** This lock's own interval: it is refreshed at the latest this long after its last refresh was sent. */
  readonly refreshIntervalMs: number;
  /** The watchdog's deadline (epoch ms): past it, with no confirmed refresh, the lock is lost by the clock. */
  readonly heldUntil: number;
  /** A quorum (the one node) still held it when the batch was sent at `sentAt` (epoch ms). */
  onRefreshed(sentAt: number): void;
  /** Deleted, expired or taken by another holder. */
  onNotOurs(): void;
  /** Too few nodes could be reached: `reason` names why. */
  onUnreachable(reason: string): void;
  /** Its heldUntil passed. */
  onWatchdog(): void;
}

export interface LockRefresherOptions {
  clients: RedisClient[];
  lockTimeoutMs: number;
  refreshIntervalMs: number;
  /** How long a node may take to answer a batch before it counts as unreachable for every lock in it. */
  nodeTimeoutMs: number;
  /** Redlock: a node's command failed (lock.ts reconnects a hung node's client). */
  onNodeError?: (client: RedisClient, error: unknown) => void;
  onOperation?: (operation: LockOperation, ms: number) => void;
  log?: Logger;
}

interface Schedule {
  dueAt: number;
  /** Sent, its vote not decided yet: not sent again meanwhile. */
  inFlight: boolean;
}

export class LockRefresher {
  private readonly held = new Map<RefreshedLock, Schedule>();
  private timer: NodeJS.Timeout | undefined;
  /** When the timer fires (epoch ms). */
  private wakeAt = Infinity;
  private readonly batchWindowMs: number;

  constructor(private readonly options: LockRefresherOptions) {
    this.batchWindowMs = options.refreshIntervalMs * BATCH_SHARE;
  }

  /** Refreshes `lock` from now on, the first time `refreshIntervalMs` after `sentAt` (its acquire). */
  add(lock: RefreshedLock, sentAt: number): void {
    const dueAt = sentAt + lock.refreshIntervalMs;
    this.held.set(lock, { dueAt, inFlight: false });
    this.wakeBy(Math.min(dueAt, lock.heldUntil));
  }

  /** Stops refreshing `lock` (released or lost); the timer stops with the last one. */
  remove(lock: RefreshedLock): void {
    this.held.delete(lock);
    if (this.held.size === 0) this.stop();
  }

  private stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.wakeAt = Infinity;
  }

  private wakeBy(at: number): void {
    if (at >= this.wakeAt) return;
    clearTimeout(this.timer);
    this.wakeAt = at;
    this.timer = setTimeout(() => this.tick(), Math.max(0, at - Date.now()));
    // The jobs holding the locks keep the process alive, not this timer.
    this.timer.unref();
  }

  private tick(): void {
    const now = Date.now();
    // A late tick (a busy event loop) sends what is overdue, but no more early ones than it would have on
    // time: otherwise every moment it was late would add to its batch, on top of the window.
    const horizon = Math.max(now, this.wakeAt + this.batchWindowMs);
    this.timer = undefined;
    this.wakeAt = Infinity;
    const due: RefreshedLock[] = [];
    let next = Infinity;
    for (const [lock, schedule] of this.held) {
      if (now >= lock.heldUntil) {
        this.held.delete(lock);
        lock.onWatchdog();
        continue;
      }
      if (!schedule.inFlight && schedule.dueAt <= horizon) {
        due.push(lock);
        schedule.inFlight = true;
        // From when it was due, or sent if sooner: a late tick (a busy event loop) does not move the lock's
        // phase onto everyone else's, and the next refresh is never more than an interval after this one.
        schedule.dueAt = Math.min(schedule.dueAt, now) + lock.refreshIntervalMs;
      }
      next = Math.min(next, lock.heldUntil, schedule.inFlight ? Infinity : schedule.dueAt);
    }
    for (let start = 0; start < due.length; start += MAX_KEYS_PER_COMMAND) {
      void this.refresh(due.slice(start, start + MAX_KEYS_PER_COMMAND), now);
    }
    if (this.held.size > 0) this.wakeBy(next);
  }

  /** One script per node for `locks`, then each lock's vote. */
  private async refresh(locks: RefreshedLock[], sentAt: number): Promise<void> {
    const { clients, lockTimeoutMs, nodeTimeoutMs, onNodeError } = this.options;
    const keys = locks.map((lock) => lock.resource);
    const args = [...locks.map((lock) => lock.identifier), lockTimeoutMs];
    const started = performance.now();
    let cause: string | undefined;
    const answers = clients.map((client) =>
      refreshEach.run(client, keys, args).then(
        (result) => (result as (number | string)[]).map((answer) => +answer === 1),
        (error: unknown) => {
          cause ??= error instanceof Error ? error.message : String(error);
          onNodeError?.(client, error);
          throw error;
        },
      ),
    );
    const votes = new Array<Vote>(locks.length);
    let unreachable = 0;
    let reason: string | undefined;
    await countBatchVotes(answers, locks.length, nodeTimeoutMs, (i, vote) => {
      votes[i] = vote;
      const lock = locks[i]!;
      this.options.onOperation?.('refresh', performance.now() - started);
      const schedule = this.held.get(lock);
      if (!schedule) return; // released (or lost) meanwhile
      schedule.inFlight = false;
      if (vote.won) lock.onRefreshed(sentAt);
      else if (!vote.quorumUnavailable) lock.onNotOurs();
      else {
        unreachable++;
        reason ??= this.unreachableReason(vote, cause);
        lock.onUnreachable(reason);
      }
      if (this.held.has(lock)) this.wakeBy(Math.min(schedule.dueAt, lock.heldUntil));
    });
    if (unreachable > 0) {
      this.options.log?.warn(
        { locks: unreachable, reason },
        'could not refresh chat locks; keeping them until their watchdog',
      );
    }
    if (clients.length > 1) this.retake(locks, votes, answers);
  }

  /** A node that lost a key of a lock the quorum kept (restarted empty, or down at acquire) holds it again. */
  private retake(locks: RefreshedLock[], votes: Vote[], answers: Promise<boolean[]>[]): void {
    answers.forEach((answer, node) => {
      answer.then((ours) => {
        locks.forEach((lock, i) => {
          if (ours[i] || !votes[i]?.won || !this.held.has(lock)) return;
          takeLock(
            this.options.clients[node]!,
            lock.resource,
            lock.identifier,
            this.options.lockTimeoutMs,
          ).catch(ignore);
        });
      }, ignore);
    });
  }

  private unreachableReason(vote: Vote, cause: string | undefined): string {
    if (vote.nodes > 1) return `lock quorum unavailable: ${describeVote(vote)}`;
    return `the lock node is unreachable: ${cause ?? `no answer within ${this.options.nodeTimeoutMs} ms`}`;
  }
}

/** Takes the lock on one node if nobody holds it there: the acquire's step, and the retake after a refresh. */
export function takeLock(
  client: Pick<RedisClient, 'set'>,
  key: string,
  identifier: string,
  ttlMs: number,
): Promise<boolean> {
  return client.set(key, identifier, 'PX', ttlMs, 'NX').then((result) => result === 'OK');
}

function ignore(): void {}
