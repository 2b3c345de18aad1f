// One LISTEN connection per process, fanning Postgres notifications out to any number of waiters
// (docs/start-workspace.md D6). Coder polls every 2 s per waiting tool call; with hundreds of jobs waiting
// that is hundreds of queries a second, where this costs one idle connection and one ping per interval,
// however many wait.
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { sleep, withTimeout } from './errors.js';
import { Wait, type WaitBounds } from './wait.js';
import { prepared, preparedQuery } from './postgres.js';
import type { ChangeWaiter } from '../worker/ports.js';
import type { Logger } from './logger.js';

/**
 * A topic reached whenever a provisioner job becomes `pending` (inserted, or handed back by a daemon):
 * the only change that can give an idle provisioner daemon work.
 */
export const PENDING_JOB_TOPIC = 'provisioner_job:pending';

/** What a trigger's notification carries (only some fields per channel); listeners get it as sent. */
export interface NotificationPayload {
  id?: string;
  job_status?: string;
  job_id?: string;
}

/** Channels raised by the triggers in migrations/ (0001, 0006), and the topics each payload maps to. */
const CHANNELS: Record<string, (payload: NotificationPayload) => (string | undefined)[]> = {
  provisioner_job_changed: (p) => [
    p.id ? `provisioner_job:${p.id}` : undefined,
    p.job_status === 'pending' ? PENDING_JOB_TOPIC : undefined,
  ],
  workspace_agent_changed: (p) => [p.id ? `workspace_agent:${p.id}` : undefined],
  provisioner_job_logs: (p) => [p.job_id ? `provisioner_job_logs:${p.job_id}` : undefined],
};

/** A topic that every notification on a channel also reaches. */
export const channelTopic = (channel: string) => `channel:${channel}`;

export interface PgNotificationHubOptions {
  /**
   * How often the hub proves, while anyone listens, that its LISTEN connection still delivers: one
   * `pg_notify` to itself, whatever the number of waiters. Default 10000.
   */
  pingIntervalMs?: number;
  /** How long a ping may take to come back before the connection counts as lost. Default 5000. */
  pingTimeoutMs?: number;
  /** Delay before reconnecting a lost LISTEN connection. Default 1000. */
  reconnectDelayMs?: number;
  log?: Logger;
}

/** The hub's ping to itself: its private channel, a nonce. */
const PING = prepared('notifications.ping', 'SELECT pg_notify($1, $2)');

/** Called with the notification's payload; with none when the hub wakes everyone after a reconnect. */
type Listener = (payload?: NotificationPayload) => void;
/** What the hub tells of a topic's notifications: an `on` listener, or a waitFor's wait. */
type Subscriber = Listener | Pick<TopicWait<unknown>, 'notify'>;
type Subscribers = Map<string, Set<Subscriber>>;

function tell(subscriber: Subscriber, payload?: NotificationPayload): void {
  if (typeof subscriber === 'function') subscriber(payload);
  else subscriber.notify(payload);
}

export class PgNotificationHub implements ChangeWaiter {
  private client: pg.Client | undefined;
  private readonly listeners: Subscribers = new Map();
  private readonly pingIntervalMs: number;
  private readonly pingTimeoutMs: number;
  private readonly reconnectDelayMs: number;
  /** Private to this hub, so that other processes' pings do not reach it. */
  private readonly pingChannel = `workspace_jobs_ping_${randomUUID().replaceAll('-', '')}`;
  private pingTimer: NodeJS.Timeout | undefined;
  private pings = 0;
  /** The ping out, until its nonce comes back. */
  private pong: { nonce: string; back: () => void } | undefined;
  private readonly stopping = new AbortController();
  private connecting: Promise<void> | undefined;
  private started = false;

  constructor(
    private readonly databaseUrl: string,
    private readonly options: PgNotificationHubOptions = {},
  ) {
    this.pingIntervalMs = options.pingIntervalMs ?? 10_000;
    this.pingTimeoutMs = options.pingTimeoutMs ?? 5_000;
    this.reconnectDelayMs = options.reconnectDelayMs ?? 1_000;
  }

