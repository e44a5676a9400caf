"""costream.models: continual attention, encoders, model zoo, FLOP counting (pure PyTorch).

Example:
    >>> from costream.models import ContinualEncoder, get_model, input_major_
"""

from .attention import (
    ContinualRetroactiveAttention,
    ContinualSingleOutputAttention,
    MultiheadWeights,
)
from .audio import GtzanConfig
from .data import DataFormatError, OadDataset, Video, load_dataset
from .encoder import ContinualEncoder
from .flops import encoder_macs, gtzan_macs, measured_macs, oadtr_macs, vggish_macs
from .metrics import FrameMetrics, frame_metrics
from .nystrom import (
    ContinualNystromRetroactiveAttention,
    ContinualNystromSingleOutputAttention,
    NystromAttention,
    NystromMultiheadAttention,
    continual_nystrom_macs,
    nystrom_macs,
    parse_attention,
)
from .positional import RecyclingPositionalEncoding
from .state import StateFormatError, StreamState
from .vggish import (
    VGGish,
    VGGishConfig,
    VGGishFrontEnd,
    load_vggish,
    log_mel_patch,
    save_vggish,
    vggish_patches,
)
from .weights import WeightsError, input_major_, load_weights, save_weights, weights_sha256
from .zoo import (
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

__all__ = [
    # continual attention (single-output, retroactive) and the encoder built from it
    "ContinualEncoder",
    "ContinualRetroactiveAttention",
    "ContinualSingleOutputAttention",
    "MultiheadWeights",
    "RecyclingPositionalEncoding",
    # continual Nystrom attention
    "ContinualNystromRetroactiveAttention",
    "ContinualNystromSingleOutputAttention",
    "NystromAttention",
    "NystromMultiheadAttention",
    "parse_attention",
    # the zoo: online action detection models and their continual twins
    "ContinualOnlineTransformer",
    "OnlineTransformer",
    "StepOutput",
    "continual_from_regular",
    "get_model",
    "list_models",
    "load_model",
    "save_model",
    # the papers' GTZAN audio setting: its config and the VGGish front-end (PCM -> 128-d tokens)
    "GtzanConfig",
    "VGGish",
    "VGGishConfig",
    "VGGishFrontEnd",
    "load_vggish",
    "log_mel_patch",
    "save_vggish",
    "vggish_patches",
    # data, metrics, MACs
    "DataFormatError",
    "FrameMetrics",
    "OadDataset",
    "Video",
    "continual_nystrom_macs",
    "encoder_macs",
    "frame_metrics",
    "gtzan_macs",
    "load_dataset",
    "macs_per_frame",
    "measured_macs",
    "nystrom_macs",
    "oadtr_macs",
    "vggish_macs",
    # state and weights I/O
    "StateFormatError",
    "StreamState",
    "WeightsError",
    "input_major_",
    "load_weights",
    "save_weights",
    "weights_sha256",
]
