// Cancel requests (docs/design.md §6): a marker per job that every worker checks when it picks the job up
// and before it re-delays it, so that a cancel racing a job's move from delayed to active is not lost; and
// a broadcast of the job id, for the worker that is running it.
import { redisKeys, type RedisKeys } from './keys.js';
import type { RedisClient } from './redis.js';

/** How long a cancel request is kept: longer than any job waits or runs. */
export const CANCEL_MARKER_TTL_SECONDS = 24 * 60 * 60;

export interface CancelRequest {
  /** ISO time of the request. */
  at: string;
  /** Who or why, as the caller said it; absent = not said. */
  reason?: string;
}

export class CancelRequests {
  private readonly keys: RedisKeys;

  constructor(
    private readonly redis: RedisClient,
    prefix: string,
  ) {
    this.keys = redisKeys(prefix);
  }

  /** Marks the job canceled (a repeat keeps the first request). Returns the request in force. */
  async mark(jobId: string, reason?: string): Promise<CancelRequest> {
    const request: CancelRequest = { at: new Date().toISOString(), ...(reason ? { reason } : {}) };
    const key = this.keys.cancelMarker(jobId);
    const set = await this.redis.set(key, JSON.stringify(request), 'EX', CANCEL_MARKER_TTL_SECONDS, 'NX');
    return set === 'OK' ? request : ((await this.read(jobId)) ?? request);
  }

  /** Tells every worker that the job is to be canceled (it must be marked first). */
  async broadcast(jobId: string): Promise<void> {
    await this.redis.publish(this.keys.cancelChannel, jobId);
  }

  /** The job's cancel request, or undefined when none was made. */
  async read(jobId: string): Promise<CancelRequest | undefined> {
    const raw = await this.redis.get(this.keys.cancelMarker(jobId));
    if (raw === null) return undefined;
    try {
      const parsed = JSON.parse(raw) as Partial<CancelRequest>;
      return {
        at: String(parsed.at),
        ...(typeof parsed.reason === 'string' ? { reason: parsed.reason } : {}),
      };
    } catch {
      // Written by hand: still a request.
      return { at: new Date(0).toISOString() };
    }
  }
}
