#!/usr/bin/env bash
# Fresh machine -> all tests passing. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export LITELLM_LOCAL_MODEL_COST_MAP=True
exec .venv/bin/python -m pytest -q "$@"
