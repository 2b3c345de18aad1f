// How the CLI prints events: JSON lines when piped, one readable line each on a terminal.
import type { WorkspaceJobEvent } from '../shared/contract.js';

export function formatEvent(event: WorkspaceJobEvent, json: boolean): string {
  if (json) return JSON.stringify(event);
  const time = event.at.slice(11, 19);
  const stage = event.stage.padEnd(27);
  return `${time}  ${event.job.name} #${event.job.id.slice(0, 8)}  ${stage} ${event.message}`;
}
