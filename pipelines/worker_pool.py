"""A Beam SDK worker pool on loopback, for ``--environment_type=EXTERNAL`` runners (Flink).

Beam's own ``worker_pool_main`` listens on every interface and, in process mode, starts workers
with whatever ``python`` is first on ``PATH``. This one listens on ``host`` only and starts each
SDK harness as a subprocess of this interpreter (so costream and torch are importable and each
harness has its own GIL), with the state cache size given here: an external pool's harnesses
take the cache size from the pool, not from the pipeline's ``--max_cache_memory_usage_mb``.

    python -m costream.pipelines.worker_pool --port 50000 [--host 127.0.0.1] [--state-cache-mb 256]
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
from typing import Any

__all__ = ["serve"]

log = logging.getLogger(__name__)

# costream's element schemas are registered (RowCoder) before the harness builds the pipeline's
# coders, so a worker decodes costream's rows as the submitting process encoded them; Beam's
# worker patches (costream.transforms.beam_fixes) are in place before its bundle processors.
_HARNESS = (
    "import sys, torch; torch.set_num_threads(1); import costream.transforms.records; "
    "from costream.transforms import beam_fixes; beam_fixes.apply(); "
    "from apache_beam.runners.worker.sdk_worker import SdkHarness; "
    "SdkHarness(sys.argv[1], worker_id=sys.argv[2], state_cache_size=int(sys.argv[3]), "
    "data_buffer_time_limit_ms=int(sys.argv[4])).run()"
)


def serve(host: str, port: int, state_cache_mb: int, buffer_ms: int = -1) -> tuple[Any, int]:
    """Start the pool's gRPC server; returns ``(server, port)`` (``port=0`` picks a free one)."""
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
    from apache_beam.utils import thread_pool_executor

    workers: dict[str, subprocess.Popen[bytes]] = {}
    lock = threading.Lock()

    class Pool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
        def StartWorker(self, request: Any, context: Any) -> Any:  # gRPC name
            cmd = [
                sys.executable,
                "-c",
                _HARNESS,
                request.control_endpoint.url,
                request.worker_id,
                str(state_cache_mb << 20),
                str(buffer_ms),
            ]
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
            except OSError as err:
                return beam_fn_api_pb2.StartWorkerResponse(error=f"cannot start worker: {err}")
            with lock:
                workers[request.worker_id] = proc
            log.info("worker %s started (pid %d)", request.worker_id, proc.pid)
            return beam_fn_api_pb2.StartWorkerResponse()

        def StopWorker(self, request: Any, context: Any) -> Any:  # gRPC name
            with lock:
                proc = workers.pop(request.worker_id, None)
            if proc is not None:
                _stop(proc)
            return beam_fn_api_pb2.StopWorkerResponse()

    server = grpc.server(thread_pool_executor.shared_unbounded_instance())
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"worker pool: cannot listen on {host}:{port}")
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(Pool(), server)
    server.start()

    def stop_all() -> None:
        with lock:
            procs = list(workers.values())
            workers.clear()
        for proc in procs:
            _stop(proc)

    server.stop_all_workers = stop_all  # type: ignore[attr-defined]
    return server, bound


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    """Run the pool until SIGTERM / SIGINT."""
    p = argparse.ArgumentParser(description="Beam SDK worker pool on loopback (costream).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50000)
    p.add_argument("--state-cache-mb", type=int, default=256)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server, port = serve(args.host, args.port, args.state_cache_mb)
    print(f"worker pool listening on {args.host}:{port}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop_all_workers()
    server.stop(grace=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
