#!/usr/bin/env bash
# The peers suite in one command: create bench/peers/.venv (never the project's .venv), install torch 2.13.0 (the
# CPU wheel) FIRST, then asyncloop from this repository (editable), pytorch-ignite, lightning and fastai without
# its heavy optional dependencies (torchvision, spacy), every later pip call constrained to torch==2.13.0 so that
# nothing can pull a multi-GB CUDA build; then run the whole suite (arguments go to suite.py: --quick, --smoke,
# --frameworks, --workloads, --note). Idempotent: a stamp skips the installs when nothing changed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$here/.venv"
py="$venv/bin/python"
stamp="$venv/.peers-setup"
want="torch==2.13.0 pytorch-ignite==0.5.5 lightning==2.6.6 fastai==2.8.12 v1"
say() { echo "peers: $*" >&2; }

if [[ ! -x "$py" ]] || ! "$py" -c "" 2>/dev/null; then
    say "creating $venv with $(${PYTHON:-python3} -V 2>&1)"
    "${PYTHON:-python3}" -m venv --clear "$venv"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    constraint="$venv/torch-constraint.txt"
    echo "torch==2.13.0" > "$constraint"
    log="$venv/pip.log"
    pip() {
        if ! "$py" -m pip --disable-pip-version-check --no-input -q install "$@" >"$log" 2>&1; then
            grep -v "is ignored" "$log" >&2
            say "pip install $* failed (output above)"
            exit 1
        fi
    }
    say "installing torch==2.13.0 (CPU wheel) first"
    pip "torch==2.13.0"
    "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" \
        || { say "torch 2.13.0 did not install; stopping before anything can pull another torch"; exit 1; }
    say "installing asyncloop (editable, from $root), pytorch-ignite, lightning, matplotlib"
    pip -c "$constraint" -e "$root" "pytorch-ignite==0.5.5" "lightning==2.6.6" matplotlib
    # fastai without torchvision/spacy: its Learner, DataLoaders and callbacks import without them.
    say "installing fastai --no-deps, then the dependencies its Learner imports (not torchvision, not spacy)"
    pip -c "$constraint" --no-deps "fastai==2.8.12"
    pip -c "$constraint" "fastcore>=2.2.22" "fasttransform>=0.0.3" "fastprogress>=0.2.4" "fastdownload>=0.0.8,<2" \
        "plum-dispatch<2.10" pandas requests pyyaml "pillow>=9" scikit-learn scipy packaging cloudpickle
    "$py" -c "import torch, ignite, lightning, fastai.learner, asyncloop, sys; \
sys.exit(torch.__version__.split('+')[0] != '2.13.0' or 'torchvision' in sys.modules)" \
        || { say "the peers' environment does not import (see above)"; exit 1; }
    echo "$want" > "$stamp"
fi
cd "$root"
exec "$py" "$here/suite.py" "$@"
