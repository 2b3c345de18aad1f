-- A failed build's machine-readable reason. error_code itself is Coder's column and already in 0001 (NULL
-- until now); a code only ever comes with the error it classifies.
--
-- When a build fails for lack of quota (error_code 'INSUFFICIENT_QUOTA') the chat tool result reports the
-- owner's credits consumed and budget, as Coder's does (PR #24956). Coder reads both from its quota tables
-- when it builds the result; we have no quota tables, since the quota lives wherever the executor checks it
-- (the simulator's budget, the operator's build command). So the provisioner stores the numbers the
-- executor reported with the failure, as two typed columns rather than JSON: the database then refuses a
-- half-reported or negative quota, and the worker reads them in the same query as the build's status.
ALTER TABLE provisioner_jobs
  ADD COLUMN quota_credits_consumed integer CHECK (quota_credits_consumed >= 0),
  ADD COLUMN quota_budget integer CHECK (quota_budget >= 0),
  ADD CONSTRAINT provisioner_jobs_quota_check
    CHECK ((quota_credits_consumed IS NULL) = (quota_budget IS NULL)),
  ADD CONSTRAINT provisioner_jobs_error_code_check
    CHECK (error_code IS NULL OR nullif(error, '') IS NOT NULL);
