"""The status line of ``costream run``: formatting, the reporter thread, and the counts end to end."""

import logging
import re
import sys
import time
import uuid
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from kafka import KafkaProducer

from costream.connectors import contract
from costream.pipelines import runner as runner_module
from costream.pipelines import status
from costream.pipelines.cli import main
from costream.transforms import counters

ROOT = Path(__file__).resolve().parents[2]
FULL = {
    "decoded": 1230,
    "decode_dead_letters": 4,
    "features_dead_letters": 1,
    "dead_letters": 1,
    "records_dead_lettered": 1,
    "detections_out": 1200,
    "warmup_frames": 64,
    "duplicates": 2,
    "state_resets": 1,
    "gaps": 4,
    "streams_held": 8,
    "state_bytes": 168_000,
    "records_read": 99_999,  # not part of the line
}
LINE = re.compile(
    r"(?P<label>status|summary): (?P<frames>\d+) frames, (?P<detections>\d+) detections "
    r"\((?P<warmup>\d+) warm-up\), (?P<dead>\d+) dead letters, (?P<duplicates>\d+) duplicates, "
    r"(?P<resets>\d+) resets, (?P<gaps>\d+) gaps(?:, (?P<held>\d+) streams held)?"
)


class Counts:
    """A count source that hands out prepared dicts (the input, not the system under test)."""

    def __init__(self, *reads):
        self.reads = list(reads)

    def read(self):
        return self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def test_format_status_from_a_dict():
    assert status.format_status(FULL, rate=250.4) == (
        "status: 1234 frames, 1200 detections (64 warm-up), 7 dead letters, 2 duplicates, "
        "1 resets, 4 gaps, 8 streams held, 168 kB state, 250 frames/s"
    )


def test_format_status_counts_missing_counters_as_zero_and_leaves_out_missing_gauges():
    assert status.format_status({}) == (
        "status: 0 frames, 0 detections (0 warm-up), 0 dead letters, 0 duplicates, 0 resets, 0 gaps"
    )
    line = status.format_status({"decode_dead_letters": 3, "state_bytes": 0}, label="summary")
    assert line == (
        "summary: 3 frames, 0 detections (0 warm-up), 3 dead letters, 0 duplicates, 0 resets, "
        "0 gaps, 0 B state"
    )


@pytest.mark.parametrize(
    ("n", "text"),
    [(999, "999 B"), (1000, "1.0 kB"), (168_400, "168 kB"), (1_250_000, "1.2 MB"), (3e10, "30 GB")],
)
def test_state_bytes_format(n, text):
    assert status.format_status({"state_bytes": n}).endswith(f", {text} state")


def test_flink_keys_become_counter_names():
    rest = {
        "costream_frames_in": 10.0,
        "costream_decode_decoded": 11.0,
        "costream_decode_decode_dead_letters": 1.0,
        "costream_features_features_dead_letters": 2.0,
        "costream_kafka_records_dead_lettered": 3.0,
        "costream_state_bytes": 5e6,  # a distribution on Flink, not the gauge
        "costream_model_us": 7.0,
    }
    assert status.from_flink(rest) == {
        "frames_in": 10,
        "decoded": 11,
        "decode_dead_letters": 1,
        "features_dead_letters": 2,
        "records_dead_lettered": 3,
    }


def test_status_line_rate_is_frames_per_second_since_the_previous_line():
    clock = Clock(100.0)
    src = Counts({"decoded": 0}, {"decoded": 30, "decode_dead_letters": 10}, {"decoded": 40})
    rep = status.StatusReporter(src, every_s=10, clock=clock)
    with rep:
        clock.t = 102.0
        assert rep.line() == (
            "status: 0 frames, 0 detections (0 warm-up), 0 dead letters, 0 duplicates, "
            "0 resets, 0 gaps, 0 frames/s"
        )
        clock.t = 106.0
        assert rep.line().endswith(", 10 frames/s")  # 40 frames in 4 s
        clock.t = 106.0
        assert rep.line() == (  # no time passed: no rate
            "status: 40 frames, 0 detections (0 warm-up), 0 dead letters, 0 duplicates, "
            "0 resets, 0 gaps"
        )


