"""The shipped specs on a real local Flink cluster: exactness, failover, savepoints, rescale, timers.

One session cluster (``costream flink up`` topology: JobManager and TaskManager JVMs, Beam's job
server, the loopback SDK worker pool) per module, on free loopback ports, stopped by pid. Jobs are
submitted through the ``costream run`` CLI and stop by idle time (``--until-idle``) or by a
savepoint. Kafka is the embedded broker.
"""

import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from costream.connectors import contract
from costream.pipelines.offline import score_records
from tests.pipelines.test_e2e import consume_all

pytestmark = [pytest.mark.integration, pytest.mark.flink, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ROOT / "pipelines" / "specs" / "features.yaml"
VIDEO = ROOT / "pipelines" / "specs" / "video.yaml"
WINDOW = 16  # the shipped demo_model's n
DIM = 64


@pytest.fixture(scope="module")
def flink(tmp_path_factory):
    from costream.pipelines.flink import FlinkCluster, FlinkError, Ports, job_server_jar

    try:
        job_server_jar()
    except FlinkError as err:
        pytest.skip(f"Flink is not set up: {err}")
    cluster = FlinkCluster(tmp_path_factory.mktemp("flink"), ports=Ports(0, 0, 0, 0, 0, 0))
    cluster.cwd = ROOT
    cluster.up()
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs(request):
    """A failed test must not leave its job running (it would restart forever on deleted topics)."""
    yield
    if "flink" not in request.fixturenames:
        return
    cluster = request.getfixturevalue("flink")
    for j in cluster.jobs():
        if j["status"] not in ("FINISHED", "CANCELED", "FAILED"):
            cluster.rest(f"/jobs/{j['id']}?mode=cancel", method="PATCH")


def features(stream: str, start: int, stop: int) -> list[contract.OutgoingRecord]:
    seed = sum(map(ord, stream))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((stop, DIM)).astype(np.float32)
    out = []
    for i in range(start, stop):
        payload, ct = contract.encode_features(x[i])
        out.append(contract.frame_record(stream, i, 1_000 + 40 * i, ct, payload))
    return out


def interleave(streams, start, stop):
    per = [features(s, start, stop) for s in streams]
    return [recs[i] for i in range(stop - start) for recs in per]


def produce(bootstrap, topic, records, per_second: float | None = None):
    """Publish ``records``; returns how many went to each partition."""
    p = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 << 20)
    futures = []
    for r in records:
        futures.append(p.send(topic, key=r.key, value=r.value, headers=r.headers))
        if per_second:
            time.sleep(1.0 / per_second)
    p.flush()
    counts: dict[int, int] = {}
    for f in futures:
        part = f.get(timeout=30).partition
        counts[part] = counts.get(part, 0) + 1
    p.close()
    return counts


