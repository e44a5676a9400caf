# costream image: Beam's Python 3.11 SDK harness (same Beam version as the job server) with
# CPU-only torch and costream installed. One image, two roles in docker-compose.yml:
#   worker-pool: costream's SDK worker pool (python -m costream.pipelines.worker_pool), serving
#                SDK harnesses to the Flink taskmanager on port 50000 (EXTERNAL environment);
#   submitter:   entrypoint "costream", building the pipeline from a spec and submitting it.
# Build: docker build -t costream:latest .
FROM apache/beam_python3.11_sdk:2.62.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# torch first, from the PyTorch CPU index: a plain `pip install torch` pulls the multi-GB CUDA
# build. costream's own requirement (torch>=2.4,<2.14) is then already satisfied.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/costream
# Dependencies before sources, so editing code does not reinstall them. apache-beam is already
# in the base image at the job server's version; pip keeps it (the range allows it). `[all]`:
# every layer's extra (pyproject.toml), as the worker pool runs Beam, Kafka, media and torch.
COPY pyproject.toml README.md ./
COPY models ./models
COPY connectors ./connectors
COPY transforms ./transforms
COPY pipelines ./pipelines
RUN pip install ".[all]" \
    && python -c "import apache_beam, torch, costream.transforms.backbones as b; \
assert apache_beam.__version__ == '2.62.0', apache_beam.__version__; \
assert not torch.cuda.is_available() and torch.version.cuda is None; print('costream ok', torch.__version__)"

# Specs and assets are read from the source tree by relative path (costream run pipelines/specs/...).
# docker-compose.yml starts the worker pool with costream's own entrypoint (see there).
