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
// What a tick costs is O(1) per lock it sends or loses, never a walk over every held lock (at 10,000 held and
// 20 ticks a second that walk was 200,000 visits a second, half of a waiting worker's idle CPU; a heap's
// O(log n) cost as much, in cache misses). A lock waiting for its next refresh is in the bucket of the window
// its next look falls in (its refresh due, or its watchdog if that comes first); a tick takes the buckets up
// to its horizon, and the next tick's time is the next bucket's earliest, kept as locks go in (finding it by a
// look at that bucket's locks looked at each of them twice a refresh). A lock whose refresh is in flight, or
// whose watchdog comes before its next refresh, is in the watched list, which each tick looks through for the
// watchdog: about one batch. Nodes answer with the locks that were not theirs only, so a batch whose locks
// all are costs one empty reply to read.
//
// Per lock, per node answer, the vote is the one every other step takes (lock-vote.ts): a quorum of "ours"
// confirms it, as of when the batch was sent (a node that answered "not ours" is written to again, as it
// is by an acquire); enough "not ours" loses it; too few nodes reached (a refused, failed or timed-out
// command) keeps it until its watchdog, in case the nodes come back. On a Redis Cluster one script's keys
// must be in one slot: every chat lock key is under the prefix, whose hash tag REDIS_CLUSTER requires.
import type { LockOperation } from './lock.js';
import { askNodes, countBatchVotes, unreachableReason, type Vote } from './lock-vote.js';
import type { Logger } from './logger.js';
import { LuaScript } from './lua-script.js';
import type { RedisClient } from './redis.js';

/**
 * A script that runs `action` (Lua, on `key`) on each key still holding its token, ARGV[i] KEYS[i]'s; ARGV
 * after the tokens are the action's. It answers the 0-based indexes of the keys that were not ours (deleted,
 * expired or another holder's): usually none, so a batch of thousands reads one empty reply.
 */
