-- The span context (W3C Trace Context: {"traceparent": ..., "tracestate": ...}) of the job attempt that
-- created a build, so that the provisioner's build span can link to it. NULL when the attempt was not traced.
ALTER TABLE provisioner_jobs ADD COLUMN trace_context jsonb;
