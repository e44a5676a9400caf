"""costream.transforms: Beam transforms from Kafka records to detections.

The main entry points, re-exported lazily so that ``import costream.transforms`` stays cheap
(torch and Beam load on first use, as in :mod:`costream.connectors`):

- :mod:`~costream.transforms.decode`: ``DecodeFrames``, ``decode_record``;
- :mod:`~costream.transforms.features`: ``ExtractFeatures`` (RunInference);
- :mod:`~costream.transforms.backbones`: ``BackboneConfig``, ``BACKBONES``;
- :mod:`~costream.transforms.feature_handler`: ``FeatureModelHandler``;
- :mod:`~costream.transforms.subclips`: ``AssembleSubclips`` and the plain ``SubclipAssembler``
  (each stream's last 1 s from 0.25 s chunks, for the ``vggish`` backbone);
- :mod:`~costream.transforms.inference`: ``ContinualInference`` (each stream's continual state in
  Beam keyed state) and its one-stream DoFn; :mod:`~costream.transforms.batching`: the
  cross-stream batching DoFn; :mod:`~costream.transforms.stepper`: the plain per-stream state
  update ``StreamStepper`` both use (its many-streams step in
  :mod:`~costream.transforms.many_streams`); :mod:`~costream.transforms.stored`: the state cells;
- :mod:`~costream.transforms.records`: the records between stages and the output tags.

Example:
    >>> from costream.transforms import ContinualInference, ExtractFeatures
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DecodeFrames": "decode",
    "decode_record": "decode",
    "ExtractFeatures": "features",
    "BackboneConfig": "backbones",
    "FeatureModelHandler": "feature_handler",
    "BACKBONES": "backbones",
    "AssembleSubclips": "subclips",
    "SubclipAssembler": "subclips",
    "ContinualInference": "inference",
    "ContinualInferenceFn": "inference",
    "GapPolicy": "steps",
    "StepResult": "steps",
    "StreamStepper": "stepper",
    "iter_detections": "stepper",
    "load_stepper": "stepper",
    "DecodedFrame": "records",
    "FeatureRecord": "records",
    "TaggedOutputs": "records",
    "MAIN": "records",
    "DEAD_LETTER": "records",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'costream.transforms' has no attribute {name!r}")
    return getattr(importlib.import_module(f"costream.transforms.{module}"), name)


def __dir__() -> list[str]:
    return list(__all__)
