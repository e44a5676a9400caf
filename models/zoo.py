"""Model zoo: CoOadTR, audio classifiers, regular and continual twins, plus model files.

Every zoo model is one network (docs/continual-attention.md#the-oad-model-and-its-protocol)::

    x_t (D_in) -> token embedding (Linear; audio: conv front-end) -> + recycling PE(arrival t)
               -> Transformer encoder (1 or 2 post-norm GELU blocks, bias-free MHA) -> LayerNorm
               -> Linear head -> class logits of frame t (read at the newest token)

in two forms with identical weights and identical ``state_dict`` keys:

* :class:`OnlineTransformer` (regular, ``oadtr_b1``, ``audio_b2`` …): ``model(window, start)``
  scores the newest frame of each (B, n, D_in) window. The training path and the oracle.
* :class:`ContinualOnlineTransformer` (``co_oadtr_b1`` …): ``model.step(x, state)`` takes one
  frame feature per stream and returns :class:`StepOutput` ``(scores (B, C), warm (B,))``. Built
  from the regular twin by :func:`continual_from_regular` (or ``regular.to_continual()``).

Positional phase: stream row b's token gets ``PE[state.t[b] % M]`` where ``state.t[b]`` counts its
tokens since start/reset, so after a step with ``warm[b]`` the scores equal
``regular(window, start=t_b - n)`` on that stream's last n frames (``t_b`` read after the step).

Scores are logits; the evaluation protocols apply their own softmax (models/metrics.py).

Registry: :func:`get_model` (``name`` + config overrides), :func:`list_models`; a new entry is one
:func:`register_model` call. Files: :func:`save_model` writes safetensors (config in the metadata)
and a JSON card beside it; :func:`load_model` rebuilds the model from the file alone.

Example:
    >>> m = get_model("co_oadtr_b1", d_in=16, d_model=32, window=4, heads=2, ffn=32, classes=3)
    >>> state = m.init_state(batch_size=2)
    >>> out, state = m.step(torch.randn(2, 16), state)
    >>> out.scores.shape, out.warm.tolist()
    (torch.Size([2, 3]), [False, False])
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from safetensors import safe_open
from torch import Tensor, nn

from .audio import GTZAN_GENRES, AudioConfig, GtzanConfig
from .data import THUMOS14_CLASSES
from .encoder import ContinualEncoder
from .nystrom import NystromMultiheadAttention, parse_attention
from .positional import RecyclingPositionalEncoding
from .state import StreamState
from .weights import WeightsError, input_major_, load_weights, save_weights, weights_sha256

__all__ = [
    "FAMILIES",
    "AudioConfig",
    "GtzanConfig",
    "ContinualOnlineTransformer",
    "ModelConfig",
    "OadTRConfig",
    "OnlineTransformer",
    "StepOutput",
    "continual_from_regular",
    "card_path",
    "get_model",
    "list_models",
    "load_model",
    "macs_per_frame",
    "make_config",
    "model_info",
    "read_card",
    "register_model",
    "save_model",
]

CARD_FORMAT = "costream.model/1"


@dataclass(frozen=True)
class OadTRConfig:
    """CoOadTR configuration (paper defaults: docs/continual-attention.md#the-oad-model-and-its-protocol)."""

    d_in: int = 3072
    d_model: int = 1024
    window: int = 64
    heads: int = 8
    ffn: int = 1024
    blocks: int = 1
    classes: int = 22
    pe_size: int = 127
    pe_learned: bool = False
    dropout: float = 0.1
    attention: str = "softmax"

    family: ClassVar[str] = "oadtr"

    def make_embedding(self) -> nn.Module:
        """Token embedding of this family: ``Linear(D_in -> d)`` ("linear_encoding")."""
        return nn.Linear(self.d_in, self.d_model)

    def embedding_macs(self) -> int:
        """Multiply-accumulates of the embedding per token."""
        return self.d_in * self.d_model


ModelConfig = OadTRConfig | AudioConfig | GtzanConfig
FAMILIES: dict[str, type] = {"oadtr": OadTRConfig, "audio": AudioConfig, "gtzan": GtzanConfig}
DEFAULT_CLASSES: dict[str, list[str]] = {
    "oadtr": THUMOS14_CLASSES,
    "audio": GTZAN_GENRES,
    "gtzan": GTZAN_GENRES,
}


class StepOutput(NamedTuple):
    """One continual step: ``scores`` (B, C) logits, ``warm`` (B,) True once a row is exact."""

    scores: Tensor
    warm: Tensor


def _check_config(cfg: ModelConfig) -> None:
    if cfg.d_model % cfg.heads:
        raise ValueError(f"d_model={cfg.d_model} must be divisible by heads={cfg.heads}.")
    if cfg.blocks < 1 or cfg.window < 1 or cfg.classes < 1:
        raise ValueError(f"blocks, window and classes must be positive, got {cfg}.")
    if cfg.pe_size < cfg.window:
        raise ValueError(
            f"pe_size={cfg.pe_size} < window={cfg.window}: two tokens of one window would share a "
            f"positional code; use pe_size >= 2*window - 1 (CoOadTR: 127 for n = 64)."
        )
    parse_attention(cfg.attention, cfg.window)  # "softmax" or "nystrom:m=8,...": refuse bad ones


# -- the regular model -----------------------------------------------------------------------------
class OnlineTransformer(nn.Module):
    """Regular model: scores the newest frame of each window. Training path and oracle.

    Args:
        config: an :class:`OadTRConfig`, :class:`AudioConfig` or :class:`GtzanConfig`.
        name: registry name (kept in saved cards).
    """

    def __init__(self, config: ModelConfig, name: str = "") -> None:
        super().__init__()
        _check_config(config)
        self.config, self.name = config, name
        d = config.d_model
        self.embed = config.make_embedding()
        self.pe = RecyclingPositionalEncoding(config.pe_size, d, learned=config.pe_learned)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            d, config.heads, config.ffn, config.dropout, activation="gelu", batch_first=True
        )
        # CoOadTR's MHA has no biases (the rest of the block keeps them).
        layer.self_attn = nn.MultiheadAttention(
            d, config.heads, dropout=config.dropout, bias=False, batch_first=True
        )
        kind, options = parse_attention(config.attention, config.window)
        if kind == "nystrom":  # train with the attention the continual twin runs (same keys)
            layer.self_attn = NystromMultiheadAttention(
                d, config.heads, config.dropout, bias=False, window=config.window, **options
            )
        self.encoder = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.classes)

    @property
    def window(self) -> int:
        """n: frames per window."""
        return self.config.window

    def forward(self, window: Tensor, start: Tensor | int = 0) -> Tensor:
        """Logits of the newest frame: ``window`` (B, n, D_in) -> (B, C).

        ``start`` (int or (B,)) is the arrival index of each window's first frame (its positional
        phase). Training draws it at random; to compare with a stream, use the continual row's
        counter minus n after the step.
        """
        B, n = window.shape[:2]
        if n != self.window:
            raise ValueError(f"Expected windows of n={self.window} frames, got {n}.")
        z = self.dropout(self.pe(self.embed(window.reshape(B, n, -1)), start))  # (B, n, d)
        y = self.encoder(z)[:, -1]  # (B, d): the newest token
        return self.head(self.norm(y))  # (B, C)

    def to_continual(self) -> ContinualOnlineTransformer:
        """Continual twin with identical weights (eval mode)."""
        return continual_from_regular(self)


