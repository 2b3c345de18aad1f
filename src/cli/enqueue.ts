// `workspace-jobs enqueue start|create …`: enqueue as the chat backend would, and with --wait follow the job's
// events and exit by its result (0 success, 1 failure).
import type { Config } from '../shared/config.js';
import { isFailure, type JobResult, type WorkspaceJobEvent } from '../shared/contract.js';
import { redisKeys } from '../shared/keys.js';
import { withTimeout } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { createPool } from '../shared/postgres.js';
import { closeRedis, createRedis } from '../shared/redis.js';
import { WorkspaceJobsProducer } from '../producer/producer.js';
import { parseFlags, parseMs, parseParams, requireId, UsageError } from './args.js';
import { formatEvent } from './format.js';
import { stdoutClosed } from './lifecycle.js';

const ENQUEUE_HELP = `Usage: workspace-jobs enqueue start --chat ID [--owner ID] [--param name=value ...] [--wait] [--timeout MS] [--json]
       workspace-jobs enqueue create --chat ID --template ID [--name NAME] [--owner ID] [--param name=value ...] [--wait] [--timeout MS] [--json]

Enqueues a job as the chat backend would: start the chat's workspace, or create one for the chat from a template
(a chat whose workspace is usable keeps it: the result then says already_exists or stopped).

  --chat ID          the chat (required)
  --template ID      create: the template (required)
  --name NAME        create: the workspace name (default: the template's name and a random suffix)
  --owner ID         the chat's owner (default: read from the chat)
  --param name=value a parameter value for the build; repeatable
  --wait             follow the job's events; exit 0 on success, 1 on a failed result; the result JSON is printed last
                     (one line when stdout is not a terminal or with --json)
  --timeout MS       with --wait: give up after MS (default: the build, agent and startup timeouts added up, plus the
                     lock wait)
  --json             print events as JSON lines even on a terminal`;

export async function enqueueCommand(args: string[], config: Config, log: Logger): Promise<number> {
  const [kind, ...rest] = args;
  if (kind === '--help' || kind === '-h' || kind === undefined) {
    console.log(ENQUEUE_HELP);
    return kind === undefined ? 2 : 0;
  }
  if (kind !== 'start' && kind !== 'create') {
    throw new UsageError(`unknown job kind ${JSON.stringify(kind)}; expected "start" or "create"`);
  }
  const { values } = parseFlags(rest, {
    chat: { type: 'string' },
    owner: { type: 'string' },
    template: { type: 'string' },
    name: { type: 'string' },
    param: { type: 'string', multiple: true },
    wait: { type: 'boolean' },
    timeout: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (values.help) {
    console.log(ENQUEUE_HELP);
    return 0;
  }
  const chatId = requireId('--chat', values.chat);
  if (kind === 'start' && (values.template !== undefined || values.name !== undefined)) {
    throw new UsageError('--template and --name are for enqueue create');
  }
  const templateId = kind === 'create' ? requireId('--template', values.template) : undefined;
  const ownerId =
    values.owner === undefined ? await ownerOfChat(config, chatId, log) : requireId('--owner', values.owner);
  const parameters = parseParams(values.param);
  const defaultTimeout =
    2 * (config.buildTimeoutMs + config.agentConnectTimeoutMs + config.startupScriptTimeoutMs) + 60_000;
  const timeoutMs = parseMs('--timeout', values.timeout, defaultTimeout);

  const producer = WorkspaceJobsProducer.fromConfig(config, log);
  try {
    const since = values.wait ? await lastEventId(config, chatId, log) : undefined;
    const enqueued = templateId
      ? await producer.createWorkspace({ chatId, ownerId, templateId, name: values.name, parameters })
      : await producer.startWorkspace({ chatId, ownerId, parameters });
    console.log(JSON.stringify(enqueued));
    if (!values.wait) return 0;
    const asJson = values.json || !process.stdout.isTTY;
    const following = follow(producer, chatId, enqueued.jobId, since!, timeoutMs, asJson);
    // Closing the producer below ends the wait too; its rejection is nobody's concern then.
    following.catch(() => {});
    const result = await Promise.race([following, stdoutClosed()]);
    // Nobody reads any more (`… --wait | head -n 1`): stop following, quietly.
    if (result === undefined) return 0;
    // As JSON lines, the result is the last line: one object a script can take with `tail -n 1`.
    console.log(asJson ? JSON.stringify(result) : JSON.stringify(result, null, 2));
    return isFailure(result) ? 1 : 0;
  } finally {
    await producer.close();
  }
}

/** Prints the job's events until its result, and returns the result. */
export async function follow(
  producer: WorkspaceJobsProducer,
  chatId: string,
  jobId: string,
  since: string,
  timeoutMs: number,
  /** Events as JSON lines, else one readable line each. */
  asJson: boolean,
): Promise<JobResult> {
  let resultEvent: (() => void) | undefined;
  const sawResult = new Promise<void>((resolve) => (resultEvent = resolve));
  const unsubscribe = await producer.subscribe(
    chatId,
    (event: WorkspaceJobEvent) => {
      if (event.job.id !== jobId) return;
      console.log(formatEvent(event, asJson));
      if (event.type === 'result') resultEvent?.();
    },
    { since },
  );
  try {
    const result = await producer.waitForResult(jobId, { timeoutMs });
    // The result event is normally printed already; give a late live message a moment, never more.
    await withTimeout(sawResult, 500, 'the result event').catch(() => {});
    return result;
  } finally {
    await unsubscribe();
  }
}

async function ownerOfChat(config: Config, chatId: string, log: Logger): Promise<string> {
  const pool = createPool(config.databaseUrl, { max: 1, applicationName: 'workspace-jobs-cli', log });
  try {
    const { rows } = await pool.query<{ owner_id: string }>('SELECT owner_id FROM chats WHERE id = $1', [
      chatId,
    ]);
    if (!rows[0]) throw new UsageError(`chat ${chatId} not found`);
    return rows[0].owner_id;
  } finally {
    await pool.end();
  }
}

/** The id of the chat's newest event, so that --wait replays exactly what comes after the enqueue. */
export async function lastEventId(config: Config, chatId: string, log: Logger): Promise<string> {
  const redis = createRedis(config.redisUrl, {
    name: 'workspace-jobs-cli',
    log,
    cluster: config.redisCluster,
  });
  try {
    const [last] = await redis.xrevrange(redisKeys(config.queuePrefix).chatLog(chatId), '+', '-', 'COUNT', 1);
    return last?.[0] ?? '0';
  } finally {
    await closeRedis(redis);
  }
}
