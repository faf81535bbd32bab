#!/usr/bin/env bash
# Set up ./.venv and run the whole test suite under a virtual X server.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
set +e
xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = "5" ]; then
    echo "[test] pytest collected no tests: treating as failure" >&2
    exit 1
fi
exit "$rc"
