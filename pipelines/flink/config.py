"""The versions, the folders and the Flink settings a local cluster is built from.

The versions are tied: Beam's Python SDK (pyproject.toml), the job server and the Flink minor
must match. Beam 2.62.0 is the newest Beam whose Flink runner resolves with all its dependencies
from the Maven mirror this project builds with (the shaded ``*-job-server`` jars are not served
at any version; ``fetch_jars.sh`` rebuilds one as a classpath plus a launcher jar).
``scripts/fetch_jars.sh`` puts the Java side in ``$COSTREAM_CACHE`` (``~/.cache/costream``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "BEAM_VERSION",
    "FLINK_MINOR",
    "FLINK_VERSION",
    "HOST",
    "FlinkError",
    "cache_dir",
    "default_work_dir",
    "flink_home",
    "job_server_jar",
]

BEAM_VERSION = "2.62.0"
FLINK_VERSION = "1.19.3"
FLINK_MINOR = "1.19"
HOST = "127.0.0.1"


class FlinkError(RuntimeError):
    """The local Flink cluster is not set up, did not start, or a REST call failed."""


def cache_dir() -> Path:
    """Where ``scripts/fetch_jars.sh`` puts jars and the Flink distribution."""
    return Path(os.environ.get("COSTREAM_CACHE", Path.home() / ".cache" / "costream"))


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FlinkError(
            f"{what} is missing at {path}. Run ./scripts/fetch_jars.sh (or ./scripts/setup.sh) "
            "to fetch it (Maven Central and PyPI)."
        )
    return path


def default_work_dir() -> Path:
    """The cluster's work folder: ``$COSTREAM_FLINK_DIR`` or ``$COSTREAM_CACHE/flink-cluster``."""
    return Path(os.environ.get("COSTREAM_FLINK_DIR", cache_dir() / "flink-cluster"))


def flink_home() -> Path:
    """``FLINK_HOME`` of the Flink distribution (``$FLINK_HOME`` wins when set)."""
    if os.environ.get("FLINK_HOME"):
        return Path(os.environ["FLINK_HOME"])
    return _need(cache_dir() / f"flink-{FLINK_VERSION}" / "pyflink", f"Flink {FLINK_VERSION}")


def job_server_jar() -> Path:
    """The job-server launcher jar (``java -jar`` runs ``FlinkJobServerDriver``)."""
    name = f"beam-runners-flink-{FLINK_MINOR}-job-server-{BEAM_VERSION}.jar"
    return _need(cache_dir() / f"flink-job-server-{BEAM_VERSION}" / name, "Beam's Flink job server")


def _default_java_opts() -> str:
    """The ``--add-opens`` flags Flink's own config.yaml sets for Java 17."""
    import yaml

    conf = flink_home() / "conf" / "config.yaml"
    try:
        data = yaml.safe_load(conf.read_text()) or {}
        return str(data["env"]["java"]["opts"]["all"])
    except (OSError, KeyError, TypeError):
        return ""