def env_for(flink, broker, topics, **extra):
    t_in, t_out, t_dlq = topics
    env = {
        **os.environ,
        "COSTREAM_FLINK_DIR": str(flink.work_dir),
        "COSTREAM_BOOTSTRAP": broker.bootstrap,
        "COSTREAM_INPUT_TOPIC": t_in,
        "COSTREAM_OUTPUT_TOPIC": t_out,
        "COSTREAM_DEAD_LETTER_TOPIC": t_dlq,
        "COSTREAM_GROUP_ID": f"g-{t_in}",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def submit(flink, spec, env, *args):
    """Start ``costream run`` on the cluster; returns the process (its output in a log file)."""
    path = flink.work_dir / "log" / f"run-{time.monotonic_ns()}.out"
    cmd = [sys.executable, "-m", "costream.pipelines.cli", "run", str(spec)]
    cmd += ["--runner", "FlinkRunner", f"--flink_master={flink.flink_master}", *args]
    with open(path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = path
    return proc


def finish(proc, timeout_s=300):
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 0, proc.log_path.read_text()[-3000:]


def new_job(flink, before: set[str], timeout_s=120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for j in flink.jobs():
            if j["id"] not in before and j["status"] == "RUNNING":
                return j["id"]
        time.sleep(0.5)
    raise AssertionError(f"no new RUNNING job in {timeout_s} s: {flink.jobs()}")


def wait_for(cond, timeout_s, what, explain=None):
    """Poll ``cond`` until true; on timeout fail with ``explain()``'s account of the job, if any."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    detail = "" if explain is None else f"\n{explain()}"
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{detail}")


def job_account(flink, job, proc=None):
    """What a failed wait shows of a job: state, restarts, exceptions, metrics and log tails."""
    parts = []
    for what, path in (
        ("state", f"/jobs/{job}"),
        ("restarts", f"/jobs/{job}/metrics?get=numRestarts"),
        ("exceptions", f"/jobs/{job}/exceptions"),
    ):
        try:
            got = flink.rest(path)
            got = got.get("state") if what == "state" else got
            parts.append(f"{what}: {json.dumps(got)[:3000]}")
        except Exception as err:  # the account must not hide the timeout
            parts.append(f"{what}: unreadable ({err})")
    try:
        parts.append(f"user metrics: {flink.user_metrics(job)}")
    except Exception as err:
        parts.append(f"user metrics: unreadable ({err})")
    logs = [flink.work_dir / "log" / n for n in ("worker_pool.out", "taskmanager.out")]
    logs += [] if proc is None else [proc.log_path]
    for path in logs:
        try:
            parts.append(f"--- {path.name} (tail)\n{path.read_text(errors='replace')[-3000:]}")
        except OSError as err:
            parts.append(f"--- {path.name}: {err}")
    return "\n".join(parts)


def detections(broker, topic):
    return [json.loads(m.value) for m in consume_all(broker.bootstrap, topic)]


def key(d):
    return (d["stream_id"], d["frame_index"])


def strip(d):
    d = dict(d)
    d.pop("latency_ms")
    return d


def offline(spec, records, env):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if k.startswith("COSTREAM_")})
    try:
        out, dead = score_records(spec, records)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {key(json.loads(r.value)): strip(json.loads(r.value)) for r in out}, dead


def test_cluster_pipeline_args_carry_costream_runs_flink_option_fixes(tmp_path):
    # without --finish_bundle_before_checkpointing, a checkpoint that caught ResolvePartitions'
    # bundle open left the partitions in Beam's output buffer: apache_beam.yaml.main on the
    # cluster then read nothing in about 2 of 5 runs (see FlinkCluster.pipeline_args)
    from costream.pipelines.flink import FlinkCluster
    from costream.transforms import beam_fixes

    args = FlinkCluster(tmp_path).pipeline_args()
    assert "--finish_bundle_before_checkpointing" in args
    assert beam_fixes.pipeline_args("FlinkRunner", args) == args  # every Flink fix is there


def stalled(flink, job_id: str) -> str:
    """The job's vertices (records in/out, input watermark), for a timeout's message."""
    rows = [f"{v['records_in']!s:>6} {v['records_out']!s:>6} {v['input_watermark_ms']!s:>20}  {v['name'][:80]}" for v in flink.api.vertex_records(job_id)]  # fmt: skip
    return "\n".join([f"job {job_id}: records in, out, input watermark (ms), vertex", *rows])


# First on the module's cluster (it used to stall after other jobs, for the reason in
# test_cluster_pipeline_args_carry_costream_runs_flink_option_fixes; the order stays).
def test_features_spec_through_beams_yaml_main_on_flink(flink, kafka_broker, kafka_topics):
    """The shipped spec, unchanged, submitted by Beam's own entry point (apache_beam.yaml.main)
    to the cluster's job server: costream's types come from the providers file it includes."""
    topics = kafka_topics(2, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    streams = ["y0", "y1", "y2"]
    good = interleave(streams, 0, 30)
    bad, ct = contract.encode_features(np.zeros(DIM - 1, np.float32))  # wrong dim for the model
    produce(kafka_broker.bootstrap, topics[0], [*good[:20], contract.frame_record("y-bad", 0, 1, ct, bad), *good[20:]])  # fmt: skip
    env = env_for(flink, kafka_broker, topics)
    before = {j["id"] for j in flink.jobs()}
    cmd = [sys.executable, "-m", "apache_beam.yaml.main", f"--yaml_pipeline_file={FEATURES}"]
    cmd += [*flink.pipeline_args(), "--streaming"]
    path = flink.work_dir / "log" / f"yaml-main-{time.monotonic_ns()}.out"
    with open(path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        job = new_job(flink, before, timeout_s=180)

        def done():
            return len(consume_all(kafka_broker.bootstrap, topics[1])) >= len(good) and consume_all(
                kafka_broker.bootstrap, topics[2]
            )

        try:
            wait_for(done, 180, f"{len(good)} detections and a dead letter ({path})")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{stalled(flink, job)}") from None
        time.sleep(3)  # and nothing more (a streaming job never ends: cancelled below)
    finally:
        for j in flink.jobs():
            if j["id"] not in before and j["status"] not in ("FINISHED", "CANCELED", "FAILED"):
                flink.rest(f"/jobs/{j['id']}?mode=cancel", method="PATCH")
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = detections(kafka_broker, topics[1])
    dlq = consume_all(kafka_broker.bootstrap, topics[2])
    per_stream = {s: [d["frame_index"] for d in out if d["stream_id"] == s] for s in streams}
    assert per_stream == {s: list(range(30)) for s in streams} and len(out) == len(good)
    assert [dict(m.headers)[contract.HEADER_STAGE] for m in dlq] == [b"features"]
    expected, _ = offline(FEATURES, good, env)
    assert {key(d): strip(d) for d in out} == expected


def test_features_spec_on_flink_exact_ordered_and_accounted(flink, kafka_broker, kafka_topics):
    topics = kafka_topics(4, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    streams = [f"s{i}" for i in range(6)]
    good = interleave(streams, 0, 40)
    bad, ct = contract.encode_features(np.zeros(DIM - 1, np.float32))  # wrong dim for the model
    records = list(good)
    records.insert(50, contract.frame_record("s-bad", 0, 1, ct, bad))
    records.insert(90, contract.OutgoingRecord(b"s-bad", b"\x00" * 8, []))  # no headers at all
    per_partition = produce(kafka_broker.bootstrap, topics[0], records)
    env = env_for(flink, kafka_broker, topics)

    finish(submit(flink, FEATURES, env, "--until-idle", "8"))

    out = detections(kafka_broker, topics[1])
    dlq = consume_all(kafka_broker.bootstrap, topics[2])
    # every good record exactly once, in frame order per stream; the bad ones dead-lettered
    per_stream = {s: [d["frame_index"] for d in out if d["stream_id"] == s] for s in streams}
    assert per_stream == {s: list(range(40)) for s in streams}
    assert len(out) == len(good) and len(dlq) == 2
    assert sorted(dict(m.headers)[contract.HEADER_STAGE] for m in dlq) == [b"decode", b"features"]
    # identical to `costream score` on the same frames
    expected, _ = offline(FEATURES, good, env)
    assert {key(d): strip(d) for d in out} == expected
    # offsets were committed by bundle finalization (at checkpoints) up to the end of each
    # partition (fresh topic: a partition's end offset is its record count)
    c = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=env["COSTREAM_GROUP_ID"])
    committed = {p: c.committed(TopicPartition(topics[0], p)) for p in range(4)}
    c.close()
    assert committed == {p: per_partition.get(p) for p in range(4)}


def test_video_spec_on_flink_equals_costream_score(flink, kafka_broker, kafka_topics, tmp_path):
    from costream.connectors.synthetic import synthetic_video
    from costream.models.zoo import get_model, save_model

    weights = tmp_path / "video.safetensors"
    save_model(
        get_model("oadtr_b1", d_in=128, d_model=32, window=8, heads=4, ffn=64, classes=5), weights
    )
    topics = kafka_topics(4, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    per = []
    for s in range(3):
        video = synthetic_video(num_frames=16, size=(96, 72), seed=s)
        per.append(
            [
                contract.frame_record(
                    f"cam-{s}", i, 1_000 + 100 * i, contract.CT_JPEG, contract.encode_jpeg(f)
                )
                for i, f in enumerate(video.frames)
            ]
        )
    good = [recs[i] for i in range(16) for recs in per]
    corrupt = contract.frame_record("cam-x", 0, 1, contract.CT_JPEG, b"\xff\xd8\xff" + b"junk" * 9)
    produce(kafka_broker.bootstrap, topics[0], [*good[:10], corrupt, *good[10:]])
    env = env_for(flink, kafka_broker, topics, COSTREAM_WEIGHTS=weights)

    finish(submit(flink, VIDEO, env, "--until-idle", "8"))

    out = detections(kafka_broker, topics[1])
    dlq = consume_all(kafka_broker.bootstrap, topics[2])
    assert [m.value for m in dlq] == [corrupt.value]
    for s in range(3):
        assert [d["frame_index"] for d in out if d["stream_id"] == f"cam-{s}"] == list(range(16))
    expected, _ = offline(VIDEO, good, env)
    got = {key(d): strip(d) for d in out}
    assert got.keys() == expected.keys()
    for k in expected:  # float32 features through a CNN: compare scores to rounding
        np.testing.assert_allclose(got[k].pop("scores"), expected[k].pop("scores"), atol=1e-5)
        got[k]["top"].pop("score"), expected[k]["top"].pop("score")
        assert got[k] == expected[k]


def test_failover_restores_state_from_the_last_checkpoint(flink, kafka_broker, kafka_topics):
    topics = kafka_topics(4, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    streams = [f"f{i}" for i in range(4)]
    first, second = interleave(streams, 0, 40), interleave(streams, 40, 100)
    produce(kafka_broker.bootstrap, topics[0], first)
    env = env_for(flink, kafka_broker, topics)
    before = {j["id"] for j in flink.jobs()}
    proc = submit(flink, FEATURES, env, "--until-idle", "40", "--checkpointing_interval=2000")
    job = new_job(flink, before)
    t0 = time.monotonic()
    flink.wait_for_checkpoints(job, 1)
    feeder = threading.Thread(
        target=produce, args=(kafka_broker.bootstrap, topics[0], second, 20.0)
    )
    feeder.start()  # 12 s of frames, while the TaskManager dies and comes back
    wait_for(
        lambda: len(consume_all(kafka_broker.bootstrap, topics[1])) >= len(first), 120, "phase 1"
    )
    print(f"phase 1 out after {time.monotonic() - t0:.1f} s")
    flink.wait_for_checkpoints(job, flink.checkpoints(job)["counts"]["completed"] + 1)
    flink.kill_taskmanager()  # kill -9 mid-stream
    flink.start_taskmanager()
    feeder.join()
    # the job's counters are on REST again soon (what --until-idle and the status line read):
    # with Flink's default web.timeout the metrics fetcher waited 10 min on the dead TaskManager
    wait_for(
        lambda: flink.user_metrics(job).get("costream_kafka_records_read", 0) > 0,
        60,
        "the job's counters on REST after the TaskManager came back",
        functools.partial(job_account, flink, job, proc),
    )
    finish(proc)

    out = detections(kafka_broker, topics[1])
    assert flink.checkpoints(job)["counts"]["restored"] >= 1
    everything = first + second
    expected, _ = offline(FEATURES, everything, env)
    got: dict = {}
    for d in out:
        k = key(d)
        # a duplicate (frames after the restored checkpoint) carries the very same detection
        assert k not in got or got[k] == strip(d)
        got[k] = strip(d)
    assert got.keys() == expected.keys()  # nothing lost
    diffs = {
        k: {f: (got[k][f], expected[k][f]) for f in expected[k] if got[k][f] != expected[k][f]}
        for k in expected
        if got[k] != expected[k]
    }
    assert not diffs, dict(list(diffs.items())[:3])  # state restored: as if uninterrupted
    cold = sorted(k for k, d in ((key(d), d) for d in out) if not d["warm"])
    assert set(cold) == {(s, i) for s in streams for i in range(WINDOW - 1)}  # no new warm-up
    dupes = len(out) - len(got)
    print(f"failover: {len(out)} detections for {len(got)} frames, {dupes} duplicates")


def run_phases(flink, broker, topics, env, phases, parallelisms, refused=0, timeout_s=120):
    """Each phase's records produced, then a job at that parallelism from the last savepoint
    until it has written them all (less ``refused`` dead letters) and stopped by idle time."""
    savepoint = None
    seen = -refused
    for phase, parallelism in zip(phases, parallelisms):
        produce(broker.bootstrap, topics[0], phase)
        seen += len(phase)
        args = ["--until-idle", "6", f"--parallelism={parallelism}"]
        if savepoint:
            args.append(f"--savepoint_path={savepoint}")
        before = {j["id"] for j in flink.jobs()}
        proc = submit(flink, FEATURES, env, *args)
        job = new_job(flink, before)
        wait_for(
            lambda n=seen: len(consume_all(broker.bootstrap, topics[1])) >= n,
            timeout_s,
            f"{seen} detections",
        )
        finish(proc)  # idle for 6 s: `costream run` stops the job with a savepoint
        (line,) = [x for x in proc.log_path.read_text().splitlines() if x.startswith("savepoint=")]
        savepoint = line.split("=", 1)[1]
        # the REST state can trail the job server's DONE by a moment (the batched job's stop
        # flushes its buffers first)
        wait_for(lambda job=job: flink.api.state(job) == "FINISHED", 30, f"job {job} FINISHED")


def test_stop_with_savepoint_resume_and_rescale(flink, kafka_broker, kafka_topics):
    topics = kafka_topics(4, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    streams = [f"r{i}" for i in range(8)]
    phases = [interleave(streams, a, b) for a, b in ((0, 30), (30, 60), (60, 90))]
    env = env_for(flink, kafka_broker, topics)
    run_phases(flink, kafka_broker, topics, env, phases, (2, 1, 2))

    out = detections(kafka_broker, topics[1])
    expected, _ = offline(FEATURES, [r for p in phases for r in p], env)
    assert {key(d): strip(d) for d in out} == expected
    assert len(out) == len(expected)  # a savepoint is a clean cut: no duplicates
    cold = {key(d) for d in out if not d["warm"]}
    assert cold == {(s, i) for s in streams for i in range(WINDOW - 1)}  # state followed its key


def test_idle_timer_clears_an_idle_streams_state_on_flink(flink, kafka_broker, kafka_topics):
    topics = kafka_topics(2, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    env = env_for(flink, kafka_broker, topics, COSTREAM_IDLE_TIMEOUT_S=4)
    before = {j["id"] for j in flink.jobs()}
    proc = submit(flink, FEATURES, env)  # a real streaming job: real processing-time timers
    job = new_job(flink, before)

    def cleared():
        return sum(v for k, v in flink.user_metrics(job).items() if k.endswith("idle_cleared"))

    try:
        produce(kafka_broker.bootstrap, topics[0], features("idle", 0, 20))
        wait_for(lambda: len(consume_all(kafka_broker.bootstrap, topics[1])) >= 20, 120, "20")
        account = functools.partial(job_account, flink, job, proc)
        wait_for(lambda: cleared() >= 1, 150, "the idle timer", account)
        produce(kafka_broker.bootstrap, topics[0], features("idle", 20, 25))
        wait_for(lambda: len(consume_all(kafka_broker.bootstrap, topics[1])) >= 25, 60, "25")
        # no timer left pending
        wait_for(lambda: cleared() >= 2, 150, "the second idle timer", account)
    finally:
        flink.rest(f"/jobs/{job}?mode=cancel", method="PATCH")
        proc.wait(timeout=120)
    out = detections(kafka_broker, topics[1])
    warm = {d["frame_index"]: d["warm"] for d in out}
    # the state was cleared while idle: frames 20.. start a new window (the idle gap resets it)
    assert [warm[i] for i in range(25)] == [i >= WINDOW - 1 for i in range(20)] + [False] * 5


def test_without_checkpointing_no_offsets_are_committed(flink, kafka_broker, kafka_topics):
    # the reader commits from bundle finalization, which Flink runs when a checkpoint completes
    topics = kafka_topics(2, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    env = env_for(flink, kafka_broker, topics, COSTREAM_IDLE_TIMEOUT_S=3)
    before = {j["id"] for j in flink.jobs()}
    proc = submit(flink, FEATURES, env, "--checkpointing_interval=-1")
    job = new_job(flink, before)
    try:
        produce(kafka_broker.bootstrap, topics[0], features("nc", 0, 20))
        wait_for(lambda: len(consume_all(kafka_broker.bootstrap, topics[1])) >= 20, 120, "20")
        wait_for(
            lambda: flink.user_metrics(job).get("costream_idle_cleared", 0) >= 1, 150, "idle timer"
        )  # no timer left pending, so the job cancels cleanly
        assert flink.checkpoints(job)["counts"]["completed"] == 0
        c = KafkaConsumer(
            bootstrap_servers=kafka_broker.bootstrap, group_id=env["COSTREAM_GROUP_ID"]
        )
        committed = {p: c.committed(TopicPartition(topics[0], p)) for p in range(2)}
        c.close()
        assert committed == {0: None, 1: None}
    finally:
        flink.rest(f"/jobs/{job}?mode=cancel", method="PATCH")
        proc.wait(timeout=120)


def test_flink_cli_up_status_down(tmp_path):
    from costream.pipelines.flink import FlinkError, job_server_jar

    try:
        job_server_jar()
    except FlinkError as err:
        pytest.skip(f"Flink is not set up: {err}")
    work = tmp_path / "cluster"
    cli = [sys.executable, "-m", "costream.pipelines.cli", "flink"]
    up = subprocess.run([*cli, "up", "--free-ports", "--work-dir", str(work)], capture_output=True, text=True, timeout=300)  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        lines = dict(x.split("=", 1) for x in up.stdout.splitlines() if "=" in x and " " not in x)
        assert lines["flink_master"].startswith("127.0.0.1:")
        assert lines["job_endpoint"].startswith("127.0.0.1:")
        st = subprocess.run([*cli, "status", "--json", "--work-dir", str(work)], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert st.returncode == 0
        status = json.loads(st.stdout)
        roles = {p["role"]: p for p in status["processes"]}
        assert set(roles) == {"jobmanager", "taskmanager", "job_server", "worker_pool"}
        assert all(p["alive"] for p in roles.values())
        assert status["flink_master"] == lines["flink_master"]
        assert f"--job_endpoint={lines['job_endpoint']}" in status["pipeline_args"]
        assert "--finish_bundle_before_checkpointing" in status["pipeline_args"]
        assert f"Beam options for this cluster: {' '.join(status['pipeline_args'])}" in up.stdout
    finally:
        down = subprocess.run([*cli, "down", "--work-dir", str(work)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert down.returncode == 0
    for p in roles.values():  # every process stopped by its pid (gone, or a zombie left to init)
        stat = Path(f"/proc/{p['pid']}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", p
    gone = subprocess.run([*cli, "status", "--work-dir", str(work)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert gone.returncode == 1 and "no cluster recorded" in gone.stdout


def close_to(out, expected, rtol=1e-5):
    """Batched detections equal ``costream score``'s (one stream per step) within float32
    rounding; every other field exactly."""
    assert set(out) == set(expected)
    rounded = ("scores", "top")
    for k, d in out.items():
        e = expected[k]
        assert {f: v for f, v in d.items() if f not in rounded} == {
            f: v for f, v in e.items() if f not in rounded
        }, k
        assert d["top"]["label"] == e["top"]["label"], k
        np.testing.assert_allclose(d["scores"], e["scores"], rtol=rtol, atol=1e-7)
        np.testing.assert_allclose(d["top"]["score"], e["top"]["score"], rtol=rtol)


def test_batched_features_spec_on_flink_rescaled_2_1_2(flink, kafka_broker, kafka_topics):
    """Cross-stream batching on Flink: shards keyed state survives stop-with-savepoint and
    rescaling 2 -> 1 -> 2; every frame once, in order, equal to `costream score`."""
    topics = kafka_topics(4, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    streams = [f"b{i}" for i in range(8)]
    phases = [interleave(streams, a, b) for a, b in ((0, 30), (30, 60), (60, 90))]
    bad, ct = contract.encode_features(np.full(DIM, np.nan, np.float32))
    phases[0].insert(
        40, contract.frame_record("b3", 5, 1_000 + 40 * 5, ct, bad)
    )  # NaN: dead-lettered at decode
    env = env_for(flink, kafka_broker, topics, COSTREAM_BATCH_STREAMS="true", COSTREAM_SHARDS=4)
    run_phases(flink, kafka_broker, topics, env, phases, (2, 1, 2), refused=1, timeout_s=150)

    out = detections(kafka_broker, topics[1])
    dlq = consume_all(kafka_broker.bootstrap, topics[2])
    assert len(dlq) == 1 and dict(dlq[0].headers)[contract.HEADER_STAGE] == b"decode"
    per_stream = {s: [d["frame_index"] for d in out if d["stream_id"] == s] for s in streams}
    assert per_stream == {s: list(range(90)) for s in streams}  # once each, in order
    expected, _ = offline(
        FEATURES, [r for p in phases for r in p], {**env, "COSTREAM_BATCH_STREAMS": "false"}
    )
    close_to({key(d): strip(d) for d in out}, expected)
    cold = {key(d) for d in out if not d["warm"]}
    assert cold == {(s, i) for s in streams for i in range(WINDOW - 1)}  # state followed its shard
