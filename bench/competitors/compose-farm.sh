#!/usr/bin/env bash
# compose-farm, the live suite's competitor, pinned, in bench/.work/compose-farm-venv (once).
# stdout: notes for the results, if any, then its version (see venv.sh).
set -euo pipefail
. "$(dirname "$0")/venv.sh"

install_pinned compose-farm-venv compose-farm 1.27.3 cf
