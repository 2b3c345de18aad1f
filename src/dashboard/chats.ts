// The live chat page's reads: the chat list (newest first, searched and paged) and one build's details
// (its template version by name and the parameters it ran with). Every filter is index-backed
// (migrations/0004_dashboard_chat_search.sql), so a search or a later page costs the same on a big table.
import type { Queryable } from '../shared/postgres.js';
import { ValidationError, idSchema } from '../shared/schemas.js';

/** Chats per page. */
export const CHATS_PAGE_SIZE = 50;
const MAX_QUERY_LENGTH = 100;

export interface ChatsQuery {
  /** Lower-cased search text: a chat id prefix, an owner username prefix or a workspace name prefix. */
  q?: string;
  /** Where the previous page ended: its last chat's created_at (to the microsecond) and id. */
  after?: { createdAt: string; id: string };
}

// `<created_at, UTC, microseconds>_<chat id>`: the keyset of the last chat of a page. Built by Postgres
// (a JS Date would lose the microseconds and repeat or skip chats created in the same millisecond).
const CURSOR_RE = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z)_([0-9a-f-]{36})$/;

/**
 * The list's query string: only `q` and `cursor`, each at most once. Anything else is a ValidationError
 * naming the parameter (a 400 from the API).
 */
export function parseChatsQuery(query: Record<string, unknown>): ChatsQuery {
  const unknown = Object.keys(query).filter((key) => key !== 'q' && key !== 'cursor');
  if (unknown.length > 0) {
    throw new ValidationError(
      `unknown query parameter${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => JSON.stringify(k)).join(', ')}; expected q, cursor`,
    );
  }
  const result: ChatsQuery = {};
  if (query.q !== undefined) {
    if (typeof query.q !== 'string') throw new ValidationError('invalid q: give it once, as text');
    const q = query.q.trim().toLowerCase();
    if (q.length > MAX_QUERY_LENGTH) {
      throw new ValidationError(`invalid q: at most ${MAX_QUERY_LENGTH} characters`);
    }
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f]/.test(q)) throw new ValidationError('invalid q: control characters');
    if (q !== '') result.q = q;
  }
  if (query.cursor !== undefined) {
    const cursor = query.cursor;
    const match = typeof cursor === 'string' ? CURSOR_RE.exec(cursor) : null;
    const createdAt = match?.[1];
    const id = match?.[2];
    // The regex admits month 13 or a malformed id; Postgres would answer those with a 500.
    const date = createdAt ? new Date(createdAt) : undefined;
    if (
      !createdAt ||
      !id ||
      !date ||
      Number.isNaN(date.getTime()) ||
      date.toISOString().slice(0, 23) !== createdAt.slice(0, 23) ||
      !idSchema.safeParse(id).success
    ) {
      throw new ValidationError('invalid cursor: pass the next_cursor of the previous page as it is');
    }
    result.after = { createdAt, id };
  }
  return result;
}

/** The lowest and highest UUID starting with `prefix` (hex digits, dashes only where a UUID has them). */
export function uuidPrefixRange(prefix: string): [string, string] | undefined {
  const hex = prefix.replace(/-/g, '');
  if (!/^[0-9a-f]{1,32}$/.test(hex)) return undefined;
  const format = (digits: string) =>
    [
      digits.slice(0, 8),
      digits.slice(8, 12),
      digits.slice(12, 16),
      digits.slice(16, 20),
      digits.slice(20),
    ].join('-');
  if (prefix.includes('-') && !format(hex.padEnd(32, '0')).startsWith(prefix)) return undefined;
  return [format(hex.padEnd(32, '0')), format(hex.padEnd(32, 'f'))];
}

/** `text` as a LIKE prefix pattern: its own `%`, `_` and `\` match literally. */
const likePrefix = (text: string) => `${text.replace(/[\\%_]/g, '\\$&')}%`;

// One row per chat of the page (the CTE `page`, as c): its owner, its workspace and the workspace's latest
// build with the build's template version and job status, which is what "state" means on the page (e.g.
// `stop` + `succeeded` = stopped). Looked up chat by chat: as plain joins, the planner hashed all of
// workspaces (and of users) for the page's 50 rows while the tables are small enough, a Seq Scan that grows
// with them; LIMIT 1 (one row anyway: the owner is the chat's) keeps the subquery from being merged back.
const CHAT_COLUMNS = `
SELECT c.id,
       c.title,
       c.parent_chat_id,
       c.created_at,
       to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '_' || c.id AS cursor,
       c.owner_id,
       x.*
  FROM page c
  CROSS JOIN LATERAL (
        SELECT u.username          AS owner_username,
               w.id                AS workspace_id,
               w.name              AS workspace_name,
               w.deleted           AS workspace_deleted,
               w.automatic_updates,
               w.template_id,
               t.name              AS template_name,
               b.build_number,
               b.transition,
               b.template_version_id,
               v.name              AS template_version_name,
               j.job_status
          FROM users u
          LEFT JOIN workspaces w ON w.id = c.workspace_id
          LEFT JOIN templates t ON t.id = w.template_id
          LEFT JOIN LATERAL (
                SELECT build_number, transition, template_version_id, job_id
                  FROM workspace_builds
                 WHERE workspace_id = w.id
                 ORDER BY build_number DESC
                 LIMIT 1
               ) b ON true
          LEFT JOIN template_versions v ON v.id = b.template_version_id
          LEFT JOIN provisioner_jobs j ON j.id = b.job_id
         WHERE u.id = c.owner_id
         LIMIT 1
       ) x`;

