#!/bin/sh
# The api container's command: `fusionrec serve` on all interfaces. Settings come from the
# FUSIONREC_* environment (and REDIS_URL); see README.md (section Operations) for the table.
#   FUSIONREC_STORE    store root            /store
#   FUSIONREC_PORT     TCP port              8000
#   FUSIONREC_WORKERS  uvicorn processes     1 (scale out with replicas instead)
set -eu
exec "${FUSIONREC_BIN:-fusionrec}" serve --store "${FUSIONREC_STORE:-/store}" \
    --host "${FUSIONREC_HOST:-0.0.0.0}" --port "${FUSIONREC_PORT:-8000}" \
    --workers "${FUSIONREC_WORKERS:-1}"
