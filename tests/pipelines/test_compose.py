"""docker-compose.yml and Dockerfile, checked offline (no Docker engine here).

The submitter's command must parse with costream's own CLI parser and its Beam options with
``PipelineOptions``; the only options Python does not know are the Flink runner's, which the
PortableRunner learns from the job server at submission time (``DescribePipelineOptions``).
"""

import re
from pathlib import Path

import apache_beam
import pytest
import torch
import yaml
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    PipelineOptions,
    PortableOptions,
)

ROOT = Path(__file__).resolve().parents[2]

# Java FlinkPipelineOptions (runners/flink/.../FlinkPipelineOptions.java), in Beam's snake_case.
FLINK_JOB_SERVER_OPTIONS = {
    "checkpointing_interval",
    "externalized_checkpoints_enabled",
    "retain_externalized_checkpoints_on_cancellation",
    "savepoint_path",
}
SERVICES = {"volume-init", "kafka", "kafka-init", "jobmanager", "taskmanager", "worker-pool", "jobserver", "submitter"}  # fmt: skip


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def _version(image: str) -> str:
    return image.rsplit(":", 1)[1]


def _submitter_cmd(services):
    s = services["submitter"]
    return [*s["entrypoint"], *s["command"]]


def test_services_and_images(services):
    assert set(services) == SERVICES
    beam_version = apache_beam.__version__
    assert services["kafka"]["image"].startswith("apache/kafka:")
    flink = services["jobmanager"]["image"]
    assert services["taskmanager"]["image"] == flink
    m = re.fullmatch(r"flink:(\d+\.\d+)[-.\w]*", flink)
    assert m, flink
    flink_minor = m.group(1)
    assert flink_minor in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    # the versions `costream flink up` runs and tests/pipelines/test_flink.py tests
    from costream.connectors.broker import KAFKA_VERSION
    from costream.pipelines import flink as local

    assert flink_minor == local.FLINK_MINOR and beam_version == local.BEAM_VERSION
    assert _version(services["kafka"]["image"]) == KAFKA_VERSION
    assert _version(services["kafka-init"]["image"]) == KAFKA_VERSION
    assert (
        services["jobserver"]["image"]
        == f"apache/beam_flink{flink_minor}_job_server:{beam_version}"
    )
    for name in ("worker-pool", "submitter"):
        assert services[name]["build"] == "." and services[name]["image"] == "costream:latest"


def test_dockerfile_matches_versions():
    text = (ROOT / "Dockerfile").read_text()
    # costream supports Python 3.10-3.12 (pyproject); the SDK image must be Beam's, same version.
    assert re.search(
        rf"^FROM apache/beam_python3\.1[012]_sdk:{re.escape(apache_beam.__version__)}$", text, re.M
    )
    torch_version = torch.__version__.split("+")[0]
    assert re.search(
        rf'pip install "torch=={re.escape(torch_version)}" --index-url https://download.pytorch.org/whl/cpu',
        text,
    )
    for path in re.findall(r"^COPY (\S+) \./", text, flags=re.M):
        assert (ROOT / path).exists(), path
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_ports(services):
    def host_ports(name):
        return {int(p.split(":")[0]) for p in services[name].get("ports", [])}

    assert 8081 in host_ports("jobmanager")
    assert 29092 in host_ports("kafka")
    assert {8099, 8098} <= host_ports("jobserver")
    env = services["kafka"]["environment"]
    assert "HOST://localhost:29092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper


def test_depends_on_healthchecks_and_order(services):
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
            else:
                assert cond["condition"] == "service_completed_successfully"
                assert services[dep].get("restart") == "no"
    sub = services["submitter"]["depends_on"]
    assert sub["jobserver"]["condition"] == "service_healthy"
    assert sub["worker-pool"]["condition"] == "service_healthy"
    assert sub["kafka-init"]["condition"] == "service_completed_successfully"

    # no cycles: a topological order exists
    order, left = [], dict(services)
    while left:
        ready = [n for n, s in left.items() if set(s.get("depends_on") or {}) <= set(order)]
        assert ready, f"depends_on cycle among {sorted(left)}"
        order += ready
        for n in ready:
            del left[n]
    assert order.index("submitter") == len(order) - 1


def test_worker_pool_is_a_taskmanager_sidecar(services):
    wp = services["worker-pool"]
    assert wp["network_mode"] == "service:taskmanager"
    # costream's pool: its harnesses register costream's schemas before building coders
    assert wp["entrypoint"] == ["python", "-m", "costream.pipelines.worker_pool"]
    assert wp["command"][:4] == ["--host", "127.0.0.1", "--port", "50000"]
    cmd = _submitter_cmd(services)
    assert "--environment_type=EXTERNAL" in cmd
    assert "--environment_config=localhost:50000" in cmd


def test_shared_volumes(services):
    def mounts(name):
        return dict(v.split(":")[:2] for v in services[name].get("volumes", []))

    job = services["jobserver"]["command"]
    artifacts = next(a.split("=", 1)[1] for a in job if a.startswith("--artifacts-dir="))
    assert mounts("jobserver")["beam-artifacts"] == artifacts
    assert mounts("taskmanager")["beam-artifacts"] == artifacts
    props = yaml.safe_load(_flink_properties(services))
    ckpt = mounts("taskmanager")["flink-checkpoints"]
    assert mounts("jobmanager")["flink-checkpoints"] == ckpt
    assert props["state.checkpoints.dir"].startswith(f"file://{ckpt}/")
    assert props["state.savepoints.dir"].startswith(f"file://{ckpt}/")