/** One page of chats, newest first, and the cursor of the next page (null on the last one). */
export async function listChats(
  db: Queryable,
  query: ChatsQuery,
  pageSize = CHATS_PAGE_SIZE,
): Promise<{ chats: Record<string, unknown>[]; next_cursor: string | null }> {
  const values: unknown[] = [];
  const param = (value: unknown) => `$${values.push(value)}`;
  const where: string[] = [];
  if (query.q !== undefined) {
    // Three index lookups OR-ed into one bitmap of chats (chat id range, owner username prefix, workspace
    // name prefix): the matching owners and workspaces are looked up first, once each (ARRAY(...)), then
    // their chats through chats_owner_id_idx and chats_workspace_id_idx. A search costs what it matches. A
    // UNION of joins instead made the planner hash all chats (a Seq Scan) once a prefix matched ~100 of 10k.
    const pattern = param(likePrefix(query.q));
    const matches = [
      `c.owner_id = ANY (ARRAY(SELECT id FROM users WHERE lower(username) LIKE ${pattern}))`,
      `c.workspace_id = ANY (ARRAY(SELECT id FROM workspaces WHERE lower(name) LIKE ${pattern}))`,
    ];
    const range = uuidPrefixRange(query.q);
    if (range) matches.unshift(`c.id BETWEEN ${param(range[0])} AND ${param(range[1])}`);
    where.push(`(${matches.join(' OR ')})`);
  }
  if (query.after) {
    where.push(
      `(c.created_at, c.id) < (${param(query.after.createdAt)}::timestamptz, ${param(query.after.id)}::uuid)`,
    );
  }
  // The page first (chats alone, by the keyset index), then the joins for those rows only: joining before
  // the LIMIT would look up the latest build of every chat a broad search matches. The page carries the
  // chat's columns: joining chats again by id made the planner hash all of chats (a Seq Scan).
  const sql = `WITH page AS (
SELECT c.id, c.title, c.parent_chat_id, c.created_at, c.owner_id, c.workspace_id FROM chats c
 ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
 ORDER BY c.created_at DESC, c.id DESC
 LIMIT ${param(pageSize + 1)}
)${CHAT_COLUMNS}
 ORDER BY c.created_at DESC, c.id DESC`;
  const { rows } = await db.query<Record<string, unknown> & { cursor: string }>(sql, values);
  const more = rows.length > pageSize;
  const page = rows.slice(0, pageSize);
  const next = more ? page.at(-1)!.cursor : null;
  return { chats: page.map(({ cursor: _cursor, ...chat }) => chat), next_cursor: next };
}

// A build with its template version's name, the version of the build before it (a start that moved to the
// active version names both) and the parameters it ran with.
const BUILD_SQL = `
SELECT b.id,
       b.workspace_id,
       b.build_number,
       b.transition,
       b.created_at,
       j.job_status,
       b.template_version_id,
       v.name  AS template_version_name,
       t.name  AS template_name,
       pb.template_version_id AS previous_template_version_id,
       pv.name AS previous_template_version_name,
       COALESCE(
         (SELECT json_agg(json_build_object('name', p.name, 'value', p.value) ORDER BY p.name)
            FROM workspace_build_parameters p
           WHERE p.workspace_build_id = b.id),
         '[]'::json) AS parameters
  FROM workspace_builds b
  JOIN provisioner_jobs j ON j.id = b.job_id
  JOIN template_versions v ON v.id = b.template_version_id
  LEFT JOIN templates t ON t.id = v.template_id
  LEFT JOIN workspace_builds pb ON pb.workspace_id = b.workspace_id AND pb.build_number = b.build_number - 1
  LEFT JOIN template_versions pv ON pv.id = pb.template_version_id
 WHERE b.id = $1`;

/** The build's details, or undefined when there is no such build. */
export async function getBuild(db: Queryable, buildId: string): Promise<Record<string, unknown> | undefined> {
  const { rows } = await db.query(BUILD_SQL, [buildId]);
  return rows[0];
}
