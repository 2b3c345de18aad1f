// A start enqueued right after the previous job's result was seen is a job of its own: the result event
// goes out before BullMQ records the completion, so the processor frees the deduplication id first.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { WAIT_MS, WorkerHarness } from '../helpers/worker-harness.js';

describe('a start enqueued right after a result', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create();
  });

  afterEach(async () => {
    await h.close();
  });

  it('is a new job every time, never deduplicated onto the finished one', async () => {
    await h.startWorker();
    const ws = await h.seedStoppedWorkspace();
    const input = { chatId: ws.chatId, ownerId: ws.ownerId, workspaceId: ws.workspaceId };
    const seen = new Set<string>();
    // After the first start the workspace is running, so each later job ends within milliseconds of its
    // pickup: the window between its result event and BullMQ's completion is as wide, relatively, as it gets.
    for (let i = 0; i < 40; i++) {
      const enqueued = await h.producer.startWorkspace(input);
      expect(enqueued.deduplicated, `loop ${i}: deduplicated onto ${enqueued.jobId}`).toBe(false);
      expect(seen.has(enqueued.jobId)).toBe(false);
      seen.add(enqueued.jobId);
      await h.producer.waitForResult(enqueued.jobId, { timeoutMs: WAIT_MS });
    }
    expect(seen.size).toBe(40);
  });
});
