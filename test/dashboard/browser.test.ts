// The live chat page in a real browser (Debian's chromium driven by playwright-core), against the real
// stack in this process: a WorkspaceWorker, the provisioner daemon with fast simulated builds and agents,
// and the dashboard, on a private database and Redis prefix with the demo data seeded. It picks a chat,
// presses Start and watches the timeline and the result arrive over SSE; it also opens Bull Board.
//
// Screenshots for the README: docs/images/live-chat.png and docs/images/bull-board.png are committed. They
// are rewritten only with UPDATE_SCREENSHOTS=1 (or when missing, outside CI); otherwise they go to a
// temporary directory, so that a test run never dirties the work tree:
//   UPDATE_SCREENSHOTS=1 npx vitest run test/dashboard/browser.test.ts
//
// Chromium is required, not optional: without it this file fails with a message saying how to install it
// (.ci/run installs it). CHROMIUM_PATH points at another Chromium or Chrome binary.
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seed, type SeedResult } from '../../src/cli/seed.js';
import { startDashboard, type Dashboard } from '../../src/dashboard/server.js';
import {
  loadProvisionerConfig,
  startProvisioner,
  type RunningProvisioner,
} from '../../src/provisioner/index.js';
import { loadConfig } from '../../src/shared/config.js';
import { createLogger } from '../../src/shared/logger.js';
import { closeRedis, type Redis } from '../../src/shared/redis.js';
import { WorkspaceWorker } from '../../src/worker/worker.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';
import { PASSWORD, USER, dashboardEnv } from './helpers.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
/** How long the page may take to show a job's whole run (builds take 300 ms here). */
const RUN_MS = 20_000;

const DOCS_IMAGES = fileURLToPath(new URL('../../docs/images/', import.meta.url));
const tempImages = mkdtempSync(join(tmpdir(), 'wsjobs-screenshots-'));

/** Where a screenshot goes: the committed copy on request (or when missing, outside CI), else a temp dir. */
function screenshotPath(name: string): string {
  const committed = join(DOCS_IMAGES, name);
  if (process.env.UPDATE_SCREENSHOTS === '1' || (!existsSync(committed) && !process.env.CI)) {
    mkdirSync(DOCS_IMAGES, { recursive: true });
    return committed;
  }
  return join(tempImages, name);
}

let db: TestDatabase;
let redis: Redis;
let prefix: string;
let worker: WorkspaceWorker | undefined;
let provisioner: RunningProvisioner | undefined;
let dashboard: Dashboard | undefined;
let browser: Browser | undefined;
let context: BrowserContext;
let seeded: SeedResult;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM}: the dashboard's browser test needs it. Install it with ` +
        `'apt-get install -y --no-install-recommends chromium' (.ci/run does), or set CHROMIUM_PATH.`,
    );
  }
  db = await createTestDatabase();
  redis = testRedis();
  prefix = uniquePrefix('browser');
  const log = createLogger('silent');
  const config = loadConfig(
    dashboardEnv(db, prefix, {
      DASHBOARD_USER: USER,
      DASHBOARD_PASSWORD: PASSWORD,
      JOB_ATTEMPTS: '2',
      WORKER_CONCURRENCY: '10',
    }),
  );
  worker = await WorkspaceWorker.start(config, log, { safetyRecheckMs: 500 });
  provisioner = await startProvisioner(
    config,
    loadProvisionerConfig({ SIM_BUILD_MS: '300', SIM_AGENT_CONNECT_MS: '200', SIM_STARTUP_MS: '300' }),
    log,
  );
  seeded = await seed(db.pool);
  dashboard = await startDashboard(config, log);
  // launch() runs the browser on a fresh temporary profile (user data dir) of its own, removed on close.
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  context = await browser.newContext({
    httpCredentials: { username: USER, password: PASSWORD },
    viewport: { width: 1360, height: 900 },
    deviceScaleFactor: 1,
  });
});

afterAll(async () => {
  await browser?.close();
  await dashboard?.close();
  await provisioner?.stop(1_000);
  await worker?.close(1_000);
  if (redis) {
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
  }
  await db?.drop();
  rmSync(tempImages, { recursive: true, force: true });
});

async function openChat(page: Page, chatId: string): Promise<void> {
  await page.goto(`${dashboard!.url}/`);
  await page.locator(`[data-chat-id="${chatId}"]`).click();
  await page.locator('#conn', { hasText: 'live' }).waitFor();
}

/** The newest job's card (jobs are listed newest first). */
const newestJob = (page: Page) => page.locator('.job').first();
const stagesOf = (page: Page) =>
  newestJob(page)
    .locator('.event')
    .evaluateAll((rows) => rows.map((row) => (row as { dataset: { stage?: string } }).dataset.stage));

