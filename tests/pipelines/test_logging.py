"""What ``costream`` logs on stderr: INFO for people, Beam's internal noise left out, --log-level."""

import io
import logging
import os
import re
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.transforms.util import _BatchSizeEstimator
from kafka import KafkaProducer

from costream.connectors import contract
from costream.connectors.kafka import WriteToKafka
from costream.pipelines import logs
from costream.pipelines.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]

# Lines that must never reach a newcomer's terminal at the default level (pipelines/logs.py)
NOISE = {
    "key coder": r"Key coder \S+ for transform .* may not be deterministic",
    "no iterator": r"No iterator is returned by the process method",
    "polyfit": r"Polyfit may be poorly conditioned|RankWarning",
    "apitools": r"apitools",
    "resource module": r"Resource module is not available",
    "optional GCP clients": r"No module named google\.cloud",
    "type hints": r"Converting string literal type hint|Using Any for unsupported type",
    "kafka-python chatter": r"INFO kafka\.",
    "SDK harness": r"apache_beam\.runners\.worker",
    "runner servers": r"starting (control|data|state|logging) server on port",
    "basicConfig format": r"^(WARNING|INFO):[\w.]+:",  # Beam's logging.basicConfig() took over
}


def noise_in(text):
    return {name: m.group(0) for name, p in NOISE.items() if (m := re.search(p, text, re.M))}


def emit(level="INFO"):
    """A ``configured`` block writing to a buffer; returns (context manager, buffer)."""
    buf = io.StringIO()
    return logs.configured(level, stream=buf), buf


class StatefulDoFn(beam.DoFn):  # a user's stateful DoFn keyed by anything (a real warning)
    BAG = beam.transforms.userstate.BagStateSpec("bag", beam.coders.FastPrimitivesCoder())

    def process(self, kv, bag=beam.DoFn.StateParam(BAG)):
        bag.add(kv[1])
        yield kv


class ForgetsToYield(beam.DoFn):  # a user's DoFn that emits nothing (a real warning)
    def process(self, x):
        x + 1


def test_beams_noise_is_left_out_and_the_same_warnings_about_user_code_show():
    """Beam's own key-coder and no-iterator warnings, emitted by Beam while building a pipeline."""
    block, buf = emit()
    with block:
        pc = beam.Pipeline() | beam.Create([1, 2])
        _ = pc | "Batch" >> beam.BatchElements(max_batch_duration_secs=1)  # stateful batching
        _ = pc | WriteToKafka("127.0.0.1:1", "t")  # costream's sink: no output on purpose
        keyed = pc | beam.Map(lambda x: (x, x)).with_output_types(tuple[beam.typehints.Any, int])
        _ = keyed | "User" >> beam.ParDo(StatefulDoFn())
        _ = pc | "Forgets" >> beam.ParDo(ForgetsToYield())
    text = buf.getvalue()
    assert "_StatefulBatchElementsDoFn" not in text and "_WriteFn" not in text
    assert re.search(r"WARNING .*Key coder \S+ for transform .*label=\[User\]", text), text
    assert re.search(r"WARNING .*No iterator .*ForgetsToYield", text), text

    block, buf = emit("DEBUG")  # DEBUG: everything
    with block:
        pc = beam.Pipeline() | beam.Create([1, 2])
        _ = pc | "Batch" >> beam.BatchElements(max_batch_duration_secs=1)
        _ = pc | WriteToKafka("127.0.0.1:1", "t")
    assert "_StatefulBatchElementsDoFn" in buf.getvalue() and "_WriteFn" in buf.getvalue()


def make_record(name, level, msg, args=(), path="/x/y.py"):
    return logging.getLogger(name).makeRecord(name, level, path, 1, msg, args, None)


