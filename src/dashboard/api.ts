// The live chat page's JSON API: recent chats and templates (plain SQL over the Postgres schema), and the
// actions the chat backend takes (one per job kind in the registry: start, create, …) through the same
// producer a backend would use. The dashboard acts as the chat's owner (the owner is read from the chat), so
// the worker's ownership checks pass.
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { CancelOptions, WorkspaceJobsProducer } from '../producer/producer.js';
import type { Logger } from '../shared/logger.js';
import type { Pool } from '../shared/postgres.js';
import { ValidationError, idSchema } from '../shared/schemas.js';
import { personFields } from '../jobs/job-kind.js';
import { findJobKindByCommand } from '../jobs/registry.js';
import { getBuild, listChats, parseChatsQuery } from './chats.js';
import { isSafeMethod, mediaType } from './cross-site.js';

/** How many templates the page lists: the most recent ones. */
const LIST_LIMIT = 50;

// Templates with their active version and that version's parameters (for the create form).
const TEMPLATES_SQL = `
SELECT t.id,
       t.name,
       t.display_name,
       t.require_active_version,
       t.active_version_id,
       v.name AS active_version_name,
       COALESCE(
         (SELECT json_agg(json_build_object(
                   'name', p.name,
                   'display_name', p.display_name,
                   'description', p.description,
                   'type', p.type,
                   'required', p.required,
                   'default_value', p.default_value,
                   'options', p.options)
                 ORDER BY p.display_order, p.name)
            FROM template_version_parameters p
           WHERE p.template_version_id = t.active_version_id),
         '[]'::json) AS parameters
  FROM templates t
  LEFT JOIN template_versions v ON v.id = t.active_version_id
 ORDER BY t.created_at DESC, t.name
 LIMIT $1`;

/** A 4xx answer with `{ error }`; the page shows the message as it is. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** The JSON body as an object holding only `allowed` fields; anything else is named in a 400. */
function body(req: Request, allowed: readonly string[]): Record<string, unknown> {
  // Only JSON, even when empty: a body-less POST would otherwise count as `{}` (cross-site.ts refuses other
  // types once a body is there, and cross-site requests whatever they carry).
  if (mediaType(req) !== 'application/json') {
    throw new HttpError(415, 'send the request body as application/json');
  }
  const raw: unknown = req.body ?? {};
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new HttpError(400, 'the request body must be a JSON object');
  }
  const unknown = Object.keys(raw).filter((key) => !allowed.includes(key));
  if (unknown.length > 0) {
    throw new HttpError(
      400,
      `unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => JSON.stringify(k)).join(', ')}; ` +
        (allowed.length > 0 ? `expected ${allowed.join(', ')}` : 'this action takes none'),
    );
  }
  return raw as Record<string, unknown>;
}

/** The path's id parameter `name`, in lower case; a 400 naming it when it is not a UUID. */
function idParam(req: Request, name: 'chatId' | 'buildId' | 'jobId'): string {
  const id = idSchema.safeParse(String(req.params[name]));
  if (!id.success) {
    throw new HttpError(400, `invalid ${name}: ${JSON.stringify(req.params[name])} is not a UUID`);
  }
  return id.data;
}