describe('the live chat page', () => {
  it('starts a stopped workspace and shows each stage, then the result', async () => {
    const page = await context.newPage();
    const chat = seeded.chats.stopped;
    await openChat(page, chat.chatId);
    await expect.poll(() => page.locator('#chat-title').textContent()).toBe('Stopped workspace');
    await page.locator('#start').click();
    await page.locator('#action-info', { hasText: 'Queued start job' }).waitFor();

    const result = newestJob(page).locator('.event[data-stage="completed"]');
    await result.waitFor({ timeout: RUN_MS });
    const stages = await stagesOf(page);
    expect(stages[0]).toBe('queued');
    expect(stages.at(-1)).toBe('completed');
    for (const stage of ['lock_acquired', 'checking', 'build_queued', 'build_succeeded', 'agent_ready']) {
      expect(stages, stage).toContain(stage);
    }
    // Build number and agent state in their columns.
    await expect
      .poll(() => newestJob(page).locator('.event[data-stage="build_succeeded"] .build').textContent())
      .toBe('#3 start');
    await expect
      .poll(() => newestJob(page).locator('.event[data-stage="agent_ready"] .agent').textContent())
      .toBe('main: ready');
    const box = newestJob(page).locator('.result-ok');
    await expect.poll(() => box.locator('.result-title').textContent()).toContain('started: true');
    expect(await box.textContent()).toContain(chat.workspaceName!);
    expect(await newestJob(page).locator('.job-status').textContent()).toBe('completed');
    // The chat list caught up with the new state.
    await page.locator(`[data-chat-id="${chat.chatId}"] .badge`, { hasText: 'running' }).waitFor();

    // A reload replays the chat's stream: the same timeline again, once.
    await page.reload();
    await page.locator('#conn', { hasText: 'live' }).waitFor();
    await newestJob(page).locator('.event[data-stage="completed"]').waitFor();
    expect(await stagesOf(page)).toEqual(stages);
    expect(await page.locator('.job').count()).toBe(1);
    await page.close();
  });

  it('shows a manual-update error with its validations, and a retry with the parameter starts it on the new version', async () => {
    const page = await context.newPage();
    const chat = seeded.chats.manualUpdate;
    await openChat(page, chat.chatId);
    await page.locator('#start').click();

    const failed = newestJob(page).locator('.result-failed');
    await failed.waitFor({ timeout: RUN_MS });
    expect(await failed.locator('.result-title .badge').textContent()).toBe('manual_update_required');
    expect(await failed.locator('.validations').textContent()).toContain('region');
    expect(await failed.locator('.validations').textContent()).toContain('required but not provided');

    await failed.locator('input[name="region"]').fill('eu-west-1');
    await failed.locator('button[type="submit"]').click();
    await expect.poll(() => page.locator('.job').count(), { timeout: RUN_MS }).toBe(2);
    const updated = newestJob(page).locator('.result-ok');
    await updated.waitFor({ timeout: RUN_MS });
    const update = updated.locator('.update');
    expect(await update.textContent()).toContain('Updated to the active template version');
    expect(await update.textContent()).toContain('template requires active versions');
    expect(await update.textContent()).toContain(seeded.templates.manualUpdate.activeVersionId);
    expect(await stagesOf(page)).toContain('updating_to_active_version');

    await page.locator('#conn', { hasText: 'live' }).waitFor();
    await page.mouse.move(0, 0);
    await page.screenshot({ path: screenshotPath('live-chat.png'), fullPage: true });
    await page.close();
  });

  it('creates a workspace for the chat without one, from the template picked on the page', async () => {
    const page = await context.newPage();
    const chat = seeded.chats.noWorkspace;
    await openChat(page, chat.chatId);
    await page.locator('#create-template').selectOption(seeded.templates.dev.id);
    await page.locator('#template-params', { hasText: 'cpu: default "2"' }).waitFor();
    await page.locator('#create-name').fill('from-the-page');
    await page.locator('#create').click();

    const created = newestJob(page).locator('.result-ok');
    await created.waitFor({ timeout: RUN_MS });
    expect(await newestJob(page).locator('.job-name').textContent()).toBe('create-workspace');
    expect(await created.locator('.result-title').textContent()).toContain('created: true');
    expect(await created.textContent()).toContain(`${seeded.user.username}/from-the-page`);
    expect(await stagesOf(page)).toEqual(
      expect.arrayContaining(['build_succeeded', 'agent_ready', 'completed']),
    );
    await page.locator(`[data-chat-id="${chat.chatId}"] .badge`, { hasText: 'running' }).waitFor();
    await page.close();
  });

  it('shows a bad parameters field as an error from the server', async () => {
    const page = await context.newPage();
    await openChat(page, seeded.chats.running.chatId);
    await page.locator('#start-params').fill('["region"]');
    await page.locator('#start').click();
    await page.locator('#action-error', { hasText: 'parameters' }).waitFor();
    await page.locator('#start-params').fill('{region');
    await page.locator('#start').click();
    await page.locator('#action-error', { hasText: 'must be JSON' }).waitFor();
    await page.close();
  });
});

describe('Bull Board and auth', () => {
  it('opens Bull Board with the credentials and shows the workspaces queue', async () => {
    const page = await context.newPage();
    const response = await page.goto(`${dashboard!.url}/admin/queues/queue/workspaces?status=completed`);
    expect(response?.status()).toBe(200);
    await page.getByText('workspaces').first().waitFor();
    await page.getByText('start-workspace').first().waitFor();
    await page.mouse.move(0, 0);
    await page.screenshot({ path: screenshotPath('bull-board.png') });
    await page.close();
  });

  it('answers 401 to a browser without the credentials', async () => {
    const anonymous = await browser!.newContext();
    try {
      const page = await anonymous.newPage();
      for (const path of ['/', '/admin/queues']) {
        // Chromium either shows the 401 response or, with nobody to ask for credentials, fails the
        // navigation with an auth error; it never shows the page.
        const outcome = await page.goto(`${dashboard!.url}${path}`).then(
          (response) => `status ${response?.status()}`,
          (error: Error) => error.message,
        );
        expect(outcome, path).toMatch(/^status 401$|ERR_INVALID_AUTH_CREDENTIALS/);
        expect(await page.locator('#chat-list').count(), path).toBe(0);
      }
      for (const path of [
        '/',
        '/admin/queues',
        '/api/chats',
        `/chats/${seeded.chats.stopped.chatId}/events`,
      ]) {
        const response = await anonymous.request.get(`${dashboard!.url}${path}`);
        expect(response.status(), path).toBe(401);
        expect(response.headers()['www-authenticate'], path).toMatch(/^Basic /);
      }
    } finally {
      await anonymous.close();
    }
  });
});
