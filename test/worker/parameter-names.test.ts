// Jobs put straight into the queue (bypassing the producer) with parameter names or ids the producer refuses:
// the worker validates with the same schemas and fails each at once as invalid_payload, naming the field.
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { JobFailure } from '../../src/shared/contract.js';
import { WorkerHarness, POLL } from '../helpers/worker-harness.js';

describe('a job added without the producer, with a payload the producer refuses', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create();
  });

  afterEach(async () => {
    await h.close();
  });

  // As JSON: BullMQ stores job data as JSON, so an own `__proto__` key reaches the worker as one.
  it.each([
    [
      'start-workspace',
      'a parameter named __proto__',
      '{"parameters":{"__proto__":"x"}}',
      'parameters.__proto__',
    ],
    [
      'start-workspace',
      'a parameter named constructor',
      '{"parameters":{"constructor":"x"}}',
      'parameters.constructor',
    ],
    ['create-workspace', 'a parameter with an empty name', '{"parameters":{"":"x"}}', 'parameters.""'],
    [
      'start-workspace',
      'a version-0 owner id',
      '{"ownerId":"12345678-1234-0234-8234-123456789abc"}',
      'ownerId',
    ],
  ])('%s with %s › fails once as invalid_payload, naming the field', async (name, _what, extra, field) => {
    await h.startWorker();
    const chatId = randomUUID();
    const base =
      name === 'start-workspace'
        ? { chatId, ownerId: randomUUID(), workspaceId: randomUUID() }
        : { chatId, ownerId: randomUUID(), templateId: randomUUID() };
    const data = { ...base, ...(JSON.parse(extra) as object) };
    const job = await h.queue.add(name, data, { attempts: 5, backoff: { type: 'fixed', delay: 10 } });

    const failed = await h.waitForState(job.id!, ['failed']);
    expect(failed.attemptsMade).toBe(1);
    expect(failed.failedReason).toContain(`${field}: `);
    const results = await vi.waitFor(async () => {
      const found = (await h.events(chatId)).filter((e) => e.type === 'result');
      expect(found).toHaveLength(1);
      return found;
    }, POLL);
    const result = results[0]!.data as unknown as JobFailure;
    expect(result.code).toBe('invalid_payload');
    expect(result.error).toBe(failed.failedReason);
  });
});
