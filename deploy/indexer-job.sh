#!/bin/sh
# One-shot job of the compose stack: fetch MovieLens-100k, train and index into the store.
# Idempotent: when the store has a CURRENT bundle that carries an index, it does nothing; when
# CURRENT exists without an index (a job that died between train and index), it only indexes.
#
# Environment (defaults are the compose stack's):
#   FUSIONREC_STORE            store root (named volume)                  /store
#   FUSIONREC_JOB_DATA         dataset directory; written by the fetch     /data/movielens-100k
#                              step unless it already has interactions.*
#   FUSIONREC_JOB_TRAIN_ARGS   extra `fusionrec train` arguments            (none: train's
#                              e.g. "--epochs 5" or "--config cfg.json"     defaults, early stop)
#   FUSIONREC_JOB_INDEX_ARGS   extra `fusionrec index` arguments            (none: --kind auto)
#   FUSIONREC_BIN              the fusionrec executable                     fusionrec
set -eu

STORE="${FUSIONREC_STORE:-/store}"
DATA="${FUSIONREC_JOB_DATA:-/data/movielens-100k}"
FUSIONREC="${FUSIONREC_BIN:-fusionrec}"
PYTHON="${FUSIONREC_PYTHON:-python}"

say() { echo "indexer-job: $*"; }

has_index() {
    # exit 0 when CURRENT's manifest has an index section
    "$PYTHON" - "$STORE" <<'PY'
import json, sys
from pathlib import Path
store = Path(sys.argv[1])
version = (store / "CURRENT").read_text().strip()
manifest = json.loads((store / version / "manifest.json").read_text())
sys.exit(0 if manifest.get("index") else 1)
PY
}

mkdir -p "$STORE"
if [ -f "$STORE/CURRENT" ]; then
    if has_index; then
        say "$STORE already serves $(cat "$STORE/CURRENT") with an index; nothing to do"
        exit 0
    fi
    say "CURRENT $(cat "$STORE/CURRENT") has no index yet; indexing it"
    # shellcheck disable=SC2086  # word splitting of the extra arguments is intended
    "$FUSIONREC" index --store "$STORE" ${FUSIONREC_JOB_INDEX_ARGS:-}
    exit 0
fi

if [ -f "$DATA/interactions.csv" ] || [ -f "$DATA/interactions.parquet" ]; then
    say "using the dataset in $DATA"
else
    say "fetching MovieLens-100k into $DATA"
    "$FUSIONREC" data movielens-100k --out "$DATA"
fi
say "training into $STORE"
# shellcheck disable=SC2086
"$FUSIONREC" train --data "$DATA" --store "$STORE" ${FUSIONREC_JOB_TRAIN_ARGS:-}
say "indexing"
# shellcheck disable=SC2086
"$FUSIONREC" index --store "$STORE" ${FUSIONREC_JOB_INDEX_ARGS:-}
say "published $(cat "$STORE/CURRENT")"
