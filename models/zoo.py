"""Model zoo: named builders of CoOadTR, audio and GTZAN models, regular and continual.

A registry entry is data: a family (a key of :data:`~costream.models.configs.FAMILIES`), whether
the model is the continual twin, and config values; a name's ``_b<N>`` is its block count
(:func:`get_model` renames a model whose ``blocks`` override changes it). A
new entry is one :func:`register_model` call; :func:`get_model` builds one (``name`` + config
overrides), :func:`list_models` lists them.

The network itself is ``online.py`` (:class:`OnlineTransformer` and its continual twin), the
configs ``configs.py``, model files ``cards.py`` and MACs ``flops.py``; their public names are
re-exported here.

Example:
    >>> m = get_model("co_oadtr_b1", d_in=16, d_model=32, window=4, heads=2, ffn=32, classes=3)
    >>> state = m.init_state(batch_size=2)
    >>> out, state = m.step(torch.randn(2, 16), state)
    >>> out.scores.shape, out.warm.tolist()
    (torch.Size([2, 3]), [False, False])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch  # noqa: F401 - the example uses it

from .cards import CARD_FORMAT, card_path, load_model, read_card, save_model
from .configs import FAMILIES, AudioConfig, GtzanConfig, ModelConfig, OadTRConfig
from .flops import macs_per_frame
from .online import (
    ContinualOnlineTransformer,
    OnlineTransformer,
    StepOutput,
    continual_from_regular,
    regular_name,
)

__all__ = [
    "CARD_FORMAT",
    "FAMILIES",
    "AudioConfig",
    "ContinualOnlineTransformer",
    "GtzanConfig",
    "ModelConfig",
    "OadTRConfig",
    "OnlineTransformer",
    "StepOutput",
    "block_name",
    "card_path",
    "continual_from_regular",
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
    The model is named for its block count: ``get_model("co_oadtr_b1", blocks=3)`` is
    ``co_oadtr_b3`` (in its card too), not a 3-block model labelled ``_b1``.
    """
    entry = model_info(name)
    cfg = make_config(name, **overrides)
    name = block_name(name, cfg.blocks)
    if entry.continual:
        return continual_from_regular(OnlineTransformer(cfg, regular_name(name)), name)
    return OnlineTransformer(cfg, name)


def block_name(name: str, blocks: int) -> str:
    """``name`` with its ``_b<N>`` suffix saying ``blocks``: ``oadtr_b1``, 3 -> ``oadtr_b3``."""
    stem, sep, count = name.rpartition("_b")
    if not sep or not count.isdigit():
        return name
    return f"{stem}_b{blocks}"
