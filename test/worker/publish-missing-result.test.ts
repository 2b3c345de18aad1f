import { randomUUID } from 'node:crypto';
import { UnrecoverableError, type Job } from 'bullmq';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EventPublisher, readChatEvents } from '../../src/shared/events.js';
import { closeRedis, type Redis } from '../../src/shared/redis.js';
import { publishMissingResult } from '../../src/worker/processor.js';
import { deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

describe('publishMissingResult (the worker’s failed-event safety net)', () => {
  let redis: Redis;
  let prefix: string;
  let publisher: EventPublisher;

  beforeEach(() => {
    redis = testRedis();
    prefix = uniquePrefix('missing');
    publisher = new EventPublisher(redis, prefix);
  });

  afterEach(async () => {
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
  });

  function job(fields: Partial<Job>): Job {
    return {
      id: randomUUID(),
      name: 'start-workspace',
      data: { chatId: randomUUID(), workspaceId: randomUUID() },
      opts: { attempts: 3 },
      attemptsMade: 1,
      deferredFailure: undefined,
      ...fields,
    } as unknown as Job;
  }

  async function results(chatId: string) {
    return (await readChatEvents(redis, prefix, chatId, '0')).filter((e) => e.type === 'result');
  }

  it('when BullMQ failed a job that stalled too often › publishes one failed result', async () => {
    const stalled = job({ deferredFailure: 'job stalled more than allowable limit' });
    await publishMissingResult(publisher, stalled, new Error('job stalled more than allowable limit'));

    const [result, ...more] = await results(stalled.data.chatId);
    expect(more).toEqual([]);
    expect(result).toMatchObject({
      stage: 'failed',
      job: { id: stalled.id, name: 'start-workspace' },
      data: {
        kind: 'start-workspace',
        ok: false,
        error: 'job stalled more than allowable limit',
        code: 'internal',
        is_error: true,
      },
    });
  });

  it('when the job already has its result › publishes nothing more', async () => {
    const failed = job({ attemptsMade: 3 });
    await publishMissingResult(publisher, failed, new Error('first'));
    await publishMissingResult(publisher, failed, new UnrecoverableError('second'));
    expect(await results(failed.data.chatId)).toHaveLength(1);
  });

  it('when attempts remain › publishes nothing (BullMQ retries the job)', async () => {
    const retrying = job({ attemptsMade: 1 });
    await publishMissingResult(publisher, retrying, new Error('transient'));
    expect(await results(retrying.data.chatId)).toEqual([]);
  });
});