export function apiRouter(deps: {
  pool: Pool;
  producer: WorkspaceJobsProducer;
  log: Logger;
  /** DASHBOARD_READ_ONLY: the actions (start, create: anything but a read) answer 403. */
  readOnly: boolean;
}): Router {
  const { pool, producer, log, readOnly } = deps;
  const router = express.Router();
  router.use((req, res, next) => {
    if (readOnly && !isSafeMethod(req.method)) {
      res.status(403).json({
        error:
          'the dashboard is read-only (DASHBOARD_READ_ONLY=true): it starts, creates, stops and cancels nothing',
      });
      return;
    }
    next();
  });
  router.use(express.json({ limit: '64kb' }));

  const ownerOf = async (chatId: string): Promise<string> => {
    const { rows } = await pool.query<{ owner_id: string }>('SELECT owner_id FROM chats WHERE id = $1', [
      chatId,
    ]);
    if (!rows[0]) throw new HttpError(404, `chat ${chatId} not found`);
    return rows[0].owner_id;
  };

  // ?q= searches by chat id, owner or workspace name (prefixes); ?cursor= is the previous page's next_cursor.
  router.get('/chats', async (req, res) => {
    res.json(await listChats(pool, parseChatsQuery(req.query)));
  });

  router.get('/builds/:buildId', async (req, res) => {
    const buildId = idParam(req, 'buildId');
    const build = await getBuild(pool, buildId);
    if (!build) throw new HttpError(404, `build ${buildId} not found`);
    res.json({ build });
  });

  router.get('/templates', async (_req, res) => {
    const { rows } = await pool.query(TEMPLATES_SQL, [LIST_LIMIT]);
    res.json({ templates: rows });
  });

  // Cancel, body { reason? }: the producer's CancelAnswer, 404 (with it) when there is no such job; a chat's
  // is { chatId, answers }, one per live job, oldest first (none: nothing to cancel, not an error).
  router.post('/jobs/:jobId/cancel', async (req, res) => {
    const jobId = idParam(req, 'jobId');
    const answer = await producer.cancel(jobId, cancelOptions(req));
    log.info({ jobId, outcome: answer.outcome }, 'cancel requested from the live chat page');
    if (answer.outcome === 'not_found') res.status(404).json({ error: `job ${jobId} not found`, ...answer });
    else res.json(answer);
  });

  router.post('/chats/:chatId/cancel', async (req, res) => {
    const chatId = idParam(req, 'chatId');
    const answers = await producer.cancelChat(chatId, cancelOptions(req));
    log.info(
      { chatId, outcomes: answers.map((answer) => answer.outcome) },
      "chat's jobs canceled from the live chat page",
    );
    res.json({ chatId, answers });
  });

  // One action per job kind, by its command: start { parameters? }, create { templateId, name?, parameters? },
  // … (the kind's input fields but those the dashboard fills). 202 with the job (maybe deduplicated).
  router.post('/chats/:chatId/:command', async (req, res, next) => {
    const kind = findJobKindByCommand(String(req.params.command));
    if (!kind) return next();
    const chatId = idParam(req, 'chatId');
    const allowed = personFields(kind).map((field) => field.name);
    const fields = body(req, allowed);
    const ownerId = await ownerOf(chatId);
    // The body's values go to the producer unchecked: it validates them and names what is wrong.
    const enqueued = await producer.enqueue(kind.name, { ...fields, chatId, ownerId } as never);
    log.info({ chatId, ...enqueued }, `${kind.command} requested from the live chat page`);
    res.status(202).json(enqueued);
  });

  router.use((_req, res) => {
    res.status(404).json({ error: 'no such API endpoint' });
  });

  // Bad input (ours, the producer's ValidationError naming the field, malformed JSON) is a 400 the page shows;
  // anything else is logged and answered with a 500 that does not leak internals.
  router.use((error: unknown, req: Request, res: Response, _next: NextFunction) => {
    if (error instanceof HttpError) {
      res.status(error.status).json({ error: error.message });
    } else if (error instanceof ValidationError) {
      res.status(400).json({ error: error.message });
    } else if (isBodyParserError(error)) {
      res.status(error.status).json({ error: `invalid request body: ${error.message}` });
    } else {
      log.error({ err: error, method: req.method, path: req.originalUrl }, 'dashboard API request failed');
      res.status(500).json({ error: 'internal error; see the dashboard log' });
    }
  });
  return router;
}

/** The cancel's options from the body; the reason goes to the producer unchecked: it validates it. */
function cancelOptions(req: Request): CancelOptions {
  return body(req, ['reason']) as CancelOptions;
}

function isBodyParserError(error: unknown): error is { status: number; message: string } {
  return (
    error instanceof Error &&
    'status' in error &&
    typeof error.status === 'number' &&
    error.status >= 400 &&
    error.status < 500
  );
}
