#!/usr/bin/env bash
# Set up .venv (if needed) and run the demo: a small CNN on scikit-learn's 8x8 handwritten digits, under the
# ActorRunner, with accuracy, a one-cycle learning rate, early stopping, checkpoints, TensorBoard and an event log.
#
#   bash scripts/demo.sh                     # the full run (under a minute on 2 cores), files in runs/demo/version_N
#   bash scripts/demo.sh --quick             # a few seconds (what CI runs)
#   bash scripts/demo.sh --help              # every option: --epochs N, --runner {actor,linear}, --out DIR, ...
#
# The same as `.venv/bin/asyncloop demo ARGS` (the code is asyncloop/_demo.py); arguments are passed through.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
