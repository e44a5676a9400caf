"""transforms/beam_fixes.py: a cleared state cell leaves nothing in the SDK worker's cache."""

import contextlib

from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.worker import sdk_worker
from apache_beam.runners.worker.statecache import StateCache
from costream.transforms import beam_fixes


class _Runner:
    """The runner side of the state API, in memory."""

    def __init__(self):
        self.cells = {}

    @contextlib.contextmanager
    def process_instruction_id(self, bundle_id):
        yield

    def done(self):
        pass

    def clear(self, key):
        self.cells.pop(key.SerializeToString(), None)
        return sdk_worker._Future.done()

    def append_raw(self, key, data):
        self.cells[key.SerializeToString()] = self.cells.get(key.SerializeToString(), b"") + data
        return sdk_worker._Future.done()

    def get_raw(self, key, continuation_token=None):
        return self.cells.get(key.SerializeToString(), b""), None


def _churn(handler, cache, n):
    from apache_beam.coders import BytesCoder

    coder = BytesCoder().get_impl()
    token = beam_fn_api_pb2.ProcessBundleRequest.CacheToken(
        token=b"t", user_state=beam_fn_api_pb2.ProcessBundleRequest.CacheToken.UserState()
    )
    for i in range(n):  # a stream steps once, goes idle, and its cell is cleared
        key = beam_fn_api_pb2.StateKey()
        key.bag_user_state.transform_id, key.bag_user_state.user_state_id = "Step", "stream"
        key.bag_user_state.key = f"id-{i}".encode()
        with handler.process_instruction_id(f"b{i}", [token]):
            assert list(handler.blocking_get(key, coder)) == []
            handler.extend(key, coder, [b"state" * 100]).wait()
        with handler.process_instruction_id(f"c{i}", [token]):
            assert list(handler.blocking_get(key, coder)) == [b"state" * 100]
            handler.clear(key).wait()
    size = cache.size()
    with handler.process_instruction_id("d", [token]):  # a cleared cell still reads as empty
        assert list(handler.blocking_get(key, coder)) == []
    return size


def test_cleared_cells_leave_no_cache_entries(monkeypatch):
    assert beam_fixes.apply() and beam_fixes.apply()  # idempotent (other tests may have applied it)
    with monkeypatch.context() as m:  # Beam's own clear, for the "before"
        m.setattr(sdk_worker.GlobalCachingStateHandler, "clear", beam_fixes._BEAM_CLEAR)
        cache = StateCache(1 << 20)
        left_before = _churn(sdk_worker.GlobalCachingStateHandler(cache, _Runner()), cache, 50)
    cache = StateCache(1 << 20)
    left_after = _churn(sdk_worker.GlobalCachingStateHandler(cache, _Runner()), cache, 50)
    assert left_before == 50 and left_after == 0, (left_before, left_after)
