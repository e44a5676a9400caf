#!/usr/bin/env bash
# Set up (if needed) and run the end-to-end demo on the embedded runner and broker.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/costream demo "$@"
