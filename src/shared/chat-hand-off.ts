// The hand-off of a chat's turn (docs/design.md §5): once a job of the chat has let go of its lock (the
// worker) or left the chat's order canceled (the producer), the chat's next job, which may be sleeping out
// a lock-wait re-delay, is promoted to take its turn now.
import { ErrorCode, Job, type Queue } from 'bullmq';
import { sleep } from './errors.js';
import type { ChatOrder } from './chat-order.js';

/**
 * Finds the job to promote, once per hand-off (undefined when it is gone), and gives its promotion: each call
 * tries once to make the delayed job run now, resolving `promoted`, or the job's state when it is not delayed
 * (`unknown` when gone meanwhile).
 */
export type Promote = (jobId: string) => Promise<Promotion | undefined>;
export type Promotion = () => Promise<string>;

/** How often a hand-off tries to promote the chat's next job, and how long it waits between tries. */
const HAND_OFF_TRIES = 5;
const HAND_OFF_RETRY_MS = 20;

/**
 * A Promote through this queue (BullMQ's Job.promote; its JobNotInState answered with the job's state), so
 * only a job of the queue's prefix is ever promoted.
 */
export function promoteThrough(queue: Queue): Promote {
  return async (jobId) => {
    const job = await Job.fromId(queue, jobId);
    if (!job) return undefined;
    return async () => {
      try {
        await job.promote();
        return 'promoted';
      } catch (error) {
        if ((error as { code?: unknown }).code !== ErrorCode.JobNotInState) throw error;
        return queue.getJobState(jobId);
      }
    };
  };
}

/**
 * Promotes the chat's head, unless there is none or it is `endedJobId` (still in the order for a retry):
 * only that one, the rest keep waiting for theirs. One ZRANGE when nobody is next. A head that is active may
 * be between its turn check and its re-delay: it is tried again a few times (one waiting to be picked up
 * finds its turn itself). A promotion lost anyway (a crash) costs the next job its re-delay, nothing more.
 */
export async function handOffChat(
  order: ChatOrder,
  promote: Promote,
  chatId: string,
  endedJobId: string,
): Promise<void> {
  const next = await order.head(chatId);
  if (next === undefined || next === endedJobId) return;
  const promotion = await promote(next);
  if (!promotion) return;
  for (let tries = 1; (await promotion()) === 'active' && tries < HAND_OFF_TRIES; tries++) {
    await sleep(HAND_OFF_RETRY_MS);
  }
}
