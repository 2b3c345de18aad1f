// Job events (docs/design.md §6): every event is appended to the chat's capped replay stream, whose entry
// id becomes the event's `seq`, and then published on the chat's (and the workspace's) pub/sub channel.
// Pub/sub alone is at-most-once; the stream lets a subscriber that is late, or was disconnected, catch up.
import type { EventDraft, WorkspaceJobEvent } from './contract.js';
import { redisKeys, type RedisKeys } from './keys.js';
import { LuaScript } from './lua-script.js';
import type { Logger } from './logger.js';
import { followSubscriber, unsubscribe, type RedisClient } from './redis.js';
import { workspaceJobEventSchema } from '../jobs/contract-schemas.js';
import { ValidationError, describeIssues } from './schemas.js';

/** The stream entry's only field: the envelope as JSON, without `seq` (that is the entry id). */
const EVENT_FIELD = 'event';
/** XRANGE page size for replays. */
const PAGE_SIZE = 500;

// ---------------------------------------------------------------------------------------------------
// Stream ids (`ms-n`, both parts unsigned 64-bit), compared as numbers, never as strings.

const STREAM_ID = /^(\d+)(?:-(\d+))?$/;
const MAX_U64 = (1n << 64n) - 1n;
const MAX_U64_DIGITS = MAX_U64.toString();

/**
 * The two parts of a stream id as digit strings without leading zeros, or what is wrong with it. A bare `ms`
 * means `ms-0`, as for XRANGE's start. Digit strings, not BigInts: compareSeq runs for every client of a chat
 * on every event (issue 11: 1,000 SSE clients on one chat), and comparing them needs no allocation.
 */
function readStreamId(id: string): [string, string] | string {
  const match = STREAM_ID.exec(id);
  if (!match) return 'expected a stream id like 1732190000000-0';
  const parts: [string, string] = [withoutLeadingZeros(match[1]!), withoutLeadingZeros(match[2] ?? '0')];
  return compareDigits(parts[0], MAX_U64_DIGITS) > 0 || compareDigits(parts[1], MAX_U64_DIGITS) > 0
    ? `each part of a stream id is at most ${MAX_U64} (64 bits)`
    : parts;
}

function withoutLeadingZeros(digits: string): string {
  let first = 0;
  while (first < digits.length - 1 && digits[first] === '0') first++;
  return first === 0 ? digits : digits.slice(first);
}

/** Orders two whole numbers written without leading zeros. */
function compareDigits(a: string, b: string): number {
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a === b ? 0 : a < b ? -1 : 1;
}

/** What is wrong with `id` as an event seq (a stream id), or undefined when it is one. */
export function streamIdProblem(id: string): string | undefined {
  const parsed = readStreamId(id);
  return typeof parsed === 'string' ? parsed : undefined;
}

/**
 * The last two ids parsed: a live event's seq is compared once or more per subscription of its chat, against
 * the previous event's (1,000 SSE clients on one chat: thousands of parses of the same two ids per event).
 */
const lastParsed: [id: string, parts: readonly [string, string]][] = [];

function parseStreamId(id: string): readonly [string, string] {
  for (const [seen, parts] of lastParsed) if (seen === id) return parts;
  const parsed = readStreamId(id);
  if (typeof parsed === 'string') {
    throw new ValidationError(`invalid event seq ${JSON.stringify(id)}: ${parsed}`);
  }
  lastParsed.unshift([id, parsed]);
  lastParsed.length = Math.min(lastParsed.length, 2);
  return parsed;
}

/** Orders two event seqs (stream ids): negative when a comes first, 0 when equal, positive when a comes later. */
export function compareSeq(a: string, b: string): number {
  if (a === b) {
    parseStreamId(a);
    return 0;
  }
  const [am, an] = parseStreamId(a);
  const [bm, bn] = parseStreamId(b);
  return compareDigits(am, bm) || compareDigits(an, bn);
}

function maxSeq(a: string | undefined, b: string): string {
  return a === undefined || compareSeq(b, a) > 0 ? b : a;
}

/**
 * XRANGE's inclusive start for "after `id`": the next possible id (works on Redis 5, unlike `(id`);
 * undefined after the largest id, which nothing can follow.
 */
