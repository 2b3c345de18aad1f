-- The subset of Coder's schema that starting and creating a chat's workspace needs.
-- Names, enums and the derived provisioner_jobs.job_status follow Coder so that people who know Coder
-- can read it (see ../shared/reference/coder-start-workspace.md section 8).

CREATE TYPE user_status AS ENUM ('active', 'dormant', 'suspended');
CREATE TYPE workspace_transition AS ENUM ('start', 'stop', 'delete');
CREATE TYPE build_reason AS ENUM ('initiator', 'autostart', 'autostop', 'dormancy', 'failedstop', 'autodelete');
CREATE TYPE automatic_updates AS ENUM ('always', 'never');
CREATE TYPE provisioner_job_type AS ENUM ('template_version_import', 'workspace_build', 'template_version_dry_run');
CREATE TYPE provisioner_job_status AS ENUM
  ('pending', 'running', 'succeeded', 'canceling', 'canceled', 'failed', 'unknown');
CREATE TYPE log_level AS ENUM ('trace', 'debug', 'info', 'warn', 'error');
CREATE TYPE log_source AS ENUM ('provisioner_daemon', 'provisioner');
CREATE TYPE workspace_agent_lifecycle_state AS ENUM
  ('created', 'starting', 'start_timeout', 'start_error', 'ready',
   'shutting_down', 'shutdown_timeout', 'shutdown_error', 'off');

