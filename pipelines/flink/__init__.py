"""A local Flink session cluster for costream, on loopback, without Docker.

The same topology as ``docker-compose.yml``: a JobManager and a TaskManager as separate JVMs (a
Flink distribution from PyPI), Beam's Flink job server (jars from Maven Central) and a Python SDK
worker pool with costream installed (``--environment_type=EXTERNAL``). ``scripts/fetch_jars.sh``
puts the Java side in ``$COSTREAM_CACHE`` (``~/.cache/costream``).

The package, one concept a module:

- :mod:`~costream.pipelines.flink.config`: the tied versions (Beam's Python SDK, its Flink job
  server, the Flink minor), the cache and work folders, :class:`FlinkError`;
- :mod:`~costream.pipelines.flink.ports`: :class:`Ports` and the helpers that stop processes;
- :mod:`~costream.pipelines.flink.cluster`: :class:`FlinkCluster` (configuration, processes,
  ``cluster.json``, the Beam options that submit a pipeline to it);
- :mod:`~costream.pipelines.flink.rest`: :class:`FlinkRest`, the REST calls costream makes.

Example:
    >>> cluster = FlinkCluster(Path("/tmp/costream-flink")).up()  # doctest: +SKIP
    >>> cluster.pipeline_args()  # doctest: +SKIP
    ['--runner=PortableRunner', '--job_endpoint=127.0.0.1:8099', ...]
    >>> cluster.down()  # doctest: +SKIP

Every process is started in its own session and stopped by its pid; ``cluster.json`` in the work
folder records roles, pids and ports so ``costream flink status`` / ``down`` can find them.
"""

from costream.pipelines.flink.cluster import FlinkCluster
from costream.pipelines.flink.config import (
    BEAM_VERSION,
    FLINK_MINOR,
    FLINK_VERSION,
    FlinkError,
    cache_dir,
    default_work_dir,
    flink_home,
    job_server_jar,
)
from costream.pipelines.flink.ports import Ports
from costream.pipelines.flink.rest import FlinkRest

__all__ = [
    "BEAM_VERSION",
    "FLINK_MINOR",
    "FLINK_VERSION",
    "FlinkCluster",
    "FlinkError",
    "FlinkRest",
    "Ports",
    "cache_dir",
    "default_work_dir",
    "flink_home",
    "job_server_jar",
]