function startAfter(id: string): string | undefined {
  const [ms, n] = parseStreamId(id).map(BigInt) as [bigint, bigint];
  if (ms === 0n && n === 0n) return '-';
  if (n < MAX_U64) return `${ms}-${n + 1n}`;
  return ms < MAX_U64 ? `${ms + 1n}-0` : undefined;
}

// ---------------------------------------------------------------------------------------------------
// Reading the replay stream

function decodeEntry(id: string, fields: string[], log: Logger | undefined): WorkspaceJobEvent | undefined {
  const index = fields.indexOf(EVENT_FIELD);
  const raw = index >= 0 && index % 2 === 0 ? fields[index + 1] : undefined;
  let body: unknown;
  try {
    body = raw === undefined ? undefined : JSON.parse(raw);
  } catch {
    body = undefined;
  }
  const parsed = workspaceJobEventSchema.safeParse(
    body !== null && typeof body === 'object' ? { ...body, seq: id } : undefined,
  );
  if (!parsed.success) {
    log?.warn(
      { seq: id, issues: parsed.error.issues },
      'skipping a replay stream entry that is not an event',
    );
    return undefined;
  }
  return parsed.data;
}

interface Page {
  events: WorkspaceJobEvent[];
  /** Id of the last entry read (valid or not): where the next page starts. */
  lastId: string | undefined;
  entries: number;
}

async function readPage(
  redis: RedisClient,
  key: string,
  after: string,
  count: number,
  log: Logger | undefined,
): Promise<Page> {
  const start = startAfter(after);
  if (start === undefined) return { events: [], lastId: undefined, entries: 0 };
  const entries = await redis.xrange(key, start, '+', 'COUNT', count);
  const events: WorkspaceJobEvent[] = [];
  for (const [id, fields] of entries) {
    const event = decodeEntry(id, fields, log);
    if (event) events.push(event);
  }
  return { events, lastId: entries.at(-1)?.[0], entries: entries.length };
}

/**
 * Replay: events after `since` (exclusive; '0' = everything retained), oldest first. With `count`, at most
 * that many entries are read (entries that are not valid events are skipped and logged).
 */
export async function readChatEvents(
  redis: RedisClient,
  prefix: string,
  chatId: string,
  since: string,
  count?: number,
  log?: Logger,
): Promise<WorkspaceJobEvent[]> {
  parseStreamId(since);
  const key = redisKeys(prefix).chatLog(chatId);
  if (count !== undefined) return (await readPage(redis, key, since, count, log)).events;
  const events: WorkspaceJobEvent[] = [];
  let after = since;
  for (;;) {
    const page = await readPage(redis, key, after, PAGE_SIZE, log);
    events.push(...page.events);
    if (page.entries < PAGE_SIZE || page.lastId === undefined) return events;
    after = page.lastId;
  }
}

// ---------------------------------------------------------------------------------------------------
// Publishing

export interface EventPublisherOptions {
  /** About how many entries the replay stream keeps (XADD MAXLEN ~). Default 1000. */
  maxLen?: number;
  /** The stream expires this long after its last write; also the life of a result marker. Default 86400. */
  ttlSeconds?: number;
  /**
   * Checks every envelope against the contract's schema before writing it (a ValidationError naming the bad
   * fields). Default true. The worker turns it off on its hot path: its events are built by its own typed code,
   * whose types the schemas are checked to agree with (contract-schemas.ts), and subscribers still drop an
   * envelope that does not validate (about 4 % of the worker's CPU at a hundred starts a second).
   */
  validate?: boolean;
  log?: Logger;
}

