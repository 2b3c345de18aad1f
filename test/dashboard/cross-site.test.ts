// Cross-site request forgery on real Redis and Postgres: every route refuses a non-GET request that another
// site's page made the browser send (Sec-Fetch-Site / Origin), and a body that is not JSON, before any
// handler (Bull Board's included) runs; the dashboard's own pages still work. First with the headers a
// browser sends, from fetch; then in Debian's Chromium: a form on another site posting to Bull Board with
// the saved credentials, and Bull Board's own UI adding a job and emptying the queue.
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { chromium, type Browser, type BrowserContext } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QUEUE_NAME } from '../../src/shared/contract.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { PASSWORD, USER, basic, startTestDashboard, type TestDashboard } from './helpers.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ADD = `/admin/queues/api/queues/${QUEUE_NAME}/add`;
const EVIL = 'http://evil.example';

let db: TestDatabase;
let t: TestDashboard;
let queue: Queue;

beforeAll(async () => {
  db = await createTestDatabase();
  t = await startTestDashboard({ db, env: { DASHBOARD_USER: USER, DASHBOARD_PASSWORD: PASSWORD } });
  queue = new Queue(QUEUE_NAME, { connection: t.redis, prefix: t.prefix });
});

afterAll(async () => {
  await queue?.close();
  await t?.close();
  await db?.drop();
});

const jobCount = async () => {
  const counts = await queue.getJobCounts();
  return Object.values(counts).reduce((a, b) => a + b, 0);
};

/** A request with the saved credentials, as the browser would send them, to `path` of dashboard `d`. */
async function send(
  path: string,
  init: { method?: string; headers?: Record<string, string>; body?: string | Uint8Array },
  d: TestDashboard = t,
) {
  const res = await fetch(d.url(path), {
    method: init.method ?? 'POST',
    headers: { Authorization: basic(), ...init.headers },
    body: init.body,
  });
  const text = await res.text();
  return { status: res.status, text };
}

const job = JSON.stringify({ name: 'forged', data: { chatId: randomUUID() } });

describe('a non-GET request with the headers a browser sends', () => {
  it("refuses another site's form post to Bull Board's add endpoint, with the saved credentials, and adds no job", async () => {
    const before = await jobCount();
    const cases: [string, Record<string, string>][] = [
      ['cross-site', { 'Sec-Fetch-Site': 'cross-site', Origin: EVIL }],
      [
        'same-site (another port or subdomain)',
        { 'Sec-Fetch-Site': 'same-site', Origin: 'http://127.0.0.1:1' },
      ],
      ['an Origin only (a browser without Sec-Fetch-Site)', { Origin: EVIL }],
      ['Origin null (a sandboxed frame)', { Origin: 'null' }],
    ];
    for (const [what, headers] of cases) {
      for (const [type, body] of [
        ['application/x-www-form-urlencoded', 'name=forged'],
        ['text/plain', job],
        // Also a JSON body: what makes a request cross-site is where it comes from, not its type.
        ['application/json', job],
      ]) {
        const res = await send(ADD, { headers: { ...headers, 'Content-Type': type! }, body: body! });
        expect(res.status, `${what}, ${type}`).toBe(403);
        expect(JSON.parse(res.text), `${what}, ${type}`).toEqual({
          error: expect.stringMatching(/^cross-site request refused: /),
        });
      }
    }
    expect(await jobCount()).toBe(before);
  });

  it('refuses a body that is not JSON with 415 even from the same origin, and adds no job', async () => {
    const before = await jobCount();
    const own = { 'Sec-Fetch-Site': 'same-origin', Origin: t.dashboard.url };
    for (const [type, body] of [
      ['text/plain', job],
      ['application/x-www-form-urlencoded', 'name=forged'],
      [
        'multipart/form-data; boundary=x',
        '--x\r\nContent-Disposition: form-data; name="name"\r\n\r\nforged\r\n--x--',
      ],
    ]) {
      const res = await send(ADD, { headers: { ...own, 'Content-Type': type! }, body: body! });
      expect(res.status, type).toBe(415);
      expect(JSON.parse(res.text).error, type).toMatch(/application\/json/);
    }
    // A body with no Content-Type at all.
    const untyped = await send(ADD, { headers: own, body: new TextEncoder().encode(job) });
    expect(untyped.status).toBe(415);
    expect(await jobCount()).toBe(before);
  });

  it('takes JSON from its own origin, and from a client that is not a browser (no Origin, no Sec-Fetch-Site)', async () => {
    const before = await jobCount();
    const json = { 'Content-Type': 'application/json' };
    const own = await send(ADD, {
      headers: { ...json, 'Sec-Fetch-Site': 'same-origin', Origin: t.dashboard.url },
      body: job,
    });
    expect(own.status, own.text).toBe(200);
    const typed = await send(ADD, { headers: { ...json, 'Sec-Fetch-Site': 'none' }, body: job });
    expect(typed.status, typed.text).toBe(200);
    const script = await send(ADD, { headers: json, body: job });
    expect(script.status, script.text).toBe(200);
    expect(await jobCount()).toBe(before + 3);
  });

  it("guards every route before anything else: the page's API, Bull Board's body-less PUTs, unknown paths", async () => {
    const before = await jobCount();
    const cross = { 'Sec-Fetch-Site': 'cross-site', Origin: EVIL };
    for (const [method, path] of [
      ['POST', `/api/chats/${randomUUID()}/start`],
      ['PUT', `/admin/queues/api/queues/${QUEUE_NAME}/empty`],
      ['PUT', '/admin/queues/api/queues/pause'],
      ['DELETE', '/nowhere'],
    ] as const) {
      const res = await send(path, { method, headers: cross });
      expect(res.status, `${method} ${path}`).toBe(403);
    }
    // Refused before basic auth: no challenge that would make a browser ask for the credentials.
    const anonymous = await fetch(t.url(ADD), { method: 'POST', headers: cross });
    expect(anonymous.status).toBe(403);
    expect(await jobCount()).toBe(before);
  });

  it('lets cross-site GETs through, so that a link to the dashboard still opens it', async () => {
    const res = await fetch(t.url('/admin/queues/api/queues'), {
      headers: { Authorization: basic(), 'Sec-Fetch-Site': 'cross-site' },
    });
    expect(res.status).toBe(200);
    await res.arrayBuffer();
  });

  it('takes an origin listed in DASHBOARD_ALLOWED_ORIGINS (a proxy that rewrites Host), and names the setting otherwise', async () => {
    const proxied = 'https://jobs.example.com';
    const headers = { 'Content-Type': 'application/json', 'Sec-Fetch-Site': 'same-origin' };
    const refused = await send(ADD, { headers: { ...headers, Origin: proxied }, body: job });
    expect(refused.status).toBe(403);
    expect(JSON.parse(refused.text).error).toMatch(/DASHBOARD_ALLOWED_ORIGINS/);

    const own = await startTestDashboard({
      db,
      env: {
        DASHBOARD_USER: USER,
        DASHBOARD_PASSWORD: PASSWORD,
        DASHBOARD_ALLOWED_ORIGINS: `${proxied}, http://ops.internal:8080`,
      },
    });
    try {
      const ok = await send(ADD, { headers: { ...headers, Origin: proxied }, body: job }, own);
      expect(ok.status, ok.text).toBe(200);
      const other = await send(ADD, { headers: { ...headers, Origin: EVIL }, body: job }, own);
      expect(other.status).toBe(403);
    } finally {
      await own.close();
    }
  });
});

