#!/usr/bin/env bash
# Report build benchmark: records 1,000,000 DMARC evaluations of one day
# through the report store's API (spread over 300 author domains and 3,000
# source addresses), then builds that day's aggregate report for every
# domain (rows, XML, gzip, MIME message; nothing sent), and prints the time
# of each phase and the peak RSS. Goal: the daily report build under 10 s.
# Then, unless INGEST=0, the ingestion half (bench/ingest.sh): received
# reports read into the store, against parsedmarc on the same files.
# See BENCHMARKS.md ("Reports" and "Reports: ingestion").
#
# Usage:  bench/reports.sh
# Environment:
#   INGEST=1             also run bench/ingest.sh (FILES=10000 etc. pass through)
#   EVALUATIONS=1000000  DOMAINS=300  SOURCES=3000
#   BENCH_TMP=DIR        parent of the scratch database (default: the system's temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p mailgate --bench reports --locked 2>&1 | grep -v '^\s*\(Compiling\|Finished\|Running\)'
if [ "${INGEST:-1}" = 1 ]; then
    bench/ingest.sh
fi