// KEYS: the chat's stream; the job's once-marker (result or queued; the stream again for other events); the
// job's BullMQ lock (the stream again when unchecked); the job's watcher set; the job's BullMQ hash and its
// log list (the stream again when nothing is recorded); the job's BullMQ deduplication key and its chat's
// order (the stream again when it does not leave them); each watcher chat's stream. All share the prefix, so
// one hash tag keeps them in one Redis Cluster slot. ARGV: once ('' | 'queued' | 'result'), ttl seconds,
// maxlen, the job's lock token ('' = unchecked), the workspace channel ('' = none), the envelope without v and
// seq (for splicing), the chat's channel, the number of watchers, the job's progress ('' = not recorded), its
// log entry ('' = none), its keepLogs ('' = unbounded), the id of the job leaving ('' = none), '1' when it
// has a deduplication key, then per watcher its chat id, its envelope and its channel.
// A job that leaves (its result) frees its deduplication id (while the key still names it) and its place in
// its chat's order right after the owner check, before its result goes out or is found out already: one
// command instead of three, and an attempt that lost its job frees nothing the job's new owner holds.
// The caller names the watchers it knows of (none at first): when the set differs, the script writes nothing
// else (leaving is idempotent) and returns the set's members, to be called again with them, as the watchers'
// streams must be in KEYS. The owner, the marker and the watchers are checked first, and every stream written
// before the marker is set and anything is published: scripts do not roll back. The marker keeps the published envelope, so that a re-run
// can end the job with that same result; a result also ends the watcher set (a chat that joins later gets a
// copy of the result, announceDeduplicated). The job's progress and log entry go with the event, under the
// same owner check: an attempt that lost its job can no more overwrite the progress than publish (what BullMQ's
// own updateProgress and log do not check), and it is one round trip, not three.
const PUBLISH_SCRIPT = new LuaScript(`
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then return 0 end
if ARGV[12] ~= '' then
  if ARGV[13] == '1' and redis.call('GET', KEYS[7]) == ARGV[12] then redis.call('DEL', KEYS[7]) end
  redis.call('ZREM', KEYS[8], ARGV[12])
end
if ARGV[1] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then return false end
local n = tonumber(ARGV[8])
local watchers = redis.call('SMEMBERS', KEYS[4])
if #watchers ~= n then return watchers end
for i = 1, n do
  if redis.call('SISMEMBER', KEYS[4], ARGV[11 + 3 * i]) == 0 then return watchers end
end
local function append(key, tail)
  local id = redis.call('XADD', key, 'MAXLEN', '~', ARGV[3], '*', '${EVENT_FIELD}', '{"v":1,' .. string.sub(tail, 2))
  redis.call('EXPIRE', key, ARGV[2])
  return id, '{"v":1,"seq":"' .. id .. '",' .. string.sub(tail, 2)
end
local id, message = append(KEYS[1], ARGV[6])
local copies = {}
for i = 1, n do
  local _, copy = append(KEYS[8 + i], ARGV[12 + 3 * i])
  copies[i] = copy
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[2], message, 'EX', ARGV[2]) end
if ARGV[1] == 'result' then redis.call('DEL', KEYS[4]) end
if ARGV[9] ~= '' and redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('HSET', KEYS[5], 'progress', ARGV[9])
  if ARGV[10] ~= '' then
    redis.call('RPUSH', KEYS[6], ARGV[10])
    if ARGV[11] ~= '' then redis.call('LTRIM', KEYS[6], -tonumber(ARGV[11]), -1) end
  end
end
redis.call('PUBLISH', ARGV[7], message)
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], message) end
for i = 1, n do redis.call('PUBLISH', ARGV[13 + 3 * i], copies[i]) end
return id`);

// KEYS: the job's BullMQ hash, its lock. ARGV: the lock token ('' = unchecked), the progress. 0 when the token
// no longer holds the lock, -1 when the job is gone.
const RECORD_PROGRESS_SCRIPT = new LuaScript(`
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
return 1`);

// KEYS: the deduplicated chat's stream, the job's announced set, its watcher set, its result marker. ARGV: the
// chat id, the announcement without v and seq, the chat's channel, the workspace channel ('' = none), '1' when
// the chat is not the job's own (a watcher), ttl seconds, maxlen, the announcement's set member (chat and
// differing fields).
// Only a chat's first announcement of a job with those differing fields is written (and published): a storm
// of duplicates cannot push the job's events out of the capped stream. On a watcher's first, it joins the set,
// or, when the job's result is already out (the set ended with it), gets that result at once: its envelope
// from the marker with seq and chatId spliced in.
const DEDUPLICATED_SCRIPT = new LuaScript(`
local first = redis.call('SADD', KEYS[2], ARGV[1]) == 1
if redis.call('SADD', KEYS[2], ARGV[8]) == 0 then return false end
redis.call('EXPIRE', KEYS[2], ARGV[6])
local function append(body)
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[7], '*', '${EVENT_FIELD}', '{"v":1,' .. body)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  return id, '{"v":1,"seq":"' .. id .. '",' .. body
end
local id, message = append(string.sub(ARGV[2], 2))
local copy
if first and ARGV[5] == '1' then
  local result = redis.call('GET', KEYS[4])
  local head = '{"v":1,"seq":"'
  if result and string.sub(result, 1, #head) == head then
    local rest = string.sub(result, string.find(result, '"', #head + 1, true) + 2)
    local _, open = string.find(rest, '"chatId":"', 1, true)
    local close = string.find(rest, '"', open + 1, true)
    _, copy = append(string.sub(rest, 1, open) .. ARGV[1] .. string.sub(rest, close))
  elseif not result then
    redis.call('SADD', KEYS[3], ARGV[1])
    redis.call('EXPIRE', KEYS[3], ARGV[6])
  end
end
redis.call('PUBLISH', ARGV[3], message)
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], message) end
if copy then redis.call('PUBLISH', ARGV[3], copy) end
return id`);