def _flink_properties(services):
    env = services["jobmanager"]["environment"]
    assert services["taskmanager"]["environment"]["FLINK_PROPERTIES"] == env["FLINK_PROPERTIES"]
    return env["FLINK_PROPERTIES"]


def test_checkpoints_retained_rocksdb_and_restarts(services, tmp_path):
    from costream.pipelines.flink import FlinkCluster, Ports

    local = FlinkCluster(tmp_path, ports=Ports(0, 0, 0, 0, 0, 0)).flink_config()
    props = yaml.safe_load(_flink_properties(services))
    assert props["state.backend.type"] == "rocksdb"
    assert props["execution.checkpointing.externalized-checkpoint-retention"] == (
        "RETAIN_ON_CANCELLATION"
    )
    assert props["taskmanager.numberOfTaskSlots"] > 1
    # REST metrics come back soon after a lost TaskManager, as on the local cluster
    assert props["web.timeout"] == local["web.timeout"] <= 30_000
    # Beam overrides the cluster's retention unless the job asks to retain on cancel
    assert "--retain_externalized_checkpoints_on_cancellation" in _submitter_cmd(services)


def test_kafka_log_on_its_volume_and_volumes_owned_by_their_users(services):
    kafka = services["kafka"]
    mounts = dict(v.split(":")[:2] for v in kafka["volumes"])
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == mounts["kafka-data"]
    init = services["volume-init"]
    init_mounts = dict(v.split(":")[:2] for v in init["volumes"])
    cmd = " ".join(init["command"])
    # apache/kafka runs as uid 1000, flink as uid 9999: each named volume it writes is chowned
    assert re.search(rf"chown -R 1000:1000 {init_mounts['kafka-data']}\b", cmd)
    for vol in ("flink-checkpoints", "beam-artifacts"):
        assert re.search(rf"chown -R 9999:9999 [^&]*{init_mounts[vol]}\b", cmd), vol
    for name in ("kafka", "jobmanager"):
        assert services[name]["depends_on"]["volume-init"]["condition"] == (
            "service_completed_successfully"
        )


def test_consumer_group_and_payload_limits_are_one_chain(services):
    env = services["submitter"]["environment"]
    assert env["COSTREAM_GROUP_ID"] and env["COSTREAM_START"] == "committed"
    broker = int(services["kafka"]["environment"]["KAFKA_MESSAGE_MAX_BYTES"])
    topics = {
        int(x)
        for x in re.findall(r"max\.message\.bytes=(\d+)", services["kafka-init"]["command"][0])
    }
    assert topics == {broker}
    assert int(env["COSTREAM_MAX_REQUEST_SIZE"]) == broker
    assert int(env["COSTREAM_MAX_PAYLOAD_BYTES"]) < broker


def test_submitter_command_parses_with_cli_and_beam(services, monkeypatch):
    from costream.pipelines.cli import build_parser, command_modules

    if "run" not in command_modules():
        pytest.skip("costream run (pipelines/commands/run.py) does not exist yet")
    cmd = _submitter_cmd(services)
    assert cmd[0] == "costream"
    args, extra = build_parser().parse_known_args(cmd[1:])
    assert args.command == "run" and args.runner == "PortableRunner"

    spec = ROOT / args.spec
    assert spec.is_file(), f"the submitter runs {args.spec}, which is not in the repository"
    from costream.pipelines.spec import load_spec

    for k, v in services["submitter"]["environment"].items():
        monkeypatch.setenv(k, str(v))
    loaded = load_spec(spec)  # validates every costream transform's config
    types = [t["type"] for t in loaded["pipeline"]["transforms"]]
    assert "ExtractFeatures" in types and "ContinualInference" in types
    reads = [
        t["config"] for t in loaded["pipeline"]["transforms"] if t["type"] == "ReadFramesFromKafka"
    ]
    assert reads and all(r["bootstrap_servers"] == "kafka:9092" for r in reads)

    opts = PipelineOptions(extra)
    known = opts.get_all_options()  # raises on malformed values of known options
    everything = opts.get_all_options(retain_unknown_options=True)
    unknown = set(everything) - set(known)
    assert unknown <= FLINK_JOB_SERVER_OPTIONS, (
        f"unknown Beam options {unknown - FLINK_JOB_SERVER_OPTIONS}"
    )
    assert {"checkpointing_interval", "retain_externalized_checkpoints_on_cancellation"} <= unknown
    portable = opts.view_as(PortableOptions)
    assert portable.job_endpoint == "jobserver:8099"
    assert portable.artifact_endpoint == "jobserver:8098"
    assert portable.environment_type == "EXTERNAL"
    assert known["max_cache_memory_usage_mb"] > 0
    assert known["streaming"] is True
    assert opts.view_as(FlinkRunnerOptions).parallelism >= 1
    assert int(everything["checkpointing_interval"]) > 0


def test_topics_created_match_the_submitter(services):
    init = services["kafka-init"]["command"][0]
    created = set(re.findall(r"(costream\.[\w.-]+):\d+", init))
    env = services["submitter"]["environment"]
    for key in ("COSTREAM_INPUT_TOPIC", "COSTREAM_OUTPUT_TOPIC", "COSTREAM_DEAD_LETTER_TOPIC"):
        assert env[key] in created, key
