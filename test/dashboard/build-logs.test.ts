// GET /builds/:buildId/logs on a real Postgres with a real provisioner daemon running the simulator: a build
// writing 10,000 lines reaches the client complete and in order, live; a reconnect with ?after= or
// Last-Event-ID resumes without a gap or a duplicate; without follow, the lines there are then `end`;
// validation, 404, auth and the shared stream caps.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Provisioner } from '../../src/provisioner/provisioner.js';
import { SimExecutor } from '../../src/provisioner/sim-executor.js';
import type { BuildLogLine } from '../../src/shared/build-logs.js';
import { PgNotificationHub } from '../../src/shared/notifications.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import {
  createFixture,
  createWorkspace,
  insertBuild,
  silentLog,
  waitForCompletion,
  type Fixture,
} from '../provisioner/helpers.js';
import { basic, openSse, startTestDashboard, type SseClient, type TestDashboard } from './helpers.js';

let db: TestDatabase;
let t: TestDashboard;
let hub: PgNotificationHub;
let fixture: Fixture;
/** Stops the daemons started so far (each describe's own, so another describe's builds are not taken). */
const stops: (() => Promise<void>)[] = [];
async function stopProvisioners(): Promise<void> {
  for (const stop of stops.splice(0).reverse()) await stop();
}

beforeAll(async () => {
  db = await createTestDatabase();
  t = await startTestDashboard({ db, dashboard: { sse: { heartbeatMs: 100 } } });
  hub = new PgNotificationHub(db.url);
  await hub.start();
  fixture = await createFixture(db.pool);
});

afterAll(async () => {
  await stopProvisioners();
  await hub?.stop();
  await t?.close();
  await db?.drop();
});

/** A daemon whose simulated builds take `buildMs` and write `logLines` lines over it. */
function startProvisioner(buildMs: number, logLines: number): void {
  const executor = new SimExecutor({ pool: db.pool, buildMs, logLines, agentNames: [], log: silentLog });
  const provisioner = new Provisioner({ pool: db.pool, hub, executor, log: silentLog });
  provisioner.start();
  stops.push(async () => {
    await provisioner.stop({ graceMs: 0 });
    await executor.stop();
  });
}

async function newBuild() {
  return insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
}

async function storedLines(jobId: string): Promise<{ id: string; output: string }[]> {
  const { rows } = await db.pool.query<{ id: string; output: string }>(
    'SELECT l.id::text AS id, l.output FROM provisioner_job_logs l WHERE l.job_id = $1 ORDER BY l.id',
    [jobId],
  );
  return rows;
}

interface Received {
  lines: BuildLogLine[];
  /** The `id:` of each `lines` event. */
  ids: string[];
  end?: { build_id: string; done: boolean; last_log_id: string };
}

/** Reads `lines` events until `end` (or until `stopAfter` lines, then closes the client). */
async function receive(client: SseClient, stopAfter = Infinity): Promise<Received> {
  const received: Received = { lines: [], ids: [] };
  while (received.lines.length < stopAfter) {
    const message = await client.next(15_000);
    if (message.event === 'end') {
      received.end = JSON.parse(message.data) as Received['end'];
      await client.ended;
      return received;
    }
    expect(message.event).toBe('lines');
    const lines = JSON.parse(message.data) as BuildLogLine[];
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.length).toBeLessThanOrEqual(100);
    expect(message.id).toBe(lines.at(-1)!.id);
    received.ids.push(message.id!);
    received.lines.push(...lines);
  }
  client.close();
  return received;
}

const logsUrl = (buildId: string, query = '') => t.url(`/builds/${buildId}/logs${query}`);
const asStored = (lines: BuildLogLine[]) => lines.map((l) => ({ id: l.id, output: l.output }));

