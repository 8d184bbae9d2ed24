#!/usr/bin/env bash
# kapitan, the compile suite's competitor, pinned, in bench/.work/kapitan-venv (once).
# stdout: notes for the results, if any, then its version (see venv.sh).
set -euo pipefail
. "$(dirname "$0")/venv.sh"

# kapitan imports httplib2 (via googleapiclient) at start-up, which raises when this names
# a missing file; kapitan makes no network call in the benchmark.
if [ -n "${HTTPLIB2_CA_CERTS:-}" ] && [ ! -f "$HTTPLIB2_CA_CERTS" ]; then
  unset HTTPLIB2_CA_CERTS
fi
install_pinned kapitan-venv kapitan 0.36.3 kapitan
