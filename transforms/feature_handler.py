"""The backbone as a Beam ``ModelHandler``: batches of decoded frames -> features or failures.

:class:`FeatureModelHandler` is what ``RunInference`` runs inside
:class:`~costream.transforms.features.ExtractFeatures`; :func:`batch_features` is its forward
pass and :func:`record_features` the same path offline, without Beam (for training data).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler
from torch import nn

from costream.transforms.backbones import BackboneConfig
from costream.transforms.decode import decode_record
from costream.transforms.records import DecodedFrame, FeatureRecord, as_array, feature_record
from costream.transforms.subclips import SubclipAssembler

__all__ = [
    "METRICS_NAMESPACE",
    "FeatureModelHandler",
    "FeaturesDone",
    "FeaturesFailed",
    "batch_features",
    "record_features",
]

_LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = "costream.features"
"""Namespace of the feature stage's counters and of RunInference's metrics."""


class FeaturesFailed(NamedTuple):
    """A frame the backbone could not turn into features, and why (routed to dead letters)."""

    frame: DecodedFrame
    error: str


class FeaturesDone(NamedTuple):
    """A frame's features and its input's event time (batching re-stamps; routing restores it)."""

    record: FeatureRecord
    timestamp_us: int


class FeatureModelHandler(ModelHandler[DecodedFrame, Any, nn.Module]):
    """Beam ``ModelHandler``: batches of :class:`DecodedFrame` -> features (or failures).

    ``run_inference`` returns, per frame and in order, ``FeaturesDone(FeatureRecord, timestamp_us)`` or
    ``FeaturesFailed(frame, reason)``; :class:`ExtractFeatures` routes them.

    One backbone per worker process (Beam's shared handle; across processes too when
    ``share_across_processes``), built in ``load_model`` after ``torch.set_num_threads``. Frames
    that do not fit the backbone, and frames whose features are not finite, come back as failures
    (never as exceptions), so one bad frame never fails its batch; if the batched forward raises,
    the batch is retried frame by frame to isolate the culprit.
    """

    def __init__(
        self,
        config: BackboneConfig,
        *,
        min_batch_size: int = 1,
        max_batch_size: int = 16,
        max_batch_duration_secs: float | None = None,
        num_threads: int = 1,
        share_across_processes: bool = False,
    ) -> None:
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"Need 1 <= min_batch_size <= max_batch_size, got {min_batch_size} and {max_batch_size}."
            )
        if max_batch_duration_secs is not None and not max_batch_duration_secs > 0:
            raise ValueError(
                f"max_batch_duration_secs must be positive (or None), got {max_batch_duration_secs}."
            )
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}.")
        super().__init__()
        # BatchElements options via batch_elements_kwargs (Beam 2.62's ModelHandler takes no
        # constructor arguments)
        self._batching: dict[str, Any] = {
            "min_batch_size": min_batch_size,
            "max_batch_size": max_batch_size,
        }
        if max_batch_duration_secs is not None:
            self._batching["max_batch_duration_secs"] = max_batch_duration_secs
        self.config = config
        self._num_threads = num_threads
        self._share = share_across_processes

    def load_model(self) -> nn.Module:
        torch.set_num_threads(self._num_threads)
        model = self.config.build()
        _LOG.info("Loaded backbone %s", self.config.identity())
        return model

    def share_model_across_processes(self) -> bool:
        return self._share

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return dict(self._batching)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def get_num_bytes(self, batch: Sequence[DecodedFrame]) -> int:
        return int(sum(len(f.data.data) for f in batch))

    def run_inference(
        self,
        batch: Sequence[DecodedFrame],
        model: nn.Module,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[FeaturesDone | FeaturesFailed]:
        out: list[FeaturesDone | FeaturesFailed | None] = [None] * len(batch)
        fit: list[int] = []
        for i, frame in enumerate(batch):
            reason = self.config.check(frame)
            if reason is None:
                fit.append(i)
            else:
                out[i] = FeaturesFailed(frame, reason)
        if self.config.kind == "features":  # identity: per record, dims may differ
            groups = [[i] for i in fit]
        else:
            groups = [fit] if fit else []
        for group in groups:
            for i, result in zip(group, self._forward(model, [batch[i] for i in group])):
                out[i] = result
        return out  # type: ignore[return-value]

    def _forward(
        self, model: nn.Module, frames: list[DecodedFrame]
    ) -> list[FeaturesDone | FeaturesFailed]:
        try:
            if torch.get_num_threads() != self._num_threads:  # the thread count is per process:
                torch.set_num_threads(self._num_threads)  # other stages (inference) set theirs
            feats = batch_features(model, [as_array(f.data) for f in frames])  # (B, D)
        except Exception as err:
            if len(frames) == 1:
                return [
                    FeaturesFailed(frames[0], f"The backbone failed: {type(err).__name__}: {err}")
                ]
            _LOG.warning("Batched backbone forward failed (%s); retrying frame by frame.", err)
            return [r for f in frames for r in self._forward(model, [f])]
        results: list[FeaturesDone | FeaturesFailed] = []
        for f, vec in zip(frames, feats):
            if not np.isfinite(vec).all():
                results.append(
                    FeaturesFailed(
                        f,
                        f"The backbone produced {int((~np.isfinite(vec)).sum())} non-finite feature values.",
                    )
                )
                continue
            results.append(FeaturesDone(feature_record(f, vec), f.timestamp_us))
        return results


def batch_features(model: nn.Module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Stack same-shaped inputs, run the backbone, return ``float32`` (B, D) (one copy per row).

    A lone input runs as a pair (itself twice): oneDNN picks another convolution kernel for a
    batch of one, whose features differ in the 6th digit, while every batch of two or more gives
    each input bitwise the same features. So an input's features do not depend on how the
    stream's batching happened to group it, and streaming scores equal ``costream score``'s.
    """
    if len(arrays) == 1:
        return batch_features(model, arrays * 2)[:1]
    x = torch.from_numpy(np.stack(arrays))  # (B, ...) uint8 images / float32 chunks or vectors
    with torch.inference_mode():
        y = model(x)  # (B, D)
    return [row.copy() for row in y.float().numpy()]  # own memory per record: no shared buffer


