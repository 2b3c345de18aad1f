// Why the daemon aborted an executor. The reason decides how the job is settled, so each has its own class.

/** canceled_at was set while the job ran: the job completes as canceled. */
export class JobCanceledError extends Error {
  override name = 'JobCanceledError';
  constructor() {
    super('job canceled');
  }
}

/** The daemon is shutting down and the grace period is over: the job fails with this message. */
export class ProvisionerShutdownError extends Error {
  override name = 'ProvisionerShutdownError';
  constructor() {
    super('provisioner shut down');
  }
}

/**
 * The job is no longer ours (the stale reaper or someone else completed it, or it was re-assigned, or a
 * Postgres crash lost our unflushed claim): nothing is written, the job is another claim's or settled.
 */
export class JobLostError extends Error {
  override name = 'JobLostError';
  constructor() {
    super('job is no longer owned by this provisioner');
  }
}
