"""costream.models: continual attention, encoders, model zoo, FLOP counting (pure PyTorch)."""

from .attention import (
    ContinualRetroactiveAttention,
    ContinualSingleOutputAttention,
    MultiheadWeights,
)
from .encoder import ContinualEncoder
from .flops import encoder_macs, measured_macs, oadtr_macs
from .positional import RecyclingPositionalEncoding
from .state import StateFormatError, StreamState
from .weights import WeightsError, input_major_, load_weights, save_weights, weights_sha256

__all__ = [
    "ContinualEncoder",
    "ContinualRetroactiveAttention",
    "ContinualSingleOutputAttention",
    "MultiheadWeights",
    "RecyclingPositionalEncoding",
    "StateFormatError",
    "StreamState",
    "WeightsError",
    "encoder_macs",
    "input_major_",
    "load_weights",
    "measured_macs",
    "oadtr_macs",
    "save_weights",
    "weights_sha256",
]

from .nystrom import (  # noqa: E402  (issue 5: continual Nyström attention)
    ContinualNystromRetroactiveAttention,
    ContinualNystromSingleOutputAttention,
    NystromAttention,
    NystromMultiheadAttention,
    continual_nystrom_macs,
    nystrom_macs,
    parse_attention,
)

__all__ += [
    "ContinualNystromRetroactiveAttention",
    "ContinualNystromSingleOutputAttention",
    "NystromAttention",
    "NystromMultiheadAttention",
    "continual_nystrom_macs",
    "nystrom_macs",
    "parse_attention",
]

from .data import DataFormatError, OadDataset, Video, load_dataset  # noqa: E402  (issue 4: zoo)
from .metrics import FrameMetrics, frame_metrics  # noqa: E402
from .zoo import (  # noqa: E402
    ContinualOnlineTransformer,
    OnlineTransformer,
    StepOutput,
    continual_from_regular,
    get_model,
    list_models,
    load_model,
    macs_per_frame,
    save_model,
)

__all__ += [
    "ContinualOnlineTransformer",
    "DataFormatError",
    "FrameMetrics",
    "OadDataset",
    "OnlineTransformer",
    "StepOutput",
    "Video",
    "continual_from_regular",
    "frame_metrics",
    "get_model",
    "list_models",
    "load_dataset",
    "load_model",
    "macs_per_frame",
    "save_model",
]
