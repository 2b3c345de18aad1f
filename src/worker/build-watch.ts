// What a waiting build tells its chat besides its status (docs/design.md §6): the newest lines of its log
// (`build_log`, at most one event per BUILD_LOG_INTERVAL_MS, however chatty the build; followed from its run
// on) and, while it is
// pending, its place among the pending provisioner jobs (`queue_position`, from the process's shared reads of
// the queue, queue-positions.ts: at most one per QUEUE_CHECK_INTERVAL_MS when the pending set changes). Each
// follows beside the status wait of build-wait.ts, which stops them and flushes the log's last lines once the
// build ends.
import type { BuildLogData, ProgressStage, QueuePosition } from '../shared/contract.js';
import { topics, type Build, type JobContext } from './ports.js';

export const BUILD_LOG_INTERVAL_MS = 500;
/**
 * Why a watch's followers stop when its build wait is over: one reason for every watch, as abort() without
 * one makes a DOMException and its stack trace per call (issue 11: 5,000 builds ending at once spent about
 * as long making those as running their events' scripts).
 */
const FOLLOW_OVER = new Error('the build wait no longer follows this');
/** Lines one build_log event carries at most: a preview, the logs endpoint serves the whole log. */
export const BUILD_LOG_LINES = 20;

/**
 * The side-channels of one build wait. Its events go out one at a time, in the order they were asked for
 * (`say`), so that a queue position read before the build started cannot follow its `build_running`.
 */
export class BuildWatch {
  /** The status stage last reported (told). */
  reported: ProgressStage | undefined;
  /** followLogs() was called: the log is followed once the build runs. */
  private logsWanted = false;
  private after = '0';
  private chain: Promise<unknown> = Promise.resolve();
  /**
   * One controller for the whole watch, not an AbortSignal.any per follower (each about 1.5 KiB, and a
   * worker holds thousands of watches): aborted by the job's signal, a failed follower or end().
   */
  private readonly stopped = new AbortController();
  /** The followers while they run (end() waits for them): fields, not a Set and its promises (issue 11). */
  private logFollower: Promise<void> | undefined;
  private queueFollower: Promise<void> | undefined;
  private lastPosition: QueuePosition | null = null;

  constructor(
    private readonly ctx: JobContext,
    private readonly build: Build,
    private readonly workspaceId: string,
  ) {
    if (ctx.signal.aborted) this.handleEvent();
    else ctx.signal.addEventListener('abort', this, { once: true });
  }

  /** The job's signal aborted: the watch stops with its reason (the watch listens itself, no closure). */
  handleEvent(): void {
    this.stopped.abort(this.ctx.signal.reason);
  }

  /**
   * Aborts when the job's does, or when a follower failed (with its error); also at end(), once the status
   * wait it is for is over.
   */
  get signal(): AbortSignal {
    return this.stopped.signal;
  }

  /** Runs `publish` after every event asked for before it. */
  say<T>(publish: () => Promise<T>): Promise<T> {
    const run = this.chain.then(publish);
    this.chain = run.catch(() => {});
    return run;
  }

  /** The build's place in the queue, remembered as the one its events last told. */
  async position(): Promise<QueuePosition | null> {
    this.lastPosition = await this.ctx.queue.position(this.build.jobId);
    return this.lastPosition;
  }

  /** The status stage is reported: a build that runs has its log followed from now on, once wanted. */
  told(stage: ProgressStage): void {
    this.reported = stage;
    if (stage === 'build_running' && this.logsWanted) this.startLogs();
  }

  /**
   * Follows the log from the build's run on (now, when it runs already). A pending build writes none, and
   * 10,000 pending builds following theirs held about 1.5 KiB each (issue 11): the lines of an earlier run
   * of a build queued again come with the first check once it runs again, or with end()'s flush.
   */
  followLogs(): void {
    this.logsWanted = true;
    if (this.reported === 'build_running') this.startLogs();
  }

