"""``costream flops``: MACs per frame of a zoo model, continual vs regular, and the ratio.

``costream flops --table gtzan`` prints the audio-setting tables of docs/audio-setting.md: which
counting reproduces the papers' 51.5x, and where continual Nyström reaches 1000x.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from costream.models.flops import Convention

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
        help="paper (default for OadTR and GTZAN): the ptflops counts behind the papers' numbers; clean (default for audio): matmuls only (docs/continual-attention.md#macs-per-frame)",
    )
    parser.add_argument(
        "--with-frontend",
        action="store_true",
        help="GTZAN: add the VGGish front-end's MACs (each 1 s sub-clip embedded once) to both counts",
    )
    parser.add_argument(
        "--table",
        choices=["gtzan"],
        default=None,
        help="print a table instead: gtzan = the audio setting's counting conventions and the "
        "continual Nyström regime (docs/audio-setting.md)",
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

    if args.table:
        _print_gtzan_tables()
        return 0
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
    paper_families = ("oadtr", "gtzan")
    default: Convention = "paper" if cfg.family in paper_families else "clean"
    convention: Convention = (
        (args.convention or default) if cfg.family in paper_families else "clean"
    )
    if cfg.family == "gtzan" and cfg.attention != "softmax":
        convention = "clean"  # the paper's regular GTZAN count has no n^2 term to replace
    co = macs_per_frame(cfg, continual=True, convention=convention)
    reg = macs_per_frame(cfg, continual=False, convention=convention)
    frontend = 0
    if args.with_frontend:
        if cfg.family != "gtzan":
            print("error: --with-frontend applies to the GTZAN family (VGGish tokens) only.")
            return 2
        from costream.models.flops import vggish_macs

        frontend = vggish_macs()
        co, reg = co + frontend, reg + frontend
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
    if frontend:
        print(f"(both include the VGGish front-end, {frontend:,} MACs per 1 s sub-clip)")
    if args.convention and convention != args.convention:
        print(
            "note: the paper convention covers the OadTR and GTZAN (softmax) models only; counted "
            "with the clean one."
        )
    return 0


def _print_gtzan_tables() -> None:
    from costream.models.flops_tables import GTZAN, audio_setting_table, nystrom_regime_table

    shape = ", ".join(f"{k}={v}" for k, v in GTZAN.items())
    print(f"GTZAN setting, one block ({shape}); MACs per prediction; target 51.5x")
    print(f"{'counting / configuration':76s} {'regular':>16s} {'continual':>13s} {'ratio':>8s}")
    for r in audio_setting_table():
        mark = "  <- within 2% of 51.5x" if r["within_2pct"] else ""
        print(
            f"{r['label']:76s} {r['regular']:>16,} {r['continual']:>13,} {r['ratio']:>7.2f}x{mark}"
        )
    print()
    print("Continual Nyström (fixed landmarks, one block, clean MACs) vs the regular softmax model")
    print(
        f"{'n':>6s} {'m':>5s} {'regular':>15s} {'co-Nyström':>12s} {'ratio':>9s} "
        f"{'CoSi ratio':>11s} {'attention-only':>15s}"
    )
    for r in nystrom_regime_table():
        print(
            f"{r['n']:>6} {r['m']:>5} {r['regular']:>15,} {r['continual']:>12,} "
            f"{r['ratio']:>8.1f}x {r['softmax_ratio']:>10.1f}x {r['attn_ratio']:>14.1f}x"
        )
    print("(m = n // 10 in each n's first row, the papers' choice; 1000x whole-model from n ~ 550)")
