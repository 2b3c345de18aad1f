// `workspace-jobs enqueue <command> …` (one command per job kind in the registry: start, create, …): enqueue
// as the chat backend would, and with --wait follow the job's events and exit by its result (0 success, 1
// failure). The flags of a kind are derived from its input schema's fields.
import type { Config } from '../shared/config.js';
import { isFailure, type JobResult, type WorkspaceJobEvent } from '../shared/contract.js';
import { redisKeys } from '../shared/keys.js';
import { withTimeout } from '../shared/errors.js';
import { describeIssues } from '../shared/schemas.js';
import type { Logger } from '../shared/logger.js';
import { createPool } from '../shared/postgres.js';
import { closeRedis, createRedis } from '../shared/redis.js';
import { personFields } from '../jobs/job-kind.js';
import { JOB_KINDS, findJobKindByCommand, type AnyJobKind } from '../jobs/registry.js';
import { WorkspaceJobsProducer } from '../producer/producer.js';
import { parseFlags, parseMs, parseParams, requireId, UsageError } from './args.js';
import { formatEvent } from './format.js';
import { stdoutClosed } from './lifecycle.js';

/** How each input field a caller gives is written on the command line (`--chat` and `--owner` are below). */
const FIELD_FLAGS: Record<string, { flag: string; value: string; help: string; multiple?: true }> = {
  templateId: { flag: 'template', value: 'ID', help: 'the template' },
  name: {
    flag: 'name',
    value: 'NAME',
    help: "the workspace name (default: the template's name and a random suffix)",
  },
  parameters: {
    flag: 'param',
    value: 'name=value',
    help: 'a parameter value for the build; repeatable',
    multiple: true,
  },
};

/** A kind's flags: one per field a person gives (personFields), in the input schema's order. */
function flagsOf(kind: AnyJobKind) {
  return personFields(kind).map((field) => {
    const flag = FIELD_FLAGS[field.name];
    if (!flag)
      throw new Error(`enqueue ${kind.command}: no command-line flag for the input field ${field.name}`);
    return { ...flag, field: field.name, required: field.required };
  });
}

type FieldFlag = ReturnType<typeof flagsOf>[number];

function usage(kind: AnyJobKind): string {
  const flags = flagsOf(kind);
  const written = (f: FieldFlag) => `--${f.flag} ${f.value}${f.multiple ? ' ...' : ''}`;
  const required = flags.filter((f) => f.required).map((f) => ` ${written(f)}`);
  const optional = flags.filter((f) => !f.required).map((f) => ` [${written(f)}]`);
  return `workspace-jobs enqueue ${kind.command} --chat ID${required.join('')} [--owner ID]${optional.join('')} [--wait] [--timeout MS] [--json]`;
}

/** The commands whose kinds take this field, when not all do (`create: the template`). */
function takenBy(field: string): string[] {
  const kinds = JOB_KINDS.filter((kind) => flagsOf(kind).some((f) => f.field === field));
  return kinds.length === JOB_KINDS.length ? [] : kinds.map((kind) => kind.command);
}

function enqueueHelp(): string {
  const fieldFlags = Object.entries(FIELD_FLAGS).flatMap(([field, f]) => {
    const taking = JOB_KINDS.flatMap((kind) => flagsOf(kind).filter((g) => g.field === field));
    if (taking.length === 0) return [];
    const commands = takenBy(field);
    const required = taking.every((g) => g.required) ? ' (required)' : '';
    return [
      `  ${`--${f.flag} ${f.value}`.padEnd(19)}${commands.length ? `${commands.join(', ')}: ` : ''}${f.help}${required}`,
    ];
  });
  return `Usage: ${JOB_KINDS.map(usage).join('\n       ')}

Enqueues a job as the chat backend would:
${JOB_KINDS.map((kind) => `  ${kind.command.padEnd(19)}${kind.summary}`).join('\n')}

  --chat ID          the chat (required)
${fieldFlags.join('\n')}
  --owner ID         the chat's owner (default: read from the chat)
  --wait             follow the job's events; exit 0 on success, 1 on a failed result; the result JSON is printed last
                     (one line when stdout is not a terminal or with --json)
  --timeout MS       with --wait: give up after MS (default: the build, agent and startup timeouts added up, plus the
                     lock wait)
  --json             print events as JSON lines even on a terminal`;
}

