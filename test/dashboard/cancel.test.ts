// POST /api/jobs/:jobId/cancel and /api/chats/:chatId/cancel on real Redis and Postgres, no worker running
// (but one that finishes two jobs for the already_finished case):
// behind the same Basic auth and cross-site guard as every action; a waiting job is canceled with its one
// result on the chat's stream; a second cancel is already_finished; an unknown job a 404 with the not_found
// answer; a bad id or body a 400 naming it, with nothing canceled.
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seed, type SeedResult } from '../../src/cli/seed.js';
import { WorkspaceJobsProducer } from '../../src/producer/producer.js';
import { readChatEvents } from '../../src/shared/events.js';
import { QUEUE_NAME } from '../../src/shared/contract.js';
import { finishedJobs } from '../helpers/finished-jobs.js';
import { PASSWORD, USER, basic, startTestDashboard, type TestDashboard } from './helpers.js';

let t: TestDashboard;
let seeded: SeedResult;
let queue: Queue;

beforeAll(async () => {
  t = await startTestDashboard({ env: { DASHBOARD_USER: USER, DASHBOARD_PASSWORD: PASSWORD } });
  seeded = await seed(t.db.pool);
  queue = new Queue(QUEUE_NAME, { connection: t.redis, prefix: t.prefix });
});

afterAll(async () => {
  await queue?.close();
  await t?.close();
});

/** A POST as the page sends it (same origin, the saved credentials); `body` is sent as JSON when given. */
async function post(path: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(t.url(path), {
    method: 'POST',
    headers: {
      Authorization: basic(),
      'Content-Type': 'application/json',
      'Sec-Fetch-Site': 'same-origin',
      Origin: t.dashboard.url,
      ...headers,
    },
    body: typeof body === 'string' ? body : body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json().catch(() => undefined)) as Record<string, unknown> };
}

/** Enqueues a start of a seeded chat's workspace through the page's API: a waiting job (no worker runs). */
async function waitingJob(chatId: string): Promise<string> {
  const started = await post(`/api/chats/${chatId}/start`, {});
  expect(started.status).toBe(202);
  const jobId = started.body.jobId as string;
  expect(await queue.getJobState(jobId)).toBe('waiting');
  return jobId;
}

const resultsOf = async (chatId: string, jobId: string) =>
  (await readChatEvents(t.redis, t.prefix, chatId, '0')).filter(
    (event) => event.type === 'result' && event.job.id === jobId,
  );

