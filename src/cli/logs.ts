// `workspace-jobs logs --build ID [--follow] [--after ID] [--json]`: a build's provisioner log, from
// Postgres; with --follow, live until the build's provisioner job completes.
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import { WorkspaceJobsProducer } from '../producer/producer.js';
import { logIdProblem, UnknownBuildError, type BuildLogLine } from '../shared/build-logs.js';
import { parseFlags, requireId, UsageError } from './args.js';
import { untilSignal } from './lifecycle.js';

const LOGS_HELP = `Usage: workspace-jobs logs --build ID [--follow] [--after ID] [--json]

Prints the build's log lines (provisioner_job_logs), oldest first, one per line:
  <at> <level> [<stage>] <output>
Exit 1 when there is no such build.

  --build ID   the workspace build (required)
  --after ID   only the lines after this log line id (a line's "id" in --json output; default 0, all)
  --follow     keep printing lines as they are written, until the build's provisioner job completes
  --json       one JSON object per line: { id, at, level, stage, source, output }`;

export async function logsCommand(
  args: string[],
  config: Config,
  log: Logger,
  servicesReady: () => Promise<void>,
): Promise<number> {
  const { values } = parseFlags(args, {
    build: { type: 'string' },
    after: { type: 'string' },
    follow: { type: 'boolean' },
    json: { type: 'boolean' },
  });
  if (values.help) {
    console.log(LOGS_HELP);
    return 0;
  }
  const buildId = requireId('--build', values.build);
  const after = values.after ?? '0';
  const problem = logIdProblem(after);
  if (problem !== undefined) throw new UsageError(`--after: ${problem}, got ${JSON.stringify(after)}`);
  const print = values.json
    ? (line: BuildLogLine) => JSON.stringify(line)
    : (line: BuildLogLine) => `${line.at} ${line.level} [${line.stage}] ${line.output}`;

  await servicesReady();
  const producer = WorkspaceJobsProducer.fromConfig(config, log);
  const interrupted = new AbortController();
  // Ctrl-C (or SIGTERM, or a closed stdout) ends a follow early; the close below runs either way.
  void untilSignal(async () => interrupted.abort(new Error('interrupted')), log);
  try {
    for await (const line of producer.buildLogs(buildId, {
      after,
      follow: values.follow ?? false,
      signal: interrupted.signal,
    }))
      console.log(print(line));
  } catch (error) {
    if (error instanceof UnknownBuildError) {
      console.error(`workspace-jobs logs: ${error.message}`);
      return 1;
    }
    if (!interrupted.signal.aborted) throw error;
  } finally {
    await producer.close();
  }
  return 0;
}