# -- the continual model ---------------------------------------------------------------------------
class ContinualOnlineTransformer(nn.Module):
    """Continual model: one frame per stream per step, same weights as its regular twin.

    ``state_dict`` keys equal the regular model's, so a file saved from either loads into both.
    """

    def __init__(
        self, config: ModelConfig, name: str = "", regular: OnlineTransformer | None = None
    ) -> None:
        super().__init__()
        _check_config(config)
        regular = regular if regular is not None else OnlineTransformer(config)
        self.config, self.name = config, name
        # Token-wise parts are copied as they are; only the encoder changes form (docs/continual-attention.md#token-wise-parts).
        self.embed = copy.deepcopy(regular.embed)
        self.pe = copy.deepcopy(regular.pe)
        self.norm = copy.deepcopy(regular.norm)
        self.head = copy.deepcopy(regular.head)
        kind, options = parse_attention(config.attention, config.window)
        self.encoder = ContinualEncoder.from_torch(
            regular.encoder, window=config.window, attention=kind, **options
        )
        input_major_(self).eval()  # one token per step: weights read input-major (faster)

    @property
    def window(self) -> int:
        """n: frames until a stream's output is exact."""
        return self.config.window

    def init_state(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> StreamState:
        """All-zero state for ``batch_size`` streams (dtype/device default to the weights')."""
        return self.encoder.init_state(batch_size, dtype=dtype, device=device)

    @torch.no_grad()
    def step(
        self, x: Tensor, state: StreamState, index: Tensor | None = None
    ) -> tuple[StepOutput, StreamState]:
        """One frame per stream: ``x`` (B, D_in) -> :class:`StepOutput` (scores (B, C), warm (B,)).

        ``index`` (B,) int64: each frame's index in its stream, which sets its positional phase
        (``index % pe_size``). Streams pass their frame indices, so a row's output depends only
        on its frames and their indices, never on when the row was started or reset: once a row
        is warm again after a reset it equals the uninterrupted row, and the regular oracle is
        ``forward(window, start=index - n + 1)``. Without ``index`` the phase is the row's token
        count since its start (``state.t``), i.e. a stream whose first frame has index 0.

        ``state`` is updated in place and returned. Row b's scores are exact (equal to the
        regular model on its last n frames) where ``warm[b]``; earlier rows are warm-up output.
        """
        B = state.batch_size
        x = x.reshape(B, -1) if x.dim() > 2 else x
        if x.shape[0] != B or x.shape[1] != self.config.d_in:
            raise ValueError(
                f"step expects one frame per stream, (B, D_in) = ({B}, {self.config.d_in}); got {tuple(x.shape)}."
            )
        if index is None:
            index = state.t  # read before the step increments it
        elif index.shape != (B,):
            raise ValueError(f"index must have shape ({B},), got {tuple(index.shape)}.")
        z = self.pe.step(self.embed(x), index)  # (B, d): phase = frame index mod pe_size
        y, state = self.encoder.step(z, state)  # (B, d)
        return StepOutput(self.head(self.norm(y)), state.warm.clone()), state

    def forward(self, window: Tensor, start: Tensor | int = 0) -> Tensor:
        """Regular computation on (B, n, D_in) windows with these weights (the oracle): (B, C)."""
        B, n = window.shape[:2]
        z = self.pe(self.embed(window.reshape(B, n, -1)), start)  # (B, n, d)
        return self.head(self.norm(self.encoder(z)))  # (B, C)


def continual_from_regular(
    model: OnlineTransformer, name: str | None = None
) -> ContinualOnlineTransformer:
    """Build the continual twin of a (trained) regular model, with identical weights, in eval mode."""
    if not isinstance(model, OnlineTransformer):
        raise TypeError(f"Expected an OnlineTransformer, got {type(model).__name__}.")
    p = next(model.parameters())
    co = ContinualOnlineTransformer(
        model.config, name or _continual_name(model.name), regular=model
    )
    return co.to(dtype=p.dtype, device=p.device).eval()


# -- registry --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    family: str
    continual: bool
    config: dict[str, Any]
    help: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str, family: str, *, continual: bool, help: str = "", **config: Any
) -> None:
    """Add a named builder: ``family`` (a key of ``FAMILIES``) plus config values."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown model family {family!r}; known: {sorted(FAMILIES)}.")
    _REGISTRY[name] = _Entry(family, continual, dict(config), help)


register_model(
    "oadtr_b1",
    "oadtr",
    continual=False,
    blocks=1,
    help="OadTR-b1 (regular, 1 block), CoOadTR paper config",
)
register_model(
    "oadtr_b2",
    "oadtr",
    continual=False,
    blocks=2,
    help="OadTR-b2 (regular, 2 blocks), CoOadTR paper config",
)
register_model(
    "co_oadtr_b1",
    "oadtr",
    continual=True,
    blocks=1,
    help="CoOadTR-b1: single-output continual block",
)
register_model(
    "co_oadtr_b2",
    "oadtr",
    continual=True,
    blocks=2,
    help="CoOadTR-b2: retroactive + single-output blocks",
)
register_model(
    "audio_b2",
    "audio",
    continual=False,
    help="log-mel patches -> conv -> 2-block encoder -> 10 genres",
)
register_model("co_audio_b2", "audio", continual=True, help="continual twin of audio_b2")
# Nyström attention. Learned fixed landmarks keep "stream == regular model" at every
# step; continual (segment-mean) landmarks, e.g. attention="nystrom:m=4", equal it only at
# landmark updates (every n/m steps) and lag by up to n/m - 1 tokens in between (docs/continual-attention.md#what-continual-nyström-equals).
_NYSTROM = "nystrom:m=4,landmarks=fixed"
for _co in (False, True):
    _p = "co_" if _co else ""
    register_model(
        f"{_p}nystrom_oadtr_b1", "oadtr", continual=_co, blocks=1, attention=_NYSTROM,
        help=f"{'continual ' if _co else ''}OadTR-b1, Nyström attention, 4 learned landmarks",
    )  # fmt: skip
    register_model(
        f"{_p}nystrom_audio_b2", "audio", continual=_co, attention=_NYSTROM,
        help=f"{'continual ' if _co else ''}audio_b2, Nyström attention, 4 learned landmarks",
    )  # fmt: skip
# The papers' GTZAN setting (docs/audio-setting.md): 128-d VGGish token per 1 s sub-clip
# every 0.25 s, n = 120 (30 s), d 192, 16 heads, FFN 192, 10 genres; Nyström with about n/10
# learned fixed landmarks (exact at every step, like the other zoo Nyström entries).
_GTZAN_NYSTROM = "nystrom:m=12,landmarks=fixed"
for _co in (False, True):
    _p, _w = ("co_", "continual ") if _co else ("", "")
    for _b in (1, 2):
        register_model(
            f"{_p}gtzan_b{_b}", "gtzan", continual=_co, blocks=_b,
            help=f"{_w}GTZAN setting, {_b} block{'s' if _b > 1 else ''}: VGGish tokens, n=120, d=192",
        )  # fmt: skip
        register_model(
            f"{_p}nystrom_gtzan_b{_b}", "gtzan", continual=_co, blocks=_b,
            attention=_GTZAN_NYSTROM,
            help=f"{_w}gtzan_b{_b}, Nyström attention, 12 learned landmarks",
        )  # fmt: skip


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> _Entry:
    """Registry entry of ``name`` (family, continual flag, config values, help)."""
    if name not in _REGISTRY:
        raise KeyError(f"Unknown model {name!r}; available: {', '.join(list_models())}.")
    return _REGISTRY[name]


def make_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of registered model ``name`` with ``overrides`` applied (unknown keys refused)."""
    entry = model_info(name)
    cls = FAMILIES[entry.family]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"Unknown config key(s) {unknown} for {name}; valid keys: {sorted(fields)}."
        )
    return cls(**(entry.config | overrides))


