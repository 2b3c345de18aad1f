// `workspace-jobs watch --chat ID [--since ID]`: the chat's events, replayed from the stream, then live.
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import { WorkspaceJobsProducer } from '../producer/producer.js';
import { parseFlags, requireId, UsageError } from './args.js';
import { formatEvent } from './format.js';
import { untilSignal } from './lifecycle.js';

const WATCH_HELP = `Usage: workspace-jobs watch --chat ID [--since ID] [--pretty]

Prints the chat's events as JSON lines: those still in its replay stream (after --since, a stream entry id
such as an event's "seq"; default: all of them), then live ones, until interrupted.

  --chat ID    the chat (required)
  --since ID   replay only the events after this one ("$" for live events only)
  --pretty     one readable line per event instead of JSON`;

export async function watchCommand(
  args: string[],
  config: Config,
  log: Logger,
  servicesReady: () => Promise<void>,
): Promise<number> {
  const { values } = parseFlags(args, {
    chat: { type: 'string' },
    since: { type: 'string' },
    pretty: { type: 'boolean' },
  });
  if (values.help) {
    console.log(WATCH_HELP);
    return 0;
  }
  const chatId = requireId('--chat', values.chat);
  const since = values.since ?? '0';
  if (since !== '$' && !/^\d+(-\d+)?$/.test(since)) {
    throw new UsageError(
      `--since must be a stream entry id like 1732190000000-0, got ${JSON.stringify(since)}`,
    );
  }
  await servicesReady();
  const producer = WorkspaceJobsProducer.fromConfig(config, log);
  try {
    const unsubscribe = await producer.subscribe(
      chatId,
      (event) => console.log(formatEvent(event, !values.pretty)),
      since === '$' ? {} : { since },
    );
    await untilSignal(unsubscribe, log);
  } finally {
    await producer.close();
  }
  return 0;
}
