"""Model files: safetensors weights with the model card in their metadata, and a JSON copy beside.

:func:`save_model` writes both; :func:`read_card` reads the card from the weights file (the JSON
file is for people); :func:`load_model` rebuilds the model from the file alone and loads its
weights checked key by key and shape by shape, refusing what it cannot verify.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal, overload

from safetensors import safe_open

from .audio import GTZAN_GENRES
from .configs import FAMILIES, ModelConfig
from .data import THUMOS14_CLASSES
from .online import ContinualOnlineTransformer, OnlineTransformer, continual_name, regular_name
from .weights import WeightsError, load_weights, save_weights, weights_sha256

__all__ = ["CARD_FORMAT", "DEFAULT_CLASSES", "card_path", "load_model", "read_card", "save_model"]

CARD_FORMAT = "costream.model/1"
DEFAULT_CLASSES: dict[str, list[str]] = {
    "oadtr": THUMOS14_CLASSES,
    "audio": GTZAN_GENRES,
    "gtzan": GTZAN_GENRES,
}


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
        "name": regular_name(model.name) or f"{cfg.family}_b{cfg.blocks}",
        "continual_name": continual_name(regular_name(model.name) or f"{cfg.family}_b{cfg.blocks}"),
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


@overload
def load_model(
    path: str | Path, *, continual: Literal[False] = False
) -> tuple[OnlineTransformer, dict[str, Any]]: ...


@overload
def load_model(
    path: str | Path, *, continual: Literal[True]
) -> tuple[ContinualOnlineTransformer, dict[str, Any]]: ...


@overload
def load_model(
    path: str | Path, *, continual: bool
) -> tuple[OnlineTransformer | ContinualOnlineTransformer, dict[str, Any]]: ...


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
