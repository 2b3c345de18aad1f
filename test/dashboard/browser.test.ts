// The live chat page in a real browser (Debian's chromium driven by playwright-core), against the real
// stack in this process: a WorkspaceWorker, the provisioner daemon with fast simulated builds and agents,
// and the dashboard, on a private database and Redis prefix with the demo data seeded (and 60 older chats,
// so that the list has more than a page). It picks a chat, presses Start and watches the timeline and the
// result arrive over SSE; it checks the list's hover contrast, scrolling, search and paging, the forms'
// reset, Start disabled while a job runs, and that result data never becomes HTML or a script link (those
// results are published straight to the chat's stream); the build log pane, queue position, countdown and
// Cancel of a start waiting for its chat lock; it also opens Bull Board.
//
// Screenshots for the README: docs/images/{live-chat,live-chat-logs,live-chat-queue,live-chat-cancel,bull-board}.png are committed. They
// are rewritten only with UPDATE_SCREENSHOTS=1 (or when missing, outside CI); otherwise they go to a
// temporary directory, so that a test run never dirties the work tree:
//   UPDATE_SCREENSHOTS=1 npx vitest run test/dashboard/browser.test.ts
//
// Chromium is required, not optional: without it this file fails with a message saying how to install it
// (.ci/run installs it). CHROMIUM_PATH points at another Chromium or Chrome binary.
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  insertBuild,
  insertChat,
  insertUser,
  insertWorkspace,
  type BuildInput,
} from '../../src/cli/fixtures.js';
import { seed, type SeedResult } from '../../src/cli/seed.js';
import { startDashboard, type Dashboard } from '../../src/dashboard/server.js';
import {
  loadProvisionerConfig,
  startProvisioner,
  type RunningProvisioner,
} from '../../src/provisioner/index.js';
import { loadConfig } from '../../src/shared/config.js';
import { EventPublisher } from '../../src/shared/events.js';
import { FAILURE_CODES, type EventDraft } from '../../src/shared/contract.js';
import { ChatLocks } from '../../src/shared/lock.js';
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
/** Output lines per simulated build. */
const LOG_LINES = 600;
/** Chats older than the seeded ones, so that the seeded ones stay on the list's first page of 50. */
const OLDER_CHATS = 60;

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
let publisher: EventPublisher;

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
  worker = await WorkspaceWorker.start(config, log);
  provisioner = await startProvisioner(
    config,
    loadProvisionerConfig({
      SIM_BUILD_MS: '300',
      SIM_AGENT_CONNECT_MS: '200',
      SIM_STARTUP_MS: '300',
      // More than the page's log pane keeps (500), so that it drops the oldest.
      SIM_LOG_LINES: String(LOG_LINES),
    }),
    log,
  );
  seeded = await seed(db.pool);
  const older = await insertUser(db.pool, { username: `older-${seeded.suffix}` });
  await db.pool.query(
    `INSERT INTO chats (owner_id, title, created_at)
     SELECT $1, 'Older chat ' || i, now() - interval '1 day' - i * interval '1 minute'
       FROM generate_series(1, $2::int) i`,
    [older.userId, OLDER_CHATS],
  );
  publisher = new EventPublisher(redis, prefix);
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

/**
 * A chat on a workspace of its own (the seeded user's, on the dev template's active version) with one build:
 * the chats the other tests count and search stay as seeded.
 */
async function chatOnNewWorkspace(
  build: Pick<BuildInput, 'transition' | 'status' | 'agents'>,
): Promise<{ chatId: string; workspaceId: string }> {
  const { id: ownerId } = seeded.user;
  const { workspaceId } = await insertWorkspace(db.pool, { ownerId, templateId: seeded.templates.dev.id });
  const { buildId } = await insertBuild(db.pool, {
    workspaceId,
    templateVersionId: seeded.templates.dev.activeVersionId,
    initiatorId: ownerId,
    ...build,
  });
  const { chatId } = await insertChat(db.pool, { ownerId, workspaceId, buildId });
  return { chatId, workspaceId };
}

