// The chat backend's side of workspace-jobs (docs/design.md §4): validates payloads, enqueues
// deduplicated jobs on the `workspaces` queue, announces them on the chat's event stream, and lets the
// backend follow a job's events or wait for its result.
import { setMaxListeners } from 'node:events';
import { randomUUID } from 'node:crypto';
import { SpanKind } from '@opentelemetry/api';
import { Queue, type JobState, type Telemetry } from 'bullmq';
import { pino } from 'pino';
import { followBuildLogs, type BuildLogLine } from '../shared/build-logs.js';
import { WaitTimeoutError } from '../shared/errors.js';
import { PgNotificationHub } from '../shared/notifications.js';
import { EventPublisher, EventSubscriber, readChatEvents } from '../shared/events.js';
import { redisKeys } from '../shared/keys.js';
import { ChatOrder } from '../shared/chat-order.js';
import { handOffChat, promoteThrough } from '../shared/chat-hand-off.js';
import { CancelRequests } from '../shared/cancel-requests.js';
import {
  QUEUE_NAME,
  type EventDraft,
  type JobFailure,
  type JobName,
  type JobProgress,
  type JobResult,
  type QueryPool,
  type WorkspaceJobEvent,
} from '../shared/contract.js';
import type { ChatPayload, EnqueueLookups } from '../jobs/job-kind.js';
import type { CreateWorkspaceInput } from '../jobs/create-workspace/schemas.js';
import { dedupeIdOf, jobKind, queuedDraft, type AnyJobKind, type JobTypes } from '../jobs/registry.js';
import { failures } from '../worker/results.js';
import type { StartWorkspaceInput } from '../jobs/start-workspace/schemas.js';
import type { StopWorkspaceInput } from '../jobs/stop-workspace/schemas.js';
import type { Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import { createPool } from '../shared/postgres.js';
import { DEFAULT_JOB_ATTEMPTS, type Config } from '../shared/config.js';
import { ATTR, bullmqTelemetry, inSpan, traceCarrier } from '../shared/telemetry.js';
import {
  closeRedis,
  connectionNameOf,
  createRedis,
  duplicateSubscriber,
  type RedisClient,
} from '../shared/redis.js';
import { ValidationError, cancelReasonSchema, idSchema, parseOrThrow } from '../shared/schemas.js';
import { jobOptions } from './job-options.js';

export interface ProducerOptions {
  /** Redis for the queue and events (not closed by the producer when passed in). */
  connection: RedisClient;
  /** Postgres, to resolve the workspace from chats.workspace_id when the caller omits it. */
  pool: QueryPool;
  /** QUEUE_PREFIX. */
  prefix: string;
  /** JOB_ATTEMPTS, default 5. */
  attempts?: number;
  log?: Logger;
  /**
   * While `waitForResult` waits for the result event, it also re-reads the job's state this often, in
   * case the result event was never published or has already left the replay stream. Default 5000.
   */
  resultRecheckMs?: number;
  /** Counts enqueues (added or deduplicated, by job name) and announcements that failed; absent = not counted. */
  metrics?: Metrics;
  /**
   * Postgres change notifications, for `buildLogs(..., { follow: true })`: connected (ready()) on the first
   * follow; not stopped by the producer when passed in. fromConfig makes its own. Default: none, and
   * following a build's log throws.
   */
  changes?: PgNotificationHub;
  /**
   * BullMQ's own spans (e.g. `new BullMQOtel()` from bullmq-otel, for a host with its own OpenTelemetry
   * SDK). Default: those of this process's startTracing while it runs, else none. The producer's own
   * `enqueue` spans go to whatever tracer provider is registered.
   */
  telemetry?: Telemetry;
}

/**
 * What an enqueue did. `deduplicated: false`: a new job was added. `deduplicated: true`: a job with the same
 * deduplication id (a start or stop of the same workspace, a create for the same chat) was already waiting,
 * delayed or active, no job was added, and `jobId` is that job. It runs with the payload it was enqueued
 * with: `differs` names the fields in which this call's payload differs from it (`[]` when they agree), whose
 * values are not applied; to apply them, wait for that job's result and enqueue again. A job that can no
 * longer be read differs in every field given.
 */
export type EnqueuedJob<Field extends string = JobTypes<JobName>['field']> =
  { jobId: string; deduplicated: false } | { jobId: string; deduplicated: true; differs: Field[] };

/** What `enqueue(name, …)` returns: the job, and the workspace when the kind's payload names one. */
export type Enqueued<N extends JobName> = EnqueuedJob<JobTypes<N>['field']> &
  (JobTypes<N>['payload'] extends { workspaceId: string } ? { workspaceId: string } : unknown);

export type EnqueuedStart = Enqueued<'start-workspace'>;
export type EnqueuedCreate = Enqueued<'create-workspace'>;
export type EnqueuedStop = Enqueued<'stop-workspace'>;

export interface WaitForResultOptions {
  timeoutMs: number;
}

export interface BuildLogsOptions {
  /** Lines after this log id. Default '0' (from the first line). */
  after?: string;
  /** Keep going as lines are written until the build's provisioner job completes. Default false. */
  follow?: boolean;
  /** Ends the iteration (the pending next() rejects with its reason). */
  signal?: AbortSignal;
}

export interface SubscribeOptions {
  /** Replay the chat's stream after this entry id first (`'0'` = everything still kept). */
  since?: string;
}

/** `waitForResult` was asked about a job that does not exist (never added, or already removed). */
export class JobNotFoundError extends Error {
  override name = 'JobNotFoundError';
  constructor(readonly jobId: string) {
    super(`job ${jobId} not found`);
  }
}

/** The producer was closed while a call was in flight or before it was made. */
export class ProducerClosedError extends Error {
  override name = 'ProducerClosedError';
  constructor() {
    super('the workspace-jobs producer is closed');
  }
}

/**
 * What `cancel` did. `canceled`: the job was waiting or delayed (`was`), its result is published and it is
 * removed. `cancel_requested`: it is running, or waiting or delayed with a build an earlier attempt created;
 * a worker (at its next check, or when it picks the job up) cancels that build and ends the job with the
 * canceled result. `already_finished`: a no-op, with the job's result when it is still kept (also when a
 * worker's result came out just before the cancel's). `not_found`: no such job.
 */
export type CancelAnswer =
  | { jobId: string; outcome: 'canceled'; was: CanceledState; result: JobFailure }
  | { jobId: string; outcome: 'cancel_requested' }
  | { jobId: string; outcome: 'already_finished'; result?: JobResult }
  | { jobId: string; outcome: 'not_found' };

/** The state a job was canceled in: anything but running or finished ('unknown': removed meanwhile). */
export type CanceledState = Exclude<JobState | 'unknown', 'active' | 'completed' | 'failed'>;

export interface CancelOptions {
  /**
   * Who or why, carried in the result's error (`canceled: <reason>`); default `cancel requested`. One line
   * of at most 200 characters (trimmed); anything else throws ValidationError.
   */
  reason?: string;
}

type WorkspaceQueue = Queue<ChatPayload, JobResult, JobName>;

const DEFAULT_RESULT_RECHECK_MS = 5_000;

export class WorkspaceJobsProducer {
  private readonly connection: RedisClient;
  private readonly pool: QueryPool;
  private readonly prefix: string;
  private readonly attempts: number;
  private readonly log: Logger;
  private readonly resultRecheckMs: number;
  private readonly metrics: Metrics | undefined;
  private readonly queue: WorkspaceQueue;
  private readonly publisher: EventPublisher;
  private readonly order: ChatOrder;
  private readonly cancels: CancelRequests;
  /** Set by fromConfig: the producer built its connection and pool, so close() closes them. */
  private ownsConnections = false;
  private readonly changes: PgNotificationHub | undefined;
  private subscriberConnection: RedisClient | undefined;
  private subscriber: EventSubscriber | undefined;
  /** Aborted by close(): every pending waitForResult rejects. */
  private readonly closing = new AbortController();
  private closed: Promise<void> | undefined;

  constructor(options: ProducerOptions) {
    this.connection = options.connection;
    this.pool = options.pool;
    this.prefix = options.prefix;
    this.attempts = options.attempts ?? DEFAULT_JOB_ATTEMPTS;
    this.log = options.log ?? pino({ level: 'silent' });
    this.resultRecheckMs = options.resultRecheckMs ?? DEFAULT_RESULT_RECHECK_MS;
    this.metrics = options.metrics;
    this.changes = options.changes;
    // Every pending waitForResult listens here (and removes its listener); many at once is normal.
    setMaxListeners(0, this.closing.signal);
    this.queue = new Queue<ChatPayload, JobResult, JobName>(QUEUE_NAME, {
      connection: this.connection,
      prefix: this.prefix,
      telemetry: options.telemetry ?? bullmqTelemetry(),
    });
    // An EventEmitter without an 'error' listener would throw; connection trouble surfaces on the calls.
    this.queue.on('error', (error) => this.log.warn({ err: error }, 'workspace-jobs queue error'));
    this.publisher = new EventPublisher(this.connection, this.prefix, { log: this.log });
    this.order = new ChatOrder(this.connection, this.prefix);
    this.cancels = new CancelRequests(this.connection, this.prefix);
  }

  /** Builds its own connections from config; close() then closes them. */
  static fromConfig(
    config: Config,
    log?: Logger,
    options: Pick<ProducerOptions, 'metrics'> = {},
  ): WorkspaceJobsProducer {
    const producer = new WorkspaceJobsProducer({
      connection: createRedis(config.redisUrl, {
        name: 'workspace-jobs-producer',
        log,
        cluster: config.redisCluster,
      }),
      pool: createPool(config.databaseUrl, { max: 5, applicationName: 'workspace-jobs-producer', log }),
      prefix: config.queuePrefix,
      attempts: config.jobAttempts,
      changes: new PgNotificationHub(config.databaseUrl, { log }),
      log,
      metrics: options.metrics,
    });
    producer.ownsConnections = true;
    return producer;
  }

  /**
   * Enqueues a start of the chat's workspace, at most one per workspace while one is waiting, delayed or
   * active. `workspaceId` is looked up from the chat when omitted. Throws ValidationError (nothing
   * enqueued) for a payload that does not validate, an unknown chat or a chat without a workspace.
   * Ownership is not checked here: the worker does that. Ids may come in any case; they are used in lower
   * case (the returned `workspaceId` too).
   */
  startWorkspace(input: StartWorkspaceInput): Promise<EnqueuedStart> {
    return this.enqueue('start-workspace', input);
  }

  /**
   * Enqueues the creation of a workspace for the chat, at most one per chat while one is waiting, delayed
   * or active. Throws ValidationError (nothing enqueued) for a payload that does not validate. Ids may come
   * in any case; they are used in lower case.
   */
  createWorkspace(input: CreateWorkspaceInput): Promise<EnqueuedCreate> {
    return this.enqueue('create-workspace', input);
  }

  /**
   * Enqueues a stop of the chat's workspace, at most one per workspace while one is waiting, delayed or
   * active; it runs after any start or create of the chat that holds its lock. `workspaceId` is looked up
   * from the chat when omitted. Throws ValidationError as startWorkspace does.
   */
  stopWorkspace(input: StopWorkspaceInput): Promise<EnqueuedStop> {
    return this.enqueue('stop-workspace', input);
  }

  /**
   * Enqueues a job of any kind (the typed methods above are this with the kind's name): validates the input,
   * fills what the kind looks up itself (`resolve`), adds the job deduplicated by the kind's `dedupeBy` field, and
   * announces it on the chat's stream. Throws ValidationError (nothing enqueued) for input that does not
   * validate or cannot be resolved.
   */
  async enqueue<N extends JobName>(name: N, input: JobTypes<N>['input']): Promise<Enqueued<N>> {
    this.assertOpen();
    const kind: AnyJobKind = jobKind(name);
    // Validated also for TypeScript callers: the type says nothing about a UUID's form or a name's length.
    const parsed = parseOrThrow(kind.inputSchema, `${name} payload`, input);
    const payload = withoutUndefined(kind.resolve ? await kind.resolve(parsed, this.lookups) : parsed);
    const { enqueued, running } = await this.add(
      name,
      payload,
      dedupeIdOf(kind, payload),
      kind.comparedFields,
    );
    if (!enqueued.deduplicated) {
      await this.announce(queuedDraft(kind, payload, enqueued.jobId));
    } else {
      // The job's own payload as its worker parses it: its chat, and its `queued` event.
      const job = kind.payloadSchema.safeParse(running);
      // The announcement must not come before the job's `queued` event (a no-op when that is out).
      if (job.success) await this.announce(queuedDraft(kind, job.data, enqueued.jobId));
      await this.announce(
        {
          type: 'progress',
          stage: 'deduplicated',
          job: { id: enqueued.jobId, name, attempt: 0 },
          chatId: payload.chatId,
          ...(payload.workspaceId !== undefined && { workspaceId: payload.workspaceId }),
          message: `${kind.alreadyQueued} as job ${enqueued.jobId}${notApplied(enqueued.differs)}`,
          data: {
            ...(payload.requestId !== undefined && { request_id: payload.requestId }),
            differs: enqueued.differs,
          },
        },
        // A job that can no longer be read is done: its chat is unknown, and this one is not told its result.
        { chatId: job.success ? job.data.chatId : payload.chatId, differs: enqueued.differs },
      );
    }
    const workspace = payload.workspaceId !== undefined && { workspaceId: payload.workspaceId };
    return { ...enqueued, ...workspace } as Enqueued<N>;
  }

  /**
   * Resolves with the job's result (docs/design.md §7), success or failure alike: it rejects only
   * when the job does not exist (JobNotFoundError), on timeout (WaitTimeoutError) or when the producer
   * closes. The result comes from the job's `result` event on the chat's stream, or from the job itself
   * when it has already finished (so a stream that has expired does not matter). A UUID job id (the
   * producer's) may come in any case.
   */
  async waitForResult(givenJobId: string, options: WaitForResultOptions): Promise<JobResult> {
    this.assertOpen();
    if (!Number.isFinite(options.timeoutMs) || options.timeoutMs <= 0) {
      throw new RangeError(`timeoutMs must be a positive number of milliseconds, got ${options.timeoutMs}`);
    }
    // Only a UUID is normalised: a job someone added by hand may have any id, e.g. BullMQ's counter.
    const jobId = idSchema.safeParse(givenJobId).data ?? givenJobId;
    const job = await this.queue.getJob(jobId);
    // A canceled job is removed, but its result stays out.
    if (!job) return this.resultOfRemoved(jobId);
    // Someone who bypassed the producer may have added a job without a valid chat: then only its state tells.
    const chatId = idSchema.safeParse(job.data?.chatId).data;

    let done = false;
    let resolveResult!: (result: JobResult) => void;
    let rejectResult!: (error: unknown) => void;
    const outcome = new Promise<JobResult>((resolve, reject) => {
      resolveResult = resolve;
      rejectResult = reject;
    });
    const timer = setTimeout(
      () =>
        rejectResult(
          new WaitTimeoutError(`job ${jobId} has no result after ${options.timeoutMs} ms`, options.timeoutMs),
        ),
      options.timeoutMs,
    );
    const onClose = () => rejectResult(new ProducerClosedError());
    this.closing.signal.addEventListener('abort', onClose, { once: true });
    let recheck: NodeJS.Timeout | undefined;
    let unsubscribe: (() => Promise<void>) | undefined;

    const checkState = async () => {
      try {
        const result = await this.resultFromJob(jobId, job.name);
        if (result) resolveResult(result);
      } catch (error) {
        // A removed job ends the wait at once; anything else (a Redis hiccup) waits for the next check.
        if (error instanceof JobNotFoundError) rejectResult(error);
        else throw error;
      }
    };
    const watching = (async () => {
      // Subscribe first (replaying the whole stream), then read the job: a job that finishes in between
      // is seen by one or the other.
      if (chatId !== undefined) {
        unsubscribe = await this.subscribe(
          chatId,
          (event) => {
            if (event.type === 'result' && event.job.id === jobId && event.data) {
              resolveResult(event.data);
            }
          },
          { since: '0' },
        );
      }
      if (done) return;
      await checkState();
      if (done) return;
      recheck = setInterval(() => {
        checkState().catch((error: unknown) =>
          this.log.warn({ err: error, jobId }, 'could not re-read the state of a job being waited for'),
        );
      }, this.resultRecheckMs);
    })();
    watching.catch(rejectResult);

    try {
      return await outcome;
    } finally {
      done = true;
      clearTimeout(timer);
      clearInterval(recheck);
      this.closing.signal.removeEventListener('abort', onClose);
      // A subscription still being set up is removed as soon as it exists.
      void watching
        .catch(() => {})
        .then(() => unsubscribe?.())
        .catch((error: unknown) => this.log.warn({ err: error, chatId }, 'could not unsubscribe'));
    }
  }

  /**
   * Calls `onEvent` with the chat's events: first those after `since` still in the replay stream, then
   * live ones. Resolves once subscribed, with a function that unsubscribes. The chat id may come in any case.
   */
  async subscribe(
    chatId: string,
    onEvent: (event: WorkspaceJobEvent) => void,
    options: SubscribeOptions = {},
  ): Promise<() => Promise<void>> {
    this.assertOpen();
    const parsed = idSchema.safeParse(chatId);
    if (!parsed.success) {
      throw new ValidationError(`invalid chatId: ${JSON.stringify(chatId)} is not a UUID`);
    }
    return this.eventSubscriber().subscribe(parsed.data, onEvent, options);
  }

  /**
   * The build's log lines (provisioner_job_logs) after `after`, in order; with `follow`, live until its
   * provisioner job completes, then the last lines. The first next() throws UnknownBuildError for an unknown
   * build and ValidationError for a bad `after`. close() ends it like `signal`.
   */
  async *buildLogs(
    buildId: string,
    options: BuildLogsOptions = {},
  ): AsyncGenerator<BuildLogLine, void, undefined> {
    this.assertOpen();
    const follow = options.follow ?? false;
    const signal = options.signal
      ? AbortSignal.any([options.signal, this.closing.signal])
      : this.closing.signal;
    if (follow) await this.changes?.ready();
    for await (const batch of followBuildLogs(this.pool, this.changes, buildId, {
      after: options.after,
      follow,
      signal,
    }))
      yield* batch;
  }

  /**
   * Cancels the job (see CancelAnswer). The marker is set first, so that a worker picking the job up
   * meanwhile ends it canceled. A waiting or delayed job that carries an earlier attempt's build (its progress
   * has a buildId) is left to a worker, which cancels that build first. Any other is removed, its canceled
   * result published first: a producer that dies midway leaves a result out, never a job gone without one,
   * and a worker that finished or picked the job up meanwhile ends with whichever result came first.
   */
  async cancel(givenJobId: string, options: CancelOptions = {}): Promise<CancelAnswer> {
    this.assertOpen();
    const reason = reasonOf(options);
    const jobId = idSchema.safeParse(givenJobId).data ?? givenJobId;
    const job = await this.queue.getJob(jobId);
    if (!job) {
      const published = await this.publishedResultOf(jobId);
      return published
        ? { jobId, outcome: 'already_finished', result: published }
        : { jobId, outcome: 'not_found' };
    }
    const state = await job.getState();
    if (state === 'completed' || state === 'failed') {
      return { jobId, outcome: 'already_finished', result: await this.resultFromJob(jobId) };
    }
    // Its result is out, BullMQ's record of it about to follow: finished for every caller.
    const out = await this.publishedResultOf(jobId);
    if (out) return { jobId, outcome: 'already_finished', result: out };
    const request = await this.cancels.mark(jobId, reason);
    const progress = job.progress as Partial<JobProgress> | undefined;
    if (state === 'active' || typeof progress?.buildId === 'string') {
      // Removed, the job would leave its build pending or running: a worker cancels it, now rather than
      // after the job's backoff.
      if (state === 'delayed') {
        await job
          .promote()
          .catch((error: unknown) =>
            this.log.debug({ err: error, jobId }, 'the canceled job left delayed meanwhile'),
          );
      }
      await this.cancels.broadcast(jobId);
      return { jobId, outcome: 'cancel_requested' };
    }
    const result = failures(job.name).canceled(request);
    const chatId = idSchema.safeParse(job.data?.chatId).data;
    if (chatId !== undefined) {
      // Once per job: null when a worker's result came first (the job finished meanwhile).
      const event = await this.publisher.publish({
        type: 'result',
        stage: 'failed',
        job: { id: jobId, name: job.name, attempt: job.attemptsMade + 1 },
        chatId,
        workspaceId: job.data.workspaceId,
        message: result.error,
        data: result,
      });
      if (!event) return { jobId, outcome: 'already_finished', result: await this.publishedResultOf(jobId) };
    }
    try {
      await job.remove();
    } catch (error) {
      // Picked up meanwhile: its worker ends it with the published result (or, without a chat, canceled).
      this.log.debug({ err: error, jobId }, 'job became active while canceled; its worker ends it');
      await this.cancels.broadcast(jobId);
      if (chatId === undefined) return { jobId, outcome: 'cancel_requested' };
    }
    // Until the key is gone, an enqueue of the same workspace is deduplicated onto this job: its caller
    // gets the canceled result too.
    await job.removeDeduplicationKey();
    if (chatId !== undefined) await this.leaveOrderCanceled(chatId, jobId);
    return { jobId, outcome: 'canceled', was: state, result };
  }

  /**
   * Takes a removed job out of its chat's order; when it was the chat's turn, hands the turn on to the next
   * job, which may be sleeping out a lock-wait re-delay behind it (as a worker does when it lets go).
   */
  private async leaveOrderCanceled(chatId: string, jobId: string): Promise<void> {
    const wasHead = (await this.order.head(chatId)) === jobId;
    await this.order.leave(chatId, jobId);
    if (!wasHead) return;
    await handOffChat(this.order, promoteThrough(this.queue), chatId, jobId).catch((error: unknown) =>
      this.log.warn(
        { err: error, chatId, jobId },
        'could not hand the chat to its next job; it takes its turn after its re-delay',
      ),
    );
  }

  /**
   * Cancels every live job of the chat: its own (its order set lists them), oldest first, then those of other
   * chats it was deduplicated onto (two chats sharing a workspace), in the order it joined them. Such a job is
   * the chat's request too: its stream shows the job and gets its result. Canceled, it ends for every chat.
   */
  async cancelChat(givenChatId: string, options: CancelOptions = {}): Promise<CancelAnswer[]> {
    this.assertOpen();
    const chatId = parseOrThrow(idSchema, 'chatId', givenChatId);
    // Checked before the list is read: a bad reason is refused even when the chat has no live job.
    const reason = reasonOf(options);
    const jobIds = [...(await this.order.jobs(chatId)), ...(await this.watchedJobs(chatId))];
    const answers: CancelAnswer[] = [];
    for (const jobId of jobIds) answers.push(await this.cancel(jobId, { reason }));
    return answers;
  }

  /**
   * The unfinished jobs of other chats this chat watches: the jobs its stream names whose watcher set still
   * holds the chat (a job's result deletes that set). A watcher gets each of the job's events, so the job stays
   * named there while it runs, unless ~1000 other events of the chat came after its last one.
   */
  private async watchedJobs(chatId: string): Promise<string[]> {
    const events = await readChatEvents(this.connection, this.prefix, chatId, '0', undefined, this.log);
    // A chat is a watcher only of other chats' jobs: its own are left out by the membership check.
    const named = [...new Set(events.map((event) => event.job.id))];
    const keys = redisKeys(this.prefix);
    const watching = await Promise.all(
      named.map((jobId) => this.connection.sismember(keys.jobChats(jobId), chatId)),
    );
    return named.filter((_, i) => watching[i] === 1);
  }

  /** Rejects pending waits, closes the queue and the subscriber, and connections built by fromConfig. */
  close(): Promise<void> {
    this.closed ??= this.doClose();
    return this.closed;
  }

  private async doClose(): Promise<void> {
    this.closing.abort();
    const errors: unknown[] = [];
    const step = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (error) {
        this.log.warn({ err: error }, `could not close the producer's ${what}`);
        errors.push(error);
      }
    };
    if (this.subscriber) await step('event subscriber', () => this.subscriber!.close());
    if (this.subscriberConnection)
      await step('subscriber connection', () => closeRedis(this.subscriberConnection!));
    await step('queue', () => this.queue.close());
    if (this.ownsConnections) {
      if (this.changes) await step('LISTEN connection', () => this.changes!.stop());
      await step('Redis connection', () => closeRedis(this.connection));
      await step('Postgres pool', () => this.pool.end());
    }
  }

  private assertOpen(): void {
    if (this.closing.signal.aborted) throw new ProducerClosedError();
  }

  /** What the kinds' `resolve` may look up, for an input that leaves something out. */
  private readonly lookups: EnqueueLookups = {
    workspaceOfChat: (chatId) => this.workspaceOfChat(chatId),
  };

  private async workspaceOfChat(chatId: string): Promise<string> {
    const { rows } = await this.pool.query<{ workspace_id: string | null; owner_id: string }>(
      'SELECT workspace_id, owner_id FROM chats WHERE id = $1',
      [chatId],
    );
    const chat = rows[0];
    if (!chat) throw new ValidationError(`chat ${chatId} not found`);
    if (!chat.workspace_id) {
      throw new ValidationError(`chat ${chatId} has no workspace; use create_workspace first`);
    }
    return chat.workspace_id;
  }

  /**
   * One `enqueue` span per call; each attempt of the job links to it. A deduplicated call is compared with
   * the job it was merged into on `fields`. The job enters its chat's order before it is added, so that no
   * worker sees it without its place; an add that adds nothing takes the entry out again. A deduplicated
   * call also returns the data of the job it was merged into (`running`, undefined once that job is gone).
   */
  private add<F extends string>(
    name: JobName,
    data: ChatPayload,
    deduplicationId: string,
    fields: readonly F[],
  ): Promise<{ enqueued: EnqueuedJob<F>; running?: unknown }> {
    const attributes = {
      [ATTR.jobName]: name,
      [ATTR.chatId]: data.chatId,
      ...(data.workspaceId !== undefined && { [ATTR.workspaceId]: data.workspaceId }),
    };
    return inSpan(`enqueue ${name}`, { kind: SpanKind.PRODUCER, attributes }, async (span) => {
      const jobId = randomUUID();
      await this.order.enter(data.chatId, jobId);
      let job;
      try {
        job = await this.queue.add(
          name,
          data,
          jobOptions({ jobId, deduplicationId, attempts: this.attempts, traceContext: traceCarrier() }),
        );
      } catch (error) {
        await this.leaveOrder(data.chatId, jobId);
        throw error;
      }
      // A duplicate add returns a Job carrying the id of the job that holds the deduplication key.
      const actualId = job.id ?? jobId;
      const deduplicated = actualId !== jobId;
      if (deduplicated) await this.leaveOrder(data.chatId, jobId);
      span.setAttributes({ [ATTR.jobId]: actualId, [ATTR.deduplicated]: deduplicated });
      (deduplicated ? this.metrics?.deduplicatedEnqueues : this.metrics?.enqueued)?.inc({ name });
      if (!deduplicated) {
        this.log.debug({ jobId, name, deduplicationId }, 'workspace job enqueued');
        return { enqueued: { jobId, deduplicated } };
      }
      // The job's data is written once, at its add: what it holds now is what it runs with.
      const running = (await this.queue.getJob(actualId))?.data as Partial<Record<F, unknown>> | undefined;
      const ours = data as Partial<Record<F, unknown>>;
      const differs = fields.filter((field) => !sameValue(field, ours[field], running?.[field]));
      this.log.debug({ jobId: actualId, name, deduplicationId, differs }, 'workspace job deduplicated');
      return { enqueued: { jobId: actualId, deduplicated, differs }, running };
    });
  }

  /** Takes out the entry of a job that was not added; a failure is logged: the grace covers it. */
  private async leaveOrder(chatId: string, jobId: string): Promise<void> {
    try {
      await this.order.leave(chatId, jobId);
    } catch (error) {
      this.log.warn(
        { err: error, chatId, jobId },
        "could not remove a job that was not added from its chat's order; the chat's next job waits out the grace",
      );
    }
  }

  /**
   * Publishes a queued event, or with `deduplicatedOnto` (the chat of the job it was deduplicated onto, and
   * what differs from it) a deduplicated one; a failure is logged, never thrown: the job is enqueued.
   */
  private async announce(
    draft: EventDraft,
    deduplicatedOnto?: { chatId: string; differs: readonly string[] },
  ): Promise<void> {
    try {
      if (deduplicatedOnto === undefined) await this.publisher.publish(draft);
      else await this.publisher.announceDeduplicated(draft, deduplicatedOnto);
    } catch (error) {
      this.metrics?.eventPublishFailures.inc({ type: draft.type });
      this.log.warn(
        { err: error, jobId: draft.job.id, chatId: draft.chatId, stage: draft.stage },
        'job enqueued, but its event could not be published',
      );
    }
  }

  /** The job's published result (its event's data), if one is out. */
  private async publishedResultOf(jobId: string): Promise<JobResult | undefined> {
    const published = await this.publisher.publishedResult(jobId);
    return published?.type === 'result' && published.data ? published.data : undefined;
  }

  /**
   * The result of a job that is gone: its published result first (a cancel's, or a worker's that beat a
   * cancel request, then removeOnComplete), else the canceled one of a job that a cancel removed without a
   * chat to publish to (its kind, `name`, known); JobNotFoundError when neither.
   */
  private async resultOfRemoved(jobId: string, name?: JobName): Promise<JobResult> {
    const published = await this.publishedResultOf(jobId);
    if (published) return published;
    const request = await this.cancels.read(jobId);
    if (request && name) return failures(name).canceled(request);
    throw new JobNotFoundError(jobId);
  }

  /** The job's result once it finished; undefined before; JobNotFoundError when the job is gone. */
  private async resultFromJob(jobId: string, name?: JobName): Promise<JobResult | undefined> {
    // Both at once: one round trip's wait, every safety re-check of every waiter.
    const [state, job] = await Promise.all([this.queue.getJobState(jobId), this.queue.getJob(jobId)]);
    // Removed while waited for (removeOnComplete/removeOnFail, or by hand): no result will ever come.
    if (!job || state === 'unknown') return this.resultOfRemoved(jobId, name);
    if (state !== 'completed' && state !== 'failed') return undefined;
    const progress = job.progress as Partial<JobProgress> | number | string | boolean | null | undefined;
    const fromProgress =
      progress !== null && typeof progress === 'object' && isResult(progress.result)
        ? progress.result
        : undefined;
    if (state === 'completed') {
      if (isResult(job.returnvalue)) return job.returnvalue;
      return (
        fromProgress ??
        internalFailure(job.name, `job ${jobId} completed without a result`, 'no return value')
      );
    }
    return fromProgress ?? internalFailure(job.name, job.failedReason || `job ${jobId} failed`);
  }

  private eventSubscriber(): EventSubscriber {
    if (!this.subscriber) {
      // Subscriber mode takes a connection of its own (always closed by close()); it retries forever while
      // Redis reconnects. It has the connection's options (URL or cluster, TLS, password) and its own
      // error listener (a duplicate has none of the original's listeners).
      this.subscriberConnection = duplicateSubscriber(
        this.connection,
        `${connectionNameOf(this.connection) ?? 'workspace-jobs-producer'}-sub`,
        this.log,
      );
      this.subscriber = new EventSubscriber({
        subscriber: this.subscriberConnection,
        commands: this.connection,
        prefix: this.prefix,
        log: this.log,
      });
    }
    return this.subscriber;
  }
}