  /** Connects and LISTENs; resolves once notifications flow. */
  async start(): Promise<void> {
    await this.connect();
    this.started = true;
    this.pingTimer ??= setInterval(() => void this.ping(), this.pingIntervalMs).unref();
  }

  /**
   * start() on the first call, for a process that must come up while Postgres is down (the dashboard):
   * concurrent calls share it, a failed one is retried by the next call, and once started it resolves at
   * once (a lost connection is the hub's own to restore).
   */
  async ready(): Promise<void> {
    if (!this.started) await this.start();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    clearInterval(this.pingTimer);
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => {});
  }

  /** Calls `listener` on every notification for `topic`; returns the unsubscribe function. */
  on(topic: string, listener: Listener): () => void {
    subscribe(this.listeners, topic, listener);
    return () => unsubscribe(this.listeners, topic, listener);
  }

  waitFor<T>(
    topics: string[],
    check: (notice?: NotificationPayload) => Promise<T | undefined>,
    options: { timeoutMs: number; signal?: AbortSignal; recheckMs?: number; minIntervalMs?: number },
  ): Promise<T> {
    const { signal, recheckMs, minIntervalMs = 0 } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new TopicWait(this.listeners, topics, check, recheckMs, minIntervalMs, options).promise;
  }

  private emit(topic: string, payload?: NotificationPayload): void {
    for (const listener of this.listeners.get(topic) ?? []) tell(listener, payload);
  }

  /** Wakes every waiter: after a reconnect we cannot know what we missed. */
  private emitAll(): void {
    for (const set of this.listeners.values()) for (const listener of set) tell(listener);
  }

  private connect(): Promise<void> {
    this.connecting ??= this.open().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async open(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.databaseUrl,
      application_name: 'workspace-jobs-listener',
      connectionTimeoutMillis: 10_000,
      keepAlive: true,
    });
    client.on('notification', (msg) => {
      if (msg.channel === this.pingChannel) {
        const pong = this.pong;
        if (pong && msg.payload === pong.nonce) pong.back();
        return;
      }
      const toTopics = CHANNELS[msg.channel];
      this.emit(channelTopic(msg.channel));
      if (!toTopics || !msg.payload) return;
      try {
        const payload = JSON.parse(msg.payload) as NotificationPayload;
        for (const topic of toTopics(payload)) if (topic) this.emit(topic, payload);
      } catch {
        this.options.log?.warn({ channel: msg.channel }, 'unparseable notification payload');
      }
    });
    // A lost connection emits 'error' (often twice: the server's FATAL, then the socket's end) or only 'end'.
    client.on('error', (error) => void this.reconnect(client, error));
    client.on('end', () => void this.reconnect(client));
    try {
      await client.connect();
      for (const channel of [...Object.keys(CHANNELS), this.pingChannel])
        await client.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
    } catch (error) {
      await client.end().catch(() => {});
      throw error;
    }
    if (this.stopping.signal.aborted) {
      await client.end().catch(() => {});
      return;
    }
    this.client = client;
  }

  /**
   * Proves the LISTEN connection still delivers: Postgres hands a listener its notifications in commit
   * order, its own among them, so this nonce coming back means none committed before it was lost. One not
   * back within pingTimeoutMs, on a connection that died without a word (a dropped network, a stuck
   * backend), counts as lost: reconnect, and every waiter re-checks. Nobody listening, nothing to prove.
   */
  private async ping(): Promise<void> {
    const client = this.client;
    if (!client || this.pong || this.listeners.size === 0) return;
    const nonce = String(++this.pings);
    try {
      await withTimeout(
        new Promise<void>((resolve, reject) => {
          this.pong = { nonce, back: resolve };
          client.query(preparedQuery(PING, [this.pingChannel, nonce])).catch(reject);
        }),
        this.pingTimeoutMs,
        "the LISTEN connection's ping",
      );
    } catch (error) {
      void this.reconnect(client, error as Error);
    } finally {
      this.pong = undefined;
    }
  }

  private async reconnect(lost: pg.Client, cause?: Error): Promise<void> {
    if (this.client !== lost || this.stopping.signal.aborted) return;
    this.client = undefined;
    this.options.log?.warn({ err: cause }, 'LISTEN connection lost; reconnecting');
    lost.end().catch(() => {});
    let attempts = 0;
    while (!this.stopping.signal.aborted) {
      try {
        await sleep(this.reconnectDelayMs, this.stopping.signal);
        await this.connect();
        this.options.log?.info({ attempts: attempts + 1 }, 'LISTEN connection restored');
        this.emitAll();
        return;
      } catch (error) {
        if (this.stopping.signal.aborted) return;
        // Once per outage: a long one would otherwise log every reconnectDelayMs.
        if (attempts++ === 0) this.options.log?.warn({ err: error }, 'LISTEN reconnect failed; retrying');
      }
    }
  }
}

