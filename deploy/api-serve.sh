#!/bin/sh
# The api container's command: `fusionrec serve` on all interfaces of the container (the LB
# reaches it on the compose network; no port is published). Settings come from the
# FUSIONREC_* environment (and REDIS_URL); see README.md (sections Operations, Security).
#   FUSIONREC_STORE    store root            /store
#   FUSIONREC_PORT     TCP port              8000
#   FUSIONREC_WORKERS  uvicorn processes     1 (scale out with replicas instead)
# Secure by default: the stack requires client API keys (FUSIONREC_API_KEYS in
# deploy/api.env); it refuses to start without them unless the operator opts out
# explicitly with FUSIONREC_ALLOW_NO_API_KEYS=true (then set
# FUSIONREC_ALLOW_ANONYMOUS_WRITES=true too, or events and erasures answer 403).
set -eu
if [ -z "${FUSIONREC_API_KEYS:-}" ] && [ "${FUSIONREC_ALLOW_NO_API_KEYS:-false}" != "true" ]; then
    echo "api-serve.sh: FUSIONREC_API_KEYS is not set: put client keys in deploy/api.env" \
         "(README, Security) or opt out with FUSIONREC_ALLOW_NO_API_KEYS=true" >&2
    exit 2
fi
exec "${FUSIONREC_BIN:-fusionrec}" serve --store "${FUSIONREC_STORE:-/store}" \
    --host "${FUSIONREC_HOST:-0.0.0.0}" --port "${FUSIONREC_PORT:-8000}" \
    --workers "${FUSIONREC_WORKERS:-1}"