@pytest.mark.parametrize(
    ("name", "level", "msg", "path"),
    [
        ("apache_beam.typehints.native_type_compatibility", logging.INFO,
         'Converting string literal type hint to Any: "Any"', None),
        ("apache_beam.io.gcp.bigquery", logging.INFO,
         "No module named google.cloud.bigquery_storage_v1. As a result, ...", None),
        ("apache_beam.io.gcp.gcsio", logging.WARNING, "Unable to import apitools", None),
        ("root", logging.WARNING, "Resource module is not available for current platform, "
         "memory usage cannot be fetched.", "/site-packages/apache_beam/ml/inference/base.py"),
        ("apache_beam.runners.worker.sdk_worker", logging.INFO, "Control channel established.",
         None),
        ("root", logging.INFO, "starting control server on port 45005",
         "/site-packages/apache_beam/runners/portability/portable_runner.py"),
        ("apache_beam.utils.subprocess_server", logging.INFO, "INFO  o.a.f.r.Dispatcher", None),
        ("kafka.net.manager", logging.INFO, "Bootstrap complete: ClusterMetadata(...)", None),
        ("kafka.net.selector", logging.WARNING, "Task <kafka.net.selector.Task object at 0x7f> "
         "ran for 0.163s (>0.100s threshold). It is blocking the event loop", None),
    ],
)  # fmt: skip
def test_noise_records_are_left_out(name, level, msg, path):
    record = make_record(name, level, msg, path=path or "/x/y.py")
    assert not logs.NoiseFilter().filter(record)


@pytest.mark.parametrize(
    ("name", "level", "msg"),
    [
        ("costream.transforms.inference", logging.WARNING,
         "stream cam-1: frame 0 starts a new stream epoch (the frame index went back ...)"),
        ("costream.transforms.inference", logging.WARNING,
         "stream cam-1 frame 7 -> dead letter: shape mismatch"),
        ("costream.connectors.kafka.read", logging.WARNING,
         "ReadFromKafka: dead-lettered the record at t/0/5 to 'dlq': bad header"),
        ("kafka.net.connection", logging.ERROR,
         "<KafkaConnection node_id=bootstrap-0>: Connection lost: KafkaConnectionError: 111"),
        ("kafka.net.selector", logging.ERROR, "Task <Task> failed: boom"),
        ("apache_beam.yaml.yaml_transform", logging.INFO, 'Expanding "ReadFromKafka" at line 3'),
        ("apache_beam.runners.portability.portable_runner", logging.INFO,
         "Job state changed to RUNNING"),
        ("root", logging.INFO, 'costream: {"element": 1}'),  # LogForTesting
        ("root", logging.ERROR, "job failed", ),
        ("apache_beam.io.gcp.bigquery", logging.ERROR, "BigQuery job failed"),
        ("apache_beam.utils.subprocess_server", logging.ERROR, "Error bringing up service"),
    ],
)  # fmt: skip
def test_real_messages_pass(name, level, msg):
    assert logs.NoiseFilter().filter(make_record(name, level, msg))


def test_kafka_connection_errors_still_show():
    """A real kafka-python client against a closed port: its connection errors reach stderr."""
    block, buf = emit()
    with block:
        producer = KafkaProducer(bootstrap_servers="127.0.0.1:1", api_version=(2, 5))
        deadline = time.monotonic() + 20
        while "ECONNREFUSED" not in buf.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        producer.close(timeout=1)
    assert re.search(r"(ERROR|WARNING) kafka\.\S+: .*ECONNREFUSED", buf.getvalue()), buf.getvalue()


def test_polyfit_rank_warning_is_ignored_inside_only():
    xs, ys = [1.0, 1.0 + 1e-15, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]  # a rank-deficient fit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        _BatchSizeEstimator.linear_regression_numpy(xs, ys)
    assert any("Polyfit may be poorly conditioned" in str(w.message) for w in caught)
    block, _ = emit()
    with block, warnings.catch_warnings(record=True) as caught:
        _BatchSizeEstimator.linear_regression_numpy(xs, ys)
        warnings.warn("a real one", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real one"]


def test_configured_formats_levels_and_restores_logging():
    root = logging.getLogger()
    before = (root.level, list(root.handlers), list(warnings.filters))
    block, buf = emit("WARNING")
    with block:
        logging.getLogger("costream.pipelines").info("hidden")
        logging.getLogger("costream.pipelines").warning("shown")
        logging.getLogger("kafka.net.connection").warning("also shown")
        logging.warning("root too")
    lines = [line.split(" ", 2)[2] for line in buf.getvalue().splitlines()]  # minus the time
    assert lines == [
        "WARNING shown",
        "WARNING kafka.net.connection: also shown",
        "WARNING root too",
    ]
    assert (root.level, list(root.handlers), list(warnings.filters)) == before
    with pytest.raises(ValueError, match="use one of DEBUG, INFO, WARNING, ERROR"):
        with logs.configured("LOUD"):
            pass


def test_log_level_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["run", "s.yaml"]).log_level is None  # the command's LOG_LEVEL
    assert parser.parse_args(["--log-level", "warning", "run", "s.yaml"]).log_level == "WARNING"
    assert parser.parse_args(["run", "s.yaml", "--log-level", "DEBUG"]).log_level == "DEBUG"
    assert parser.parse_args(["--log-level", "ERROR", "demo", "--log-level", "INFO"]).log_level == (
        "INFO"
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "s.yaml", "--log-level", "LOUD"])