  private startLogs(): void {
    if (this.logFollower) return;
    this.logFollower = this.spawn(
      this.ctx.waiter.waitFor(
        [topics.provisionerJobLogs(this.build.jobId)],
        async () => {
          await this.flushLogs();
          return undefined;
        },
        // Paced by the wait, not by a sleep inside the check: a check holds an admission slot.
        {
          timeoutMs: this.ctx.timeouts.buildTimeoutMs,
          signal: this.stopped.signal,
          minIntervalMs: BUILD_LOG_INTERVAL_MS,
        },
      ),
    );
  }

  /**
   * Starts following the queue while the build is pending, unless that already runs. Called just after
   * position(): the follow's first look comes an interval later at the earliest. It ends at the first read
   * after the build left the queue (no position: the build's start is a change that makes one), or with
   * the watch; no controller of its own (an AbortSignal is about 0.9 KiB, issue 11). One that is still
   * running when the build is queued again goes on.
   */
  followQueue(): void {
    if (this.queueFollower) return;
    const follow = this.ctx.queue.follow(this.build.jobId, (position) => this.checkPosition(position), {
      timeoutMs: this.ctx.timeouts.buildTimeoutMs,
      signal: this.stopped.signal,
    });
    this.queueFollower = this.spawn(follow, () => {
      this.queueFollower = undefined;
    });
  }

  /** Stops the followers (the build ended) and, with `flush`, publishes the log lines not carried yet. */
  async end(flush: boolean): Promise<void> {
    this.ctx.signal.removeEventListener('abort', this);
    this.stopped.abort(FOLLOW_OVER);
    // Most builds end with neither follower running (a pending build follows no log; a running one, no queue).
    if (this.logFollower) await this.logFollower;
    if (this.queueFollower) await this.queueFollower;
    if (flush) await this.flushLogs();
  }

  /** A build_log event with the newest lines since the previous one, when there are any. */
  private async flushLogs(): Promise<void> {
    const { lines, total } = await this.ctx.store.getNewestBuildLogs(
      this.build.jobId,
      this.after,
      BUILD_LOG_LINES,
    );
    const last = lines.at(-1);
    if (!last) return;
    this.after = last.id;
    const data: BuildLogData = {
      build_id: this.build.id,
      transition: this.build.transition,
      lines,
      last_log_id: last.id,
      skipped: total - lines.length,
    };
    const count = total === 1 ? '1 new log line' : `${total} new log lines`;
    await this.say(() =>
      this.ctx.progress(
        'build_log',
        `Build #${this.build.buildNumber}: ${count}`,
        { ...data },
        this.workspaceId,
      ),
    );
  }

  /** Publishes a queue_position when the build moved; true once it is no longer pending. */
  private async checkPosition(now: QueuePosition | null): Promise<true | undefined> {
    if (!now) return true;
    if (this.lastPosition?.position === now.position) return undefined;
    this.lastPosition = now;
    const estimate = await this.ctx.store.getBuildEstimate(this.build);
    await this.say(async () => {
      // The status wait may have reported the build running meanwhile: this position is past.
      if (this.reported !== 'build_queued') return;
      await this.ctx.progress(
        'queue_position',
        `Build #${this.build.buildNumber} is ${ordinal(now.position)} of ${now.pending} in the queue`,
        {
          build_id: this.build.id,
          transition: this.build.transition,
          position: now.position,
          pending: now.pending,
          ...(estimate && { estimate }),
        },
        this.workspaceId,
      );
    });
    return undefined;
  }

  /**
   * A follower, which runs until the watch's signal aborts: one that fails ends the whole wait with its error
   * (the watch's signal); ending by that signal's abort (end(), the job's) or by itself is normal. `ended`
   * is called as it ends, either way.
   */
  private spawn(run: Promise<unknown>, ended?: () => void): Promise<void> {
    return run.then(
      () => ended?.(),
      (error: unknown) => {
        ended?.();
        if (!this.stopped.signal.aborted) this.stopped.abort(error);
      },
    );
  }
}

function ordinal(n: number): string {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? 'th' : ({ 1: 'st', 2: 'nd', 3: 'rd' }[n % 10] ?? 'th');
  return `${n}${suffix}`;
}