/** Who may publish a job's events: the holder of its BullMQ lock (the key and the worker's token). */
export interface JobOwner {
  lockKey: string;
  token: string;
}

/**
 * What a job's event also writes to the job's BullMQ record, in the same script: its progress (the hash's
 * `progress` field, as Job.updateProgress writes it, without BullMQ's `progress` stream event, which nothing
 * reads) and an entry of its log (as Job.log writes it).
 */
export interface JobRecord {
  /** The job's hash, `<queue prefix>:<queue name>:<job id>`; its log list is this with `:logs`. */
  jobKey: string;
  progress: unknown;
  log?: string;
  /** The job's `keepLogs` option: the log keeps at most this many entries. Default: all. */
  keepLogs?: number;
}

/**
 * What a job's result leaves, in the same script, before it goes out (docs/design.md §4, §5): its place in its
 * chat's order and, when it has one, its deduplication id, so that a caller who has seen the result and
 * enqueues again gets a new job that does not wait for this one.
 */
export interface JobLeaving {
  /** BullMQ's deduplication key of the job (`<queue prefix>:<queue name>:de:<id>`): deleted while it names the job. */
  deduplicationKey?: string;
}

/** The job's BullMQ lock is no longer this token's: another worker owns the job now, or nobody does. */
export class StaleAttemptError extends Error {
  override name = 'StaleAttemptError';
}

/** A publish is tried at most this often when chats keep joining the job's watchers while it publishes. */
const WATCHER_TRIES = 20;

export class EventPublisher {
  private readonly keys: RedisKeys;
  private readonly maxLen: number;
  private readonly ttlSeconds: number;
  private readonly validate: boolean;

  constructor(
    private readonly redis: RedisClient,
    prefix: string,
    options: EventPublisherOptions = {},
  ) {
    this.keys = redisKeys(prefix);
    this.maxLen = options.maxLen ?? 1000;
    this.ttlSeconds = options.ttlSeconds ?? 86_400;
    this.validate = options.validate ?? true;
    if (!Number.isInteger(this.maxLen) || this.maxLen < 1) {
      throw new RangeError(`maxLen must be a positive whole number, got ${this.maxLen}`);
    }
    if (!Number.isInteger(this.ttlSeconds) || this.ttlSeconds < 1) {
      throw new RangeError(`ttlSeconds must be a positive whole number, got ${this.ttlSeconds}`);
    }
  }

