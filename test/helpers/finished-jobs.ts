// Two jobs a real WorkspaceWorker has finished, for cancel's already_finished answers: a stop of the seeded
// stopped workspace (completed ok, no build to make, so no provisioner is needed) and a start for a chat the
// database does not know (a real failure: BullMQ's failed, invalid_payload).
import { randomUUID } from 'node:crypto';
import type { Queue } from 'bullmq';
import { expect, vi } from 'vitest';
import type { SeedResult } from '../../src/cli/seed.js';
import type { WorkspaceJobsProducer } from '../../src/producer/producer.js';
import type { Config } from '../../src/shared/config.js';
import type { JobResult } from '../../src/shared/contract.js';
import { createLogger } from '../../src/shared/logger.js';
import { WorkspaceWorker } from '../../src/worker/worker.js';

export interface FinishedJob {
  jobId: string;
  chatId: string;
  result: JobResult;
}

const WAIT_MS = 15_000;

export async function finishedJobs(
  producer: WorkspaceJobsProducer,
  queue: Queue,
  config: Config,
  seeded: SeedResult,
): Promise<{ succeeded: FinishedJob; failed: FinishedJob }> {
  const worker = await WorkspaceWorker.start(config, createLogger('silent'));
  try {
    const { chatId, ownerId } = seeded.chats.stopped;
    const unknownChat = randomUUID();
    const jobs = [
      { chatId, ...(await producer.stopWorkspace({ chatId, ownerId })) },
      {
        chatId: unknownChat,
        ...(await producer.startWorkspace({ chatId: unknownChat, ownerId, workspaceId: randomUUID() })),
      },
    ];
    const [succeeded, failed] = await Promise.all(
      jobs.map(async ({ chatId, jobId }, i) => {
        // Finished for BullMQ too, not just published.
        const state = i === 0 ? 'completed' : 'failed';
        await vi.waitFor(async () => expect(await queue.getJobState(jobId)).toBe(state), {
          timeout: WAIT_MS,
          interval: 20,
        });
        return { chatId, jobId, result: await producer.waitForResult(jobId, { timeoutMs: WAIT_MS }) };
      }),
    );
    expect(succeeded!.result).toMatchObject({ ok: true, no_build: true });
    expect(failed!.result).toMatchObject({ ok: false, code: 'invalid_payload' });
    return { succeeded: succeeded!, failed: failed! };
  } finally {
    await worker.close(1_000);
  }
}
