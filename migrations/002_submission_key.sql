-- A submission's own key, chosen before its transaction: when the COMMIT's reply is lost and the
-- transaction runs again, the retry finds the execution its first try made instead of making a
-- second one (every file processed twice). Unique, so not even a concurrent re-run can add one.
ALTER TABLE unstuck.workflow_executions ADD COLUMN submission_key uuid;
CREATE UNIQUE INDEX workflow_executions_submission_key
  ON unstuck.workflow_executions (submission_key);
