// The order in which a chat's jobs take its lock (docs/design.md §5): the chat lock alone lets whichever
// waiting job retries first go next. Each job enters the chat's order set when it is enqueued, before it is
// added to the queue, scored by Redis' clock; a worker takes the chat lock for a job only when no earlier
// job of the chat is still live in the set.
//
// Every script touches one key, so it runs on Redis Cluster too (the prefix carries the hash tag there).
import { redisKeys, type RedisKeys } from './keys.js';
import { LuaScript } from './lua-script.js';
import type { RedisClient } from './redis.js';

/** The set expires this long after the chat's last enqueue: what no job removed (a job deleted by hand) goes. */
export const DEFAULT_ORDER_TTL_MS = 24 * 60 * 60 * 1_000;

/** How long an entry whose job does not exist yet may stay the head: its producer is between enter and add. */
export const DEFAULT_ORDER_GRACE_MS = 30_000;

// ARGV: job id, ttl ms. The score is Redis' TIME in µs (exact in a double until the year 2255), and always
// above the set's last score, so that entries are ordered as Redis ran the scripts even within one µs or if
// the clock steps back (a failover). NX: entering again keeps a job's place.
const ENTER_SCRIPT = new LuaScript(`
local t = redis.call('TIME')
local score = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
if last and tonumber(last) >= score then score = tonumber(last) + 1 end
redis.call('ZADD', KEYS[1], 'NX', string.format('%.0f', score), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return string.format('%.0f', score)`);

// ARGV: job id. Returns the head's id and score, this job's score (nil without an entry), and Redis' TIME in
// µs, so that an entry's age is read on the clock that scored it.
const HEAD_SCRIPT = new LuaScript(`
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local t = redis.call('TIME')
return { head[1] or false, head[2] or false, redis.call('ZSCORE', KEYS[1], ARGV[1]),
  string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])) }`);

/** A BullMQ job state, or `unknown` for a job that does not exist (Queue.getJobState). */
export type JobStateReader = (jobId: string) => Promise<string>;

export interface ChatOrderOptions {
  /** See DEFAULT_ORDER_TTL_MS. */
  ttlMs?: number;
}

export class ChatOrder {
  private readonly keys: RedisKeys;
  private readonly ttlMs: number;

  constructor(
    private readonly redis: RedisClient,
    prefix: string,
    options: ChatOrderOptions = {},
  ) {
    this.keys = redisKeys(prefix);
    this.ttlMs = options.ttlMs ?? DEFAULT_ORDER_TTL_MS;
    if (!Number.isInteger(this.ttlMs) || this.ttlMs < 1) {
      throw new RangeError(`ttlMs must be a positive whole number, got ${this.ttlMs}`);
    }
  }

  /** Enters the job last in its chat's order (refreshing the set's expiry); returns its score (µs). */
  async enter(chatId: string, jobId: string): Promise<number> {
    return Number(await ENTER_SCRIPT.run(this.redis, [this.keys.chatOrder(chatId)], [jobId, this.ttlMs]));
  }

  /** Removes the job's entry (a settled job, a deduplicated or failed add, a stale head). */
  async leave(chatId: string, jobId: string): Promise<void> {
    await this.redis.zrem(this.keys.chatOrder(chatId), jobId);
  }

  /** The chat's first job in its order (one ZRANGE): the one its lock goes to next. */
  async head(chatId: string): Promise<string | undefined> {
    const [first] = await this.redis.zrange(this.keys.chatOrder(chatId), 0, 0);
    return first;
  }

  /** The chat's jobs in their order, first to last (ended ones too, until a head check removes them). */
  async jobs(chatId: string): Promise<string[]> {
    return this.redis.zrange(this.keys.chatOrder(chatId), 0, -1);
  }

  /**
   * The earlier job of the chat this one must wait for, or undefined when it is this job's turn: it is the
   * head, or it has no entry (added by hand or by an older producer: it goes as before, by the lock alone).
   * A head that has ended (completed, failed), or that does not exist and entered longer than `graceMs` ago
   * (removed by hand, or its producer died before adding it), is removed, and the next one looked at.
   */
  async jobAhead(
    chatId: string,
    jobId: string,
    options: { jobState: JobStateReader; graceMs: number },
  ): Promise<string | undefined> {
    const key = this.keys.chatOrder(chatId);
    for (;;) {
      const [head, headScore, mine, now] = (await HEAD_SCRIPT.run(this.redis, [key], [jobId])) as [
        string | null,
        string | null,
        string | null,
        string,
      ];
      if (head === null || head === jobId || mine === null) return undefined;
      const state = await options.jobState(head);
      const ended = state === 'completed' || state === 'failed';
      const ageMs = (Number(now) - Number(headScore)) / 1_000;
      if (!ended && !(state === 'unknown' && ageMs > options.graceMs)) return head;
      await this.leave(chatId, head);
    }
  }
}
