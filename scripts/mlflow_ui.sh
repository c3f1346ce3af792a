#!/usr/bin/env bash
# Open the MLflow UI on the project's local tracking store (127.0.0.1 only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" -m mlflow ui \
  --backend-store-uri "sqlite:///$(pwd)/mlflow/mlflow.db" \
  --default-artifact-root "$(pwd)/mlflow/artifacts" \
  --host 127.0.0.1 --port "${PORT:-5000}"
