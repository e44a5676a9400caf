"""costream.models: continual attention, encoders, model zoo, FLOP counting (pure PyTorch).

Every ``nn.Module`` of costream lives here, and nothing here imports Beam or Kafka: the
transforms wrap these modules. A continual model is a :class:`ContinualModel`.

Example:
    >>> from costream.models import ContinualEncoder, get_model, input_major_
"""

from .attention import (
    ContinualRetroactiveAttention,
    ContinualSingleOutputAttention,
    MultiheadWeights,
)
from .audio import GtzanConfig
from .continual_nystrom import (
    ContinualNystromRetroactiveAttention,
    ContinualNystromSingleOutputAttention,
)
from .data import DataFormatError, OadDataset, Video, load_dataset
from .encoder import ContinualEncoder
from .flops import (
    continual_nystrom_macs,
    encoder_macs,
    gtzan_macs,
    measured_macs,
    nystrom_macs,
    oadtr_macs,
    vggish_macs,
)
from .logmel import LogMelOptions, LogMelSpectrogram
from .metrics import FrameMetrics, frame_metrics
from .nystrom import NystromOptions, parse_attention
from .nystrom_attention import NystromAttention, NystromMultiheadAttention
from .positional import RecyclingPositionalEncoding
from .protocol import ContinualModel
from .resnet import IdentityBackbone, ResNet, resnet18
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
    "NystromOptions",
    "parse_attention",
    # the zoo: online action detection models and their continual twins
    "ContinualModel",
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
    # frame backbones: the log-mel front-end and the ResNet feature extractor
    "IdentityBackbone",
    "LogMelOptions",
    "LogMelSpectrogram",
    "ResNet",
    "resnet18",
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
