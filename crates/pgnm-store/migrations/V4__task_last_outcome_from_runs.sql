-- A task's last outcome is read from its newest finished run: recording an
-- outcome then writes only the run's row, never the task's (which claims lock).
ALTER TABLE tasks DROP COLUMN last_outcome, DROP COLUMN last_error;