/** The cancel's reason, trimmed; ValidationError names what is wrong with it. */
function reasonOf(options: CancelOptions): string | undefined {
  return options.reason === undefined
    ? undefined
    : parseOrThrow(cancelReasonSchema, 'reason', options.reason);
}

/** The payload without the keys a caller gave as `undefined`: what is not set is not stored in the job. */
function withoutUndefined(payload: ChatPayload): ChatPayload {
  return Object.fromEntries(
    Object.entries(payload).filter(([, value]) => value !== undefined),
  ) as ChatPayload;
}

/**
 * Our (parsed) value against the running job's: ids case-blind (a job added by hand may hold upper case),
 * parameters as a set of pairs, with no parameters the same as `{}`.
 */
function sameValue(field: string, ours: unknown, theirs: unknown): boolean {
  if (field === 'parameters') {
    const a = (ours ?? {}) as Record<string, unknown>;
    const b = isRecord(theirs) ? theirs : {};
    const names = Object.keys(a);
    return names.length === Object.keys(b).length && names.every((n) => Object.hasOwn(b, n) && b[n] === a[n]);
  }
  if (field.endsWith('Id')) return typeof theirs === 'string' && ours === theirs.toLowerCase();
  return ours === theirs;
}

/** `; it keeps its own ownerId and parameters, which differ from this request's`, or nothing. */
function notApplied(differs: readonly string[]): string {
  if (differs.length === 0) return '';
  const list = differs.length === 1 ? differs[0] : `${differs.slice(0, -1).join(', ')} and ${differs.at(-1)}`;
  return `; it keeps its own ${list}, which differ from this request's`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function isResult(value: unknown): value is JobResult {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** `kind`: the job's name (one added by hand may have any; ours are all job names). */
function internalFailure(kind: string, error: string, detail?: string): JobFailure {
  return { ...failures(kind as JobName).flagged('internal', error), ...(detail !== undefined && { detail }) };
}
