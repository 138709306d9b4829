#!/usr/bin/env bash
# Set up .venv (if needed) and run the demo: bash scripts/demo.sh [--quick] [--epochs N] [--runner linear]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