def test_reporter_thread_logs_lines_until_it_exits(caplog):
    src = Counts({"decoded": 5, "streams_held": 2})
    with caplog.at_level(logging.INFO, logger="costream"), status.StatusReporter(src, 0.02):
        deadline = time.monotonic() + 5
        while sum("status: 5 frames" in r.message for r in caplog.records) < 2:
            assert time.monotonic() < deadline, "no status lines within 5 s"
            time.sleep(0.01)
    n = len(caplog.records)
    time.sleep(0.1)
    assert len(caplog.records) == n  # the thread stopped with the block
    assert all(r.name == "costream" and r.levelno == logging.INFO for r in caplog.records)


def test_reporter_without_source_or_interval_starts_no_thread():
    with status.StatusReporter(Counts({}), every_s=0) as rep:
        assert rep._thread is None
    with status.StatusReporter(None, every_s=1) as rep:
        assert rep._thread is None and rep.line() is None


def test_a_failing_source_warns_once_and_the_run_goes_on(caplog):
    class Broken:
        def read(self):
            raise OSError("connection refused")

    rep = status.StatusReporter(Broken(), every_s=10)
    with caplog.at_level(logging.INFO, logger="costream"):
        assert rep.line() is None and rep.line() is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "connection refused" in caplog.records[0].message


def test_summary_counts_beam_metrics_equal_to_the_live_totals(caplog):
    """A tiny embedded pipeline: the summary from Beam metrics == the process-local totals."""
    tag = uuid.uuid4().hex[:6]  # (keeps the counts apart from other tests' in this process)

    class Count(beam.DoFn):
        def __init__(self):
            self.ok = counters.Counter("costream.decode", "decoded")
            self.dead = counters.Counter("costream.decode", "decode_dead_letters")
            self.dup = counters.Counter("costream", "duplicates")

        def process(self, x):
            (self.dead if x % 10 == 0 else self.ok).inc()
            if x % 7 == 0:
                self.dup.inc()
            yield x

    live = status.LocalCounts()
    rep = status.StatusReporter(live, every_s=0)
    with rep, beam.Pipeline(runner=FnApiRunner()) as p:
        _ = p | f"Create{tag}" >> beam.Create(range(1, 51)) | beam.ParDo(Count())
    beam_counts = status.counts_from_result(p.result)
    assert beam_counts == {"decoded": 45, "decode_dead_letters": 5, "duplicates": 7}
    now = live.read()
    assert {k: now.get(k, 0) for k in beam_counts} == beam_counts
    with caplog.at_level(logging.INFO, logger="costream"):
        text = rep.summary(p.result)
    assert text.startswith(
        "summary: 50 frames, 0 detections (0 warm-up), 5 dead letters, 7 duplicates, 0 resets, "
        "0 gaps, "
    ) and re.search(r"\d+ frames/s over \d+\.\d s$", text)
    assert [r.message for r in caplog.records] == [text]


def test_visible_on_stderr_shows_info_and_restores_logging(capsys):
    log = logging.getLogger("costream")
    before = (log.level, log.propagate, list(log.handlers))
    with status.visible_on_stderr():
        logging.getLogger("costream").info("status: hello")
        logging.getLogger("costream.transforms.decode").debug("not shown")
    logging.getLogger("costream").info("after: not on stderr")
    err = capsys.readouterr().err
    assert "INFO status: hello" in err and "not shown" not in err and "after" not in err
    assert (log.level, log.propagate, list(log.handlers)) == before


def test_cli_refuses_a_negative_interval():
    with pytest.raises(SystemExit, match="--status-every must be 0"):
        main(["run", "pipelines/specs/features.yaml", "--status-every", "-1"])


