-- The engine's tables. The file-execution row is the job: its claim, lease, result and the
-- execution's counters change in the same transactions, so there is no second store to disagree.

CREATE TABLE unstuck.organizations (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name       text NOT NULL UNIQUE,
  created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO unstuck.organizations (name) VALUES ('default');

CREATE TABLE unstuck.workflows (
  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  organization_id bigint NOT NULL REFERENCES unstuck.organizations,
  name            text NOT NULL,
  -- The resolved definition (absolute paths), so any worker can run it.
  definition      jsonb NOT NULL,
  definition_hash text NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  UNIQUE (organization_id, name, definition_hash)
);

CREATE TABLE unstuck.workflow_executions (
  id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  organization_id  bigint NOT NULL REFERENCES unstuck.organizations,
  workflow_id      bigint NOT NULL REFERENCES unstuck.workflows,
  status           text NOT NULL DEFAULT 'PENDING'
                   CHECK (status IN ('PENDING', 'EXECUTING', 'COMPLETED', 'ERROR', 'STOPPED')),
  total            integer NOT NULL DEFAULT 0,
  completed        integer NOT NULL DEFAULT 0,
  failed           integer NOT NULL DEFAULT 0,
  stopped          integer NOT NULL DEFAULT 0,
  stop_requested   boolean NOT NULL DEFAULT false,
  created_at       timestamptz NOT NULL DEFAULT now(),
  started_at       timestamptz,
  finished_at      timestamptz,
  CHECK (completed + failed + stopped <= total)
);
CREATE INDEX workflow_executions_org ON unstuck.workflow_executions (organization_id, id DESC);
CREATE INDEX workflow_executions_active ON unstuck.workflow_executions (id)
  WHERE status IN ('PENDING', 'EXECUTING');

CREATE TABLE unstuck.file_executions (
  id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  organization_id  bigint NOT NULL REFERENCES unstuck.organizations,
  execution_id     bigint NOT NULL REFERENCES unstuck.workflow_executions ON DELETE CASCADE,
  path             text NOT NULL,
  size_bytes       bigint NOT NULL,
  sha256           text,
  status           text NOT NULL DEFAULT 'PENDING'
                   CHECK (status IN ('PENDING', 'EXECUTING', 'COMPLETED', 'ERROR', 'STOPPED')),
  -- Fences every transition: a worker may only finish the attempt it claimed.
  attempt          integer NOT NULL DEFAULT 1,
  max_attempts     integer NOT NULL,
  lease_seconds    real NOT NULL,
  available_at     timestamptz NOT NULL DEFAULT now(),
  lease_owner      text,
  lease_expires_at timestamptz,
  -- Whose outcome was recorded last, for which attempt: a worker re-running a recording
  -- whose reply it lost finds here that its first try landed.
  recorded_by      text,
  recorded_attempt integer,
  created_at       timestamptz NOT NULL DEFAULT now(),
  started_at       timestamptz,
  finished_at      timestamptz,
  step_timings     jsonb,
  error            text
) WITH (fillfactor = 80); -- room on each page keeps heartbeats (lease-only updates) HOT
-- Every status change writes a new entry into every index, so there are few: the claim reads
-- the oldest available PENDING rows, the sweep the EXECUTING ones (as many as files in
-- flight, so lease_expires_at need not be indexed, and a heartbeat changes no indexed
-- column), and per-execution reads go by execution.
CREATE INDEX file_executions_claim ON unstuck.file_executions (available_at, id) WHERE status = 'PENDING';
CREATE INDEX file_executions_executing ON unstuck.file_executions (id) WHERE status = 'EXECUTING';
CREATE INDEX file_executions_execution ON unstuck.file_executions (execution_id, id);

-- organization_id and execution_id repeat the file execution's, for scoped reads; only the
-- key to the file is a foreign key, since each one checked costs a row lock per result.
CREATE TABLE unstuck.file_results (
  file_execution_id bigint PRIMARY KEY REFERENCES unstuck.file_executions ON DELETE CASCADE,
  organization_id   bigint NOT NULL,
  execution_id      bigint NOT NULL,
  result            jsonb NOT NULL,
  created_at        timestamptz NOT NULL DEFAULT now()
);

-- The state machine, in one place: the trigger's condition lists the allowed transitions, so
-- it is evaluated as a plain expression for every status change and the function that refuses
-- runs only for a forbidden one. COMPLETED and STOPPED are final; ERROR goes back to PENDING
-- only through an explicit retry, which starts a new attempt. Heartbeats (status unchanged)
-- do not fire it.
CREATE FUNCTION unstuck.refuse_file_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'file execution % cannot go from % to %', OLD.id, OLD.status, NEW.status
    USING ERRCODE = 'check_violation';
END $$;

CREATE TRIGGER file_executions_guard
  BEFORE UPDATE OF status ON unstuck.file_executions
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NOT (
       (OLD.status = 'PENDING' AND NEW.status IN ('EXECUTING', 'STOPPED', 'ERROR'))
    OR (OLD.status = 'EXECUTING' AND NEW.status IN ('COMPLETED', 'ERROR', 'STOPPED', 'PENDING'))
    OR (OLD.status = 'ERROR' AND NEW.status = 'PENDING' AND NEW.attempt > OLD.attempt)))
  EXECUTE FUNCTION unstuck.refuse_file_transition();
