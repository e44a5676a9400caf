"""transforms/beam_fixes.py: a cleared state cell leaves nothing in the SDK worker's cache."""

import contextlib
import sys
import time

import pytest
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


def test_a_state_cell_is_weighed_without_walking_the_modules(monkeypatch):
    """A cell read after a write is weighed as objsize weighs it, without its module walk."""
    from apache_beam.runners.worker import statecache

    assert beam_fixes.apply()
    flat = [b"\x01" * 3000, bytearray(b"x").decode() + "y", 12345678901, 0.5, None, True]
    nested = [{"a": [b"x" * 100]}, (b"y" * 10,)]
    expected = {
        "flat": beam_fixes._BEAM_DEEP_SIZE(flat),
        "nested": beam_fixes._BEAM_DEEP_SIZE(nested),
    }

    def walked():
        raise AssertionError("walked every module's globals")
        yield

    monkeypatch.setattr("objsize.traverse._iter_modules_globals", walked)
    cache = StateCache(1 << 20)
    _churn(sdk_worker.GlobalCachingStateHandler(cache, _Runner()), cache, 3)  # by the fix alone
    assert statecache.get_deep_size(flat) == expected["flat"]
    assert statecache.get_deep_size([]) == sys.getsizeof([])
    with pytest.raises(AssertionError, match="walked"):  # other values: Beam's weighing
        statecache.get_deep_size(nested)
    monkeypatch.undo()
    assert statecache.get_deep_size(nested) == expected["nested"]
    with monkeypatch.context() as m:  # without the fix a cell's load walks the modules
        m.setattr(statecache, "get_deep_size", beam_fixes._BEAM_DEEP_SIZE)
        m.setattr("objsize.traverse._iter_modules_globals", walked)
        cache = StateCache(1 << 20)
        with pytest.raises(AssertionError, match="walked"):
            _churn(sdk_worker.GlobalCachingStateHandler(cache, _Runner()), cache, 1)


def test_apply_installs_every_worker_fix_idempotently():
    from apache_beam.runners.worker import statecache

    assert beam_fixes.apply() and beam_fixes.apply()
    assert sdk_worker.GlobalCachingStateHandler.clear is beam_fixes._clear
    assert statecache.get_deep_size is beam_fixes._deep_size
    assert beam_fixes.WORKER_FIXES == (
        beam_fixes.drop_cleared_state_from_cache,
        beam_fixes.weigh_flat_state_cheaply,
        beam_fixes.short_state_sampling_period,
    )


def _stop_seconds(run_s: float = 1.2, times: int = 3) -> float:
    """The mean time a new StateSampler's ``stop`` takes after it ran ``run_s`` (a bundle end)."""
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    took = []
    for _ in range(times):
        sampler = statesampler.StateSampler("test", CounterFactory())
        sampler.start()
        time.sleep(run_s)  # Beam's period has grown to its 200 ms cap by now
        t0 = time.perf_counter()
        sampler.stop()
        took.append(time.perf_counter() - t0)
    return sum(took) / len(took)


def test_a_bundle_end_waits_at_most_the_short_sampling_period(monkeypatch):
    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    monkeypatch.setattr(init, "__defaults__", (statesampler.DEFAULT_SAMPLING_PERIOD_MS,))
    assert statesampler.StateSampler("beam", None).sampling_period_ms == 200
    assert beam_fixes.short_state_sampling_period() and beam_fixes.short_state_sampling_period()
    assert statesampler.StateSampler("fixed", None).sampling_period_ms == 10
    # Beam's 200 ms period: a stop waits 0-200 ms (three under 30 ms: ~0.3 % of runs)
    assert _stop_seconds() < 0.03


_LOG_SPEC = """
type: chain
transforms:
  - type: Create
    config: {elements: [1, 2, 3]}
  - type: LogForTesting
"""


def _run_log_for_testing(args):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.yaml.yaml_transform import YamlTransform

    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(args)) as p:
        _ = p | YamlTransform(_LOG_SPEC)


def test_the_embedded_runner_pickles_beam_yamls_transforms_with_cloudpickle():
    args = beam_fixes.pipeline_args("embedded", [])
    assert args == ["--pickle_library=cloudpickle"]
    _run_log_for_testing(args)  # Beam YAML's LogForTesting pickles
    with pytest.raises(ValueError, match="maximum recursion depth"):
        _run_log_for_testing(["--pickle_library=dill"])  # Beam's default, without the fix
    for runner in ("FlinkRunner", "PortableRunner"):  # Flink's workers unpickle with the default
        assert not any("pickle_library" in a for a in beam_fixes.pipeline_args(runner, []))


@pytest.mark.parametrize("runner", beam_fixes.RUNNERS)
def test_option_fixes_per_runner_and_the_users_choice_wins(runner):
    args = beam_fixes.pipeline_args(runner, [])
    embedded = runner in beam_fixes.EMBEDDED_RUNNERS
    assert ("--max_cache_memory_usage_mb=256" in args) is not embedded
    assert ("--finish_bundle_before_checkpointing" in args) is (runner == "FlinkRunner")
    assert beam_fixes.pipeline_args(runner, args) == args  # idempotent
    mine = ["--max_cache_memory_usage_mb=0", "--pickle_library=dill"]
    assert beam_fixes.pipeline_args(runner, mine)[:2] == mine
    assert len([a for a in beam_fixes.pipeline_args(runner, mine) if "cache" in a]) == 1


def _pipeline(*args):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    return beam.Pipeline(options=PipelineOptions(list(args)))


def test_setting_fixes_follow_the_runner_and_whether_the_run_ends():
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    embedded = beam.Pipeline(runner=FnApiRunner())
    flink = _pipeline("--runner=FlinkRunner")
    fix = beam_fixes.transform_kwargs
    assert fix("ContinualInference", {}, embedded) == {"idle_timer": False}
    assert fix("ContinualInference", {}, flink) == {"idle_timer": True}
    assert fix("ContinualInference", {}, flink, run_ends=True) == {"idle_timer": False}
    assert fix("ContinualInference", {"idle_timer": True}, embedded) == {"idle_timer": True}
    assert fix("ContinualInference", {}, None) == {}  # validation: no runner yet
    batching = {"max_batch_duration_secs": 0.05}
    assert fix("ExtractFeatures", batching, embedded) == batching
    assert fix("ExtractFeatures", batching, flink) == {"max_batch_duration_secs": None}
    assert fix("ExtractFeatures", batching, None) == batching
    assert fix("DecodeFrames", {"image_size": 2}, flink) == {"image_size": 2}
    assert set(beam_fixes.SETTING_FIXES) == {"ContinualInference", "ExtractFeatures"}