describe('following a build that writes 10,000 lines in 5 s', () => {
  afterAll(stopProvisioners);

  it('delivers every stored line once, in order, then end with done, and closes', async () => {
    startProvisioner(5_000, 10_000);
    const build = await newBuild();
    const client = await openSse(logsUrl(build.buildId, '?follow=1'));
    expect(client.status).toBe(200);
    expect(client.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');

    const received = await receive(client);
    await waitForCompletion(db.pool, build.jobId);
    const stored = await storedLines(build.jobId);
    // The daemon keeps 10,000 lines of a job (then one notice): the simulated ones fill it.
    expect(stored.length).toBeGreaterThan(10_000);
    expect(asStored(received.lines)).toEqual(stored);
    const simulated = received.lines.filter((l) => l.output.startsWith('Simulated output line'));
    expect(simulated.map((l) => l.output)).toEqual(
      Array.from({ length: simulated.length }, (_, i) => `Simulated output line ${i + 1} of 10000`),
    );
    expect(received.end).toEqual({ build_id: build.buildId, done: true, last_log_id: stored.at(-1)!.id });
  }, 60_000);
});

describe('resuming', () => {
  let build: { buildId: string; jobId: string };
  let stored: { id: string; output: string }[];

  beforeAll(async () => {
    startProvisioner(2_000, 2_000);
    build = await newBuild();
  });
  afterAll(stopProvisioners);

  it('a reconnect with Last-Event-ID = the last id seen continues live without a gap or a duplicate', async () => {
    const first = await receive(await openSse(logsUrl(build.buildId, '?follow=1&after=0')), 300);
    expect(first.end).toBeUndefined();
    // The URL's after=0 is what a page keeps across reconnects; the header wins.
    const second = await receive(
      await openSse(logsUrl(build.buildId, '?follow=1&after=0'), { lastEventId: first.ids.at(-1)! }),
    );
    await waitForCompletion(db.pool, build.jobId);
    stored = await storedLines(build.jobId);
    expect(asStored([...first.lines, ...second.lines])).toEqual(stored);
    expect(second.end?.done).toBe(true);
  }, 30_000);

  it('?after= a line id sends exactly the lines after it, then end', async () => {
    const k = 1_234;
    const rest = await receive(await openSse(logsUrl(build.buildId, `?after=${stored[k - 1]!.id}`)));
    expect(asStored(rest.lines)).toEqual(stored.slice(k));
    expect(rest.end).toEqual({ build_id: build.buildId, done: true, last_log_id: stored.at(-1)!.id });
  });

  it('after the last line, sends only end (the cursor given back)', async () => {
    const last = stored.at(-1)!.id;
    const nothing = await receive(await openSse(logsUrl(build.buildId, `?follow=1`), { lastEventId: last }));
    expect(nothing).toEqual({
      lines: [],
      ids: [],
      end: { build_id: build.buildId, done: true, last_log_id: last },
    });
  });
});

describe('without follow', () => {
  it('on a running build sends the lines there are, then end with done false', async () => {
    const { rows } = await db.pool.query<{ id: string; job_id: string }>(
      `INSERT INTO provisioner_jobs (started_at) VALUES (now()) RETURNING id AS job_id, id`,
    );
    const jobId = rows[0]!.job_id;
    const workspaceId = await createWorkspace(db.pool, fixture);
    const { rows: builds } = await db.pool.query<{ id: string }>(
      `INSERT INTO workspace_builds (workspace_id, template_version_id, build_number, transition, initiator_id, job_id)
       VALUES ($1, $2, 1, 'start', $3, $4) RETURNING id`,
      [workspaceId, fixture.versionId, fixture.userId, jobId],
    );
    await db.pool.query(
      `INSERT INTO provisioner_job_logs (job_id, output) SELECT $1, 'line ' || n FROM generate_series(1, 250) n ORDER BY n`,
      [jobId],
    );
    const received = await receive(await openSse(logsUrl(builds[0]!.id)));
    expect(received.lines.map((l) => l.output)).toEqual(
      Array.from({ length: 250 }, (_, i) => `line ${i + 1}`),
    );
    expect(received.ids).toHaveLength(3);
    expect(received.end).toMatchObject({ done: false, last_log_id: received.lines.at(-1)!.id });
  });
});

describe('a log of long lines', () => {
  it('reaches the client whole: 600 lines of 4 KiB, more than the 1 MiB buffer bound in one read page', async () => {
    const build = await newBuild();
    await db.pool.query(
      `INSERT INTO provisioner_job_logs (job_id, output)
       SELECT $1, lpad(n::text, 4096, 'x') FROM generate_series(1, 600) n ORDER BY n`,
      [build.jobId],
    );
    await db.pool.query(
      `UPDATE provisioner_jobs SET started_at = now(), completed_at = now() WHERE id = $1`,
      [build.jobId],
    );
    const received = await receive(await openSse(logsUrl(build.buildId)));
    expect(received.lines.map((l) => Number(l.output.replace(/^x+/, '')))).toEqual(
      Array.from({ length: 600 }, (_, i) => i + 1),
    );
    expect(received.end).toMatchObject({ done: true, last_log_id: received.lines.at(-1)!.id });
  });
});

describe('bad requests', () => {
  it('answers 404 for an unknown build', async () => {
    const buildId = randomUUID();
    const res = await fetch(logsUrl(buildId, '?follow=1'));
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({ error: `no build ${buildId}` });
  });

  it.each([
    ['/builds/nope/logs', {}, 'invalid buildId: "nope" is not a UUID'],
    [`/builds/${randomUUID()}/logs?after=-5`, {}, 'invalid after "-5": expected a log line id'],
    [`/builds/${randomUUID()}/logs?after=1&after=2`, {}, 'invalid after ["1","2"]: expected a single value'],
    [`/builds/${randomUUID()}/logs`, { 'Last-Event-ID': '1-0' }, 'invalid Last-Event-ID "1-0"'],
    [`/builds/${randomUUID()}/logs?follow=yes`, {}, 'invalid follow "yes": expected 1 or 0'],
  ])('answers 400 naming what is wrong: %s %o', async (path, headers, error) => {
    const res = await fetch(t.url(path), { headers });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toContain(error);
  });
});

describe('auth and caps', () => {
  it('needs the credentials when they are set, like every route but /healthz', async () => {
    const guarded = await startTestDashboard({
      db,
      env: { DASHBOARD_USER: 'ops', DASHBOARD_PASSWORD: 'pw' },
    });
    try {
      const build = await newBuild();
      expect((await fetch(guarded.url(`/builds/${build.buildId}/logs`))).status).toBe(401);
      const ok = await openSse(guarded.url(`/builds/${build.buildId}/logs`), {
        authorization: basic('ops', 'pw'),
      });
      expect(ok.status).toBe(200);
      ok.close();
    } finally {
      await guarded.close();
    }
  });

  it('counts log streams with chat streams against DASHBOARD_SSE_MAX_PER_CLIENT', async () => {
    const capped = await startTestDashboard({ db, env: { DASHBOARD_SSE_MAX_PER_CLIENT: '1' } });
    try {
      const build = await newBuild();
      const chat = await openSse(capped.url(`/chats/${randomUUID()}/events`));
      expect(chat.status).toBe(200);
      const refused = await fetch(capped.url(`/builds/${build.buildId}/logs?follow=1`));
      expect(refused.status).toBe(429);
      expect(((await refused.json()) as { error: string }).error).toContain('DASHBOARD_SSE_MAX_PER_CLIENT');
      chat.close();
    } finally {
      await capped.close();
    }
  });
});
