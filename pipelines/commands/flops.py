"""``costream flops``: MACs per frame of a zoo model, continual vs regular, and the ratio."""

from __future__ import annotations

import argparse

HELP = "MACs per frame of a zoo model (or a saved model), continual vs regular, and the ratio."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "model",
        nargs="?",
        help="zoo name (e.g. co_oadtr_b1) or a .safetensors file written by `costream train`",
    )
    parser.add_argument(
        "--feature-dim",
        type=int,
        default=None,
        help="D_in, the per-frame feature size (default: the model's, 3072 for OadTR)",
    )
    parser.add_argument(
        "--classes", type=int, default=None, help="number of classes C (default: the model's)"
    )
    parser.add_argument(
        "--convention",
        choices=["paper", "clean"],
        default=None,
        help="paper (default for OadTR): the ptflops counts behind the CoOadTR tables; clean (default for audio): matmuls only (docs §8)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set window=32",
    )
    parser.add_argument("--list", action="store_true", help="list the zoo models and exit")


def _fmt(x: int) -> str:
    return (
        f"{x / 1e9:.2f} G" if x >= 1e9 else f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.2f} k"
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Print both counts and their ratio."""
    from dataclasses import asdict, replace

    from costream.models.weights import WeightsError
    from costream.models.zoo import (
        FAMILIES,
        list_models,
        macs_per_frame,
        make_config,
        model_info,
        read_card,
    )
    from costream.pipelines.commands.train import parse_overrides

    if args.list or not args.model:
        for name in list_models():
            print(f"{name:14s} {model_info(name).help}")
        return 0
    overrides = parse_overrides(args.set)
    if args.feature_dim is not None:
        overrides["d_in"] = args.feature_dim
    if args.classes is not None:
        overrides["classes"] = args.classes
    try:
        if args.model.endswith(".safetensors"):
            card = read_card(args.model)
            cfg = replace(FAMILIES[card["family"]](**card["config"]), **overrides)
            name = card["name"]
        else:
            name = args.model[3:] if args.model.startswith("co_") else args.model
            cfg = make_config(args.model, **overrides)
    except (KeyError, ValueError, TypeError, WeightsError) as e:
        print(f"error: {e}")
        return 2
    default = "paper" if cfg.family == "oadtr" else "clean"
    convention = (args.convention or default) if cfg.family == "oadtr" else "clean"
    co = macs_per_frame(cfg, continual=True, convention=convention)
    reg = macs_per_frame(cfg, continual=False, convention=convention)
    c = asdict(cfg)
    shape = ", ".join(
        f"{k}={c[k]}" for k in ("d_model", "window", "heads", "ffn", "blocks", "classes")
    )
    print(
        f"co_{name} vs {name}  (D_in={cfg.d_in}, {shape}; {convention} convention, MACs per frame)"
    )
    print(f"continual  {co:>15,}  ({_fmt(co)})")
    print(f"regular    {reg:>15,}  ({_fmt(reg)})")
    print(f"ratio      {reg / co:>15.2f}x")
    if args.convention and convention != args.convention:
        print(
            "note: the paper convention covers the OadTR family only; counted with the clean one."
        )
    return 0