/** The newest job's card (jobs are listed newest first). */
const newestJob = (page: Page) => page.locator('.job').first();
const stagesOf = (page: Page) =>
  newestJob(page)
    .locator('.event')
    .evaluateAll((rows) => rows.map((row) => (row as { dataset: { stage?: string } }).dataset.stage));

// The browser globals that in-page functions (page.evaluate) use: the project compiles without the DOM
// library, so this file names the little it needs. They exist only in the page, where those functions run.
interface PageNode {
  nodeType: number;
  textContent: string | null;
}
interface PageElement extends PageNode {
  className: string;
  tagName: string;
  parentElement: PageElement | null;
  childNodes: Iterable<PageNode>;
  dataset: Record<string, string | undefined>;
  scrollTop: number;
  querySelector(selector: string): PageElement | null;
  querySelectorAll(selector: string): Iterable<PageElement>;
  getAttribute(name: string): string | null;
  getBoundingClientRect(): { top: number; bottom: number };
}
declare const document: { getElementById(id: string): PageElement | null };
declare const window: { scrollY: number; innerHeight: number };
declare function getComputedStyle(element: PageElement): { color: string; backgroundColor: string };

/** Publishes an event of a job that no worker runs, straight to the chat's stream, as a worker would. */
async function publishEvent(draft: EventDraft): Promise<void> {
  await publisher.publish(draft);
}

/**
 * WCAG contrast ratios of the texts in `selector`'s first match, each against the background it is drawn
 * on (the nearest ancestor-or-self with an opaque background).
 */
