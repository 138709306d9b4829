#!/usr/bin/env bash
# Build the documentation site and serve it locally, with .venv (set up first if needed).
#
#   bash scripts/docs.sh                  build (strict) into site/, then serve it on http://127.0.0.1:8000
#   bash scripts/docs.sh build [ARGS]     build only: `mkdocs build --strict ARGS` (e.g. -d /tmp/site)
#   bash scripts/docs.sh serve [ARGS]     serve only, rebuilding on every change (e.g. -a 0.0.0.0:8000)
#
# Strict: a broken link or anchor, a page missing from the nav in mkdocs.yml, or an unresolved API reference
# fails the build (tests/test_docs_site.py runs the same build in CI).
set -euo pipefail
case "${1-}" in
    build | serve | "") ;;
    *) echo "usage: bash scripts/docs.sh [build|serve] [mkdocs options]" >&2; exit 2 ;;
esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export NO_MKDOCS_2_WARNING=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdocs=.venv/bin/mkdocs
case "${1-}" in
    build) shift; exec "$mkdocs" build --strict "$@" ;;
    serve) shift; exec "$mkdocs" serve --strict "$@" ;;
    *) "$mkdocs" build --strict; exec "$mkdocs" serve --strict ;;
esac