CREATE TABLE users (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  username text NOT NULL UNIQUE,
  email text NOT NULL,
  status user_status NOT NULL DEFAULT 'active',
  deleted boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE templates (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL UNIQUE,
  display_name text NOT NULL DEFAULT '',
  -- Set after the first version exists; the two tables reference each other.
  active_version_id uuid,
  require_active_version boolean NOT NULL DEFAULT false,
  use_classic_parameter_flow boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE template_versions (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  template_id uuid REFERENCES templates (id) ON DELETE CASCADE,
  name text NOT NULL,
  message text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX template_versions_template_id_idx ON template_versions (template_id);

ALTER TABLE templates
  ADD CONSTRAINT templates_active_version_id_fkey
  FOREIGN KEY (active_version_id) REFERENCES template_versions (id) DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE template_version_parameters (
  template_version_id uuid NOT NULL REFERENCES template_versions (id) ON DELETE CASCADE,
  name text NOT NULL,
  display_name text NOT NULL DEFAULT '',
  description text NOT NULL DEFAULT '',
  -- 'string' | 'number' | 'bool' | 'list(string)'
  type text NOT NULL DEFAULT 'string',
  mutable boolean NOT NULL DEFAULT true,
  required boolean NOT NULL DEFAULT false,
  ephemeral boolean NOT NULL DEFAULT false,
  default_value text NOT NULL DEFAULT '',
  -- [{ "name": "...", "value": "...", "description": "..." }]
  options jsonb NOT NULL DEFAULT '[]',
  validation_regex text,
  validation_min integer,
  validation_max integer,
  -- 'increasing' | 'decreasing' | NULL
  validation_monotonic text,
  validation_error text NOT NULL DEFAULT '',
  display_order integer NOT NULL DEFAULT 0,
  PRIMARY KEY (template_version_id, name),
  CHECK (validation_monotonic IS NULL OR validation_monotonic IN ('increasing', 'decreasing'))
);

CREATE TABLE workspaces (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  owner_id uuid NOT NULL REFERENCES users (id),
  template_id uuid NOT NULL REFERENCES templates (id),
  name text NOT NULL,
  deleted boolean NOT NULL DEFAULT false,
  automatic_updates automatic_updates NOT NULL DEFAULT 'never',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- Names are unique per owner among live workspaces, as in Coder.
CREATE UNIQUE INDEX workspaces_owner_id_lower_name_idx ON workspaces (owner_id, lower(name)) WHERE NOT deleted;
CREATE INDEX workspaces_template_id_idx ON workspaces (template_id);

CREATE TABLE provisioner_jobs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  canceled_at timestamptz,
  completed_at timestamptz,
  error text,
  error_code text,
  -- The provisioner daemon that claimed the job.
  worker_id uuid,
  type provisioner_job_type NOT NULL DEFAULT 'workspace_build',
  input jsonb NOT NULL DEFAULT '{}',
  -- Derived exactly as Coder derives it; an error wins over a cancellation.
  job_status provisioner_job_status NOT NULL GENERATED ALWAYS AS (
    CASE
      WHEN completed_at IS NOT NULL THEN
        CASE
          WHEN nullif(error, '') IS NOT NULL THEN 'failed'::provisioner_job_status
          WHEN canceled_at IS NOT NULL THEN 'canceled'::provisioner_job_status
          ELSE 'succeeded'::provisioner_job_status
        END
      ELSE
        CASE
          WHEN nullif(error, '') IS NOT NULL THEN 'failed'::provisioner_job_status
          WHEN canceled_at IS NOT NULL THEN 'canceling'::provisioner_job_status
          WHEN started_at IS NULL THEN 'pending'::provisioner_job_status
          ELSE 'running'::provisioner_job_status
        END
    END
  ) STORED
);
-- The provisioner's claim query scans only unclaimed jobs, oldest first.
CREATE INDEX provisioner_jobs_pending_idx ON provisioner_jobs (created_at)
  WHERE started_at IS NULL AND canceled_at IS NULL AND completed_at IS NULL;
-- The stale-job reaper scans only running jobs.
CREATE INDEX provisioner_jobs_running_idx ON provisioner_jobs (updated_at)
  WHERE started_at IS NOT NULL AND completed_at IS NULL;

CREATE TABLE provisioner_job_logs (
  id bigserial PRIMARY KEY,
  job_id uuid NOT NULL REFERENCES provisioner_jobs (id) ON DELETE CASCADE,
  created_at timestamptz NOT NULL DEFAULT now(),
  source log_source NOT NULL DEFAULT 'provisioner',
  level log_level NOT NULL DEFAULT 'info',
  stage text NOT NULL DEFAULT '',
  output text NOT NULL
);
CREATE INDEX provisioner_job_logs_job_id_idx ON provisioner_job_logs (job_id, id);

CREATE TABLE workspace_builds (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  workspace_id uuid NOT NULL REFERENCES workspaces (id),
  template_version_id uuid NOT NULL REFERENCES template_versions (id),
  build_number integer NOT NULL CHECK (build_number > 0),
  transition workspace_transition NOT NULL,
  initiator_id uuid NOT NULL REFERENCES users (id),
  job_id uuid NOT NULL UNIQUE REFERENCES provisioner_jobs (id),
  reason build_reason NOT NULL DEFAULT 'initiator',
  -- Also serves "the latest build of a workspace" (ORDER BY build_number DESC LIMIT 1).
  UNIQUE (workspace_id, build_number)
);

CREATE TABLE workspace_build_parameters (
  workspace_build_id uuid NOT NULL REFERENCES workspace_builds (id) ON DELETE CASCADE,
  name text NOT NULL,
  value text NOT NULL,
  PRIMARY KEY (workspace_build_id, name)
);

CREATE TABLE workspace_resources (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  created_at timestamptz NOT NULL DEFAULT now(),
  job_id uuid NOT NULL REFERENCES provisioner_jobs (id) ON DELETE CASCADE,
  transition workspace_transition NOT NULL,
  type text NOT NULL,
  name text NOT NULL
);
CREATE INDEX workspace_resources_job_id_idx ON workspace_resources (job_id);

CREATE TABLE workspace_agents (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  resource_id uuid NOT NULL REFERENCES workspace_resources (id) ON DELETE CASCADE,
  -- Set for sub-agents (e.g. devcontainers); the chat only uses root agents.
  parent_id uuid REFERENCES workspace_agents (id) ON DELETE CASCADE,
  name text NOT NULL,
  display_order integer NOT NULL DEFAULT 0,
  lifecycle_state workspace_agent_lifecycle_state NOT NULL DEFAULT 'created',
  first_connected_at timestamptz,
  last_connected_at timestamptz,
  disconnected_at timestamptz,
  connection_timeout_seconds integer NOT NULL DEFAULT 0,
  started_at timestamptz,
  ready_at timestamptz,
  deleted boolean NOT NULL DEFAULT false
);
CREATE INDEX workspace_agents_resource_id_idx ON workspace_agents (resource_id);

CREATE TABLE chats (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  owner_id uuid NOT NULL REFERENCES users (id),
  parent_chat_id uuid REFERENCES chats (id) ON DELETE CASCADE,
  title text NOT NULL DEFAULT '',
  workspace_id uuid REFERENCES workspaces (id),
  build_id uuid REFERENCES workspace_builds (id) ON DELETE SET NULL,
  agent_id uuid REFERENCES workspace_agents (id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chats_owner_id_idx ON chats (owner_id);
CREATE INDEX chats_workspace_id_idx ON chats (workspace_id);

-- Change notifications. Workers wait for builds and agents on these instead of polling each row
-- (START_WORKSPACE.md D6); provisioner daemons wake on new jobs. Payloads are small JSON objects.
CREATE FUNCTION notify_provisioner_job_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('provisioner_job_changed',
    json_build_object('id', NEW.id, 'job_status', NEW.job_status)::text);
  RETURN NULL;
END;
$$;

CREATE TRIGGER provisioner_jobs_notify_insert
  AFTER INSERT ON provisioner_jobs
  FOR EACH ROW EXECUTE FUNCTION notify_provisioner_job_changed();

CREATE TRIGGER provisioner_jobs_notify_update
  AFTER UPDATE ON provisioner_jobs
  FOR EACH ROW WHEN (OLD.job_status IS DISTINCT FROM NEW.job_status)
  EXECUTE FUNCTION notify_provisioner_job_changed();

CREATE FUNCTION notify_workspace_agent_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('workspace_agent_changed',
    json_build_object('id', NEW.id, 'resource_id', NEW.resource_id,
                      'lifecycle_state', NEW.lifecycle_state)::text);
  RETURN NULL;
END;
$$;

CREATE TRIGGER workspace_agents_notify_insert
  AFTER INSERT ON workspace_agents
  FOR EACH ROW EXECUTE FUNCTION notify_workspace_agent_changed();

-- Heartbeats (last_connected_at alone) do not notify; connection and lifecycle changes do.
CREATE TRIGGER workspace_agents_notify_update
  AFTER UPDATE ON workspace_agents
  FOR EACH ROW WHEN (
    OLD.lifecycle_state IS DISTINCT FROM NEW.lifecycle_state
    OR OLD.first_connected_at IS DISTINCT FROM NEW.first_connected_at
    OR OLD.disconnected_at IS DISTINCT FROM NEW.disconnected_at
  )
  EXECUTE FUNCTION notify_workspace_agent_changed();
