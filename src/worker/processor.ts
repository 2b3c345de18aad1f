// The BullMQ side of a job: validate the payload, take the chat lock (re-delaying the job while it is
// busy), run the domain logic with events wired to the job, and end with exactly one result event.
// Thrown errors are transient and retried by BullMQ with backoff; failures the domain logic reports are
// final. A job whose failure result answers the request (FAILURE_KINDS `expected`, e.g.
// manual_update_required) completes with it as its return value, so that BullMQ's failed list and counts hold
// only real failures (`internal`, `invalid_payload`): those fail without retries, with the stack of the error
// behind them.
//
// A job runs as a pipeline of named steps: parsePayload → takeLockOrDelay → runUnderLock → settle, then
// handOff; every write to the job's BullMQ progress is checked against the job's lock (EventPublisher). The jobs of one chat take its
// lock in enqueue order (chat-order.ts): a job waits while an earlier one of its chat is live, leaves the
// order as its result goes out, and once its lock is released promotes the chat's next job out of its re-delay.
//
// Metrics (when `metrics` is given): a job's outcome is counted in settle for every outcome the processor
// reports, and by observeFailedJob (the worker's `failed` event) only for retried attempts and for failures
// BullMQ decides alone (attempts used up by thrown errors, a job stalled too often).
import { DelayedError, UnrecoverableError, type Job } from 'bullmq';
import { StaleAttemptError, type EventPublisher, type JobOwner } from '../shared/events.js';
import {
  isFailure,
  type FailureCode,
  type EventDraft,
  type JobFailure,
  type JobName,
  type JobProgress,
  type JobRef,
  type JobResult,
  type ProgressStage,
  type WorkspaceJobEvent,
} from '../shared/contract.js';
import {
  FINISHED_JOB_STATUSES,
  topics,
  type ChangeWaiter,
  type JobContext,
  type QueueWatch,
  type WaitTimeouts,
  type WorkspaceStore,
} from './ports.js';
import {
  LockLostError,
  LockUnavailableError,
  type ChatLocks,
  type HeldLock,
  type LockLossListener,
} from '../shared/lock.js';
import { DEFAULT_ORDER_GRACE_MS, type ChatOrder, type JobStateReader } from '../shared/chat-order.js';
import { handOffChat, type Promote } from '../shared/chat-hand-off.js';
import { LazyChildLogger, type JobLogger, type Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import { describeIssues } from '../shared/schemas.js';
import type { CancelRequest } from '../shared/cancel-requests.js';
import { WaitTimeoutError } from '../shared/errors.js';
import { DEFAULT_KILL_GRACE_MS } from '../shared/provisioner-cancel.js';
import type { ChatPayload } from '../jobs/job-kind.js';
import { findJobKind, queuedDraft, type AnyJobKind } from '../jobs/registry.js';
import { failures } from './results.js';
import { jobLogEntry } from './job-log.js';
import type { CancelListener, CancelWatch } from './cancel-listener.js';
import { AdmissionClosedError, type Admission, type AdmissionTicket } from './admission.js';

export interface ProcessorOptions {
  locks: ChatLocks;
  /** The chats' enqueue order, on the queue's Redis. */
  order: ChatOrder;
  /** A job's BullMQ state (Queue.getJobState): whether an earlier job of the chat has ended. */
  jobState: JobStateReader;
  /**
   * How long an order entry whose job does not exist yet holds up the chat (its producer may be between
   * entering it and adding the job). Default 30000.
   */
  orderGraceMs?: number;
  publisher: EventPublisher;
  store: WorkspaceStore;
  waiter: ChangeWaiter;
  /** The process's shared reads of the build queue (queue-positions.ts). */
  queue: QueueWatch;
  timeouts: WaitTimeouts;
  accessUrl?: string;
  log: Logger;
  /** The hand-off to a chat's next job (promoteThrough the worker's queue); absent = it waits out its re-delay. */
  promote?: Promote;
  /**
   * First re-delay of a job that found its chat lock busy; doubles per wait. Default 1000. A hand-off
   * (promote) usually ends the wait sooner: the re-delay is the safety net for a lost one.
   */
  lockRetryMinMs?: number;
  /** Longest re-delay. Default 15000. */
  lockRetryMaxMs?: number;
  /**
   * How long a job may wait for its chat lock before it fails. Default: the longest a holder can keep
   * it (build + agent connect + startup script timeouts) plus a minute.
   */
  lockWaitTimeoutMs?: number;
  /** Observes each lock-held interval (the race tests record them). */
  onLockHeld?: (event: { chatId: string; jobId: string; phase: 'acquired' | 'released' }) => void;
  /** Where jobs, lock waits, builds and event failures are counted; absent = not counted. */
  metrics?: Metrics;
  /**
   * Test-only: awaited after the result event is out and before BullMQ records the outcome, so that a
   * test can kill the worker in that window.
   */
  afterResultPublished?: (jobId: string) => Promise<void>;
  /**
   * Cancel requests (docs/design.md §6): each attempt is watched while it runs, so that a request at pickup,
   * before a re-delay or while it runs ends it canceled; absent = not checked.
   */
  cancels?: Pick<CancelListener, 'watch'>;
  /**
   * How long a job canceled while it runs waits for the build it created to end (its daemon kills the
   * command: SIGTERM, then SIGKILL after the kill grace) before its canceled result goes out anyway.
   * Default the command executor's kill grace plus 10 s.
   */
  cancelSettleTimeoutMs?: number;
  /**
   * Aborted when the worker shuts down past its grace period: every attempt's work stops and its job goes
   * back to the queue. One signal for the worker rather than BullMQ's per job (a processor of two
   * parameters gets none): about 0.8 KiB less for each waiting job (issue 11).
   */
  shutdown?: AbortSignal;
  /**
   * The worker's bound on jobs doing their work at once (admission.ts): an attempt is admitted before its
   * chat lock and gives its slot back while it waits on notifications. Absent = no bound.
   */
  admission?: Admission;
}

/** The `name` label of a job: one of ours, else `unknown` (a label must not take arbitrary values). */
function nameLabel(name: string): string {
  return findJobKind(name) ? name : 'unknown';
}

/** When a worker first picked the job up: kept in its progress across attempts, else this attempt's start. */
function startedAtOf(job: Job): string {
  const kept = (job.progress as Partial<JobProgress> | undefined)?.startedAt;
  if (typeof kept === 'string' && !Number.isNaN(Date.parse(kept))) return kept;
  return new Date(job.processedOn ?? Date.now()).toISOString();
}

/** The job's BullMQ deduplication key, as BullMQ names it (its removeDeduplicationKey), when it has an id. */
function deduplicationKeyOf(job: Job): string | undefined {
  return job.deduplicationId === undefined
    ? undefined
    : `${job.queueQualifiedName}:de:${job.deduplicationId}`;
}

/** The build the job created, kept in its progress across attempts. */
function buildIdOf(job: Job): string | undefined {
  const kept = (job.progress as Partial<JobProgress> | undefined)?.buildId;
  return typeof kept === 'string' ? kept : undefined;
}

/**
 * A change to a job's BullMQ progress. `stage`: the job reached a stage (an event, or its result): what
 * outlives attempts (startedAt, buildId) is kept, the lock-wait count is not, so that a retry that finds the
 * lock busy again waits with a fresh bound. `facts`: added to the current stage (a lock wait, the job's build).
 */
type ProgressChange =
  | { kind: 'stage'; stage: JobProgress['stage']; message: string; result?: JobResult }
  | ({ kind: 'facts' } & Pick<JobProgress, 'lockWaits' | 'lockWaitStartedAt' | 'buildId'>);

/** The job's progress after `change` (see JobProgress); written only by emit, finish and recordProgress. */
function nextProgress(job: Job, change: ProgressChange): JobProgress {
  const kept = { startedAt: startedAtOf(job), buildId: buildIdOf(job) };
  if (change.kind === 'stage') {
    const { stage, message, result } = change;
    return { stage, message, at: new Date().toISOString(), ...kept, ...(result && { result }) };
  }
  const { kind: _kind, ...facts } = change;
  return { ...(job.progress as JobProgress), ...kept, ...facts };
}

/**
 * What a failure result means for operators (README, Alerting): `expected` is the right answer to the
 * request (the job completes with it), `failure` is ours to fix (the job fails in BullMQ). A Record, so that
 * a new code does not compile until it is classified.
 */
export const FAILURE_KINDS: Readonly<Record<FailureCode, 'expected' | 'failure'>> = {
  no_workspace: 'expected',
  workspace_deleted: 'expected',
  workspace_changed: 'expected',
  forbidden: 'expected',
  build_active: 'expected',
  build_failed: 'expected',
  build_canceled: 'expected',
  build_timeout: 'expected',
  manual_update_required: 'expected',
  invalid_parameters: 'expected',
  // The producer validates every payload: one that does not parse is a producer bug (or a job added by hand).
  invalid_payload: 'failure',
  internal: 'failure',
  // Someone asked for the job to stop: the answer they wanted.
  canceled: 'expected',
};

/** The `kind` label of a job's end: `ok`, or its failure code's kind (an unknown code is a failure). */
export function outcomeKind(outcome: string): 'ok' | 'expected' | 'failure' {
  if (outcome === 'ok') return 'ok';
  return Object.hasOwn(FAILURE_KINDS, outcome) ? FAILURE_KINDS[outcome as FailureCode] : 'failure';
}

/** Where a job with this result ends in BullMQ: only a real failure fails it. */
export function bullStateOf(result: JobResult): 'completed' | 'failed' {
  return isFailure(result) && outcomeKind(result.code) === 'failure' ? 'failed' : 'completed';
}

/** Counts a job's end: `outcome` is `ok` or the failure code; its duration runs from its first pickup. */
function recordFinished(metrics: Metrics | undefined, job: Job, outcome: string): void {
  if (!metrics) return;
  const labels = { name: nameLabel(job.name), outcome, kind: outcomeKind(outcome) };
  metrics.jobsFinished.inc(labels);
  const seconds = (Date.now() - Date.parse(startedAtOf(job))) / 1_000;
  metrics.jobDuration.observe(labels, Math.max(0, seconds));
}

export function createProcessor(options: ProcessorOptions) {
  const { locks, order, publisher, log, metrics } = options;
  const orderGraceMs = options.orderGraceMs ?? DEFAULT_ORDER_GRACE_MS;
  const observe: JobContext['observe'] = metrics && {
    buildCreated(build, updateReason) {
      metrics.buildsStarted.inc({ transition: build.transition });
      if (updateReason) metrics.autoUpdates.inc({ reason: updateReason });
    },
  };
  const retryMin = options.lockRetryMinMs ?? 1_000;
  const retryMax = options.lockRetryMaxMs ?? 15_000;
  const { buildTimeoutMs, agentConnectTimeoutMs, startupScriptTimeoutMs } = options.timeouts;
  const lockWaitTimeoutMs =
    options.lockWaitTimeoutMs ?? buildTimeoutMs + agentConnectTimeoutMs + startupScriptTimeoutMs + 60_000;
  const cancelSettleTimeoutMs = options.cancelSettleTimeoutMs ?? DEFAULT_KILL_GRACE_MS + 10_000;
  const signal = options.shutdown;
  // The attempts running under their chat lock, each stopped when the worker shuts down: one listener on the
  // worker's signal, not one per attempt (adding an EventTarget listener walks the ones there).
  const underLock = new Set<AttemptStop>();
  signal?.addEventListener('abort', () => underLock.forEach((stop) => stop.abort(signal.reason)), {
    once: true,
  });

  // The pipeline: parse the payload, take the chat lock or re-delay, run under the lock, settle. Each step
  // either hands the next one what it needs or ends the job (a result to settle, or a thrown DelayedError).
  return async function process(job: Job, token?: string): Promise<JobResult> {
    // Its work stops when the job is canceled, watched from its pickup (a cancel request made before it, or
    // during any step, is seen); under its chat lock also when the lock is lost or the worker shuts down.
    const stop = new AttemptStop(metrics);
    const watch = await options.cancels?.watch(job.id!, stop);
    const canceled = watch && stop.signal;
    // The chat this attempt hands on as it ends (handOff): every end but its own lock wait.
    const dataChatId = (job.data as Partial<ChatPayload> | undefined)?.chatId;
    let handOffChat = isChatId(dataChatId) ? dataChatId : undefined;
    const ticket = options.admission?.ticket();
    try {
      if (ticket) {
        // A job handed back before its turn keeps its place in its chat's order, like one re-delayed.
        await admit(job, ticket, token, canceled).catch((error: unknown) => {
          if (error instanceof DelayedError) handOffChat = undefined;
          throw error;
        });
      }
      const parsed = await parsePayload(job, token, stop, watch);
      if (parsed.failure) return settle(job, parsed.failure, parsed.log);
      const { attempt, kind, log: workspaceLog } = parsed;
      // A job picked up again (after a lock wait, a retry) has reported a stage: its `queued` is out already.
      if ((job.progress as Partial<JobProgress> | undefined)?.stage === undefined)
        await announceQueued(attempt, kind, parsed.payload);

      // An earlier attempt published the result and died before BullMQ recorded it: end with that result, so
      // that the event and the job's outcome agree (a re-run would find a different world, e.g. no build to make).
      const published = await recordedResult(attempt.ref.id);
      if (published) {
        workspaceLog.info('the result of an earlier attempt is already out; the job ends with it');
        await keepResult(attempt, published);
        return settle(job, published, workspaceLog);
      }

      // Canceled before it ran (or while an earlier attempt ran, which left its build behind).
      const request = cancelOf(attempt);
      if (request) {
        await cancelOwnBuild(attempt, buildIdOf(job), signal, workspaceLog);
        return settle(job, await finish(attempt, failures(attempt.ref.name).canceled(request)), workspaceLog);
      }
      const lock = await takeLockOrDelay(attempt, workspaceLog).catch((error: unknown) => {
        if (error instanceof DelayedError) handOffChat = undefined;
        throw error;
      });
      if (!lock.held) return settle(job, await finish(attempt, lock.failure), workspaceLog);
      const waiter = ticket?.waiter(options.waiter) ?? options.waiter;
      const result = await runUnderLock(
        attempt,
        lock.held,
        kind,
        parsed.payload,
        signal,
        waiter,
        workspaceLog,
      );
      return settle(job, result, workspaceLog);
    } finally {
      ticket?.done();
      watch?.done();
      if (handOffChat !== undefined) await handOff(handOffChat, job.id!);
    }
  };

  /**
   * Step 0: a slot of the worker's admission bound, before anything else. A cancel while the job waits
   * admits it at once (its canceled end is cheap); the worker's close (which refuses the waiting jobs at once,
   * without waiting out its grace period), or a wait longer than the admission timeout, hands it back to the
   * queue without spending an attempt (DelayedError).
   */
  async function admit(
    job: Job,
    ticket: AdmissionTicket,
    token: string | undefined,
    canceled: AbortSignal | undefined,
  ): Promise<void> {
    try {
      await ticket.enter(canceled);
    } catch (error) {
      if (canceled?.aborted) return;
      if (!(error instanceof AdmissionClosedError || error instanceof WaitTimeoutError)) throw error;
      log.info({ jobId: job.id, reason: String(error) }, 'job not admitted; it goes back to the queue');
      await job.moveToDelayed(Date.now(), token);
      throw new DelayedError();
    }
  }

  /**
   * Step 5 (docs/design.md §5): the attempt has released its chat lock (runUnderLock's finally) or left the
   * chat's order, so the chat's next job in enqueue order, which may be sleeping out a lock-wait re-delay,
   * is promoted to take its turn now (handOffChat). Without promote, the next job takes its turn after its
   * re-delay.
   */
  async function handOff(chatId: string, jobId: string): Promise<void> {
    const { promote } = options;
    if (!promote) return;
    try {
      await handOffChat(order, promote, chatId, jobId);
    } catch (error) {
      log.warn(
        { err: error, chatId, jobId },
        'could not hand the chat to its next job; it takes its turn after its re-delay',
      );
    }
  }

  /** The attempt's cancel request, once it was made. */
  function cancelOf(attempt: Attempt): CancelRequest | undefined {
    return attempt.cancel?.request;
  }

  /**
   * A canceled job's own build (the one it created, recorded in ownBuildId; not one it merely waited on,
   * docs/start-workspace.md): marked canceled, and waited for until it has ended, at most
   * cancelSettleTimeoutMs, so that the canceled result comes after the build's end. A wait cut short (by
   * the timeout, the lock's loss, the worker's shutdown) leaves the rest to its daemon.
   */
  async function cancelOwnBuild(
    attempt: Attempt,
    buildId: string | undefined,
    signal: AbortSignal | undefined,
    workspaceLog: JobLogger,
  ): Promise<void> {
    if (buildId === undefined) return;
    const store = fencedStore(options.store, attempt.fence);
    const build = await store.getBuild(buildId);
    if (!build || FINISHED_JOB_STATUSES.has(build.jobStatus)) return;
    const done = await store.cancelProvisionerJob(build.jobId);
    workspaceLog.info(
      { buildId, provisionerJobId: build.jobId, done },
      "the canceled job's build is canceled",
    );
    if (done !== 'canceling') return;
    try {
      await options.waiter.waitFor(
        [topics.provisionerJob(build.jobId)],
        async () => {
          const current = await store.getBuild(buildId);
          return !current || FINISHED_JOB_STATUSES.has(current.jobStatus) ? true : undefined;
        },
        // No timed re-check: the build ends by a change of job_status, which notifies.
        { timeoutMs: cancelSettleTimeoutMs, signal },
      );
    } catch (error) {
      if (!(error instanceof WaitTimeoutError) && !signal?.aborted) throw error;
      workspaceLog.warn(
        { err: error, buildId },
        'the canceled build has not ended yet; the job ends canceled and its daemon finishes the cancel',
      );
    }
  }

  /**
   * Step 1: the job's kind and payload. A job of no kind of ours, or whose payload does not parse, ends here
   * with an invalid_payload failure (its result event goes out when its chat id can carry one).
   */
  async function parsePayload(
    job: Job,
    token: string | undefined,
    stop: AttemptStop,
    cancel: CancelWatch | undefined,
  ): Promise<
    | { failure: JobFailure; log: JobLogger }
    | { failure?: undefined; attempt: Attempt; kind: AnyJobKind; payload: ChatPayload; log: JobLogger }
  > {
    const ref: JobRef = { id: job.id!, name: job.name as JobName, attempt: job.attemptsMade + 1 };
    const jobLog = new LazyChildLogger(log, {
      jobId: ref.id,
      jobName: ref.name,
      attempt: ref.attempt,
      chatId: job.data?.chatId,
    });
    const { flagged } = failures(ref.name);
    const kind = findJobKind(job.name);
    if (!kind)
      return {
        failure: flagged('invalid_payload', `unknown job name ${JSON.stringify(job.name)}`),
        log: jobLog,
      };
    // Every event of this attempt, and every write to its progress, only while it holds the job's BullMQ lock.
    const jobKey = `${job.queueQualifiedName}:${job.id}`;
    const owner = token ? { lockKey: `${jobKey}:lock`, token } : undefined;

    const parsed = kind.payloadSchema.safeParse(job.data);
    if (!parsed.success) {
      const failure = flagged('invalid_payload', describeIssues(`${ref.name} payload`, parsed.error));
      // Only a chat id that parses can carry events; otherwise the failed job itself is the report.
      const chatId = (job.data as Partial<ChatPayload> | undefined)?.chatId;
      if (isChatId(chatId)) {
        await finish(
          { job, jobKey, ref, payload: { chatId } as ChatPayload, owner, fence: unfenced, stop, cancel },
          failure,
        );
      }
      jobLog.warn({ error: failure.error }, 'invalid payload; failing without retry');
      return { failure, log: jobLog };
    }
    // A copy: the events' workspace id changes as a create job goes, the kind's payload does not.
    const attempt: Attempt = {
      job,
      jobKey,
      ref,
      payload: { ...parsed.data },
      owner,
      fence: unfenced,
      stop,
      cancel,
    };
    const workspaceLog = jobLog.child({ workspaceId: parsed.data.workspaceId });
    return { attempt, kind, payload: parsed.data, log: workspaceLog };
  }

  /**
   * Step 2: the chat lock, once no earlier job of the chat is live in its order. Not this job's turn, or the
   * lock busy (or its nodes down): the job is re-delayed (DelayedError) without spending an attempt, until it
   * has waited longer than lockWaitTimeoutMs, which ends it with an internal failure.
   */
  async function takeLockOrDelay(
    attempt: Attempt,
    workspaceLog: JobLogger,
  ): Promise<{ held: HeldLock; failure?: undefined } | { held?: undefined; failure: JobFailure }> {
    const { job, ref, payload } = attempt;
    const progress = job.progress as Partial<JobProgress> | undefined;
    let held: HeldLock | null = null;
    let waitingFor = 'Another job for this chat is running; waiting';
    const ahead = await order.jobAhead(payload.chatId, ref.id, {
      jobState: options.jobState,
      graceMs: orderGraceMs,
    });
    if (ahead !== undefined) {
      waitingFor = `Job ${ahead}, enqueued earlier for this chat, goes first; waiting`;
    } else {
      try {
        held = await locks.tryAcquire(payload.chatId);
      } catch (error) {
        // Nobody can take the lock while its nodes are down: wait for them like for a busy chat.
        if (!(error instanceof LockUnavailableError)) throw error;
        waitingFor = `The chat lock cannot be taken (${error.message}); waiting`;
      }
    }
    if (held) {
      const since = progress?.lockWaitStartedAt;
      if (metrics && since !== undefined && !Number.isNaN(Date.parse(since))) {
        metrics.lockWait.observe(Math.max(0, (Date.now() - Date.parse(since)) / 1_000));
      }
      return { held };
    }

    const lockWaits = (progress?.lockWaits ?? 0) + 1;
    const lockWaitStartedAt = progress?.lockWaitStartedAt ?? new Date().toISOString();
    // A cancel that came while the job moved from delayed to active: end it rather than wait again. Before the
    // timeout: a canceled job ends canceled, not as an internal failure that alerts.
    const request = cancelOf(attempt);
    if (request) return { failure: failures(ref.name).canceled(request) };
    if (Date.now() - Date.parse(lockWaitStartedAt) > lockWaitTimeoutMs) {
      const error = `timed out after ${lockWaitTimeoutMs} ms waiting for the chat lock`;
      return { failure: failures(ref.name).flagged('internal', error) };
    }
    const delay = Math.min(retryMax, retryMin * 2 ** (lockWaits - 1)) * (0.75 + Math.random() / 2);
    if (lockWaits === 1) {
      await emit(attempt, 'waiting_for_lock', waitingFor, { retry_in_ms: Math.round(delay) });
    }
    await recordProgress(attempt, { kind: 'facts', lockWaits, lockWaitStartedAt });
    workspaceLog.debug({ lockWaits, delay, waitingFor, ahead }, 'chat lock not taken; re-delaying');
    // Re-delay without counting an attempt and without holding a worker slot while we wait.
    await job.moveToDelayed(Date.now() + Math.round(delay), attempt.owner?.token);
    metrics?.lockBusy.inc();
    throw new DelayedError();
  }

  /**
   * Step 3: the kind's domain logic under the chat lock, with its events and writes fenced by it, ending with
   * the job's one result event. Releases the lock whatever happens.
   */
  async function runUnderLock(
    unlocked: Attempt,
    held: HeldLock,
    kind: AnyJobKind,
    payload: ChatPayload,
    signal: AbortSignal | undefined,
    waiter: ChangeWaiter,
    workspaceLog: JobLogger,
  ): Promise<JobResult> {
    const { job, ref } = unlocked;
    workspaceLog.debug({ lock: held.resource }, 'chat lock acquired');
    options.onLockHeld?.({ chatId: payload.chatId, jobId: ref.id, phase: 'acquired' });
    // Its work stops when the chat lock is lost, the worker shuts down, or the job is canceled.
    const { stop } = unlocked;
    stop.follow(held, signal);
    underLock.add(stop);
    let ownBuildId = buildIdOf(job);
    // By the clock, not only by the signal: after a pause, I/O callbacks run before the lock's watchdog timer.
    const attempt: Attempt = {
      ...unlocked,
      fence: () => {
        if (!held.isHeld()) throw lockLoss(held);
      },
    };
    try {
      // A cancel that came while the lock was being taken: nothing has run yet, so the job ends canceled (a
      // kind that needs no wait, e.g. for a running workspace, would otherwise answer as if none came).
      const early = cancelOf(attempt);
      if (early)
        return await finish(
          attempt,
          await endCanceled(attempt, early, ownBuildId, held, signal, workspaceLog),
        );
      await emit(attempt, 'lock_acquired', 'Chat lock acquired');
      const ctx: JobContext = {
        store: fencedStore(options.store, attempt.fence),
        waiter,
        queue: options.queue,
        timeouts: options.timeouts,
        accessUrl: options.accessUrl,
        signal: stop.signal,
        observe,
        ownBuildId,
        recordBuild: async (buildId) => {
          ownBuildId = buildId;
          attempt.fence();
          try {
            await recordProgress(attempt, { kind: 'facts', buildId });
          } catch (error) {
            // The build runs either way; only a re-run after a crash would report it as "no build".
            workspaceLog.warn({ err: error, buildId }, "could not record the job's build in its progress");
          }
        },
        progress: (stage, message, data, workspaceId) => {
          // A create job learns its workspace as it goes; later events, the result too, carry it.
          if (workspaceId) attempt.payload.workspaceId = workspaceId;
          return emit(attempt, stage, message, data);
        },
      };
      let result: JobResult;
      try {
        result = await kind.run(ctx, payload);
      } catch (error) {
        result = await afterError(attempt, error, held, signal, ownBuildId, workspaceLog);
      }
      return await finish(attempt, result);
    } catch (error) {
      throw await stopIfLost(attempt, error, held, workspaceLog);
    } finally {
      stop.unfollow();
      underLock.delete(stop);
      // Reported before the release: once released, the next holder may already report `acquired`.
      options.onLockHeld?.({ chatId: payload.chatId, jobId: ref.id, phase: 'released' });
      workspaceLog.debug({ lock: held.resource }, 'chat lock releasing');
      await held.release();
    }
  }

  /** The result of a job canceled under its chat lock, once the build it created has been canceled. */
  async function endCanceled(
    attempt: Attempt,
    request: CancelRequest,
    ownBuildId: string | undefined,
    held: HeldLock,
    signal: AbortSignal | undefined,
    workspaceLog: JobLogger,
  ): Promise<JobFailure> {
    workspaceLog.info('job canceled under its chat lock');
    // Its wait for the build ends early once this attempt can no longer write, or must stop.
    const interrupted = signal ? AbortSignal.any([held.signal, signal]) : held.signal;
    await cancelOwnBuild(attempt, ownBuildId, interrupted, workspaceLog);
    return failures(attempt.ref.name).canceled(request);
  }

  /**
   * An attempt whose domain logic threw: ends it canceled (its cancel was requested), hands the job back
   * (worker shutting down), or gives the failure result of a last attempt, or throws for BullMQ to retry. A
   * lost lock or job is rethrown for stopIfLost. A kind that returned despite a cancel keeps its result.
   */
  async function afterError(
    attempt: Attempt,
    error: unknown,
    held: HeldLock,
    signal: AbortSignal | undefined,
    ownBuildId: string | undefined,
    workspaceLog: JobLogger,
  ): Promise<JobResult> {
    const { job } = attempt;
    if (isLost(error, held)) throw error;
    // Before the shutdown check: a job canceled while its worker drains ends canceled, it is not handed back.
    const request = cancelOf(attempt);
    if (request) return endCanceled(attempt, request, ownBuildId, held, signal, workspaceLog);
    if (signal?.aborted) {
      // The worker is shutting down: hand the job back without spending an attempt.
      workspaceLog.info('worker shutting down; returning the job to the queue');
      await emit(attempt, 'retrying', 'The worker is shutting down; the job goes back to the queue');
      attempt.fence();
      await job.moveToDelayed(Date.now(), attempt.owner?.token);
      throw new DelayedError();
    }
    const message = error instanceof Error ? error.message : String(error);
    if (isLastAttempt(job)) {
      workspaceLog.error({ err: error }, 'job failed on its last attempt');
      const failure = failures(attempt.ref.name).flagged('internal', message);
      if (error instanceof Error) causes.set(failure, error);
      return failure;
    }
    workspaceLog.warn({ err: error }, 'attempt failed; BullMQ will retry');
    await emit(attempt, 'retrying', `Attempt ${attempt.ref.attempt} failed (${message}); retrying`, {
      error: message,
    });
    attempt.retryAnnounced = true;
    throw error instanceof Error ? error : new Error(message);
  }

  /**
   * An attempt that lost its chat lock or its job writes nothing more to the job: no progress, no result, no
   * re-delay. Its one last event is `retrying`, and only while BullMQ still has it as the job's owner (the
   * publish script checks the job's lock token): then BullMQ retries it (or, on a last attempt, fails it and
   * the worker's `failed` handler publishes that result); once another worker owns the job, nothing.
   */
  async function stopIfLost(attempt: Attempt, error: unknown, held: HeldLock, workspaceLog: JobLogger) {
    if (error instanceof DelayedError || !isLost(error, held)) return error;
    const lost = error instanceof StaleAttemptError ? error : lockLoss(held);
    workspaceLog.warn(
      { err: lost },
      'this attempt lost its chat lock or its job; it stops without writing to the job',
    );
    if (lost instanceof StaleAttemptError || attempt.retryAnnounced || isLastAttempt(attempt.job))
      return lost;
    try {
      await publisher.publish(
        progressDraft(
          attempt,
          'retrying',
          `Attempt ${attempt.ref.attempt} failed (${lost.message}); retrying`,
          {
            error: lost.message,
          },
        ),
        { owner: attempt.owner },
      );
    } catch (publishError) {
      if (!(publishError instanceof StaleAttemptError)) {
        metrics?.eventPublishFailures.inc({ type: 'progress' });
        workspaceLog.warn({ err: publishError }, 'could not publish a progress event');
      }
    }
    return lost;
  }

  /** The result an earlier attempt of the job published, if any. */
  async function recordedResult(jobId: string): Promise<JobResult | undefined> {
    const event = await publisher.publishedResult(jobId);
    return event?.data as JobResult | undefined;
  }

  /**
   * Step 4, and the one place the processor counts a job's end: hands its result to BullMQ, returned (the job
   * completes) on success and on an expected failure, thrown (the job fails) on a real one.
   */
  function settle(job: Job, result: JobResult, workspaceLog: JobLogger): JobResult {
    const outcome = isFailure(result) ? result.code : 'ok';
    recordFinished(metrics, job, outcome);
    workspaceLog.info({ outcome }, 'job finished');
    if (isFailure(result) && bullStateOf(result) === 'failed') throw unrecoverable(result);
    return result;
  }

  function progressDraft(
    attempt: Attempt,
    stage: ProgressStage,
    message: string,
    data?: Record<string, unknown>,
  ): EventDraft {
    const { ref, payload } = attempt;
    return {
      type: 'progress',
      stage,
      job: ref,
      chatId: payload.chatId,
      workspaceId: payload.workspaceId,
      message,
      data,
    };
  }

  /**
   * The job's `queued` event, before any other of its events: a no-op when the producer (or an earlier
   * attempt) published it first. A publish failure is logged, never fatal to the job (a lost lock or job is).
   */
  async function announceQueued(attempt: Attempt, kind: AnyJobKind, payload: ChatPayload): Promise<void> {
    try {
      await publisher.publish(queuedDraft(kind, payload, attempt.ref.id), { owner: attempt.owner });
    } catch (error) {
      if (error instanceof StaleAttemptError) throw error;
      metrics?.eventPublishFailures.inc({ type: 'progress' });
      log.warn({ err: error, jobId: attempt.ref.id }, 'could not publish the queued event');
    }
  }

  /** A progress event; a publish failure is logged, never fatal to the job (a lost lock or job is). */
  async function emit(
    attempt: Attempt,
    stage: ProgressStage,
    message: string,
    data?: Record<string, unknown>,
  ): Promise<void> {
    const { job, ref } = attempt;
    attempt.fence();
    const progress = nextProgress(job, { kind: 'stage', stage, message });
    try {
      const record = {
        jobKey: attempt.jobKey,
        progress,
        log: jobLogEntry(stage, message, data),
        keepLogs: job.opts.keepLogs,
      };
      await publisher.publish(progressDraft(attempt, stage, message, data), { owner: attempt.owner, record });
    } catch (error) {
      if (error instanceof StaleAttemptError) throw error;
      metrics?.eventPublishFailures.inc({ type: 'progress' });
      log.warn({ err: error, jobId: ref.id, stage }, 'could not publish a progress event');
      return;
    }
    job.progress = progress;
  }

  /**
   * The job's one result event, and its result kept in the job's progress. Returns the result the job ends
   * with: this one, or the one already out when an earlier attempt published first. Throws when the event
   * cannot be published, so that BullMQ retries the attempt rather than end the job silently.
   */
  async function finish(attempt: Attempt, result: JobResult): Promise<JobResult> {
    const { ref, payload } = attempt;
    const failed = isFailure(result);
    attempt.fence();
    const stage = failed ? 'failed' : 'completed';
    const message = describeResult(result);
    const progress = nextProgress(attempt.job, { kind: 'stage', stage, message, result });
    let event: WorkspaceJobEvent | null;
    try {
      event = await publisher.publish(
        {
          type: 'result',
          stage,
          job: ref,
          chatId: payload.chatId,
          workspaceId: payload.workspaceId,
          message,
          data: result,
        },
        // The deduplication id is freed before the result goes out (BullMQ frees it only at completion, after
        // this): a caller that has seen the result and enqueues again gets a new job, not this finished one.
        // Likewise the job's place in its chat's order: a job enqueued after this result must not wait for
        // this one. Only a final result gets here; a retried attempt keeps its place, so nothing overtakes it.
        {
          owner: attempt.owner,
          record: { jobKey: attempt.jobKey, progress },
          leaving: { deduplicationKey: deduplicationKeyOf(attempt.job) },
        },
      );
    } catch (error) {
      if (!(error instanceof StaleAttemptError)) metrics?.eventPublishFailures.inc({ type: 'result' });
      throw error;
    }
    let recorded = result;
    if (event) attempt.job.progress = progress;
    else {
      // An earlier attempt published first: the job ends with its result, kept as this one would have been.
      recorded = (await recordedResult(ref.id)) ?? result;
      await keepResult(attempt, recorded);
    }
    // Test-only probe of the window between the result event and BullMQ's record of the outcome.
    await options.afterResultPublished?.(ref.id);
    return recorded;
  }

  /** The job's result in its progress, where Bull Board and the producer's fallback read it. */
  async function keepResult(attempt: Attempt, result: JobResult): Promise<void> {
    attempt.fence();
    const stage = isFailure(result) ? 'failed' : 'completed';
    await recordProgress(attempt, { kind: 'stage', stage, message: describeResult(result), result });
  }

  /** A change to the job's progress without an event: only while the attempt holds the job's lock. */
  async function recordProgress(attempt: Attempt, change: ProgressChange): Promise<void> {
    const progress = nextProgress(attempt.job, change);
    if (!(await publisher.recordProgress(attempt.jobKey, progress, attempt.owner)))
      throw new Error(`job ${attempt.ref.id} is gone; its progress was not written`);
    attempt.job.progress = progress;
  }
}

/** One attempt's writes: the job, its events' identity, and the checks that it may still write. */
interface Attempt {
  job: Job;
  /** The job's BullMQ hash. */
  jobKey: string;
  ref: JobRef;
  payload: ChatPayload;
  /** The job's BullMQ lock: the publish script refuses this attempt's events once it is not theirs. */
  owner: JobOwner | undefined;
  /** Throws when the attempt may no longer write (its chat lock is lost); run before every write. */
  fence: () => void;
  /** This attempt already published its `retrying` event. */
  retryAnnounced?: boolean;
  /** Stops its work: aborted by its cancel (CancelListener), under its chat lock also by the lock's loss. */
  stop: AttemptStop;
  /** Its cancel request, once one came (CancelListener); absent when cancels are not watched. */
  cancel: CancelWatch | undefined;
}

/** The error behind an `internal` result of a last attempt, whose stack the failed job should show. */
const causes = new WeakMap<JobFailure, Error>();

/** A real failure for BullMQ: its reason is the result's error, its stack that of the error behind it. */
function unrecoverable(failure: JobFailure): UnrecoverableError {
  const error = new UnrecoverableError(failure.error);
  const stack = causes.get(failure)?.stack;
  if (stack) error.stack = stack;
  return error;
}

/**
 * An attempt's stop: aborted, with the first reason, when the job is canceled (the cancel watch aborts it
 * from the attempt's pickup), and under its chat lock when the lock is lost (counted in metrics when by a
 * LockLostError) or the worker shuts down (the processor aborts it: the shutdown signal is the worker's,
 * shared by every attempt). One controller for all three, whose signal is the job context's: a signal with
 * a listener is about 0.94 KiB in Node 20, and a cancel watch of its own was one more per waiting job
 * (issue 11). The lock tells it of a loss itself (onLoss: the lock makes no signal for it), until the lock
 * is released.
 */
class AttemptStop extends AbortController implements LockLossListener {
  private held: HeldLock | undefined;

  constructor(private readonly metrics: Metrics | undefined) {
    super();
  }

  /** The chat lock is taken: its loss stops the attempt too; so does a loss or shutdown that came already. */
  follow(held: HeldLock, shutdown: AbortSignal | undefined): void {
    this.held = held;
    held.onLoss(this);
    if (shutdown?.aborted) this.abort(shutdown.reason);
  }

  lockLost(reason: LockLostError): void {
    this.metrics?.locksLost.inc();
    this.abort(reason);
  }

  unfollow(): void {
    this.held?.onLoss(undefined);
  }
}

/** Before the chat lock is taken there is nothing to check. */
const unfenced = () => {};

function lockLoss(held: HeldLock): Error {
  const reason: unknown = held.signal.reason;
  return reason instanceof Error ? reason : new LockLostError(`the lock ${held.resource} is no longer held`);
}

/** The attempt lost its job (another worker's now) or its chat lock (by the clock). */
function isLost(error: unknown, held: HeldLock): boolean {
  return error instanceof StaleAttemptError || !held.isHeld();
}

function isLastAttempt(job: Job): boolean {
  return job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
}

/**
 * The store, refusing every call once the attempt's fence does (its chat lock is lost): a paused worker
 * that wakes up must not create a build or rebind the chat for a job another worker now runs.
 */
function fencedStore(store: WorkspaceStore, fence: () => void): WorkspaceStore {
  return new Proxy(store, {
    get(target, key, receiver) {
      const value: unknown = Reflect.get(target, key, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        fence();
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

/**
 * For BullMQ's `failed` event: a job can fail without our processor publishing its result, e.g. when it
 * stalled more often than maxStalledCount and BullMQ fails it before calling us. A final failure then
 * gets its one result event here; the publisher's per-job marker makes this a no-op for jobs whose
 * result is already out.
 */
export async function publishMissingResult(publisher: EventPublisher, job: Job, error: Error): Promise<void> {
  const final = isFinalFailure(job, error);
  const chatId = (job.data as Partial<ChatPayload> | undefined)?.chatId;
  if (!final || !isChatId(chatId)) return;
  const name = job.name as JobName;
  const failure = failures(name).flagged('internal', error.message);
  await publisher.publish({
    type: 'result',
    stage: 'failed',
    job: { id: job.id!, name, attempt: job.attemptsMade },
    chatId,
    workspaceId: (job.data as Partial<ChatPayload>).workspaceId,
    message: failure.error,
    data: failure,
  });
}

/** Whether a `failed` job is failed for good (no attempt follows). */
function isFinalFailure(job: Job, error: Error): boolean {
  return (
    isUnrecoverable(error) || job.attemptsMade >= (job.opts.attempts ?? 1) || Boolean(job.deferredFailure)
  );
}

/** By name too: an error that crossed a process boundary (sandboxed processors) is no longer an instance. */
function isUnrecoverable(error: Error): boolean {
  return error instanceof UnrecoverableError || error.name === 'UnrecoverableError';
}

/** A chat id safe to put in a Redis key: only such a job can carry events, even with a bad payload. */
function isChatId(chatId: unknown): chatId is string {
  return typeof chatId === 'string' && /^[\w-]{1,64}$/.test(chatId);
}

/**
 * For BullMQ's `failed` event: counts an attempt that will be retried, and a final failure the processor
 * did not count itself (it counts every UnrecoverableError it throws, and every job it completes): attempts
 * used up by thrown errors, or a job BullMQ failed without running it (stalled more often than
 * maxStalledCount).
 */
export function observeFailedJob(metrics: Metrics | undefined, job: Job, error: Error): void {
  if (!metrics) return;
  if (!isFinalFailure(job, error)) {
    metrics.jobRetries.inc({ name: nameLabel(job.name) });
    return;
  }
  const countedByProcessor = isUnrecoverable(error) && !job.deferredFailure;
  if (!countedByProcessor) recordFinished(metrics, job, 'internal');
}

/** A result's one sentence: a failure's error, or the sentence its kind makes of a success. */
function describeResult(result: JobResult): string {
  if (isFailure(result)) return result.error;
  return findJobKind(result.kind)!.describe(result);
}
