// What a job's BullMQ log (Bull Board's Logs tab) says of one of its events: its stage and message, and for a
// build_log event the build's lines it carried, as one entry per event (a bounded number per job: KEEP_LOGS).
import type { BuildLogData, ProgressStage } from '../shared/contract.js';

export function jobLogEntry(stage: ProgressStage, message: string, data?: Record<string, unknown>): string {
  const head = `${stage}: ${message}`;
  if (stage !== 'build_log' || !data) return head;
  const { lines, skipped } = data as unknown as BuildLogData;
  const body = lines.map((l) => `  [${l.level}] ${l.stage}: ${l.output}`);
  return [head, ...(skipped > 0 ? [`  … ${skipped} lines not shown`] : []), ...body].join('\n');
}