def get_model(name: str, **overrides: Any) -> OnlineTransformer | ContinualOnlineTransformer:
    """Build a registered model with fresh weights; ``overrides`` change config values.

    Continual models are built from a regular twin (same initial weights) and are in eval mode.
    """
    entry = model_info(name)
    cfg = make_config(name, **overrides)
    if entry.continual:
        return continual_from_regular(OnlineTransformer(cfg, _regular_name(name)), name)
    return OnlineTransformer(cfg, name)


def _continual_name(name: str) -> str:
    return name if not name or name.startswith("co_") else f"co_{name}"


def _regular_name(name: str) -> str:
    return name[3:] if name.startswith("co_") else name


# -- files -----------------------------------------------------------------------------------------
def card_path(weights_path: str | Path) -> Path:
    """The JSON card beside a weights file: ``model.safetensors`` -> ``model.json``."""
    return Path(weights_path).with_suffix(".json")


def save_model(
    model: OnlineTransformer | ContinualOnlineTransformer,
    path: str | Path,
    *,
    classes: list[str] | None = None,
    background: int | None = 0,
    ambiguous: int | None = None,
    metrics: dict[str, Any] | None = None,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``path`` (safetensors, config in its metadata) and the JSON card beside it.

    Returns the card: name, family, config, classes, feature_dim, metrics, notes, sha256.
    """
    cfg = model.config
    classes = list(classes) if classes is not None else _default_classes(cfg)
    if len(classes) != cfg.classes:
        raise ValueError(f"{len(classes)} class names for a model with {cfg.classes} classes.")
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "name": _regular_name(model.name) or f"{cfg.family}_b{cfg.blocks}",
        "continual_name": _continual_name(
            _regular_name(model.name) or f"{cfg.family}_b{cfg.blocks}"
        ),
        "family": cfg.family,
        "config": dataclasses.asdict(cfg),
        "classes": classes,
        "background": background,
        "ambiguous": ambiguous,
        "feature_dim": cfg.d_in,
        "window": cfg.window,
        "metrics": metrics or {},
        "notes": notes or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sha = save_weights(model, path, metadata={"costream.card": json.dumps(card)})
    card |= {"weights": path.name, "sha256": sha}
    card_path(path).write_text(json.dumps(card, indent=1) + "\n")
    return card


def read_card(path: str | Path) -> dict[str, Any]:
    """The card stored in a weights file's metadata (the JSON file beside it is a copy for people)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for unreadable files
        raise WeightsError(f"Cannot read weights file {path}: {e}.") from e
    if "costream.card" not in meta:
        raise WeightsError(
            f"{path} has no costream model card in its metadata; it was not written by "
            "costream.models.save_model, so its architecture is unknown."
        )
    card = json.loads(meta["costream.card"])
    if card.get("format") != CARD_FORMAT:
        raise WeightsError(f"{path}: unsupported model card format {card.get('format')!r}.")
    card["sha256"] = weights_sha256(path)
    card["weights"] = path.name
    return card


def load_model(
    path: str | Path, *, continual: bool = False
) -> tuple[OnlineTransformer | ContinualOnlineTransformer, dict[str, Any]]:
    """Rebuild a saved model (regular, or its continual twin) and load its verified weights.

    Raises:
        WeightsError: unreadable file, no card, or keys/shapes that do not fit the architecture.
    """
    card = read_card(path)
    family = card.get("family")
    if family not in FAMILIES:
        raise WeightsError(f"{path}: unknown model family {family!r}.")
    cfg = FAMILIES[family](**card["config"])
    model: OnlineTransformer | ContinualOnlineTransformer
    if continual:
        model = ContinualOnlineTransformer(cfg, card["continual_name"])
    else:
        model = OnlineTransformer(cfg, card["name"])
    load_weights(model, path)
    return model.eval(), card


def _default_classes(cfg: ModelConfig) -> list[str]:
    names = DEFAULT_CLASSES[cfg.family]
    return list(names) if len(names) == cfg.classes else [f"class_{c}" for c in range(cfg.classes)]


# -- cost ------------------------------------------------------------------------------------------
def macs_per_frame(config: ModelConfig, *, continual: bool, convention: str = "paper") -> int:
    """MACs per frame (docs/continual-attention.md#macs-per-frame) of a zoo model: embedding + encoder + head.

    The OadTR family supports the paper's counting convention (``"paper"``, reproduces
    CoOadTR-b1 = 9,598,998 for D_in = 3072) and the clean one (``"clean"``, matmuls only); so does
    the GTZAN family (its ``"paper"`` count reproduces the papers' 51.5x for one block,
    ``flops.gtzan_macs``; the VGGish front-end is not included, ``flops.vggish_macs``). GTZAN
    models with Nyström attention are counted with the clean convention: the paper's regular
    count holds no n^2 attention term for the Nyström one to replace. The
    audio family is counted with the clean convention (its conv front-end is not in the paper);
    ``convention="paper"`` falls back to it.
    """
    from .flops import encoder_macs, gtzan_macs, oadtr_macs
    from .nystrom import nystrom_encoder_macs_delta

    c = config
    kind, options = parse_attention(c.attention, c.window)
    nystrom = 0  # Nyström attention replaces the softmax attention terms (clean convention)
    if kind == "nystrom":
        nystrom = round(nystrom_encoder_macs_delta(
            layers=c.blocks, n=c.window, d=c.d_model, h=c.heads, continual=continual, **options
        ))  # fmt: skip
    if c.family == "oadtr":
        return nystrom + oadtr_macs(
            d_in=c.d_in, d_model=c.d_model, window=c.window, heads=c.heads, ffn=c.ffn,
            classes=c.classes, blocks=c.blocks, continual=continual, convention=convention,
        )  # fmt: skip
    if c.family == "gtzan":
        if kind == "nystrom":
            convention = "clean"
        return nystrom + gtzan_macs(
            d_in=c.d_in, d_model=c.d_model, window=c.window, heads=c.heads, ffn=c.ffn,
            classes=c.classes, blocks=c.blocks, continual=continual, convention=convention,
        )  # fmt: skip
    tokens = 1 if continual else c.window  # regular: every token of the window is embedded
    enc = encoder_macs(
        layers=c.blocks, d=c.d_model, n=c.window, f=c.ffn, continual=continual, h=c.heads
    )
    return nystrom + tokens * c.embedding_macs() + enc + tokens * c.d_model * c.classes