@pytest.mark.integration
def test_costream_run_logs_status_and_a_summary_equal_to_beam_metrics(
    kafka_broker, kafka_topics, monkeypatch, capsys
):
    """``costream run`` on the embedded runner: frames with a duplicate, a gap and bad records."""
    t_in, t_out, t_dlq = kafka_topics(1, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    for k, v in {
        "COSTREAM_BOOTSTRAP": kafka_broker.bootstrap,
        "COSTREAM_INPUT_TOPIC": t_in,
        "COSTREAM_OUTPUT_TOPIC": t_out,
        "COSTREAM_DEAD_LETTER_TOPIC": t_dlq,
        "COSTREAM_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
        "COSTREAM_WEIGHTS": str(ROOT / "pipelines" / "assets" / "demo_model.safetensors"),
    }.items():
        monkeypatch.setenv(k, v)
    rng = np.random.default_rng(0)

    def frame(stream, i):
        payload, ct = contract.encode_features(rng.standard_normal(64).astype(np.float32))
        return contract.frame_record(stream, i, 1000 + i, ct, payload)

    # a: frames 0..19 and frame 5 again after 6 (a duplicate); b: 0..4, 15..19 (one gap of 10,
    # which resets b's state under either gap policy: above the default max_fill of 8 frames);
    # the demo model's window is 16
    records = [frame("a", i) for i in range(7)] + [frame("a", 5)]
    records += [frame("a", i) for i in range(7, 20)]
    records += [frame("b", i) for i in (*range(5), *range(15, 20))]
    bad_dim, ct = contract.encode_features(np.zeros(63, np.float32))
    records.insert(3, contract.frame_record("c", 0, 1, ct, bad_dim))  # features stage
    records.insert(9, contract.OutgoingRecord(b"c", b"\x00", []))  # no headers: decode stage
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for r in records:
        producer.send(t_in, key=r.key, value=r.value, headers=r.headers)
    producer.flush()
    producer.close()

    results, real_run_spec = [], runner_module.run_spec

    def keep_result(*args, **kwargs):  # the CLI prints only the state; the test wants metrics
        results.append(real_run_spec(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(runner_module, "run_spec", keep_result)
    live = status.LocalCounts()
    spec = str(ROOT / "pipelines" / "specs" / "features.yaml")
    rc = main(["run", spec, "--until-idle", "3", "--status-every", "1"])
    assert rc == 0 and len(results) == 1
    out = capsys.readouterr()
    sys.stderr.write(out.err)  # (shown when the test fails)
    lines = [m for m in map(LINE.search, out.err.splitlines()) if m]
    assert [m["label"] for m in lines].count("summary") == 1 and lines[-1]["label"] == "summary"
    assert len(lines) >= 3, "expected status lines every second during a run of 3 s or more"
    summary = {k: int(v) for k, v in lines[-1].groupdict().items() if k not in ("label", "held")}
    assert summary == {
        "frames": 33,  # 31 good records + 2 bad ones entered decode
        "detections": 30,  # 31 good minus the duplicate
        "warmup": 15 + 10,  # a: steps 1..15 of 20; b: 5 + 5 after the reset
        "dead": 2,
        "duplicates": 1,
        "resets": 1,
        "gaps": 1,
    }
    beam_counts = status.counts_from_result(results[0])
    assert summary == {
        "frames": beam_counts["decoded"] + beam_counts["decode_dead_letters"],
        "detections": beam_counts["detections_out"],
        "warmup": beam_counts["warmup_frames"],
        "dead": beam_counts["decode_dead_letters"] + beam_counts["features_dead_letters"],
        "duplicates": beam_counts["duplicates"],
        "resets": beam_counts["state_resets"],
        "gaps": beam_counts["gaps"],
    }
    # the live totals (what the status lines show) end equal to the Beam metrics
    now = live.read()
    for name in status.COUNTERS - {"records_read", "records_dead_lettered", "records_written"}:
        assert now.get(name, 0) == beam_counts.get(name, 0), name
    if lines[-1]["held"] is not None:
        assert int(lines[-1]["held"]) == 2  # streams a and b
    # status lines never count more than the summary
    for m in lines[:-1]:
        assert int(m["frames"]) <= 33 and int(m["detections"]) <= 30