/** Every kind's field flags for parseArgs (each kind then refuses the ones it does not take). */
const FIELD_FLAG_OPTIONS = Object.fromEntries(
  Object.values(FIELD_FLAGS).map((f) => [f.flag, { type: 'string' as const, multiple: f.multiple ?? false }]),
);

/**
 * A flag's value as the producer takes it (ids in lower case, `--param`s as one map), checked by the kind's own
 * schema of that field: a bad value is exit 2 naming the flag before any service is asked, not a service that
 * happens to be down.
 */
function fieldValue(kind: AnyJobKind, flag: FieldFlag, raw: string | string[] | undefined): unknown {
  const value = flag.multiple
    ? parseParams(raw as string[] | undefined)
    : flag.field.endsWith('Id')
      ? requireId(`--${flag.flag}`, raw as string | undefined)
      : raw;
  if (value === undefined) return undefined;
  const checked = kind.inputSchema.shape[flag.field]!.safeParse(value);
  if (!checked.success) throw new UsageError(describeIssues(`--${flag.flag}`, checked.error));
  return value;
}

export async function enqueueCommand(
  args: string[],
  config: Config,
  log: Logger,
  servicesReady: () => Promise<void>,
): Promise<number> {
  const [command, ...rest] = args;
  if (command === '--help' || command === '-h' || command === undefined) {
    console.log(enqueueHelp());
    return command === undefined ? 2 : 0;
  }
  const kind = findJobKindByCommand(command);
  if (!kind) {
    const known = JOB_KINDS.map((k) => JSON.stringify(k.command));
    throw new UsageError(
      `unknown job kind ${JSON.stringify(command)}; expected ${known.slice(0, -1).join(', ')} or ${known.at(-1)}`,
    );
  }
  const { values } = parseFlags(rest, {
    chat: { type: 'string' },
    owner: { type: 'string' },
    ...FIELD_FLAG_OPTIONS,
    wait: { type: 'boolean' },
    timeout: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (values.help) {
    console.log(enqueueHelp());
    return 0;
  }
  const given = values as Record<string, string | string[] | boolean | undefined>;
  const chatId = requireId('--chat', values.chat);
  const flags = flagsOf(kind);
  const foreign = Object.entries(FIELD_FLAGS).filter(
    ([field, f]) => given[f.flag] !== undefined && !flags.some((g) => g.field === field),
  );
  if (foreign.length > 0) {
    const named = foreign.map(([, f]) => `--${f.flag}`).join(' and ');
    const commands = [...new Set(foreign.flatMap(([field]) => takenBy(field)))].join(' or ');
    throw new UsageError(`${named} ${foreign.length > 1 ? 'are' : 'is'} for enqueue ${commands}`);
  }
  const fields: Record<string, unknown> = {};
  for (const flag of flags) {
    const value = fieldValue(kind, flag, given[flag.flag] as string | string[] | undefined);
    if (value !== undefined) fields[flag.field] = value;
  }
  const givenOwner = values.owner === undefined ? undefined : requireId('--owner', values.owner);
  const defaultTimeout =
    2 * (config.buildTimeoutMs + config.agentConnectTimeoutMs + config.startupScriptTimeoutMs) + 60_000;
  const timeoutMs = parseMs('--timeout', values.timeout, defaultTimeout);
  await servicesReady();
  const ownerId = givenOwner ?? (await ownerOfChat(config, chatId, log));

  const producer = WorkspaceJobsProducer.fromConfig(config, log);
  try {
    const since = values.wait ? await lastEventId(config, chatId, log) : undefined;
    // The producer validates the whole payload again (the chat's owner included) and names what is wrong.
    const enqueued = await producer.enqueue(kind.name, { ...fields, chatId, ownerId } as never);
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
