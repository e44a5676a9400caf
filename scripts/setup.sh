#!/usr/bin/env bash
# Create .venv and install costream with its dependencies (idempotent).
# torch 2.13.0 goes first: the machine's local CPU wheel; every later torch range is satisfied by it,
# so pip never pulls the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# skip the 2.7 GB torch download when the pinned build is already there
.venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
    || .venv/bin/python -m pip install -q "torch==2.13.0"
# every extra (models, kafka, media, beam, ...; see pyproject.toml) and the dev tools
.venv/bin/python -m pip install -q -e ".[all,dev]"
# the Java side (Flink job server, Apache Kafka) and a Flink distribution, cached in ~/.cache/costream
PYTHON=.venv/bin/python ./scripts/fetch_jars.sh