  /**
   * Appends the event to `<prefix>:events:chat:<chatId>:log` (MAXLEN ~ maxLen, EXPIRE ttl) with seq = the
   * stream entry id, then PUBLISHes the full envelope on `<prefix>:events:chat:<chatId>` and, when
   * workspaceId is set, `<prefix>:events:workspace:<workspaceId>`. Each of the job's watcher chats (other
   * chats deduplicated onto it, until its result) gets it too, on its own stream and channel, with its own
   * chatId and seq. A `result` event is published at most once per job id, and so is a `queued` one: returns
   * null when it is already out (publishedResult() has the result). With `owner`, publishes only while that
   * token holds the job's BullMQ lock, else throws a StaleAttemptError. With `record`, the event also writes
   * the job's progress and log entry (only when it is published, and while the job exists). With `leaving`,
   * the job leaves its chat's order and frees its deduplication id first (also when its result is already
   * out; with `owner`, only while that token holds the job). All of it is one script, so a crash cannot leave
   * a result marker without its event, or a stream without its expiry.
   */
  async publish(
    draft: EventDraft,
    options: { owner?: JobOwner; record?: JobRecord; leaving?: JobLeaving } = {},
  ): Promise<WorkspaceJobEvent | null> {
    const body = this.body(draft);
    // The streams hold the envelope without seq (its entry id is the seq); the script splices v and seq in.
    const tail = JSON.stringify(body);
    const log = this.keys.chatLog(draft.chatId);
    const once = onceOf(draft);
    const { owner, record, leaving } = options;
    const watchersKey = this.keys.jobChats(draft.job.id);
    // The same on every try; only the watchers' keys and arguments follow them.
    const jobKeys = [
      log,
      once === 'result'
        ? this.keys.resultMarker(draft.job.id)
        : once === 'queued'
          ? this.keys.queuedMarker(draft.job.id)
          : log,
      owner?.lockKey ?? log,
      watchersKey,
      record?.jobKey ?? log,
      record ? `${record.jobKey}:logs` : log,
      leaving?.deduplicationKey ?? log,
      leaving ? this.keys.chatOrder(draft.chatId) : log,
    ];
    const head = [
      once,
      this.ttlSeconds,
      this.maxLen,
      owner?.token ?? '',
      draft.workspaceId === undefined ? '' : this.keys.workspaceChannel(draft.workspaceId),
      tail,
      this.keys.chatChannel(draft.chatId),
    ];
    const recorded = [
      record ? JSON.stringify(record.progress) : '',
      record?.log ?? '',
      record?.keepLogs ?? '',
      leaving ? draft.job.id : '',
      leaving?.deduplicationKey === undefined ? '' : '1',
    ];
    // Most jobs have no watchers: one round trip.
    let watchers: string[] = [];
    for (let tries = 0; tries < WATCHER_TRIES; tries++) {
      const keys = [...jobKeys, ...watchers.map((chatId) => this.keys.chatLog(chatId))];
      const seq = (await PUBLISH_SCRIPT.run(this.redis, keys, [
        ...head,
        watchers.length,
        ...recorded,
        ...watchers.flatMap((chatId) => [
          chatId,
          JSON.stringify({ ...body, chatId }),
          this.keys.chatChannel(chatId),
        ]),
      ])) as string | number | string[] | null | false;
      if (Array.isArray(seq)) {
        watchers = seq;
        continue;
      }
      if (seq === 0) {
        throw new StaleAttemptError(
          `job ${draft.job.id} is no longer this worker's; its ${draft.stage} event was not published`,
        );
      }
      if (!seq) return null;
      return { v: 1, seq: String(seq), ...body } as WorkspaceJobEvent;
    }
    throw new Error(
      `job ${draft.job.id}'s watcher chats changed ${WATCHER_TRIES} times while its ${draft.stage} event was published`,
    );
  }

  /**
   * Announces a deduplicated enqueue on the calling chat's stream and channel (and the workspace's), once
   * per chat, job and set of fields that differ from the job's (`differs`): a repeat writes nothing and
   * returns null. A chat that is not the job's own (`jobChatId`) becomes one of its watchers on its first
   * announcement and gets the job's later events; when the job's result is already out, it gets a copy of
   * that result right after the announcement instead.
   */
  async announceDeduplicated(
    draft: EventDraft,
    job: { chatId: string; differs: readonly string[] },
  ): Promise<WorkspaceJobEvent | null> {
    const body = this.body(draft);
    const chatId = draft.chatId.toLowerCase();
    const keys = [
      this.keys.chatLog(draft.chatId),
      this.keys.jobDeduplicated(draft.job.id),
      this.keys.jobChats(draft.job.id),
      this.keys.resultMarker(draft.job.id),
    ];
    const seq = (await DEDUPLICATED_SCRIPT.run(this.redis, keys, [
      chatId,
      JSON.stringify(body),
      this.keys.chatChannel(draft.chatId),
      draft.workspaceId === undefined ? '' : this.keys.workspaceChannel(draft.workspaceId),
      chatId === job.chatId.toLowerCase() ? '' : '1',
      this.ttlSeconds,
      this.maxLen,
      // A space cannot be in a chat id or a field name.
      `${chatId} ${[...job.differs].sort().join(' ')}`,
    ])) as string | null | false;
    return seq ? ({ v: 1, seq, ...body } as WorkspaceJobEvent) : null;
  }