export function eachKeyStillOurs(action: string): LuaScript {
  return new LuaScript(`
local notOurs = {}
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then
    ${action}
  else
    notOurs[#notOurs + 1] = i - 1
  end
end
return notOurs
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

class Schedule {
  /** When its next refresh is due. */
  dueAt: number;
  /**
   * In a bucket, waiting for its next refresh; in flight (sent, its vote not decided yet: not sent again
   * meanwhile); expiring (its watchdog comes before its next refresh); or removed (released or lost). An
   * in-flight or expiring lock is in the watched list. A removed one left in a bucket or the list is skipped.
   */
  state: 'waiting' | 'inFlight' | 'expiring' | 'removed' = 'waiting';

  constructor(
    readonly lock: RefreshedLock,
    dueAt: number,
  ) {
    this.dueAt = dueAt;
  }

  get removed(): boolean {
    return this.state === 'removed';
  }

  /** When a tick must look at it: its refresh due, or its watchdog's deadline if that comes first. */
  get nextAt(): number {
    return Math.min(this.dueAt, this.lock.heldUntil);
  }
}

/** The waiting locks of one window, and the earliest nextAt put in (the next tick's time, without a look at them). */
class Bucket {
  readonly schedules: Schedule[] = [];
  /** At or before the first waiting one's nextAt: a lock removed since may have been it. */
  earliest = Infinity;

  add(schedule: Schedule): void {
    this.schedules.push(schedule);
    this.earliest = Math.min(this.earliest, schedule.nextAt);
  }
}

export class LockRefresher {
  private readonly held = new Map<RefreshedLock, Schedule>();
  /** The waiting locks by window: bucket i holds those whose nextAt is in [i × window, (i + 1) × window). */
  private buckets = new Map<number, Bucket>();
  /** The first bucket the next tick takes: a lock whose nextAt is earlier goes in it. */
  private cursor = 0;
  /** The last bucket a lock was put in. */
  private lastBucket = 0;
  /** The locks whose watchdog each tick checks: in flight or expiring. */
  private watched: Schedule[] = [];
  private timer: NodeJS.Timeout | undefined;
  /** When the timer fires (epoch ms). */
  private wakeAt = Infinity;
  private readonly batchWindowMs: number;

  constructor(private readonly options: LockRefresherOptions) {
    this.batchWindowMs = options.refreshIntervalMs * BATCH_SHARE;
  }

  /** Refreshes `lock` from now on, the first time `refreshIntervalMs` after `sentAt` (its acquire). */
  add(lock: RefreshedLock, sentAt: number): void {
    if (this.held.size === 0) this.cursor = this.lastBucket = this.bucketOf(Date.now());
    const schedule = new Schedule(lock, sentAt + lock.refreshIntervalMs);
    this.held.set(lock, schedule);
    this.wait(schedule);
  }

  /** Stops refreshing `lock` (released or lost); the timer stops with the last one. */
  remove(lock: RefreshedLock): void {
    const schedule = this.held.get(lock);
    if (!schedule) return;
    schedule.state = 'removed';
    this.held.delete(lock);
    if (this.held.size === 0) this.stop();
  }

  private stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.wakeAt = Infinity;
    this.buckets = new Map();
    this.watched = [];
  }

  private bucketOf(at: number): number {
    return Math.floor(at / this.batchWindowMs);
  }

  /** Puts `schedule` in the bucket of its nextAt (the next tick's, when that has passed). */
  private wait(schedule: Schedule): void {
    schedule.state = 'waiting';
    const at = schedule.nextAt;
    const index = Math.max(this.bucketOf(at), this.cursor);
    let bucket = this.buckets.get(index);
    if (!bucket) this.buckets.set(index, (bucket = new Bucket()));
    bucket.add(schedule);
    this.lastBucket = Math.max(this.lastBucket, index);
    this.wakeBy(at);
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
    const batch: Schedule[] = [];
    let next = Infinity;
    /** Looks at a lock now: lost by the clock, sent, expiring or, when neither is due yet, false. */
    const look = (schedule: Schedule): boolean => {
      const { lock } = schedule;
      if (now >= lock.heldUntil) {
        this.remove(lock);
        lock.onWatchdog();
      } else if (schedule.state !== 'inFlight' && schedule.dueAt <= horizon) {
        schedule.state = 'inFlight';
        // From when it was due, or sent if sooner: a late tick (a busy event loop) does not move the lock's
        // phase onto everyone else's, and the next refresh is never more than an interval after this one.
        schedule.dueAt = Math.min(schedule.dueAt, now) + lock.refreshIntervalMs;
        batch.push(schedule);
        if (batch.length === MAX_KEYS_PER_COMMAND) void this.refresh(batch.splice(0), now);
        this.watched.push(schedule);
        next = Math.min(next, lock.heldUntil);
      } else if (schedule.state === 'inFlight' || lock.heldUntil <= horizon) {
        if (schedule.state === 'waiting') schedule.state = 'expiring';
        this.watched.push(schedule);
        next = Math.min(next, lock.heldUntil);
      } else return false;
      return true;
    };
    // The watched list first: each tick rebuilds it, so no lock is in it twice.
    const watched = this.watched;
    this.watched = [];
    for (const schedule of watched) {
      const { state } = schedule;
      if ((state === 'inFlight' || state === 'expiring') && !look(schedule)) this.wait(schedule);
    }
    // At least the cursor's bucket: a tick earlier than it (an in-flight lock's heldUntil) must still look at
    // what wait() put there, or a lock refused at once would be neither sent nor watched until it was late.
    const last = Math.max(this.bucketOf(horizon), this.cursor);
    const later = new Bucket();
    for (; this.cursor <= last; this.cursor++) {
      const bucket = this.buckets.get(this.cursor);
      if (!bucket) continue;
      this.buckets.delete(this.cursor);
      for (const schedule of bucket.schedules) {
        if (schedule.state === 'waiting' && !look(schedule)) later.add(schedule);
      }
    }
    // What the horizon's own bucket holds beyond the horizon stays in it, for the next tick.
    if (later.schedules.length > 0) {
      this.cursor = last;
      this.buckets.set(last, later);
      next = Math.min(next, later.earliest);
    } else {
      // The next tick at the first lock due (not at its bucket's start: no lock is sent earlier than the
      // window asks), from the first bucket's earliest: its locks are looked at once, when it is taken.
      for (let index = this.cursor; index <= this.lastBucket; index++) {
        const bucket = this.buckets.get(index);
        if (bucket) {
          next = Math.min(next, bucket.earliest);
          break;
        }
      }
    }
    if (batch.length > 0) void this.refresh(batch, now);
    if (this.held.size > 0) this.wakeBy(next);
  }

  /** One script per node for `batch`, then each lock's vote. */
  private async refresh(batch: Schedule[], sentAt: number): Promise<void> {
    const { clients, lockTimeoutMs, nodeTimeoutMs, onNodeError } = this.options;
    // Pushed, not preallocated: a holey array takes ioredis' flattening of the arguments down a slow path.
    const keys: string[] = [];
    const args: (string | number)[] = [];
    for (const { lock } of batch) {
      keys.push(lock.resource);
      args.push(lock.identifier);
    }
    args.push(lockTimeoutMs);
    const started = performance.now();
    const { answers, cause } = askNodes(
      clients,
      async (client) => (await refreshEach.run(client, keys, args)) as number[],
      onNodeError,
    );
    const votes = new Array<Vote>(batch.length);
    let unreachable = 0;
    let reason: string | undefined;
    await countBatchVotes(answers, batch.length, nodeTimeoutMs, (i, vote) => {
      votes[i] = vote;
      const schedule = batch[i]!;
      const { lock } = schedule;
      this.options.onOperation?.('refresh', performance.now() - started);
      if (schedule.removed) return; // released (or lost) meanwhile
      if (vote.won) lock.onRefreshed(sentAt);
      else if (!vote.quorumUnavailable) lock.onNotOurs();
      else {
        unreachable++;
        reason ??= unreachableReason(vote, cause() ?? `no answer within ${this.options.nodeTimeoutMs} ms`);
        lock.onUnreachable(reason);
      }
      // Lost now, or else waiting for its next refresh (the watched list drops it at the next tick).
      if (!schedule.removed) this.wait(schedule);
    });
    if (unreachable > 0) {
      this.options.log?.warn(
        { locks: unreachable, reason },
        'could not refresh chat locks; keeping them until their watchdog',
      );
    }
    if (clients.length > 1) this.retake(batch, votes, answers);
  }

  /** A node that lost a key of a lock the quorum kept (restarted empty, or down at acquire) holds it again. */
  private retake(batch: Schedule[], votes: Vote[], answers: Promise<number[]>[]): void {
    answers.forEach((answer, node) => {
      answer.then((notOurs) => {
        for (const i of notOurs) {
          const { lock, removed } = batch[i]!;
          if (!votes[i]?.won || removed) continue;
          takeLock(
            this.options.clients[node]!,
            lock.resource,
            lock.identifier,
            this.options.lockTimeoutMs,
          ).catch(ignore);
        }
      }, ignore);
    });
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
