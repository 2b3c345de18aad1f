// The producer's stopWorkspace on real Redis and Postgres, no worker: what it refuses (naming the field,
// enqueuing nothing), the workspace it looks up from the chat, and its deduplication per workspace.
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { insertChat } from '../../../src/cli/fixtures.js';
import { ValidationError } from '../../../src/shared/schemas.js';
import { WorkerHarness } from '../../helpers/worker-harness.js';

describe('WorkspaceJobsProducer.stopWorkspace', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create({ provisioner: { paused: true } });
  });

  afterEach(async () => {
    await h.close();
  });

  async function queuedJobs(): Promise<number> {
    return Object.values(await h.queue.getJobCounts()).reduce((a, b) => a + b, 0);
  }

  /** As a JavaScript caller sees it: input of any shape reaches the run-time validation. */
  const stopUntyped = (input: unknown) =>
    (h.producer as unknown as { stopWorkspace(input: unknown): Promise<unknown> }).stopWorkspace(input);

  const chatId = randomUUID();
  const ownerId = randomUUID();
  const workspaceId = randomUUID();

  it.each([
    ['a chatId that is not a UUID', { chatId: 'chat-1', ownerId, workspaceId }, 'chatId'],
    ['a missing ownerId', { chatId, workspaceId }, 'ownerId'],
    ['a workspaceId that is not a UUID', { chatId, ownerId, workspaceId: 42 }, 'workspaceId'],
    ['parameters (a stop changes none)', { chatId, ownerId, workspaceId, parameters: {} }, 'parameters'],
    ['an empty requestId', { chatId, ownerId, workspaceId, requestId: '' }, 'requestId'],
  ])('rejects %s, naming the field, and enqueues nothing', async (_what, input, field) => {
    const error = await stopUntyped(input).catch((e: unknown) => e);

    expect(error).toBeInstanceOf(ValidationError);
    expect((error as Error).message).toMatch(/^invalid stop-workspace payload: /);
    expect((error as Error).message).toContain(field);
    expect(await queuedJobs()).toBe(0);
  });

  it('rejects an unknown chat, and a chat without a workspace, enqueuing nothing', async () => {
    const owner = await h.seedOwner();
    const { chatId: bareChatId } = await insertChat(h.db.pool, { ownerId: owner.ownerId });

    await expect(h.producer.stopWorkspace({ chatId, ownerId })).rejects.toThrow(
      new ValidationError(`chat ${chatId} not found`),
    );
    await expect(h.producer.stopWorkspace({ chatId: bareChatId, ownerId: owner.ownerId })).rejects.toThrow(
      new ValidationError(`chat ${bareChatId} has no workspace; use create_workspace first`),
    );
    expect(await queuedJobs()).toBe(0);
  });

  it('looks the workspace up from the chat, and joins a stop of that workspace that is still waiting', async () => {
    const ws = await h.seedStoppedWorkspace();

    const first = await h.producer.stopWorkspace({ chatId: ws.chatId.toUpperCase(), ownerId: ws.ownerId });
    const again = await h.producer.stopWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const otherOwner = await h.producer.stopWorkspace({
      chatId: ws.chatId,
      ownerId: randomUUID(),
      workspaceId: ws.workspaceId,
    });

    expect(first).toMatchObject({ deduplicated: false, workspaceId: ws.workspaceId });
    expect(again).toEqual({
      jobId: first.jobId,
      deduplicated: true,
      differs: [],
      workspaceId: ws.workspaceId,
    });
    expect(otherOwner).toMatchObject({ jobId: first.jobId, deduplicated: true, differs: ['ownerId'] });
    const job = await h.queue.getJob(first.jobId);
    expect(job).toMatchObject({
      name: 'stop-workspace',
      data: { chatId: ws.chatId, ownerId: ws.ownerId, workspaceId: ws.workspaceId },
    });
    expect(await queuedJobs()).toBe(1);
    const [queued] = await h.events(ws.chatId);
    expect(queued).toMatchObject({
      type: 'progress',
      stage: 'queued',
      job: { id: first.jobId, name: 'stop-workspace' },
    });
  });
});
