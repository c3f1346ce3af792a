"""MLflow tag names that tie runs to sweeps and trials (no Ray import, for readers of MLflow)."""

TAG_ROLE = "aipray.role"  # "sweep" on the parent run, "trial" on children
TAG_SWEEP = "aipray.sweep"  # the sweep's name
TAG_KEY = "aipray.trial_key"  # a trial's content key: one child run per key
PARENT_TAG = "mlflow.parentRunId"