describe('POST /api/jobs/:jobId/cancel', () => {
  it('when the job is waiting › removes it, answers canceled with its result, and publishes that one result', async () => {
    const chatId = seeded.chats.stopped.chatId;
    const jobId = await waitingJob(chatId);

    const res = await post(`/api/jobs/${jobId}/cancel`, { reason: 'by the operator' });

    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      jobId,
      outcome: 'canceled',
      was: 'waiting',
      result: expect.objectContaining({ ok: false, code: 'canceled', error: 'canceled: by the operator' }),
    });
    expect(await queue.getJob(jobId)).toBeUndefined();
    const results = await resultsOf(chatId, jobId);
    expect(results).toHaveLength(1);
    expect(results[0]).toMatchObject({ data: { code: 'canceled', error: 'canceled: by the operator' } });
  });

  it('when the job has finished › answers already_finished with its result, and publishes nothing more', async () => {
    const chatId = seeded.chats.running.chatId;
    const jobId = await waitingJob(chatId);
    expect((await post(`/api/jobs/${jobId}/cancel`, {})).body).toMatchObject({ outcome: 'canceled' });

    const again = await post(`/api/jobs/${jobId}/cancel`, {});

    expect(again.status).toBe(200);
    expect(again.body).toEqual({
      jobId,
      outcome: 'already_finished',
      result: expect.objectContaining({ code: 'canceled', error: 'canceled: cancel requested' }),
    });
    expect(await resultsOf(chatId, jobId)).toHaveLength(1);
  });

  it('when a worker finished the job, ok or failed › answers already_finished with its result, and publishes nothing more', async () => {
    const producer = new WorkspaceJobsProducer({ connection: t.redis, pool: t.db.pool, prefix: t.prefix });
    try {
      const finished = await finishedJobs(producer, queue, t.config, seeded);
      for (const { jobId, chatId, result } of [finished.succeeded, finished.failed]) {
        const res = await post(`/api/jobs/${jobId}/cancel`, {});

        expect(res.status).toBe(200);
        expect(res.body).toEqual({ jobId, outcome: 'already_finished', result });
        expect(await resultsOf(chatId, jobId)).toHaveLength(1);
      }
    } finally {
      await producer.close();
    }
  });

  it('when there is no such job › answers 404 with the not_found answer and an error naming the job', async () => {
    const jobId = randomUUID();
    const res = await post(`/api/jobs/${jobId.toUpperCase()}/cancel`, {});
    expect(res.status).toBe(404);
    expect(res.body).toEqual({ error: `job ${jobId} not found`, jobId, outcome: 'not_found' });
  });

  it('when the id or the body is bad › answers 400 naming the problem, and cancels nothing', async () => {
    const jobId = await waitingJob(seeded.chats.automaticUpdates.chatId);
    for (const [path, body, error] of [
      ['/api/jobs/42/cancel', {}, 'invalid jobId: "42" is not a UUID'],
      [`/api/jobs/${jobId}/cancel`, { why: 'x' }, 'unknown field "why"; expected reason'],
      [
        `/api/jobs/${jobId}/cancel`,
        { reason: 7 },
        'invalid reason: Invalid input: expected string, received number',
      ],
      [`/api/jobs/${jobId}/cancel`, { reason: '  ' }, 'invalid reason: a reason must not be empty'],
      [
        `/api/jobs/${jobId}/cancel`,
        { reason: 'two\nlines' },
        'invalid reason: a reason must be one line, without control characters',
      ],
      [`/api/jobs/${jobId}/cancel`, '[]', 'the request body must be a JSON object'],
      [`/api/chats/nope/cancel`, {}, 'invalid chatId: "nope" is not a UUID'],
    ] as const) {
      const res = await post(path, body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.body, JSON.stringify(body)).toEqual({ error });
    }
    // A body must be JSON, as for every action: a body-less POST without the type is refused too.
    const untyped = await post(`/api/jobs/${jobId}/cancel`, undefined, { 'Content-Type': '' });
    expect(untyped).toEqual({ status: 415, body: { error: 'send the request body as application/json' } });
    expect(await queue.getJobState(jobId)).toBe('waiting');
  });

  it('when the request has no credentials or comes from another site › refuses it, and cancels nothing', async () => {
    const jobId = await waitingJob(seeded.chats.manualUpdate.chatId);
    const anonymous = await fetch(t.url(`/api/jobs/${jobId}/cancel`), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{}',
    });
    expect(anonymous.status).toBe(401);
    const cross = await post(`/api/jobs/${jobId}/cancel`, {}, { 'Sec-Fetch-Site': 'cross-site' });
    expect(cross.status).toBe(403);
    expect(cross.body.error).toMatch(/^cross-site request refused: Sec-Fetch-Site is "cross-site"/);
    // A browser without Sec-Fetch-Site still sends Origin.
    const foreignOrigin = await fetch(t.url(`/api/chats/${seeded.chats.manualUpdate.chatId}/cancel`), {
      method: 'POST',
      headers: { Authorization: basic(), 'Content-Type': 'application/json', Origin: 'http://evil.example' },
      body: '{}',
    });
    expect(foreignOrigin.status).toBe(403);
    expect(await queue.getJobState(jobId)).toBe('waiting');
  });
});

describe('POST /api/chats/:chatId/cancel', () => {
  it('when the chat has live jobs › cancels each, oldest first, and answers the list; then an empty one', async () => {
    const chatId = seeded.chats.noWorkspace.chatId;
    const created = await post(`/api/chats/${chatId}/create`, { templateId: seeded.templates.dev.id });
    expect(created.status).toBe(202);
    const jobId = created.body.jobId as string;

    const res = await post(`/api/chats/${chatId.toUpperCase()}/cancel`, { reason: 'chat closed' });

    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      chatId,
      answers: [
        {
          jobId,
          outcome: 'canceled',
          was: 'waiting',
          result: expect.objectContaining({ code: 'canceled', error: 'canceled: chat closed' }),
        },
      ],
    });
    expect(await resultsOf(chatId, jobId)).toHaveLength(1);
    expect(await post(`/api/chats/${chatId}/cancel`, {})).toEqual({
      status: 200,
      body: { chatId, answers: [] },
    });
  });
});