def record_features(
    net: nn.Module, cfg: BackboneConfig, records: Iterable[Any], batch_size: int = 64
) -> np.ndarray:
    """(T, D) features of stream-contract records (``key, value, headers``), offline.

    The pipeline's own path without Beam: ``decode_record`` (decode, resize to the backbone's
    input), the backbone config's input check, then ``net`` (``cfg.build()``) in batches. For
    training on exactly what a spec's ``ExtractFeatures`` step will produce. Backbones that take
    sub-clips (``vggish``) assemble them per stream in record order, as the pipeline does.

    Raises:
        ValueError: a record does not decode or does not fit the backbone (the reason says why).
    """
    decoded = []
    assembler = None
    if cfg.subclip_samples is not None:
        assert cfg.chunk_samples is not None  # a backbone with sub-clips has chunks
        assembler = SubclipAssembler(cfg.chunk_samples, cfg.subclip_samples)
    history: dict[str, bytes | None] = {}
    for rec in records:
        f = decode_record(rec.key, rec.value, rec.headers, image_size=cfg.image_size, now_ms=0)
        reason = cfg.check(f) if assembler is None else cfg.check_chunk(f)
        if reason is not None:
            raise ValueError(reason)
        x = as_array(f.data)
        if assembler is not None:
            blob, x, _ = assembler.process(history.get(f.stream_id), f.frame_index, f.ts_ms, x)
            history[f.stream_id] = blob if blob is not None else history.get(f.stream_id)
        decoded.append(x)
    rows = []
    for s in range(0, len(decoded), batch_size):
        rows.extend(batch_features(net, decoded[s : s + batch_size]))
    return np.stack(rows).astype(np.float32)