describe('in Chromium', () => {
  let browser: Browser | undefined;
  let context: BrowserContext;
  let attacker: Server;
  /** The other site: `http://localhost:<port>`, while the dashboard is at 127.0.0.1 (another site). */
  let attackerUrl: string;
  let attackerPage = '';

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(
        `Chromium not found at ${CHROMIUM}: install it with 'apt-get install -y --no-install-recommends chromium' (.ci/run does), or set CHROMIUM_PATH.`,
      );
    }
    attacker = createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html' }).end(attackerPage);
    });
    await new Promise<void>((resolve) => attacker.listen(0, '127.0.0.1', resolve));
    attackerUrl = `http://localhost:${(attacker.address() as AddressInfo).port}/`;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
      ],
    });
    // Credentials the browser sends to the dashboard unasked, as it does once the operator has logged in.
    context = await browser.newContext({
      httpCredentials: { username: USER, password: PASSWORD, origin: t.dashboard.url, send: 'always' },
    });
  });

  afterAll(async () => {
    await browser?.close();
    await new Promise((resolve) => attacker?.close(resolve));
  });

  it("refuses a form on another site that posts to Bull Board's add endpoint, and no job is added", async () => {
    const before = await jobCount();
    const forms = [
      // The classic trick: a text/plain form whose one field name and value make up a JSON body.
      `<form method="post" enctype="text/plain" action="${t.url(ADD)}">` +
        `<input name='{"name":"forged","data":{},"x":"' value='"}'></form>`,
      `<form method="post" action="${t.url(ADD)}"><input name="name" value="forged"></form>`,
    ];
    for (const form of forms) {
      attackerPage = `<!doctype html><body>${form}<script>document.forms[0].submit()</script></body>`;
      const page = await context.newPage();
      const response = page.waitForResponse((r) => r.url().endsWith(ADD));
      await page.goto(attackerUrl);
      const res = await response;
      expect(res.status(), form).toBe(403);
      expect((await res.request().allHeaders())['sec-fetch-site'], form).toBe('cross-site');
      expect(await res.text(), form).toContain('cross-site request refused');
      await page.close();
    }
    expect(await jobCount()).toBe(before);
  });

  it("lets Bull Board's own UI add a job (a same-origin JSON post) and empty the queue (a body-less PUT)", async () => {
    await queue.obliterate({ force: true });
    const page = await context.newPage();
    await page.goto(t.url(`/admin/queues/queue/${QUEUE_NAME}`));
    const queueMenu = page.getByText('No workers').locator('xpath=following::button[1]');

    await queueMenu.click();
    await page.getByRole('menuitem', { name: 'Add job' }).click();
    await page.locator('#job-name').fill('from-bull-board');
    const added = page.waitForResponse((r) => r.url().endsWith(ADD));
    await page.getByRole('button', { name: 'Add', exact: true }).click();
    const addResponse = await added;
    const headers = await addResponse.request().allHeaders();
    expect(headers['content-type']).toBe('application/json');
    expect(headers['sec-fetch-site']).toBe('same-origin');
    expect(addResponse.status()).toBe(200);
    expect((await queue.getWaiting()).map((j) => j.name)).toEqual(['from-bull-board']);

    await page.getByText('from-bull-board').first().waitFor();
    await queueMenu.click();
    await page.getByRole('menuitem', { name: 'Empty' }).click();
    const emptied = page.waitForResponse((r) => r.url().endsWith(`/api/queues/${QUEUE_NAME}/empty`));
    await page.getByRole('button', { name: 'Confirm' }).click();
    expect((await emptied).status()).toBe(200);
    expect(await queue.getWaitingCount()).toBe(0);
    await page.close();
  });
});
