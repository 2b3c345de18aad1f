// `workspace-jobs cancel --job ID | --chat ID [--reason TEXT] [--json]`: cancels a job, or every live job
// of a chat, through the producer (docs/design.md §6), and says per job what happened.
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import { WorkspaceJobsProducer, type CancelAnswer } from '../producer/producer.js';
import { parseFlags, requireId, UsageError } from './args.js';

const CANCEL_HELP = `Usage: workspace-jobs cancel --job ID [--reason TEXT] [--json]
       workspace-jobs cancel --chat ID [--reason TEXT] [--json]

Cancels a job, or every waiting, delayed or running job of a chat (oldest first; then any of another chat it
was deduplicated onto, which ends for both chats), and prints one line per job:
  job <id>: canceled (was waiting)          removed from the queue; its one canceled result is published
  job <id>: cancel requested (its worker ends it)
  job <id>: already finished (succeeded)    a no-op; in parentheses how it ended (or its failure code)
  job <id>: not found
Exit 0 when every job is canceled, cancel requested or already finished (also for a chat with no live job);
1 when a job is not found.

  --job ID       the job (the jobId that enqueue printed)
  --chat ID      the chat: all of its live jobs
  --reason TEXT  who or why, carried in the result's error ("canceled: TEXT"); one line, at most 200 characters
  --json         one JSON object per job, the producer's answer: { jobId, outcome, was?, result? }`;

export async function cancelCommand(
  args: string[],
  config: Config,
  log: Logger,
  servicesReady: () => Promise<void>,
): Promise<number> {
  const { values } = parseFlags(args, {
    job: { type: 'string' },
    chat: { type: 'string' },
    reason: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (values.help) {
    console.log(CANCEL_HELP);
    return 0;
  }
  if ((values.job === undefined) === (values.chat === undefined)) {
    throw new UsageError(
      values.job === undefined
        ? 'give --job ID or --chat ID: what to cancel'
        : '--job and --chat cannot be given together: cancel one job or a whole chat',
    );
  }
  const jobId = values.job === undefined ? undefined : requireId('--job', values.job);
  const chatId = values.chat === undefined ? undefined : requireId('--chat', values.chat);

  await servicesReady();
  const producer = WorkspaceJobsProducer.fromConfig(config, log);
  let answers: CancelAnswer[];
  try {
    // The reason goes to the producer as it is: it validates it (ValidationError, exit 2).
    const options = { reason: values.reason };
    answers =
      jobId === undefined
        ? await producer.cancelChat(chatId!, options)
        : [await producer.cancel(jobId, options)];
  } finally {
    await producer.close();
  }
  if (values.json) for (const answer of answers) console.log(JSON.stringify(answer));
  else if (answers.length === 0) console.log(`chat ${chatId}: no job waiting, delayed or running`);
  else for (const answer of answers) console.log(describeAnswer(answer));
  return answers.some((answer) => answer.outcome === 'not_found') ? 1 : 0;
}

/** `job <id>: canceled (was waiting)` and the like: what the cancel did, in one line. */
function describeAnswer(answer: CancelAnswer): string {
  const what = (() => {
    switch (answer.outcome) {
      case 'canceled':
        return `canceled (was ${answer.was})`;
      case 'cancel_requested':
        return 'cancel requested (its worker ends it)';
      case 'already_finished':
        if (answer.result === undefined) return 'already finished';
        return `already finished (${answer.result.ok ? 'succeeded' : answer.result.code})`;
      case 'not_found':
        return 'not found';
    }
  })();
  return `job ${answer.jobId}: ${what}`;
}
