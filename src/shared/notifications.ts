// One LISTEN connection per process, fanning Postgres notifications out to any number of waiters
// (docs/start-workspace.md D6). Coder polls every 2 s per waiting tool call; with hundreds of jobs waiting
// that is hundreds of queries a second, where this costs one idle connection and a slow safety re-check.
import pg from 'pg';
import { sleep, WaitTimeoutError } from './errors.js';
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
   * How often every waiter re-checks even without a notification, covering notifications lost while
   * the LISTEN connection was down and changes no trigger reports. Default 10000.
   */
  safetyRecheckMs?: number;
  /** Delay before reconnecting a lost LISTEN connection. Default 1000. */
  reconnectDelayMs?: number;
  log?: Logger;
}

/** Called with the notification's payload; with none when the hub wakes everyone after a reconnect. */
type Listener = (payload?: NotificationPayload) => void;

export class PgNotificationHub implements ChangeWaiter {
  private client: pg.Client | undefined;
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly safetyRecheckMs: number;
  private readonly reconnectDelayMs: number;
  private readonly stopping = new AbortController();
  private connecting: Promise<void> | undefined;
  private started = false;

  constructor(
    private readonly databaseUrl: string,
    private readonly options: PgNotificationHubOptions = {},
  ) {
    this.safetyRecheckMs = options.safetyRecheckMs ?? 10_000;
    this.reconnectDelayMs = options.reconnectDelayMs ?? 1_000;
  }

  /** Connects and LISTENs; resolves once notifications flow. */
  async start(): Promise<void> {
    await this.connect();
    this.started = true;
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
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => {});
  }

  /** Calls `listener` on every notification for `topic`; returns the unsubscribe function. */
  on(topic: string, listener: Listener): () => void {
    let set = this.listeners.get(topic);
    if (!set) this.listeners.set(topic, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.listeners.delete(topic);
    };
  }

  async waitFor<T>(
    topics: string[],
    check: (notice?: NotificationPayload) => Promise<T | undefined>,
    options: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<T> {
    const { timeoutMs, signal } = options;
    signal?.throwIfAborted();
    const done = new AbortController();
    const abort = () => done.abort(signal?.reason);
    signal?.addEventListener('abort', abort, { once: true });
    const timer = setTimeout(
      () => done.abort(new WaitTimeoutError(`timed out after ${timeoutMs} ms`, timeoutMs)),
      timeoutMs,
    );

    // A notification that arrives while a check runs must cause one more check afterwards. That check gets
    // the payload of the last notification since the previous one, or none when it must look for itself:
    // the first check, a safety re-check, a wake-up without a payload (a reconnect) among them.
    let wake: () => void = () => {};
    let pending: boolean;
    let notice: NotificationPayload | undefined;
    let unseen = false;
    const notify = (payload?: NotificationPayload) => {
      pending = true;
      if (payload) notice = payload;
      else unseen = true;
      wake();
    };
    const offs = topics.map((t) => this.on(t, notify));
    try {
      for (;;) {
        const told = unseen ? undefined : notice;
        pending = false;
        notice = undefined;
        unseen = false;
        const result = await check(told);
        // An abort that came while the check ran wins: its answer is too late for the caller.
        signal?.throwIfAborted();
        if (result !== undefined) return result;
        done.signal.throwIfAborted();
        if (pending) continue;
        await new Promise<void>((resolve) => {
          // ±20% jitter: waiters that started together must not all re-check in the same instant. The
          // re-check finishes too, or every re-check of a long wait would leave its abort listener behind.
          const recheck = setTimeout(() => finish(), this.safetyRecheckMs * (0.8 + Math.random() * 0.4));
          const finish = () => {
            clearTimeout(recheck);
            done.signal.removeEventListener('abort', finish);
            resolve();
          };
          wake = finish;
          done.signal.addEventListener('abort', finish, { once: true });
        });
        wake = () => {};
        done.signal.throwIfAborted();
      }
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', abort);
      offs.forEach((off) => off());
    }
  }

  private emit(topic: string, payload?: NotificationPayload): void {
    for (const listener of this.listeners.get(topic) ?? []) listener(payload);
  }

  /** Wakes every waiter: after a reconnect we cannot know what we missed. */
  private emitAll(): void {
    for (const set of this.listeners.values()) for (const listener of set) listener();
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
      for (const channel of Object.keys(CHANNELS))
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