function subscribe(subscribers: Subscribers, topic: string, subscriber: Subscriber): void {
  let set = subscribers.get(topic);
  if (!set) subscribers.set(topic, (set = new Set()));
  set.add(subscriber);
}

function unsubscribe(subscribers: Subscribers, topic: string, subscriber: Subscriber): void {
  const set = subscribers.get(topic);
  if (!set?.delete(subscriber)) return;
  if (set.size === 0) subscribers.delete(topic);
}

/**
 * One waitFor (ChangeWaiter's contract), as one object (wait.ts): a worker holds two per waiting start. A
 * notification that arrives while a check runs causes one more afterwards, with the payload of the last
 * notification since the previous check, or none when it must look for itself: the first check, a timed
 * re-check, a wake-up without a payload (a reconnect) among them.
 */
class TopicWait<T> extends Wait<T> {
  /** Notified, or due for a check, since the last check began: the first check is due at once. */
  private pending = true;
  private notice: NotificationPayload | undefined;
  private unseen = false;
  private recheck: NodeJS.Timeout | undefined;
  /** When the last check began (with a minIntervalMs only). */
  private checkedAt = -Infinity;

  constructor(
    private readonly subscribers: Subscribers,
    private readonly topics: string[],
    private readonly check: (notice?: NotificationPayload) => Promise<T | undefined>,
    private readonly recheckMs: number | undefined,
    private readonly minIntervalMs: number,
    bounds: WaitBounds,
  ) {
    super(bounds);
    for (const topic of topics) subscribe(subscribers, topic, this);
    this.next();
  }

  /** A notification of one of its topics (none: the hub was reconnected). */
  notify(payload?: NotificationPayload): void {
    this.pending = true;
    if (payload) this.notice = payload;
    else this.unseen = true;
    this.wake();
  }

  /** The timed re-check, as a check without a payload. */
  recheckNow(): void {
    this.recheck = undefined;
    this.pending = true;
    this.wake();
  }

  protected next(): void {
    if (this.ended) return this.fail(this.ended.reason);
    if (!this.pending) {
      // Only a wait that asked for one re-checks on a timer (±20 %: waiters that started together must
      // not all re-check in the same instant); the hub's ping stands in for the rest.
      if (this.recheckMs !== undefined)
        this.recheck = setTimeout(recheckDue, this.recheckMs * (0.8 + Math.random() * 0.4), this);
      return;
    }
    clearTimeout(this.recheck);
    if (this.minIntervalMs > 0) {
      // A check due sooner than minIntervalMs after the last waits out the rest on the timer, outside any
      // check: a caller's check may hold something meanwhile (a worker's admission slot, admission.ts).
      const now = Date.now();
      const early = this.checkedAt + this.minIntervalMs - now;
      if (early > 0) {
        this.recheck = setTimeout(recheckDue, early, this);
        return;
      }
      this.checkedAt = now;
    }
    const told = this.unseen ? undefined : this.notice;
    this.pending = false;
    this.notice = undefined;
    this.unseen = false;
    this.runCheck(() => this.check(told));
  }

  protected leave(): void {
    clearTimeout(this.recheck);
    for (const topic of this.topics) unsubscribe(this.subscribers, topic, this);
  }
}

function recheckDue(wait: Pick<TopicWait<unknown>, 'recheckNow'>): void {
  wait.recheckNow();
}
