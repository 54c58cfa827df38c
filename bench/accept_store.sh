#!/usr/bin/env bash
# The accept benchmark with the report store in SQLite against the report
# store in PostgreSQL ([cluster] store), one node, same binary, same run:
# bench/accept.sh with STORE=both (inbound checks on, so every message
# records an evaluation and a timeline entry). Prints both figures and the
# ratio. Environment as bench/accept.sh (RUNS, MESSAGES, SESSIONS, SIZE).
#
# Usage (as root):  bench/accept_store.sh
set -euo pipefail
STORE=both exec "$(dirname "$0")/accept.sh" "$@"
