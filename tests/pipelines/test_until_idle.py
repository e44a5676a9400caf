"""``costream run --until-idle`` on Flink: when the job's counters count as idle.

The REST API is a scripted stand-in here (the input of the watcher, not the system under test);
the Flink integration tests run the watcher against a real cluster.
"""

import pytest

from costream.pipelines import runner


class _Clock:
    def __init__(self):
        self.t = 0.0

    def monotonic(self):
        return self.t

    def sleep(self, s):
        self.t += s


class _Rest:
    """A RUNNING job whose counters are ``script(t)`` at fake time ``t``."""

    def __init__(self, clock, script):
        self.clock, self.script, self.stopped_at = clock, script, None

    def job_named(self, name):
        return "j1"

    def rest(self, path):
        return {"state": "RUNNING", "vertices": [{"status": "RUNNING"}]}

    def user_metrics(self, job):
        return self.script(self.clock.t)

    def stop_with_savepoint(self, job):
        self.stopped_at = self.clock.t
        return "file:///savepoints/sp-1"


@pytest.fixture
def watch(monkeypatch):
    from costream.pipelines import flink

    clock = _Clock()
    monkeypatch.setattr(runner, "time", clock)

    def run(script, idle_s):
        rest = _Rest(clock, script)
        monkeypatch.setattr(flink, "FlinkRest", lambda master: rest)
        assert runner.stop_when_idle("localhost:8081", "job", idle_s, None).endswith("sp-1")
        return rest.stopped_at

    return run


def test_the_job_stops_once_its_counters_sat_still(watch):
    def script(t):  # frames flow for 30 s, then stop
        return {"costream_kafka_records_read": min(t, 30.0) * 10}

    assert 30 + 10 <= watch(script, idle_s=10) <= 30 + 12


def test_counters_that_vanish_from_rest_are_not_idle(watch):
    # frames flow for 20 s as a TaskManager is lost: REST shows no metrics for 180 s, then
    # the counters as they were
    def script(t):
        return {} if 20 <= t < 200 else {"costream_kafka_records_read": min(t, 20.0) * 10}

    assert watch(script, idle_s=10) >= 200 + 10  # not 60 s into the gap
