"""costream.transforms."""

# Lazy exports (torch and Beam load on first use), as in costream.connectors.
import importlib as _importlib
from typing import Any as _Any

_EXPORTS = {
    "DecodeFrames": "decode",
    "decode_record": "decode",
    "ExtractFeatures": "backbones",
    "BackboneConfig": "backbones",
    "FeatureModelHandler": "backbones",
    "BACKBONES": "backbones",
    "LogMelSpectrogram": "audio_features",
    "DecodedFrame": "records",
    "FeatureRecord": "records",
    "TaggedOutputs": "records",
    "MAIN": "records",
    "DEAD_LETTER": "records",
}


def __getattr__(name: str) -> _Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'costream.transforms' has no attribute {name!r}")
    return getattr(_importlib.import_module(f"costream.transforms.{module}"), name)