def spec_with_log_for_testing(tmp_path):
    """The shipped features spec plus a Beam YAML ``Create`` -> ``LogForTesting`` branch."""
    text = (ROOT / "pipelines" / "specs" / "features.yaml").read_text()
    branch = """\
    - type: Create
      name: Hello
      config:
        elements: [{greeting: hello}]
    - type: LogForTesting
      input: Hello
      config: {prefix: "logtest: "}
"""
    assert "\n  transforms:\n" in text  # (text, not YAML: the spec may be a Jinja template)
    path = tmp_path / "logged.yaml"
    path.write_text(text.replace("\n  transforms:\n", "\n  transforms:\n" + branch, 1))
    return path


def costream(env, *args, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-m", "costream.pipelines.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    sys.stderr.write(proc.stderr)  # (shown when the test fails)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.integration
def test_costream_run_logs_for_people(kafka_broker, kafka_topics, tmp_path):
    """A real ``costream run`` (embedded runner and broker) with a reboot: INFO, no noise."""
    t_in, t_out, t_dlq = kafka_topics(1, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    rng = np.random.default_rng(0)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    # stream a: frames 0..19, then frame 0 with a newer capture time (a camera reboot: a new
    # stream epoch, which costream warns about)
    for i, ts in [(i, 1000 + i) for i in range(20)] + [(0, 5000)]:
        payload, ct = contract.encode_features(rng.standard_normal(64).astype(np.float32))
        r = contract.frame_record("a", i, ts, ct, payload)
        producer.send(t_in, key=r.key, value=r.value, headers=r.headers)
    producer.flush()
    producer.close()
    spec = str(spec_with_log_for_testing(tmp_path))
    env = dict(
        os.environ,
        COSTREAM_BOOTSTRAP=kafka_broker.bootstrap,
        COSTREAM_INPUT_TOPIC=t_in,
        COSTREAM_OUTPUT_TOPIC=t_out,
        COSTREAM_DEAD_LETTER_TOPIC=t_dlq,
        COSTREAM_WEIGHTS=str(ROOT / "pipelines" / "assets" / "demo_model.safetensors"),
    )

    env["COSTREAM_GROUP_ID"] = f"g-{uuid.uuid4().hex[:8]}"
    # Beam's dill pickler cannot pickle LogForTesting's function; costream run on the embedded
    # runner pickles with cloudpickle as Beam YAML's own entry point does (no option needed)
    beam_options: list[str] = []
    err = costream(env, "run", spec, "--until-idle", "2", "--status-every", "1", *beam_options)
    assert noise_in(err) == {}
    assert re.search(r'^\S+ \S+ INFO logtest: \{"greeting": "hello"\}$', err, re.M)  # LogForTesting
    assert re.search(r"INFO apache_beam\.yaml\.yaml_transform: Expanding \"Hello\"", err)
    assert re.search(r"INFO summary: 21 frames, 21 detections", err)  # the status line's summary
    assert re.search(r"WARNING stream a: frame 0 starts a new stream epoch", err)
    assert re.search(r"WARNING ReadFromKafka: group .* has no committed offset", err)

    env["COSTREAM_GROUP_ID"] = f"g-{uuid.uuid4().hex[:8]}"  # the same run again, warnings only
    err = costream(env, "run", spec, "--until-idle", "2", "--log-level", "WARNING", *beam_options)
    assert " INFO " not in err and "logtest" not in err and "summary" not in err
    assert noise_in(err) == {}
    assert re.search(r"WARNING stream a: frame 0 starts a new stream epoch", err)


@pytest.mark.integration
def test_costream_demo_shows_no_noise(tmp_path):
    err = costream(dict(os.environ), "demo", "--seconds", "1", "--cameras", "1", "--out",
                   str(tmp_path))  # fmt: skip
    assert noise_in(err) == {}
    assert 'INFO apache_beam.yaml.yaml_transform: Expanding "ContinualInference"' in err
