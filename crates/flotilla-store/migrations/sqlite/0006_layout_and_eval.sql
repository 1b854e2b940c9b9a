-- A job's parameter layout and each round's server-side evaluation (SQLite). Keep in step with
-- migrations/postgres/0006_layout_and_eval.sql.
--
-- `jobs.layout_json` is the job's ParamLayout (JSON), written when the job is created, so reading a
-- finished job's model or resuming a job never needs the model rebuilt. NULL for jobs created
-- before this migration: the coordinator then asks its model provider, as it used to.
--
-- `rounds.eval_json` holds the evaluation metrics of a round's model (a JSON object such as
-- {"eval_accuracy": …, "eval_loss": …, "eval_samples": …}), recorded after the round committed;
-- readers see them merged into the round's metrics. NULL until the round is evaluated, and for
-- rounds that are never evaluated.
ALTER TABLE jobs ADD COLUMN layout_json TEXT;
ALTER TABLE rounds ADD COLUMN eval_json TEXT;