  /**
   * Writes a job's progress (as Job.updateProgress does) while `owner` holds the job's BullMQ lock, else throws
   * a StaleAttemptError; false when the job is gone.
   */
  async recordProgress(jobKey: string, progress: unknown, owner?: JobOwner): Promise<boolean> {
    const done = await RECORD_PROGRESS_SCRIPT.run(
      this.redis,
      [jobKey, owner?.lockKey ?? jobKey],
      [owner?.token ?? '', JSON.stringify(progress)],
    );
    if (done === 0)
      throw new StaleAttemptError(
        `job at ${jobKey} is no longer this worker's; its progress was not written`,
      );
    return done === 1;
  }

  /**
   * The job's published result event, or null when none is out (or it was published before the marker kept
   * the event, or has expired).
   */
  async publishedResult(jobId: string): Promise<WorkspaceJobEvent | null> {
    const marker = await this.redis.get(this.keys.resultMarker(jobId));
    if (marker === null) return null;
    let body: unknown;
    try {
      body = JSON.parse(marker);
    } catch {
      return null;
    }
    const parsed = workspaceJobEventSchema.safeParse(body);
    return parsed.success && parsed.data.type === 'result' ? parsed.data : null;
  }

  /**
   * The envelope without `v` and `seq` (the script splices them in), in the contract's field order; throws a
   * ValidationError naming bad fields (when validating). Built by assignment, not spreads and a rest copy of
   * the whole envelope: 10,000 results at once publish 40,000 of them (issue 11).
   */
  private body(draft: EventDraft): EventBody {
    const body: EventBody = { type: draft.type, stage: draft.stage, job: draft.job, chatId: draft.chatId };
    if (draft.workspaceId !== undefined) body.workspaceId = draft.workspaceId;
    body.at = new Date().toISOString();
    body.message = draft.message;
    if (draft.data !== undefined) body.data = draft.data;
    if (!this.validate) return body;
    // Subscribers drop envelopes that do not validate; refuse to write one.
    const parsed = workspaceJobEventSchema.safeParse({ v: 1, seq: '0-1', ...body });
    if (!parsed.success) throw new ValidationError(describeIssues('event', parsed.error));
    return body;
  }
}

/**
 * An envelope's fields but `v` and `seq`, loosely typed while it is built: copied field by field, `type`
 * loses its link to `stage` and `data`, which the schema checks when validating.
 */
interface EventBody {
  type: EventDraft['type'];
  stage: EventDraft['stage'];
  job: EventDraft['job'];
  chatId: string;
  workspaceId?: string;
  at?: string;
  message?: string;
  data?: unknown;
}

/** Which once-per-job marker an event sets: a result's, a `queued` event's, or none. */
function onceOf(draft: EventDraft): '' | 'queued' | 'result' {
  if (draft.type === 'result') return 'result';
  return draft.stage === 'queued' ? 'queued' : '';
}

// ---------------------------------------------------------------------------------------------------
// Subscribing

export interface SubscribeOptions {
  /** Replay entries after this id first, gap-free, then live; omitted = live only. */
  since?: string;
}

export type Unsubscribe = () => Promise<void>;

class Subscription {
  /** `syncing`: live messages are buffered while the stream is read. */
  state: 'syncing' | 'live' | 'closed' = 'syncing';
  buffer: WorkspaceJobEvent[] = [];
  /** Every event up to here was replayed (or is before `since`): live copies of them are duplicates. */
  cutoff: string | undefined;
  /** The highest seq handled so far: where a catch-up after a reconnect starts. */
  position: string | undefined;
  /** The subscriber connection came back while this subscription was running: catch up from `position`. */
  catchUpWanted = false;

  constructor(
    readonly chatId: string,
    readonly onEvent: (event: WorkspaceJobEvent) => void,
  ) {}
}

interface Channel {
  subscriptions: Set<Subscription>;
  /** Resolves once Redis has confirmed the SUBSCRIBE (renewed after every reconnect). */
  ready: Promise<void>;
}

