#!/usr/bin/env bash
# Set up .venv for asyncloop: idempotent, quiet, and fast when nothing changed.
#
#   1. create .venv with `python3 -m venv` if it is missing (or broken);
#   2. install torch==2.13.0 first, unless it is already importable at that version: a bare `torch` requirement
#      resolved with no torch installed could pull a multi-GB CUDA build;
#   3. pip install -e ".[dev]" (asyncloop in editable mode plus the test tools).
#
# A stamp in .venv records the pyproject.toml/setup.cfg it was installed from; when they are unchanged and every
# declared dependency is still installed, the script does nothing. Set PYTHON to choose the interpreter.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
venv="$root/.venv"
py="$venv/bin/python"
torch_version=2.13.0
stamp="$venv/.asyncloop-setup"

say() { echo "setup: $*" >&2; }

want_stamp() {
    { cat pyproject.toml setup.cfg 2>/dev/null; echo "$root"; echo "torch==$torch_version"; } \
        | sha256sum | cut -d' ' -f1
}

# Every requirement of the installed asyncloop (extras included) and torch at the pinned version, from package
# metadata only: no import of torch, so this check costs a few tens of milliseconds.
installed() {
    "$py" -I - "$torch_version" <<'PY'
import importlib.metadata as md
import re
import sys

try:
    requires = md.requires("asyncloop") or []
    if md.version("torch").split("+")[0] != sys.argv[1]:
        sys.exit(1)
    for requirement in requires:
        md.version(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
except md.PackageNotFoundError:
    sys.exit(1)
PY
}

if [[ -x "$py" ]] && "$py" -c "" 2>/dev/null; then
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$(want_stamp)" ]] && installed; then
        exit 0
    fi
else
    python=${PYTHON:-python3}
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "setup: asyncloop needs Python >= 3.11; '$python' is $("$python" -V 2>&1 || echo missing)." \
            "Set PYTHON=/path/to/python3.11 and run again." >&2
        exit 1
    fi
    say "creating .venv with $("$python" -V 2>&1)"
    "$python" -m venv --clear "$venv"
fi

# pip's output goes to a log that is shown only when pip fails.
log=$(mktemp "${TMPDIR:-/tmp}/asyncloop-setup.XXXXXX")
trap 'rm -f "$log"' EXIT
pip_install() {
    if ! "$py" -m pip --disable-pip-version-check --no-input -q install "$@" >"$log" 2>&1; then
        cat "$log" >&2
        say "pip install $* failed (output above)"
        exit 1
    fi
}

if ! "$py" -I -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
    say "installing torch==$torch_version"
    pip_install "torch==$torch_version"
fi

say "installing asyncloop[dev] (editable)"
pip_install -e ".[dev]"

installed || { say "asyncloop's dependencies are still missing after pip install"; exit 1; }
want_stamp > "$stamp"
versions='import asyncloop, torch; print(f"asyncloop {asyncloop.__version__}, torch {torch.__version__}")'
say "done: $("$py" -I -c "$versions")"
