// The live chat page's JSON API on real Redis and Postgres: listing seeded chats and templates, and start
// and create going through the producer (jobs land in the queue, deduplicated), with bad input as a 400
// that names the field and nothing enqueued; with DASHBOARD_READ_ONLY, a 403 for every action (cancel too).
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seed, type SeedResult } from '../../src/cli/seed.js';
import { readChatEvents } from '../../src/shared/events.js';
import { QUEUE_NAME } from '../../src/shared/contract.js';
import { closeRedis } from '../../src/shared/redis.js';
import { startTestDashboard, type TestDashboard } from './helpers.js';

let t: TestDashboard;
let seeded: SeedResult;
let queue: Queue;

beforeAll(async () => {
  t = await startTestDashboard();
  seeded = await seed(t.db.pool);
  queue = new Queue(QUEUE_NAME, { connection: t.redis, prefix: t.prefix });
});

afterAll(async () => {
  await queue?.close();
  await t?.close();
});

async function post(path: string, body?: unknown, raw?: string) {
  const res = await fetch(t.url(path), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: raw ?? (body === undefined ? undefined : JSON.stringify(body)),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

const jobCount = async () => {
  const counts = await queue.getJobCounts();
  return Object.values(counts).reduce((a, b) => a + b, 0);
};

interface ChatRow {
  id: string;
  title: string;
  owner_username: string;
  workspace_name: string | null;
  template_id: string | null;
  template_name: string | null;
  build_number: number | null;
  transition: string | null;
  job_status: string | null;
}

describe('GET /api/chats and /api/templates', () => {
  it('lists the seeded chats with owner, workspace and state', async () => {
    const res = await fetch(t.url('/api/chats'));
    expect(res.status).toBe(200);
    const { chats } = (await res.json()) as { chats: ChatRow[] };
    expect(chats).toHaveLength(Object.keys(seeded.chats).length);
    const byId = new Map(chats.map((c) => [c.id, c]));

    const stopped = byId.get(seeded.chats.stopped.chatId)!;
    expect(stopped).toMatchObject({
      title: 'Stopped workspace',
      owner_username: seeded.user.username,
      workspace_name: seeded.chats.stopped.workspaceName,
      template_id: seeded.templates.dev.id,
      template_name: seeded.templates.dev.name,
      build_number: 2,
      transition: 'stop',
      job_status: 'succeeded',
    });
    expect(byId.get(seeded.chats.running.chatId)).toMatchObject({
      transition: 'start',
      job_status: 'succeeded',
    });
    expect(byId.get(seeded.chats.building.chatId)).toMatchObject({
      build_number: 3,
      transition: 'start',
      job_status: 'pending',
    });
    expect(byId.get(seeded.chats.noWorkspace.chatId)).toMatchObject({
      workspace_name: null,
      template_id: null,
      build_number: null,
    });
  });

  it('lists templates with their active version parameters', async () => {
    const res = await fetch(t.url('/api/templates'));
    expect(res.status).toBe(200);
    const { templates } = (await res.json()) as {
      templates: {
        id: string;
        active_version_id: string;
        parameters: { name: string; required: boolean }[];
      }[];
    };
    expect(templates.map((x) => x.id).sort()).toEqual(
      Object.values(seeded.templates)
        .map((x) => x.id)
        .sort(),
    );
    const manual = templates.find((x) => x.id === seeded.templates.manualUpdate.id)!;
    expect(manual.active_version_id).toBe(seeded.templates.manualUpdate.activeVersionId);
    expect(manual.parameters).toEqual([
      expect.objectContaining({ name: 'cpu', required: false }),
      expect.objectContaining({ name: 'region', required: true, options: expect.any(Array) }),
    ]);
  });
});

describe('POST /api/chats/:chatId/start', () => {
  it('enqueues a start job as the chat owner, and deduplicates a second one', async () => {
    const scenario = seeded.chats.stopped;
    const first = await post(`/api/chats/${scenario.chatId}/start`);
    expect(first.status).toBe(202);
    expect(first.body).toEqual({
      jobId: expect.any(String),
      deduplicated: false,
      workspaceId: scenario.workspaceId,
    });
    const job = await queue.getJob(first.body.jobId as string);
    expect(job?.name).toBe('start-workspace');
    expect(job?.data).toEqual({
      chatId: scenario.chatId,
      ownerId: seeded.user.id,
      workspaceId: scenario.workspaceId,
    });

    const second = await post(`/api/chats/${scenario.chatId}/start`, {});
    expect(second.body).toEqual({ ...first.body, deduplicated: true, differs: [] });

    // The page sees both through the chat's events.
    const events = await readChatEvents(t.redis, t.prefix, scenario.chatId, '0');
    expect(events.map((e) => e.stage)).toEqual(['queued', 'deduplicated']);

    // The dashboard's producer counts them on /metrics.
    const metrics = await (await fetch(t.url('/metrics'))).text();
    expect(metrics).toMatch(/^wsjobs_enqueued_total\{name="start-workspace"\} [1-9]/m);
    expect(metrics).toMatch(/^wsjobs_deduplicated_enqueues_total\{name="start-workspace"\} 1$/m);
  });

  it('passes parameters through', async () => {
    const scenario = seeded.chats.manualUpdate;
    const res = await post(`/api/chats/${scenario.chatId}/start`, { parameters: { region: 'eu-west-1' } });
    expect(res.status).toBe(202);
    const job = await queue.getJob(res.body.jobId as string);
    expect(job?.data.parameters).toEqual({ region: 'eu-west-1' });
  });

  it('answers bad input with 400 naming the field, and enqueues nothing', async () => {
    const chatId = seeded.chats.autoUpdate.chatId;
    const before = await jobCount();
    const cases: [string, unknown, RegExp, string?][] = [
      ['/api/chats/not-a-uuid/start', {}, /invalid chatId/],
      [`/api/chats/${chatId}/start`, { parameters: 'region=eu' }, /parameters/],
      [`/api/chats/${chatId}/start`, { parameters: { region: 5 } }, /parameters\.region/],
      [`/api/chats/${chatId}/start`, { params: {} }, /unknown field "params"/],
      [`/api/chats/${chatId}/start`, [1, 2], /JSON object/],
      [`/api/chats/${chatId}/start`, undefined, /invalid request body/, '{"parameters":'],
      [`/api/chats/${seeded.chats.noWorkspace.chatId}/start`, {}, /no workspace; use create_workspace/],
    ];
    for (const [path, body, message, raw] of cases) {
      const res = await post(path, body, raw);
      expect(res.status, `${path} ${JSON.stringify(body ?? raw)}`).toBe(400);
      expect(res.body.error).toMatch(message);
    }
    // What a cross-site HTML form can send without a CORS preflight: refused, not read as an empty body.
    for (const [type, payload] of [
      ['text/plain', '{}'],
      ['application/x-www-form-urlencoded', 'parameters=x'],
    ]) {
      const res = await fetch(t.url(`/api/chats/${chatId}/start`), {
        method: 'POST',
        headers: { 'Content-Type': type! },
        body: payload,
      });
      expect(res.status, type).toBe(415);
    }
    const unknown = await post(`/api/chats/${randomUUID()}/start`, {});
    expect(unknown.status).toBe(404);
    expect(unknown.body.error).toMatch(/not found/);
    expect(await jobCount()).toBe(before);
  });
});

describe('POST /api/chats/:chatId/create', () => {
  it('enqueues a create job with the template, name and parameters', async () => {
    const chatId = seeded.chats.noWorkspace.chatId;
    const res = await post(`/api/chats/${chatId}/create`, {
      templateId: seeded.templates.dev.id,
      name: 'dev-from-page',
      parameters: { cpu: '4' },
    });
    expect(res.status).toBe(202);
    expect(res.body).toEqual({ jobId: expect.any(String), deduplicated: false });
    const job = await queue.getJob(res.body.jobId as string);
    expect(job?.name).toBe('create-workspace');
    expect(job?.data).toEqual({
      chatId,
      ownerId: seeded.user.id,
      templateId: seeded.templates.dev.id,
      name: 'dev-from-page',
      parameters: { cpu: '4' },
    });
  });

  it('answers bad input with 400 naming the field', async () => {
    const chatId = seeded.chats.running.chatId;
    const before = await jobCount();
    for (const [body, message] of [
      [{}, /templateId/],
      [{ templateId: 'dev' }, /templateId/],
      [{ templateId: seeded.templates.dev.id, name: 'no spaces allowed' }, /name/],
    ] as const) {
      const res = await post(`/api/chats/${chatId}/create`, body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.body.error).toMatch(message);
    }
    expect(await jobCount()).toBe(before);
  });

  it('refuses a bad parameter name or a version-0 UUID with 400 naming the field, and enqueues nothing', async () => {
    const chatId = seeded.chats.noWorkspace.chatId;
    const startChatId = seeded.chats.autoUpdate.chatId;
    const templateId = seeded.templates.dev.id;
    const v0 = '12345678-1234-0234-8234-123456789abc';
    const before = await jobCount();
    // Raw bodies: JSON.stringify of an object literal would not carry an own `__proto__` key.
    const cases: [string, string, RegExp][] = [
      [
        `/api/chats/${startChatId}/start`,
        '{"parameters":{"__proto__":"x"}}',
        /parameters\.__proto__: is reserved/,
      ],
      [
        `/api/chats/${startChatId}/start`,
        '{"parameters":{"constructor":"x"}}',
        /parameters\.constructor: is reserved/,
      ],
      [
        `/api/chats/${startChatId}/start`,
        '{"parameters":{"":"x"}}',
        /parameters\."": a parameter name must not be empty/,
      ],
      [
        `/api/chats/${chatId}/create`,
        `{"templateId":"${templateId}","parameters":{"__proto__":"x"}}`,
        /parameters\.__proto__: is reserved/,
      ],
      [
        `/api/chats/${chatId}/create`,
        `{"templateId":"${templateId}","parameters":{"cpu\\u0000":"x"}}`,
        /parameters\."cpu\\u0000": a parameter name must not contain control/,
      ],
      [`/api/chats/${chatId}/create`, `{"templateId":"${v0}"}`, /templateId: Invalid UUID/],
      [`/api/chats/${v0}/start`, '{}', /invalid chatId/],
    ];
    for (const [path, raw, message] of cases) {
      const res = await post(path, undefined, raw);
      expect(res.status, `${path} ${raw}`).toBe(400);
      expect(res.body.error, `${path} ${raw}`).toMatch(message);
    }
    expect(await jobCount()).toBe(before);
  });

  it('answers unknown API paths with a JSON 404', async () => {
    const res = await fetch(t.url('/api/nothing'));
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({ error: expect.any(String) });
  });
});

describe('with DASHBOARD_READ_ONLY=true', () => {
  it("refuses the page's start, create and cancel with a 403 naming the setting, enqueues nothing, and still lists", async () => {
    const readOnly = await startTestDashboard({
      db: t.db,
      prefix: t.prefix,
      env: { DASHBOARD_READ_ONLY: 'true' },
    });
    try {
      const before = await jobCount();
      for (const [path, body] of [
        [`/api/chats/${seeded.chats.stopped.chatId}/start`, {}],
        [`/api/chats/${seeded.chats.noWorkspace.chatId}/create`, { templateId: seeded.templates.dev.id }],
        [`/api/jobs/${randomUUID()}/cancel`, {}],
        [`/api/chats/${seeded.chats.stopped.chatId}/cancel`, {}],
      ] as const) {
        const res = await fetch(readOnly.url(path), {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify(body),
        });
        expect(res.status, path).toBe(403);
        expect(await res.json(), path).toEqual({
          error:
            'the dashboard is read-only (DASHBOARD_READ_ONLY=true): it starts, creates, stops and cancels nothing',
        });
      }
      // Bull Board's own write endpoints are read-only too (its 405).
      const add = await fetch(readOnly.url(`/admin/queues/api/queues/${QUEUE_NAME}/add`), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ name: 'start-workspace', data: {} }),
      });
      expect(add.status).toBe(405);
      expect(await jobCount()).toBe(before);

      const chats = await fetch(readOnly.url('/api/chats'));
      expect(chats.status).toBe(200);
      expect(((await chats.json()) as { chats: unknown[] }).chats.length).toBeGreaterThan(0);
    } finally {
      // Only the dashboard: the database and prefix belong to this file's dashboard.
      await readOnly.dashboard.close();
      await closeRedis(readOnly.redis);
    }
  });
});
