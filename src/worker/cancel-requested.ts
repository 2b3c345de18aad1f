import type { CancelRequest } from '../shared/cancel-requests.js';

/** The abort reason of a job whose cancel was requested (CancelListener): not a worker shutting down. */
export class JobCancelRequestedError extends Error {
  override name = 'JobCancelRequestedError';
  constructor(
    readonly jobId: string,
    readonly request: CancelRequest,
  ) {
    super(`job ${jobId} was canceled: ${request.reason ?? 'cancel requested'}`);
  }
}
