-- The worker's start build in one round trip (issue 11; docs/start-workspace.md step 7, D12). The worker
-- reads what it plans with (the workspace, its latest build, the template, the parameters) and resolves the
-- parameters itself; this function then takes the workspace's row lock, checks under it that nothing it
-- planned with has changed, and inserts the pending provisioner job, the build and its parameters, all in the
-- one transaction of its call. Before it, the worker sent BEGIN, ten statements and COMMIT.
--
-- outcome:
--   'deleted'       the workspace is gone or deleted;
--   'build_active'  its latest build (build_id) is pending, running or canceling;
--   'changed'       its latest build, its automatic_updates or its template's active version (compared
--                   NULL-safe: a template may have none) or require_active_version is no longer what the
--                   plan saw: the worker plans again;
--   'created'       the build (build_id) and its job (job_id, job_status) exist once the call returns.
-- A concurrent insert that did not take the row lock still meets the unique (workspace_id, build_number)
-- index: the call fails with its unique_violation, as the INSERT did before.
--
-- plpgsql, not one SQL statement: each statement here takes a new snapshot, so the latest build read after
-- waiting for the lock sees a build the lock holder committed (one statement would read the snapshot taken
-- before the wait).
CREATE FUNCTION create_start_build(
  p_workspace_id uuid,
  p_previous_build_id uuid,
  p_automatic_updates automatic_updates,
  p_active_version_id uuid,
  p_require_active_version boolean,
  p_build_id uuid,
  p_template_version_id uuid,
  p_build_number integer,
  p_initiator_id uuid,
  p_parameter_names text[],
  p_parameter_values text[],
  p_trace_context jsonb,
  OUT outcome text,
  OUT build_id uuid,
  OUT job_id uuid,
  OUT job_status provisioner_job_status
)
LANGUAGE plpgsql AS $$
DECLARE
  workspace workspaces%ROWTYPE;
  latest record;
BEGIN
  SELECT * INTO workspace FROM workspaces WHERE id = p_workspace_id FOR UPDATE;
  IF NOT FOUND OR workspace.deleted THEN
    outcome := 'deleted';
    RETURN;
  END IF;

  SELECT b.id, j.job_status INTO latest
    FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
   WHERE b.workspace_id = p_workspace_id
   ORDER BY b.build_number DESC LIMIT 1;
  IF latest.job_status IN ('pending', 'running', 'canceling') THEN
    outcome := 'build_active';
    build_id := latest.id;
    RETURN;
  END IF;
  IF latest.id IS DISTINCT FROM p_previous_build_id
     OR workspace.automatic_updates <> p_automatic_updates
     OR NOT EXISTS (
       SELECT 1 FROM templates t
        WHERE t.id = workspace.template_id
          AND t.active_version_id IS NOT DISTINCT FROM p_active_version_id
          AND t.require_active_version = p_require_active_version) THEN
    outcome := 'changed';
    RETURN;
  END IF;

  INSERT INTO provisioner_jobs (type, input, trace_context)
  VALUES ('workspace_build', jsonb_build_object('workspace_build_id', p_build_id), p_trace_context)
  RETURNING id, provisioner_jobs.job_status INTO job_id, job_status;
  INSERT INTO workspace_builds (id, workspace_id, template_version_id, build_number, transition, initiator_id,
                                job_id)
  VALUES (p_build_id, p_workspace_id, p_template_version_id, p_build_number, 'start', p_initiator_id, job_id);
  INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
  SELECT p_build_id, p.name, p.value FROM unnest(p_parameter_names, p_parameter_values) AS p(name, value);
  outcome := 'created';
  build_id := p_build_id;
END;
$$;