/**
 * One subscriber connection (pub/sub mode) and one command connection, shared by any number of chat
 * subscriptions: one SUBSCRIBE per chat channel, however many subscriptions it has (reference counted).
 *
 * Gap-free replay: SUBSCRIBE first and buffer live messages, then XRANGE after `since`, deliver those, then the
 * buffer minus anything already replayed. An event is either in the stream before the XRANGE reads it, or is
 * added (and so published) after, when the SUBSCRIBE already holds.
 *
 * Reconnects: ioredis resubscribes by itself, but pub/sub is at-most-once, so messages published while the
 * connection was down are gone. On every reconnect each subscription replays the stream after the last event
 * it handled (the same buffer-then-replay dance), so they are delivered late rather than lost. A live-only
 * subscription that has seen nothing yet catches up from the stream's last id at the time it subscribed.
 * What cannot be recovered: events trimmed or expired from the stream in the meantime, and (rarely) an event
 * from a second publisher that arrived out of seq order within the gap.
 */
export class EventSubscriber {
  private readonly subscriber: RedisClient;
  private readonly commands: RedisClient;
  private readonly keys: RedisKeys;
  private readonly log: Logger | undefined;
  private readonly channels = new Map<string, Channel>();
  private readonly unfollow: () => void;
  private closed = false;

  constructor(options: { subscriber: RedisClient; commands: RedisClient; prefix: string; log?: Logger }) {
    if (options.subscriber === options.commands) {
      throw new Error('EventSubscriber needs two connections: a subscriber connection cannot run XRANGE');
    }
    this.subscriber = options.subscriber;
    this.commands = options.commands;
    this.keys = redisKeys(options.prefix);
    this.log = options.log;
    this.unfollow = followSubscriber(this.subscriber, this.onMessage, this.onReconnect);
  }

  /**
   * Calls `onEvent` with the chat's events: with `since`, first those after it still in the replay stream,
   * then live ones; without, live ones only. Resolves once subscribed (and replayed).
   */
  async subscribe(
    chatId: string,
    onEvent: (e: WorkspaceJobEvent) => void,
    options: SubscribeOptions = {},
  ): Promise<Unsubscribe> {
    if (this.closed) throw new Error('the event subscriber is closed');
    const { since } = options;
    if (since !== undefined) parseStreamId(since);

    const name = this.keys.chatChannel(chatId);
    let channel = this.channels.get(name);
    if (!channel) {
      const created: Channel = { subscriptions: new Set(), ready: this.subscribeChannel(name) };
      // A failed SUBSCRIBE is reported to every waiting subscribe(); forget the channel so a later one retries.
      created.ready.catch(() => {
        if (this.channels.get(name) === created && created.subscriptions.size === 0)
          this.channels.delete(name);
      });
      this.channels.set(name, created);
      channel = created;
    }
    const subscription = new Subscription(chatId, onEvent);
    channel.subscriptions.add(subscription); // buffering from here on

    try {
      await channel.ready;
      if (since !== undefined) {
        subscription.cutoff = since;
        subscription.position = since;
        await this.replay(subscription);
      } else {
        subscription.position = await this.lastId(chatId);
      }
    } catch (error) {
      await this.remove(name, subscription);
      throw error;
    }
    this.goLive(subscription);
    if (subscription.catchUpWanted) void this.catchUp(subscription, channel);

    let unsubscribed: Promise<void> | undefined;
    return () => (unsubscribed ??= this.remove(name, subscription));
  }

  /** Unsubscribes everything; does not close the connections it was given. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unfollow();
    const names = [...this.channels.keys()];
    for (const channel of this.channels.values()) {
      for (const subscription of channel.subscriptions) subscription.state = 'closed';
    }
    this.channels.clear();
    if (names.length > 0) await unsubscribe(this.subscriber, names, this.log);
  }

  private async subscribeChannel(name: string): Promise<void> {
    await this.subscriber.subscribe(name);
  }

  private async remove(name: string, subscription: Subscription): Promise<void> {
    subscription.state = 'closed';
    subscription.buffer = [];
    const channel = this.channels.get(name);
    if (!channel?.subscriptions.delete(subscription)) return;
    if (channel.subscriptions.size > 0) return;
    // The last one out unsubscribes. A subscribe() for the same chat that starts meanwhile sends its SUBSCRIBE
    // after this UNSUBSCRIBE on the same connection, so Redis ends up subscribed.
    this.channels.delete(name);
    await unsubscribe(this.subscriber, [name], this.log);
  }

  /** Reads the stream after the subscription's position, delivers it, and moves the cutoff past it. */
  private async replay(subscription: Subscription): Promise<void> {
    let after = subscription.position;
    // A live-only subscription whose starting point could not be read has nothing to catch up from.
    if (after === undefined) return;
    const key = this.keys.chatLog(subscription.chatId);
    for (;;) {
      const page = await readPage(this.commands, key, after, PAGE_SIZE, this.log);
      for (const event of page.events) {
        if (subscription.state === 'closed') return;
        this.deliver(subscription, event);
      }
      if (page.lastId !== undefined) after = page.lastId;
      // A short page: nothing more was in the stream when it was read; anything newer arrives live.
      if (page.entries < PAGE_SIZE) break;
    }
    subscription.cutoff = maxSeq(subscription.cutoff, after);
    subscription.position = maxSeq(subscription.position, after);
  }

