"""``ExtractFeatures``: Kafka records -> decoded, batched backbone features, plus dead letters.

:class:`ExtractFeatures` = ``DecodeFrames`` -> (``vggish``: ``AssembleSubclips``) -> Beam
``RunInference`` with :class:`~costream.transforms.feature_handler.FeatureModelHandler` (bounded
batch size and batching delay, one model per worker process, ``torch.set_num_threads``) ->
routing. Its outputs: ``main`` (:class:`~costream.transforms.records.FeatureRecord` rows) and
``dead_letter`` (:class:`~costream.connectors.contract.DeadLetter` rows, stage ``decode`` or
``features``). The backbones and their options are :mod:`costream.transforms.backbones`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, cast

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import RunInference
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner, SwitchingDirectRunner

from costream.connectors import contract
from costream.connectors.contract import DEFAULT_MAX_PIXELS, DeadLetter
from costream.models.logmel import LogMelOptions
from costream.transforms.backbones import BackboneConfig
from costream.transforms.counters import Counter
from costream.transforms.decode import DecodeFrames, _DecodeDoFn
from costream.transforms.feature_handler import (
    METRICS_NAMESPACE,
    FeatureModelHandler,
    FeaturesDone,
    FeaturesFailed,
)
from costream.transforms.records import (
    DEAD_LETTER,
    MAIN,
    DecodedFrame,
    FeatureRecord,
    TaggedOutputs,
    to_dead_letter,
    typed_outputs,
)
from costream.transforms.restamp import restamp
from costream.transforms.subclips import AssembleSubclips

__all__ = ["ExtractFeatures"]

_LOG = logging.getLogger(__name__)


class _RouteFeatures(beam.DoFn):
    """RunInference outcomes -> ``main`` FeatureRecords and ``dead_letter`` rows (features)."""

    def __init__(self) -> None:
        self._ok = Counter(METRICS_NAMESPACE, "features")
        self._dead = Counter(METRICS_NAMESPACE, "features_dead_letters")

    def process(
        self,
        outcome: FeaturesDone | FeaturesFailed,
        timestamp: Any = beam.DoFn.TimestampParam,
        window: Any = beam.DoFn.WindowParam,
    ) -> Iterator[Any]:
        if isinstance(outcome, FeaturesFailed):
            self._dead.inc()
            dead = to_dead_letter(outcome.frame, outcome.error, "features")
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, restamp(dead, outcome.frame.timestamp_us, timestamp, window)
            )
        else:
            self._ok.inc()
            yield restamp(outcome.record, outcome.timestamp_us, timestamp, window)


class _DecodeIdentity(_DecodeDoFn):
    """``DecodeFrames`` and the ``identity`` backbone as one Beam step: one element less per record.

    For ``identity`` a record's decoded vector is its feature vector, so there is no model and
    no batching. The same outputs and counters as the two steps would give: a record that does
    not decode is a dead letter of stage ``decode`` (counted by the decoder); the identity
    backbone returns its input as float32, which a decoded features record already is (a vector
    with non-finite values never passes decoding), so a record of another kind or width is a
    dead letter of stage ``features`` and any other a :class:`FeatureRecord` on ``main``.
    """

    def __init__(self, config: BackboneConfig, max_payload_bytes: int, max_pixels: int) -> None:
        super().__init__(None, max_payload_bytes, max_pixels)
        self.config = config
        self._ok = Counter(METRICS_NAMESPACE, "features")
        self._dead_features = Counter(METRICS_NAMESPACE, "features_dead_letters")

    def then(self, frame: DecodedFrame) -> Any:
        reason = self.config.check(frame)
        if reason is None and np.dtype(frame.data.dtype) != np.float32:
            reason = f"Backbone 'identity' takes float32 features; got {frame.data.dtype}."
        if reason is not None:
            self._dead_features.inc()
            return beam.pvalue.TaggedOutput(DEAD_LETTER, to_dead_letter(frame, reason, "features"))
        self._ok.inc()
        # decode_record's own frame: its headers are Header rows and its arrival an int, so
        # feature_record's conversions are not needed
        return FeatureRecord(
            frame.stream_id, frame.frame_index, frame.ts_ms, frame.data, frame.arrival_ms,
            frame.key, frame.value, frame.headers,
        )  # fmt: skip


class FeaturesFailedBatchToDeadLetters(beam.DoFn):
    """A batch RunInference itself failed on -> one dead letter per frame (stage features).

    Beam's dead-letter element is ``(batch, (exception type, repr(exception), traceback))``.
    """

    def __init__(self) -> None:
        self._dead = Counter(METRICS_NAMESPACE, "features_dead_letters")

    def process(
        self,
        failed: tuple[Any, Any],
        timestamp: Any = beam.DoFn.TimestampParam,
        window: Any = beam.DoFn.WindowParam,
    ) -> Iterator[Any]:
        batch, (_, exc_repr, _) = failed
        self._dead.inc(len(batch))
        for frame in batch:
            dead = to_dead_letter(
                frame,
                f"The backbone failed on a batch of {len(batch)} frames: {exc_repr}",
                "features",
            )
            yield restamp(dead, frame.timestamp_us, timestamp, window)


# Beam's DirectRunner (SwitchingDirectRunner) runs a pipeline with processing-time timers, such
# as stateful batching's, on the BundleBasedDirectRunner.
_BUNDLE_BASED_RUNNERS = (BundleBasedDirectRunner, SwitchingDirectRunner)


def _payload_limit(value: int) -> int:
    """``max_payload_bytes``, checked to be a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"max_payload_bytes must be a positive whole number of bytes, e.g. 1048576 for 1 MiB; "
            f"got {value!r}."
        )
    return value


