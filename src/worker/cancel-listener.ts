// A worker's ear for cancel requests (docs/design.md §6): one subscriber connection on the cancel channel,
// and a controller for each job attempt this process runs (the attempt's own). A broadcast of one of their ids aborts it
// with a JobCancelRequestedError carrying the request from the job's marker. Pub/sub is at-most-once, so
// the marker is also read when a job is first watched (a request made before the broadcast could reach
// us) and again for every watched job after the connection comes back (a broadcast sent while it was down).
import type { CancelRequest, CancelRequests } from '../shared/cancel-requests.js';
import { redisKeys } from '../shared/keys.js';
import type { Logger } from '../shared/logger.js';
import { followSubscriber, unsubscribe, type RedisClient } from '../shared/redis.js';
import { JobCancelRequestedError } from './cancel-requested.js';

/** One job attempt's view of its cancel request. */
export interface CancelWatch {
  /** Aborted, with a JobCancelRequestedError, once the job's cancel is requested (the watched controller's). */
  readonly signal: AbortSignal;
  /** The request, once one came: also when the controller was aborted for another reason before. */
  readonly request: CancelRequest | undefined;
  /** Stops watching (the attempt is over). */
  done(): void;
}

/** A watched attempt: its controller, aborted by its cancel, and the request once it came. */
class Watched implements CancelWatch {
  request: CancelRequest | undefined;

  constructor(
    readonly jobId: string,
    private readonly controller: AbortController,
    private readonly running: Map<string, Set<Watched>>,
  ) {}

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  cancel(reason: JobCancelRequestedError): void {
    this.request ??= reason.request;
    this.controller.abort(reason);
  }

  done(): void {
    const watched = this.running.get(this.jobId);
    if (watched?.delete(this) && watched.size === 0) this.running.delete(this.jobId);
  }
}

export class CancelListener {
  private readonly running = new Map<string, Set<Watched>>();
  private readonly channel: string;
  private unfollow: (() => void) | undefined;

  /** `subscriber`: a connection of its own in subscriber mode (duplicateSubscriber); its owner closes it. */
  constructor(
    private readonly subscriber: RedisClient,
    private readonly requests: CancelRequests,
    prefix: string,
    private readonly log: Logger,
  ) {
    this.channel = redisKeys(prefix).cancelChannel;
  }

  /** Subscribes to the cancel channel; resolves once Redis has confirmed it. */
  async start(): Promise<void> {
    this.unfollow ??= followSubscriber(this.subscriber, this.onMessage, this.onReconnect);
    await this.subscriber.subscribe(this.channel);
  }

  /**
   * Watches a job attempt that starts running here: its cancel aborts `controller` (the attempt's own stop,
   * so that it needs no signal of ours to listen to; issue 11). Reads the job's marker once (after
   * registering, so that a broadcast in between is not lost): a request made already aborts it before this
   * resolves.
   */
  async watch(jobId: string, controller = new AbortController()): Promise<CancelWatch> {
    const watched = new Watched(jobId, controller, this.running);
    let running = this.running.get(jobId);
    if (!running) this.running.set(jobId, (running = new Set()));
    running.add(watched);
    try {
      await this.check(jobId, false);
    } catch (error) {
      watched.done();
      throw error;
    }
    return watched;
  }

  /** Stops listening; the connection stays open for its owner to close. */
  async close(): Promise<void> {
    if (!this.unfollow) return;
    this.unfollow();
    this.unfollow = undefined;
    await unsubscribe(this.subscriber, [this.channel], this.log);
  }

  private abort(jobId: string, request: CancelRequest): void {
    const attempts = this.running.get(jobId);
    if (!attempts) return;
    const reason = new JobCancelRequestedError(jobId, request);
    // Logged once per attempt, with who asked: a re-check after a reconnect finds the same request again.
    let fresh = false;
    for (const watched of attempts) {
      if (watched.request === undefined) fresh = true;
      watched.cancel(reason);
    }
    if (fresh) {
      // An unsaid reason is undefined, which pino leaves out.
      this.log.info(
        { jobId, requestedAt: request.at, reason: request.reason },
        'cancel requested for a job running here; aborting it',
      );
    }
  }

  /** Aborts the job's attempts with its marker's request; `broadcast`: it was asked for even without one. */
  private async check(jobId: string, broadcast: boolean): Promise<void> {
    let request: CancelRequest | undefined;
    try {
      request = await this.requests.read(jobId);
    } catch (error) {
      if (!broadcast) throw error;
      this.log.warn({ err: error, jobId }, "could not read a job's cancel request; canceling it anyway");
    }
    if (!request && broadcast) request = { at: new Date().toISOString() };
    if (request) this.abort(jobId, request);
  }

  private readonly onMessage = (channel: string, jobId: string): void => {
    if (channel !== this.channel || !this.running.has(jobId)) return;
    void this.check(jobId, true);
  };

  private readonly onReconnect = (): void => {
    // 'ready' comes before ioredis resubscribes; our SUBSCRIBE (a no-op when subscribed) says when the channel
    // is live again, and only then is a marker read sure not to miss a broadcast in between.
    void (async () => {
      try {
        await this.subscriber.subscribe(this.channel);
        await Promise.all([...this.running.keys()].map((jobId) => this.check(jobId, false)));
      } catch (error) {
        this.log.warn(
          { err: error },
          'could not re-check the cancel requests of running jobs after a reconnect',
        );
      }
    })();
  };
}
