"""Flink's REST API: the few calls costream makes to a JobManager (jobs, checkpoints, metrics)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from costream.pipelines.flink.config import FlinkError

__all__ = ["FlinkRest"]


class FlinkRest:
    """The few calls of Flink's REST API that costream uses (``master`` = ``host:port``)."""

    def __init__(self, master: str) -> None:
        self.master = master

    def rest(self, path: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
        """Call the JobManager's REST API; returns the decoded JSON answer."""
        url = f"http://{self.master}{path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            url, data=data, method=method or ("POST" if body is not None else "GET")
        )
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise FlinkError(f"{req.method} {url}: HTTP {err.code}: {err.read()[:500]!r}") from err
        except urllib.error.URLError as err:
            raise FlinkError(f"{req.method} {url}: {err.reason}") from err
        except OSError as err:  # a read timeout while the JobManager is busy, a reset
            raise FlinkError(f"{req.method} {url}: {err}") from err
        return json.loads(raw) if raw else None

    def jobs(self) -> list[dict[str, Any]]:
        """``[{jid, name, state, ...}]`` of every job the cluster knows (``/jobs/overview``)."""
        return [
            {"id": j["jid"], "status": j["state"], "name": j["name"]}
            for j in self.rest("/jobs/overview")["jobs"]
        ]

    def job_named(self, name: str, timeout_s: float = 300.0) -> str:
        """The id of the job called ``name`` (waits for it to be submitted)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for j in self.jobs():
                if j["name"] == name:
                    return str(j["id"])
            time.sleep(0.5)
        raise FlinkError(f"no job named {name!r} on {self.master} within {timeout_s:.0f} s")

    def state(self, job_id: str) -> str:
        return str(self.rest(f"/jobs/{job_id}")["state"])

    def checkpoints(self, job_id: str) -> dict[str, Any]:
        return dict(self.rest(f"/jobs/{job_id}/checkpoints"))

    def wait_for_checkpoints(
        self, job_id: str, count: int, timeout_s: float = 120.0
    ) -> dict[str, Any]:
        """Wait until ``count`` checkpoints completed; returns the latest completed one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            cp = self.checkpoints(job_id)
            if cp["counts"]["completed"] >= count and cp["latest"]["completed"]:
                return dict(cp["latest"]["completed"])
            time.sleep(0.5)
        raise FlinkError(f"job {job_id}: fewer than {count} checkpoints in {timeout_s:.0f} s")

    def stop_with_savepoint(
        self, job_id: str, target: str | None = None, timeout_s: float = 120.0
    ) -> str:
        """Stop ``job_id`` with a savepoint (in ``target``, or the cluster's default folder)."""
        body: dict[str, Any] = {"drain": False}
        if target:
            body["targetDirectory"] = target
        tid = self.rest(f"/jobs/{job_id}/stop", body)["request-id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ans = self.rest(f"/jobs/{job_id}/savepoints/{tid}")
            except FlinkError:  # a busy JobManager: ask again
                time.sleep(1.0)
                continue
            if ans["status"]["id"] == "COMPLETED":
                op = ans["operation"]
                if "failure-cause" in op:
                    cause = op["failure-cause"].get("stack-trace", op["failure-cause"])
                    raise FlinkError(f"stop-with-savepoint of {job_id} failed: {str(cause)[:2000]}")
                return str(op["location"])
            time.sleep(0.5)
        raise FlinkError(f"stop-with-savepoint of {job_id} did not finish in {timeout_s:.0f} s")

    def vertex_records(self, job_id: str) -> list[dict[str, Any]]:
        """Per vertex of ``job_id``: name, records in and out, lowest input watermark (epoch ms).

        Records are summed over the vertex's subtasks; a value Flink does not report (a source
        has no records in) is ``None``. A stage that took records in and sent none on while the
        watermark after it reached the end of time holds its output back (see
        :meth:`FlinkCluster.pipeline_args`).
        """
        out = []
        for vertex in self.rest(f"/jobs/{job_id}")["vertices"]:
            base = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"

            # one metric a call: Flink answers nothing at all when one of several is missing
            def value(name: str, agg: str, base: str = base) -> int | None:
                got = self.rest(f"{base}?get={name}&agg={agg}")
                return int(float(got[0][agg])) if got and agg in got[0] else None

            out.append(
                {
                    "name": vertex["name"],
                    "records_in": value("numRecordsIn", "sum"),
                    "records_out": value("numRecordsOut", "sum"),
                    "input_watermark_ms": value("currentInputWatermark", "min"),
                }
            )
        return out

    def user_metrics(self, job_id: str) -> dict[str, float]:
        """Costream's Beam counters and distributions of a job, summed over subtasks.

        Beam reports user metrics as Flink task metrics named ``<stage>.<namespace>_<name>``
        (``costream.kafka`` -> ``costream_kafka_records_read``); keys here are
        ``<namespace>_<name>`` summed over stages and subtasks.
        """
        out: dict[str, float] = {}
        job = self.rest(f"/jobs/{job_id}")
        for vertex in job["vertices"]:
            vid = vertex["id"]
            names = [m["id"] for m in self.rest(f"/jobs/{job_id}/vertices/{vid}/subtasks/metrics")]
            wanted = [n for n in names if ".costream_" in n]
            for chunk in range(0, len(wanted), 20):
                part = ",".join(urllib.parse.quote(n, safe="") for n in wanted[chunk : chunk + 20])
                url = f"/jobs/{job_id}/vertices/{vid}/subtasks/metrics?get={part}&agg=sum"
                for m in self.rest(url):
                    name = m["id"].rsplit(".", 1)[-1]
                    out[name] = out.get(name, 0.0) + float(m.get("sum", 0.0))
        return out