class ExtractFeatures(beam.PTransform):
    """Kafka records -> decoded, batched backbone features per frame, plus dead letters.

    Steps: ``Decode`` (:class:`~costream.transforms.decode.DecodeFrames`, images resized to the
    backbone's input size) -> for ``vggish`` only, ``Subclips``
    (:class:`~costream.transforms.subclips.AssembleSubclips`: each stream's last 1 s, one per
    0.25 s chunk, the previous 0.75 s in keyed state) -> ``Backbone`` (Beam ``RunInference`` with
    :class:`FeatureModelHandler`: batches of ``min_batch_size..batch_size`` frames, across
    streams, waiting at most ``max_batch_duration_secs`` for a batch to fill) -> ``Route``. For
    ``identity`` (precomputed features) the decoded vector is the feature vector: one ``Identity``
    step checks it and passes it on, with no model and no batching.

    Outputs (a :class:`~costream.transforms.records.TaggedOutputs` dict; also ``out.main`` …):

    * ``main``: :class:`~costream.transforms.records.FeatureRecord`, one per good input record,
      carrying stream id, frame index, ts_ms, arrival_ms, the original record and
      ``features`` (``float32`` (D,), D = :attr:`feature_dim`, as an
      :class:`~costream.transforms.records.NdArray` row: ``as_array`` reads it);
    * ``dead_letter``: :class:`~costream.connectors.contract.DeadLetter` rows (original
      key/value/headers + ``error`` and ``stage``: ``decode`` for records that break the
      contract, ``features`` for records the backbone cannot take: wrong kind, size or rate,
      non-finite output, a failed forward).

    Counters (namespace ``costream.features``; also in
    :func:`costream.transforms.counters.snapshot`): ``features`` and ``features_dead_letters``
    (records the backbone could not take; the decode step counts its own, see ``DecodeFrames``).

    Every input record yields exactly one element on one of the two outputs. Its timestamp is
    the input's event time, or the batch's timestamp where that is later (see :func:`~costream.transforms.restamp.restamp`: a
    batch flushed at the end of a bounded input is stamped with the window's end).

    Args:
        backbone: ``resnet18``, ``resnet18_small``, ``logmel``, ``vggish`` or ``identity``.
        weights: see :class:`~costream.transforms.backbones.BackboneConfig` (ResNets and ``vggish``: a safetensors path or
            ``"random"``).
        batch_size: the largest batch; ``min_batch_size`` the smallest Beam aims for.
        max_batch_duration_secs: longest wait for a batch to fill (stateful batching across
            bundles, for streams); None batches within a bundle only. Ignored, with a logged
            warning, on Beam's ``DirectRunner`` / ``BundleBasedDirectRunner``: that runner hands
            the batch flushed at the end of a bounded input downstream after a ``GroupByKey``
            there has already emitted its final result, so those records are lost (Beam 2.77).
            costream's embedded runner is the FnApiRunner, which batches across bundles without
            loss.
        num_threads: torch intra-op threads per worker process.
        share_across_processes: one model per machine instead of per process.
        seed, width, input_size, dim: the :class:`~costream.transforms.backbones.BackboneConfig`
            fields of the same names (each used by one family only).
        rate, n_mels, patch, hop_length, win_length, n_fft: the
            :class:`~costream.models.logmel.LogMelOptions` of ``BackboneConfig.logmel`` (flat
            here, as the YAML spec's keys are).
        max_payload_bytes: the largest record value accepted; a larger one is dead-lettered at
            stage ``decode`` with a reason that names both sizes, before any decoding.

    Example:
        >>> out = records | "Features" >> ExtractFeatures("resnet18_small", weights="random")  # doctest: +SKIP
        >>> features, dead = out["main"], out["dead_letter"]  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        weights: str | None = None,
        *,
        batch_size: int = 16,
        min_batch_size: int = 1,
        max_batch_duration_secs: float | None = 0.05,
        num_threads: int = 1,
        share_across_processes: bool = False,
        seed: int = 0,
        width: float | None = None,
        input_size: int | Sequence[int] | None = None,
        rate: int = 16000,
        n_mels: int = 64,
        patch: int = 8,
        hop_length: int = 160,
        win_length: int = 400,
        n_fft: int = 512,
        dim: int | None = None,
        max_payload_bytes: int = contract.DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        super().__init__()
        self.max_payload_bytes = _payload_limit(max_payload_bytes)
        self.config = BackboneConfig(
            backbone,
            weights,
            seed=seed,
            width=width,
            # a sequence's length is checked by BackboneConfig (image_size_hw)
            input_size=input_size
            if input_size is None or isinstance(input_size, int)
            else cast("tuple[int, int]", tuple(input_size)),
            logmel=LogMelOptions(
                rate=rate,
                n_mels=n_mels,
                patch=patch,
                hop_length=hop_length,
                win_length=win_length,
                n_fft=n_fft,
            ),
            dim=dim,
        )
        self._handler_kwargs: dict[str, Any] = {
            "min_batch_size": min_batch_size,
            "max_batch_size": batch_size,
            "max_batch_duration_secs": max_batch_duration_secs,
            "num_threads": num_threads,
            "share_across_processes": share_across_processes,
        }
        self.handler = FeatureModelHandler(self.config, **self._handler_kwargs)

    @property
    def feature_dim(self) -> int | None:
        """D of the ``main`` features (None for ``identity`` without ``dim``)."""
        return self.config.feature_dim

    def _handler_for(self, pipeline: beam.Pipeline) -> FeatureModelHandler:
        """The model handler, without stateful batching on Beam's bundle-based DirectRunner."""
        if self._handler_kwargs["max_batch_duration_secs"] is None or not isinstance(
            pipeline.runner, _BUNDLE_BASED_RUNNERS
        ):
            return self.handler
        _LOG.warning(
            "ExtractFeatures: %s runs Beam's stateful batching on its bundle-based runner, which "
            "delivers the batch flushed at the end of the input after downstream grouping has "
            "closed, so those records would be lost; batching within bundles instead "
            "(max_batch_duration_secs ignored). Use the FnApiRunner (costream run does) to batch "
            "across bundles.",
            type(pipeline.runner).__name__,
        )
        return FeatureModelHandler(
            self.config, **{**self._handler_kwargs, "max_batch_duration_secs": None}
        )

    def expand(self, pcoll: beam.PCollection) -> TaggedOutputs:
        if self.config.kind == "features":
            # identity: decoding and the backbone's checks in one step (nothing to batch or run)
            return typed_outputs(
                pcoll
                | "DecodeFeatures"
                >> beam.ParDo(
                    _DecodeIdentity(self.config, self.max_payload_bytes, DEFAULT_MAX_PIXELS)
                )
                .with_output_types(FeatureRecord)
                .with_outputs(DEAD_LETTER, main=MAIN)
            )
        decoded = pcoll | "Decode" >> DecodeFrames(
            image_size=self.config.image_size, max_payload_bytes=self.max_payload_bytes
        )
        frames, dead_frames = decoded[MAIN], [decoded[DEAD_LETTER]]
        if self.config.subclip_samples is not None:  # vggish: each stream's last 1 s
            assert self.config.chunk_samples is not None  # a backbone with sub-clips has chunks
            subclips = frames | "Subclips" >> AssembleSubclips(
                self.config.chunk_samples, self.config.subclip_samples, self.config.check_chunk
            )
            frames = subclips[MAIN]
            dead_frames.append(subclips[DEAD_LETTER])
        handler = self._handler_for(pcoll.pipeline)
        outcomes, failed = frames | "Backbone" >> RunInference(handler).with_exception_handling()
        routed = typed_outputs(
            outcomes
            | "Route"
            >> beam.ParDo(_RouteFeatures())
            .with_output_types(FeatureRecord)
            .with_outputs(DEAD_LETTER, main=MAIN)
        )
        failed_batches = failed.failed_inferences | "FailedBatches" >> beam.ParDo(
            FeaturesFailedBatchToDeadLetters()
        ).with_output_types(DeadLetter)
        dead = (
            *dead_frames,
            routed[DEAD_LETTER],
            failed_batches,
        ) | "DeadLetters" >> beam.Flatten().with_output_types(DeadLetter)
        return TaggedOutputs({MAIN: routed[MAIN], DEAD_LETTER: dead})
