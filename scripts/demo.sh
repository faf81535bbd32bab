#!/usr/bin/env bash
# Set up ./.venv and run the demo on the bundled sample data.
# Writes labels, probability maps and screenshots to ./demo_output and prints where.
# With a display it opens napari with the Segment dock; without one it renders headless under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
CNNSEG_EXTRAS=${CNNSEG_EXTRAS:-testing} bash scripts/setup_env.sh
if [ -n "${DISPLAY:-}" ]; then
    exec .venv/bin/python -m napari_cnnseg.demo --out demo_output "$@"
else
    exec xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m napari_cnnseg.demo --out demo_output --headless "$@"
fi
