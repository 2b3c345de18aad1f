// The chat list's search and paging (GET /api/chats?q=&cursor=) and a build's details (GET /api/builds/:id)
// on real Postgres: every chat is listed once across pages, even chats created in the same microsecond;
// bad parameters are a 400 naming the parameter.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { insertUser } from '../../src/cli/fixtures.js';
import { seed, type SeedResult } from '../../src/cli/seed.js';
import { CHATS_PAGE_SIZE, uuidPrefixRange } from '../../src/dashboard/chats.js';
import { startTestDashboard, type TestDashboard } from './helpers.js';

let t: TestDashboard;
let seeded: SeedResult;
/** Chats of one extra owner, all with the same created_at: paging must still not repeat or skip one. */
const SAME_TIME_CHATS = CHATS_PAGE_SIZE + 12;

beforeAll(async () => {
  t = await startTestDashboard();
  seeded = await seed(t.db.pool);
  const owner = await insertUser(t.db.pool, { username: `paged-${seeded.suffix}` });
  await t.db.pool.query(
    `INSERT INTO chats (owner_id, title, created_at)
     SELECT $1, 'same time ' || i, '2026-01-01T00:00:00.123456Z' FROM generate_series(1, $2::int) i`,
    [owner.userId, SAME_TIME_CHATS],
  );
});

afterAll(async () => {
  await t?.close();
});

interface Page {
  chats: { id: string; title: string; template_version_name: string | null }[];
  next_cursor: string | null;
}

async function get(path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(t.url(path));
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

async function chats(params: Record<string, string>): Promise<Page> {
  const { status, body } = await get(`/api/chats?${new URLSearchParams(params)}`);
  expect(status, JSON.stringify(body)).toBe(200);
  return body as unknown as Page;
}

describe('GET /api/chats paging', () => {
  it('lists every chat exactly once across pages, newest first', async () => {
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page: Page = await chats(cursor ? { cursor } : {});
      expect(page.chats.length).toBeLessThanOrEqual(CHATS_PAGE_SIZE);
      seen.push(...page.chats.map((c) => c.id));
      cursor = page.next_cursor;
      pages++;
    } while (cursor && pages < 10);
    const { rows } = await t.db.pool.query<{ id: string }>(
      'SELECT id FROM chats ORDER BY created_at DESC, id DESC',
    );
    expect(seen).toEqual(rows.map((r) => r.id));
    expect(pages).toBe(Math.ceil(rows.length / CHATS_PAGE_SIZE));
  });
});

describe('GET /api/chats search', () => {
  const ids = (page: Page) => page.chats.map((c) => c.id).sort();
  const seededIds = () =>
    Object.values(seeded.chats)
      .map((c) => c.chatId)
      .sort();

  it('finds chats by owner username prefix, case-insensitively', async () => {
    expect(ids(await chats({ q: seeded.user.username.toUpperCase() }))).toEqual(seededIds());
  });

  it('finds a chat by workspace name prefix', async () => {
    const name = seeded.chats.manualUpdate.workspaceName!;
    expect(ids(await chats({ q: name.slice(0, -2) }))).toEqual([seeded.chats.manualUpdate.chatId]);
  });

  it('finds a chat by its id or an id prefix, with or without dashes', async () => {
    const id = seeded.chats.stopped.chatId;
    expect(ids(await chats({ q: id.toUpperCase() }))).toEqual([id]);
    expect(ids(await chats({ q: id.slice(0, 13) }))).toContain(id);
    expect(ids(await chats({ q: id.replace(/-/g, '').slice(0, 20) }))).toContain(id);
  });

  it('treats LIKE wildcards in q as plain characters', async () => {
    expect((await chats({ q: '%' })).chats).toEqual([]);
    expect((await chats({ q: '_' })).chats).toEqual([]);
  });

  it('pages a search too', async () => {
    const first = await chats({ q: `paged-${seeded.suffix}` });
    expect(first.chats).toHaveLength(CHATS_PAGE_SIZE);
    const second = await chats({ q: `paged-${seeded.suffix}`, cursor: first.next_cursor! });
    expect(second.chats).toHaveLength(SAME_TIME_CHATS - CHATS_PAGE_SIZE);
    expect(second.next_cursor).toBeNull();
    expect(new Set([...ids(first), ...ids(second)]).size).toBe(SAME_TIME_CHATS);
  });

  it('names the template version of the latest build', async () => {
    const [chat] = (await chats({ q: seeded.chats.manualUpdate.chatId })).chats;
    expect(chat!.template_version_name).toBe('v1');
  });
});

describe('GET /api/chats bad parameters', () => {
  it.each([
    ['q twice', 'q=a&q=b', /^invalid q/],
    ['q too long', `q=${'a'.repeat(101)}`, /^invalid q: at most 100/],
    ['q with a control character', 'q=a%00b', /^invalid q: control/],
    ['a cursor that is not one', 'cursor=abc', /^invalid cursor/],
    [
      'a cursor with month 13',
      'cursor=2026-13-01T00:00:00.000000Z_8d7c4c36-8c3a-4d7e-9a36-0e0b5d3d8c11',
      /^invalid cursor/,
    ],
    [
      'a cursor with a bad id',
      'cursor=2026-01-01T00:00:00.000000Z_zzzzzzzz-8c3a-4d7e-9a36-0e0b5d3d8c11',
      /^invalid cursor/,
    ],
    ['an unknown parameter', 'limit=5', /^unknown query parameter "limit"/],
  ])('answers %s with a 400 naming it', async (_what, query, message) => {
    const { status, body } = await get(`/api/chats?${query}`);
    expect(status).toBe(400);
    expect(body.error).toMatch(message);
  });
});

describe('GET /api/builds/:buildId', () => {
  it("gives the build with its template version by name, the previous build's version and its parameters", async () => {
    const { rows } = await t.db.pool.query<{ id: string }>(
      'SELECT id FROM workspace_builds WHERE workspace_id = $1 AND build_number = 2',
      [seeded.chats.stopped.workspaceId],
    );
    const { status, body } = await get(`/api/builds/${rows[0]!.id.toUpperCase()}`);
    expect(status).toBe(200);
    expect(body.build).toMatchObject({
      id: rows[0]!.id,
      build_number: 2,
      transition: 'stop',
      template_name: seeded.templates.dev.name,
      template_version_name: 'v1',
      previous_template_version_id: seeded.templates.dev.versionIds[0],
      previous_template_version_name: 'v1',
      parameters: [{ name: 'cpu', value: '2' }],
    });
  });

  it('answers 400 for an id that is not a UUID and 404 for an unknown build', async () => {
    expect((await get('/api/builds/nope')).status).toBe(400);
    expect((await get('/api/builds/nope')).body.error).toMatch(/^invalid buildId/);
    expect((await get('/api/builds/8d7c4c36-8c3a-4d7e-9a36-0e0b5d3d8c11')).status).toBe(404);
  });
});

describe('uuidPrefixRange', () => {
  it('spans every UUID with the prefix, and refuses dashes where a UUID has none', () => {
    expect(uuidPrefixRange('ab12')).toEqual([
      'ab120000-0000-0000-0000-000000000000',
      'ab12ffff-ffff-ffff-ffff-ffffffffffff',
    ]);
    expect(uuidPrefixRange('ab12cdef-01')).toEqual([
      'ab12cdef-0100-0000-0000-000000000000',
      'ab12cdef-01ff-ffff-ffff-ffffffffffff',
    ]);
    expect(uuidPrefixRange('ab-12')).toBeUndefined();
    expect(uuidPrefixRange('dev')).toBeUndefined();
  });
});