  /** Where a live-only subscription would catch up from after a reconnect: the stream's last id now. */
  private async lastId(chatId: string): Promise<string | undefined> {
    try {
      const [last] = await this.commands.xrevrange(this.keys.chatLog(chatId), '+', '-', 'COUNT', 1);
      return last?.[0] ?? '0';
    } catch (error) {
      // Live delivery does not need it; only a catch-up after a reconnect would.
      this.log?.warn({ err: error, chatId }, 'could not read the end of the replay stream');
      return undefined;
    }
  }

  /** Ends a sync: delivers the buffered live messages that were not replayed. */
  private goLive(subscription: Subscription): void {
    if (subscription.state !== 'syncing') return;
    subscription.state = 'live';
    const buffered = subscription.buffer;
    subscription.buffer = [];
    for (const event of buffered) this.receive(subscription, event);
  }

  private receive(subscription: Subscription, event: WorkspaceJobEvent): void {
    if (subscription.state === 'syncing') {
      subscription.buffer.push(event);
    } else if (
      subscription.state === 'live' &&
      (subscription.cutoff === undefined || compareSeq(event.seq, subscription.cutoff) > 0)
    ) {
      this.deliver(subscription, event);
    }
  }

  private deliver(subscription: Subscription, event: WorkspaceJobEvent): void {
    if (subscription.state === 'closed') return;
    subscription.position = maxSeq(subscription.position, event.seq);
    try {
      subscription.onEvent(event);
    } catch (error) {
      this.log?.error({ err: error, seq: event.seq, chatId: subscription.chatId }, 'an event handler threw');
    }
  }

  /** Replays what a subscription may have missed while the subscriber connection was down. */
  private async catchUp(subscription: Subscription, channel: Channel): Promise<void> {
    while (subscription.catchUpWanted && subscription.state === 'live') {
      subscription.catchUpWanted = false;
      subscription.state = 'syncing';
      try {
        await channel.ready;
        await this.replay(subscription);
      } catch (error) {
        this.log?.warn(
          { err: error, chatId: subscription.chatId },
          'could not replay the events published while the subscriber was disconnected; some may be missing',
        );
      }
      this.goLive(subscription);
    }
  }

  private readonly onMessage = (name: string, message: string): void => {
    const channel = this.channels.get(name);
    if (!channel) return;
    let body: unknown;
    try {
      body = JSON.parse(message);
    } catch {
      body = undefined;
    }
    const parsed = workspaceJobEventSchema.safeParse(body);
    if (!parsed.success) {
      this.log?.warn(
        { channel: name, issues: parsed.error.issues },
        'skipping a message that is not an event',
      );
      return;
    }
    const event = parsed.data;
    for (const subscription of [...channel.subscriptions]) this.receive(subscription, event);
  };

  private readonly onReconnect = (): void => {
    for (const [name, channel] of this.channels) {
      // 'ready' is emitted before ioredis sends its own resubscription; our SUBSCRIBE (a no-op for Redis when
      // it is already subscribed) tells us when the channel is live again, so a replay cannot miss anything.
      channel.ready = this.subscribeChannel(name);
      channel.ready.catch(() => {}); // reported by catchUp
      for (const subscription of channel.subscriptions) {
        subscription.catchUpWanted = true;
        // A subscription still syncing checks the flag when it goes live.
        if (subscription.state === 'live') void this.catchUp(subscription, channel);
      }
    }
  };
}