function contrasts(page: Page, selector: string): Promise<Record<string, number>> {
  return page
    .locator(selector)
    .first()
    .evaluate((root: PageElement) => {
      const rgb = (css: string) => (css.match(/[\d.]+/g) ?? []).map(Number);
      const luminance = ([r, g, b]: number[]) => {
        const f = (c: number) => (c / 255 <= 0.03928 ? c / 255 / 12.92 : ((c / 255 + 0.055) / 1.055) ** 2.4);
        return 0.2126 * f(r!) + 0.7152 * f(g!) + 0.0722 * f(b!);
      };
      const background = (el: PageElement | null): number[] => {
        for (; el; el = el.parentElement) {
          const c = rgb(getComputedStyle(el).backgroundColor);
          if (c.length === 3 || c[3] === 1) return c.slice(0, 3);
        }
        return [255, 255, 255];
      };
      const out: Record<string, number> = {};
      for (const el of [root, ...root.querySelectorAll('*')]) {
        const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent!.trim() !== '');
        if (!text) continue;
        const [a, b] = [luminance(rgb(getComputedStyle(el).color)), luminance(background(el))];
        out[`${el.className || el.tagName}: ${el.textContent!.trim().slice(0, 20)}`] =
          (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      }
      return out;
    });
}

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

    // Elapsed time per stage: each row's time runs to the next event; the result's row has the job's total.
    const timings = await newestJob(page)
      .locator('.event')
      .evaluateAll((rows: PageElement[]) =>
        rows.map((row) => ({
          at: Date.parse(row.querySelector('time')!.getAttribute('datetime')!),
          ms: Number(row.querySelector('.elapsed')!.dataset.ms),
          text: row.querySelector('.elapsed')!.textContent,
        })),
      );
    for (const [i, row] of timings.slice(0, -1).entries()) {
      expect(row.ms, `row ${i}`).toBe(Math.max(0, timings[i + 1]!.at - row.at));
      expect(row.text, `row ${i}`).toMatch(/^\d+ ms$|^\d+\.\d s$/);
    }
    expect(timings.at(-1)!.ms).toBe(timings.at(-1)!.at - timings[0]!.at);
    expect(timings.at(-1)!.text).toMatch(/^total (\d+ ms|\d+\.\d s)$/);
    expect(await newestJob(page).locator('.job-elapsed').textContent()).toMatch(/^\d+ ms$|^\d+\.\d s$/);
    // The parameters the build ran with and its template version by name.
    const build = newestJob(page).locator('.job-build');
    await expect.poll(() => build.textContent()).toContain('build #3 start');
    expect(await build.locator('.version').textContent()).toBe(`${seeded.templates.dev.name} v1`);
    expect(await build.locator('.param').allTextContents()).toEqual(['cpu=2']);
    // The job is over: Start is back.
    expect(await page.locator('#start').isEnabled()).toBe(true);
    expect(await page.locator('#busy').isHidden()).toBe(true);
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
    expect(await stagesOf(page)).toContain('updating_to_active_version');
    // Template versions by name (the id on hover), not as bare UUIDs.
    const [v1, v2] = seeded.templates.manualUpdate.versionIds;
    await expect.poll(() => update.locator(`dd[title="${v2}"]`).textContent()).toBe('v2');
    expect(await update.locator(`dd[title="${v1}"]`).textContent()).toBe('v1');
    expect(await update.textContent()).not.toContain(v2);
    // The parameters the new build ran with: the retry's region and cpu carried over from the old build.
    const build = newestJob(page).locator('.job-build');
    await expect.poll(() => build.locator('.param').allTextContents()).toEqual(['cpu=2', 'region=eu-west-1']);
    expect(await build.locator('.version').textContent()).toBe(`${seeded.templates.manualUpdate.name} v2`);
    await page
      .locator(`[data-chat-id="${chat.chatId}"] .chat-sub`, {
        hasText: `${seeded.templates.manualUpdate.name} · v2`,
      })
      .waitFor();

    await page.locator('#conn', { hasText: 'live' }).waitFor();
    await page.mouse.move(0, 0);
    // The list and the chat scroll on their own: a viewport as tall as the chat shows it whole.
    const height = await page
      .locator('#detail')
      .evaluate((el) => el.scrollHeight + el.getBoundingClientRect().top);
    await page.setViewportSize({ width: 1360, height: Math.max(900, Math.ceil(height)) });
    await page.screenshot({ path: screenshotPath('live-chat.png') });
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

  it('keeps a hovered chat readable: its texts contrast 4.5:1 or more with the hover colour', async () => {
    const page = await context.newPage();
    await openChat(page, seeded.chats.running.chatId);
    for (const chatId of [seeded.chats.stopped.chatId, seeded.chats.running.chatId]) {
      const item = `[data-chat-id="${chatId}"]`;
      await page.locator(item).hover();
      const ratios = await contrasts(page, item);
      expect(Object.keys(ratios).length, chatId).toBeGreaterThanOrEqual(4);
      for (const [text, ratio] of Object.entries(ratios)) expect(ratio, text).toBeGreaterThanOrEqual(4.5);
    }
    await page.close();
  });

  it('scrolls the chat list on its own, keeps the chat picked at its bottom in view, and loads more than 50', async () => {
    const page = await context.newPage();
    await page.goto(`${dashboard!.url}/`);
    const items = page.locator('.chat-item');
    await expect.poll(() => items.count()).toBe(50);
    await page.locator('#load-more').click();
    await expect.poll(() => items.count()).toBe(Object.keys(seeded.chats).length + OLDER_CHATS);
    expect(await page.locator('#load-more').isHidden()).toBe(true);

    await items.last().click();
    await page.locator('#chat-title', { hasText: 'Older chat 60' }).waitFor();
    const layout = await page.evaluate(() => ({
      listScrolled: document.getElementById('chat-scroll')!.scrollTop,
      pageScrolled: window.scrollY,
      title: document.getElementById('chat-title')!.getBoundingClientRect(),
      viewport: window.innerHeight,
    }));
    expect(layout.listScrolled).toBeGreaterThan(0);
    expect(layout.pageScrolled).toBe(0);
    expect(layout.title.top).toBeGreaterThanOrEqual(0);
    expect(layout.title.bottom).toBeLessThanOrEqual(layout.viewport);
    await page.close();
  });

  it('searches the chats on the server by owner, workspace name and chat id prefix', async () => {
    const page = await context.newPage();
    await page.goto(`${dashboard!.url}/`);
    const ids = () =>
      page
        .locator('.chat-item')
        .evaluateAll((items) => items.map((item) => item.getAttribute('data-chat-id')).sort());
    const search = async (text: string) => {
      // The page asks the server (an empty box asks for the plain list, without q).
      const answered = page.waitForResponse(
        (r) =>
          new URL(r.url()).pathname === '/api/chats' &&
          new URL(r.url()).searchParams.get('q') === (text || null),
        { timeout: 10_000 },
      );
      await page.locator('#chat-search').fill(text);
      expect((await answered).status()).toBe(200);
    };
    await search(seeded.user.username);
    await expect.poll(ids).toEqual(
      Object.values(seeded.chats)
        .map((c) => c.chatId)
        .sort(),
    );
    await search(seeded.chats.manualUpdate.workspaceName!.toUpperCase());
    await expect.poll(ids).toEqual([seeded.chats.manualUpdate.chatId]);
    await search(seeded.chats.stopped.chatId.slice(0, 13).toUpperCase());
    await expect.poll(ids).toEqual([seeded.chats.stopped.chatId]);
    await search('no-such-chat');
    await page.locator('#chat-list .empty', { hasText: 'No chat matches "no-such-chat"' }).waitFor();
    await search('');
    await expect.poll(() => page.locator('.chat-item').count()).toBe(50);
    await page.close();
  });

  it('empties the forms when another chat is picked', async () => {
    const page = await context.newPage();
    await openChat(page, seeded.chats.stopped.chatId);
    await page.locator('#start-params').fill('{"cpu": "4"}');
    await page.locator('#create-name').fill('previous-chats-name');
    await page.locator('#create-params').fill('{"cpu": "2"}');
    await page.locator(`[data-chat-id="${seeded.chats.noWorkspace.chatId}"]`).click();
    await page.locator('#chat-title', { hasText: 'Chat without a workspace' }).waitFor();
    for (const field of ['#start-params', '#create-name', '#create-params']) {
      expect(await page.locator(field).inputValue(), field).toBe('');
    }
    expect(await page.locator('#create-template').inputValue()).toBe(seeded.templates.dev.id);
    await page.close();
  });

  it('disables Start and Create while the chat has a job waiting or running, and enables them on its result', async () => {
    const page = await context.newPage();
    const chat = seeded.chats.automaticUpdates;
    await openChat(page, chat.chatId);
    const start = page.locator('#start');
    const create = page.locator('#create');
    expect(await start.isEnabled()).toBe(true);
    const job = { id: randomUUID(), name: 'start-workspace' as const, attempt: 0 };
    await publishEvent({ type: 'progress', stage: 'queued', job, chatId: chat.chatId, message: 'queued' });
    await expect.poll(() => start.isDisabled()).toBe(true);
    expect(await create.isDisabled()).toBe(true);
    expect(await page.locator('#busy').textContent()).toContain(`Job ${job.id.slice(0, 8)}`);
    await publishEvent({
      type: 'progress',
      stage: 'lock_acquired',
      job: { ...job, attempt: 1 },
      chatId: chat.chatId,
      message: 'Chat lock acquired',
    });
    await newestJob(page).locator('.event[data-stage="lock_acquired"]').waitFor();
    expect(await start.isDisabled()).toBe(true);
    await publishEvent({
      type: 'result',
      stage: 'failed',
      job: { ...job, attempt: 1 },
      chatId: chat.chatId,
      message: 'build failed',
      data: {
        kind: 'start-workspace',
        ok: false,
        error: 'build failed',
        code: 'build_failed',
        is_error: false,
      },
    });
    await expect.poll(() => start.isEnabled()).toBe(true);
    expect(await create.isEnabled()).toBe(true);
    expect(await page.locator('#busy').isHidden()).toBe(true);
    await page.close();
  });

  it("links a result's settings_url only when it is http(s), and shows result text as text", async () => {
    const page = await context.newPage();
    const chat = seeded.chats.autoUpdate;
    await openChat(page, chat.chatId);
    const fail = async (settingsUrl: string, error = 'manual update required') => {
      const job = { id: randomUUID(), name: 'start-workspace' as const, attempt: 1 };
      await publishEvent({
        type: 'result',
        stage: 'failed',
        job,
        chatId: chat.chatId,
        message: error,
        data: {
          kind: 'start-workspace',
          ok: false,
          error,
          code: 'manual_update_required',
          is_error: false,
          settings_url: settingsUrl,
        },
      });
      const card = page.locator(`.job[data-job-id="${job.id}"]`);
      await card.locator('.result-failed').waitFor();
      return card;
    };
    const script = await fail('javascript:alert(document.domain)', '<img src=x onerror="alert(1)">');
    expect(await script.locator('a').count()).toBe(0);
    expect(await script.locator('.settings').textContent()).toBe(
      'Workspace settings: javascript:alert(document.domain)',
    );
    expect(await script.locator('img').count()).toBe(0);
    expect(await script.locator('.result-error').textContent()).toBe('<img src=x onerror="alert(1)">');
    const data = await fail('data:text/html,<script>alert(1)</script>');
    expect(await data.locator('a').count()).toBe(0);
    const https = await fail('https://coder.example.com/@demo/ws/settings');
    expect(await https.locator('.settings a').getAttribute('href')).toBe(
      'https://coder.example.com/@demo/ws/settings',
    );
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

  it('stops a running workspace with Stop, and shows its stop build and result', async () => {
    const page = await context.newPage();
    const { chatId } = await chatOnNewWorkspace({
      transition: 'start',
      status: 'succeeded',
      agents: [{ name: 'main', connected: true, lifecycleState: 'ready' }],
    });
    await openChat(page, chatId);
    await page.locator('#stop').click();
    await page.locator('#action-info', { hasText: 'Queued stop job' }).waitFor();

    const box = newestJob(page).locator('.result-ok');
    await box.waitFor({ timeout: RUN_MS });
    expect(await box.locator('.result-title').textContent()).toContain('stopped: true');
    expect(await box.locator('.result-title').textContent()).toContain('Stopped');
    await expect
      .poll(() => newestJob(page).locator('.event[data-stage="build_succeeded"] .build').textContent())
      .toBe('#2 stop');
    expect(await page.locator('#stop').isEnabled()).toBe(true);
    await page.close();
  });

  it("fills the log pane with the build's log, its newest 500 lines in order, scrolled to the newest", async () => {
    const page = await context.newPage();
    const { chatId, workspaceId } = await chatOnNewWorkspace({ transition: 'stop', status: 'succeeded' });
    await openChat(page, chatId);
    await page.locator('#start').click();
    await newestJob(page).locator('.result-ok').waitFor({ timeout: RUN_MS });

    const { rows } = await db.pool.query<{ id: string }>(
      `SELECT l.id::text FROM provisioner_job_logs l
         JOIN workspace_builds b ON b.job_id = l.job_id
        WHERE b.workspace_id = $1 AND b.transition = 'start' ORDER BY l.id`,
      [workspaceId],
    );
    expect(rows.length).toBeGreaterThan(LOG_LINES);
    const pane = newestJob(page).locator('.log');
    const shown = () => pane.locator('.log-line').evaluateAll((lines) => lines.map((l) => l.dataset.logId));
    await expect.poll(shown, { timeout: RUN_MS }).toEqual(rows.slice(-500).map((r) => r.id));
    expect(await pane.locator('.log-preview').count()).toBe(0);
    expect(await pane.locator('.log-output').allTextContents()).toContain(
      `Simulated output line ${LOG_LINES} of ${LOG_LINES}`,
    );
    const scroll = await pane.evaluate(
      (el: PageElement & { scrollHeight: number; clientHeight: number }) => ({
        top: el.scrollTop,
        bottom: el.scrollHeight - el.clientHeight,
      }),
    );
    expect(scroll.top).toBeGreaterThan(0);
    expect(scroll.top).toBeGreaterThanOrEqual(scroll.bottom - 8);
    await page.mouse.move(0, 0);
    await page.screenshot({ path: screenshotPath('live-chat-logs.png') });
    await page.close();
  });

  it('shows the queue position, a ticking countdown and the build_log previews, and disables Cancel on the result', async () => {
    const page = await context.newPage();
    const chat = seeded.chats.automaticUpdates;
    await openChat(page, chat.chatId);
    // A job no worker runs, its events published as a worker would; its build is unknown to the logs
    // endpoint (404), so the pane shows the build_log previews.
    const job = { id: randomUUID(), name: 'start-workspace' as const, attempt: 1 };
    const buildId = randomUUID();
    // The messages a worker writes for build #4 (build-wait.ts, build-watch.ts).
    const progress = (stage: string, data: Record<string, unknown>) => {
      const lines = Array.isArray(data.lines) ? data.lines.length : 0;
      const message = {
        build_queued: 'Build #4 is queued',
        queue_position: 'Build #4 is 1st of 2 in the queue',
        build_log: `Build #4: ${lines} new log lines`,
        build_running: 'Build #4 is running',
      }[stage];
      return publishEvent({ type: 'progress', stage, job, chatId: chat.chatId, message, data } as EventDraft);
    };
    const inMs = (ms: number) => new Date(Date.now() + ms).toISOString();
    const estimate = (readyInMs: number) => ({
      build_ms: 30_000,
      done_at: inMs(readyInMs - 10_000),
      agent_ms: 10_000,
      ready_at: inMs(readyInMs),
      samples: 3,
    });
    await progress('build_queued', {
      build_id: buildId,
      transition: 'start',
      position: 2,
      pending: 3,
      estimate: estimate(40_000),
    });
    const card = page.locator(`.job[data-job-id="${job.id}"]`);
    await expect
      .poll(() => card.locator('.queue-position').textContent())
      .toBe('2nd of 3 in the build queue');
    const seconds = async () =>
      Number((await card.locator('.countdown').textContent())!.match(/^about (\d+) s left$/)![1]);
    const first = await seconds();
    expect(first).toBeGreaterThan(35);
    expect(first).toBeLessThanOrEqual(40);
    await expect.poll(seconds, { timeout: 5_000 }).toBeLessThan(first);

    await progress('queue_position', {
      build_id: buildId,
      transition: 'start',
      position: 1,
      pending: 2,
      estimate: estimate(20_000),
    });
    await expect
      .poll(() => card.locator('.queue-position').textContent())
      .toBe('1st of 2 in the build queue');
    expect(await seconds()).toBeLessThanOrEqual(20);

    const line = (id: string) => ({
      id,
      at: inMs(0),
      level: 'info',
      stage: 'plan',
      output: `preview line ${id}`,
    });
    await progress('build_log', {
      build_id: buildId,
      transition: 'start',
      lines: [line('1'), line('2')],
      last_log_id: '2',
      skipped: 0,
    });
    await progress('build_log', {
      build_id: buildId,
      transition: 'start',
      lines: [line('2'), line('3')],
      last_log_id: '3',
      skipped: 0,
    });
    await expect
      .poll(() => card.locator('.log .log-output').allTextContents())
      .toEqual(['preview line 1', 'preview line 2', 'preview line 3']);
    // Scrolled up to read, the pane stays where it is as lines arrive; back at the bottom, it follows again.
    const pane = card.locator('.log');
    type Scrolled = PageElement & { scrollHeight: number; clientHeight: number };
    const scrolled = () =>
      pane.evaluate((el: Scrolled) => ({ top: el.scrollTop, max: el.scrollHeight - el.clientHeight }));
    const more = (from: number) =>
      progress('build_log', {
        build_id: buildId,
        transition: 'start',
        lines: Array.from({ length: 20 }, (_, i) => line(String(from + i))),
        last_log_id: String(from + 19),
        skipped: 0,
      });
    await more(4);
    await expect.poll(() => pane.locator('.log-line').count()).toBe(23);
    expect((await scrolled()).max).toBeGreaterThan(0);
    await pane.evaluate((el: Scrolled) => (el.scrollTop = 0));
    await more(24);
    await expect.poll(() => pane.locator('.log-line').count()).toBe(43);
    expect((await scrolled()).top).toBe(0);
    await pane.evaluate((el: Scrolled) => (el.scrollTop = el.scrollHeight));
    await more(44);
    await expect.poll(() => pane.locator('.log-line').count()).toBe(63);
    await expect
      .poll(async () => {
        const s = await scrolled();
        return s.top >= s.max - 8;
      })
      .toBe(true);

    await page.mouse.move(0, 0);
    await card.screenshot({ path: screenshotPath('live-chat-queue.png') });

    // Running past its estimate: no queue position any more, and "any moment now".
    await progress('build_running', { build_id: buildId, transition: 'start', estimate: estimate(-1_000) });
    await expect.poll(() => card.locator('.countdown').textContent()).toBe('any moment now');
    expect(await card.locator('.queue-position').count()).toBe(0);

    const cancel = card.locator('button.cancel');
    expect(await cancel.isEnabled()).toBe(true);

    await publishEvent({
      type: 'result',
      stage: 'failed',
      job,
      chatId: chat.chatId,
      message: 'build canceled',
      data: {
        kind: 'start-workspace',
        ok: false,
        code: 'build_canceled',
        error: 'build canceled',
        is_error: false,
      },
    });
    await card.locator('.result-failed').waitFor();
    expect(await cancel.isDisabled()).toBe(true);
    expect(await card.locator('.job-wait').isHidden()).toBe(true);
    await page.close();
  });

  // The cancel engineer's `canceled` failure code: events with it do not validate until it is in FAILURE_CODES.
  it.runIf((FAILURE_CODES as readonly string[]).includes('canceled'))(
    'shows a canceled job as canceled, not failed, with Cancel disabled',
    async () => {
      const page = await context.newPage();
      const chat = seeded.chats.automaticUpdates;
      await openChat(page, chat.chatId);
      const job = { id: randomUUID(), name: 'start-workspace' as const, attempt: 1 };
      await publishEvent({ type: 'progress', stage: 'queued', job, chatId: chat.chatId, message: 'queued' });
      const card = page.locator(`.job[data-job-id="${job.id}"]`);
      await expect.poll(() => card.locator('button.cancel').isEnabled()).toBe(true);
      await publishEvent({
        type: 'result',
        stage: 'failed',
        job,
        chatId: chat.chatId,
        message: 'canceled: by the operator',
        data: {
          kind: 'start-workspace',
          ok: false,
          code: 'canceled',
          error: 'canceled: by the operator',
          is_error: false,
        },
      } as unknown as EventDraft);
      const canceled = card.locator('.result-canceled');
      await canceled.waitFor();
      expect(await canceled.locator('.result-title').textContent()).toBe('canceledCanceled');
      expect(await canceled.locator('.result-error').textContent()).toBe('canceled: by the operator');
      expect(await card.locator('.job-status').textContent()).toBe('canceled');
      expect(await card.locator('button.cancel').isDisabled()).toBe(true);
      await page.close();
    },
  );

  it('cancels with Cancel a start waiting for its chat lock: the job ends with one canceled result', async () => {
    const page = await context.newPage();
    const { chatId } = await chatOnNewWorkspace({ transition: 'stop', status: 'succeeded' });
    // Another holder keeps the chat's lock, so that the start waits, re-delayed, until it is canceled.
    const held = await new ChatLocks([redis], prefix).tryAcquire(chatId);
    expect(held).not.toBeNull();
    try {
      await openChat(page, chatId);
      await page.locator('#start').click();
      const card = newestJob(page);
      await card.locator('.event[data-stage="waiting_for_lock"]').waitFor({ timeout: RUN_MS });
      await card.locator('button.cancel').click();
      // Removed while delayed (or waiting); caught by its worker if it was being re-delayed right then.
      await expect
        .poll(() => card.locator('.cancel-answer').textContent())
        .toMatch(/^(Canceled \(it was (delayed|waiting)\)|Cancel requested: its worker ends it)$/);
      const box = card.locator('.result-canceled');
      await box.waitFor({ timeout: RUN_MS });
      expect(await box.textContent()).toContain('canceled: by the operator on the live chat page');
      expect(await card.locator('.job-status').textContent()).toBe('canceled');
      expect(await stagesOf(page)).toEqual(['queued', 'waiting_for_lock', 'failed']);
      expect(await card.locator('button.cancel').isDisabled()).toBe(true);
      await expect.poll(() => page.locator('#start').isEnabled()).toBe(true);
      await page.mouse.move(0, 0);
      await card.screenshot({ path: screenshotPath('live-chat-cancel.png') });
    } finally {
      await held?.release();
      await page.close();
    }
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
