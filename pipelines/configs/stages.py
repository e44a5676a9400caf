"""The config dataclasses of costream's stage types: decode, features, continual inference.

Each has a dead-letter output, so each requires ``error_handling: {output: NAME}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from costream.models.logmel import LogMelOptions

from .fields import ERROR_HANDLING_DOC, MIB
from .fields import key as _key

__all__ = ["ContinualInferenceConfig", "DecodeFramesConfig", "ExtractFeaturesConfig"]

_LOGMEL = LogMelOptions()  # the one definition of the log-mel settings' defaults


@dataclass(frozen=True, kw_only=True)
class DecodeFramesConfig:
    """Decode records of the stream contract into frames (images, audio chunks, features)."""

    image_size: int | list[int] | None = _key(
        "Resize images to this size: one int or [height, width]; null: as they are.", None
    )
    max_payload_bytes: int = _key(
        "A larger record value is a dead letter (stage `decode`).", 16 * MIB
    )
    max_pixels: int = _key(
        "An image with more pixels (read from its header) is a dead letter.", 8192 * 8192
    )
    error_handling: dict[str, str] = _key(ERROR_HANDLING_DOC)


@dataclass(frozen=True, kw_only=True)
class ExtractFeaturesConfig:
    """Decode records and turn each frame into backbone features, batched across streams."""

    backbone: str = _key(
        "`resnet18`, `resnet18_small`, `logmel` (audio), `vggish` (audio: 0.25 s chunks, each "
        "stream's last 1 s embedded; docs/audio-setting.md) or `identity` (features).",
        "resnet18",
    )
    weights: str | None = _key(
        "ResNets and `vggish`: a safetensors file (a relative path is looked up in the working "
        "directory, then in costream's package) or `random` (seeded, demos and tests); others: "
        "null.",
        None,
        path=True,
    )
    batch_size: int = _key("The largest batch.", 16)
    min_batch_size: int = _key("The smallest batch Beam aims for.", 1)
    max_batch_duration_secs: float | None = _key(
        "Longest wait for a batch to fill, across bundles; null: batch within a bundle. On a "
        "distributed runner (Flink) batches stay within a bundle, which keeps each stream's "
        "order across restores.",
        0.05,
    )
    num_threads: int = _key("torch intra-op threads per worker process.", 1)
    share_across_processes: bool = _key("One model per machine instead of per process.", False)
    seed: int = _key("Seed of `weights: random`.", 0)
    width: float | None = _key("ResNet width multiplier; null: by name (1.0, small: 0.25).", None)
    input_size: int | list[int] | None = _key(
        "ResNet input size, one int or [height, width]; null: by name (224, small: 112).", None
    )
    # the log-mel keys: LogMelOptions' fields, flat, with its defaults
    rate: int = _key("`logmel`: sample rate in Hz; `vggish`: 16000 only.", _LOGMEL.rate)
    n_mels: int = _key("`logmel`: mel bins.", _LOGMEL.n_mels)
    patch: int = _key("`logmel`: spectrogram frames per token (one chunk).", _LOGMEL.patch)
    hop_length: int = _key("`logmel`: samples between spectrogram frames.", _LOGMEL.hop_length)
    win_length: int = _key("`logmel`: window length in samples.", _LOGMEL.win_length)
    n_fft: int = _key("`logmel`: FFT size.", _LOGMEL.n_fft)
    dim: int | None = _key("`identity`: the feature size records must have; null: any.", None)
    max_payload_bytes: int = _key(
        "A larger record value is a dead letter (stage `decode`).", 16 * MIB
    )
    error_handling: dict[str, str] = _key(ERROR_HANDLING_DOC)


@dataclass(frozen=True, kw_only=True)
class ContinualInferenceConfig:
    """Run a continual model over each stream's features, one step per frame, state in Beam."""

    weights: str = _key(
        "The model's safetensors file (its card names the model); a relative path is looked up "
        "in the working directory, then in costream's package.",
        path=True,
    )
    gap_policy: Literal["reset", "fill"] = _key(
        "A missing frame is held from the previous one (`fill`, up to `max_fill`) or resets the "
        "stream (`reset`).",
        "fill",
    )
    max_fill: int | None = _key(
        "Largest gap `fill` bridges, in frames; null: the default (8).", None
    )
    idle_timeout_s: float | None = _key(
        "Clear a stream's state after this many seconds without a frame; null: keep it.", 600.0
    )
    idle_timer: bool | None = _key(
        "Enforce `idle_timeout_s` with a processing-time timer (true) or as a TTL checked on "
        "the next frame plus a sweep (false). null: the timer on distributed runners (Flink), "
        "the TTL on the in-process runner, whose timers fire right after their bundle.",
        None,
    )
    max_jump: int = _key("A forward jump of more frames starts a new stream epoch.", 2**32)
    batch_streams: bool = _key(
        "Step many streams' frames in one batched model call (rows sharded by stream id over "
        "`shards` keys); false: one stream per step.",
        False,
    )
    shards: int = _key("With `batch_streams`: the number of shard keys.", 16)
    max_batch: int = _key(
        "With `batch_streams`: the most rows (streams) of one model step; on Flink also the most "
        "frames (rows x rounds) of a group.",
        64,
    )
    max_delay_ms: float | Literal["auto"] | None = _key(
        "With `batch_streams`: the longest a frame waits for its group to fill under traffic, "
        "in ms; null: groups are cut at the end of a bundle only (on Flink also at `max_batch` "
        "frames): wider model steps, more latency. `auto`: 20 ms on distributed runners "
        "(Flink); null in process, where the reader ends a bundle once caught up "
        "(docs/batching.md).",
        "auto",
    )
    state_dtype: Literal["float32", "float16", "bfloat16"] = _key(
        "Precision of each stream's stored state; the model computes in its own dtype.", "float32"
    )
    error_handling: dict[str, str] = _key(ERROR_HANDLING_DOC)
