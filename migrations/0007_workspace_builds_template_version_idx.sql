-- Build estimates (src/worker/pg-store.ts getBuildEstimate) read a template's last 20 succeeded builds of a
-- transition, newest first per template version: with this index that is a few index probes per version,
-- however long the template's history, instead of a sort of every build. (Queue positions use
-- provisioner_jobs_pending_idx from 0001.)
CREATE INDEX workspace_builds_template_version_transition_idx
  ON workspace_builds (template_version_id, transition, created_at DESC);
