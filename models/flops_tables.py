"""The audio-setting tables of ``costream flops --table gtzan`` (docs/audio-setting.md).

Built from the counts in :mod:`costream.models.flops`: regular / continual one-block MACs of the
papers' GTZAN setting under each counting convention and size, and the continual Nyström regime
table over windows and landmark counts.
"""

from __future__ import annotations

from .flops import (
    continual_nystrom_macs,
    gtzan_macs,
    oadtr_macs,
    paper_single_output_macs,
    vggish_macs,
)

__all__ = ["GTZAN", "audio_setting_table", "nystrom_regime_table"]

GTZAN = dict(d_in=128, d_model=192, window=120, heads=16, ffn=192, classes=10)
"""The papers' GTZAN sizes: 128-d VGGish tokens, d 192, n 120, 16 heads, FFN 192, 10 genres."""


def _row(label: str, regular: int | float, continual: int | float) -> dict[str, object]:
    return {"label": label, "regular": regular, "continual": continual,
            "ratio": regular / continual}  # fmt: skip


def audio_setting_table(target: float = 51.5) -> list[dict[str, object]]:
    """Regular / continual one-block MACs of the GTZAN setting under each counting and size.

    Rows: label, regular, continual, ratio; ``within_2pct`` marks rows within 2% of ``target``
    (the paper's 51.5x). The first row is the one that reproduces it.
    """
    P, rows = GTZAN, []

    def both(convention: str, **kw: int) -> tuple[int, int]:
        cfg = {**P, "blocks": 1, **kw}
        return (
            gtzan_macs(**cfg, continual=False, convention=convention),  # type: ignore[arg-type]
            gtzan_macs(**cfg, continual=True, convention=convention),  # type: ignore[arg-type]
        )

    D, d, n, h, f, C = (P[k] for k in ("d_in", "d_model", "window", "heads", "ffn", "classes"))
    rows.append(_row("paper: ptflops 0.6.7 on the reference model (n=120, d=192)", *both("paper")))
    reg, co = both("paper")
    single_fwd = paper_single_output_macs(d=d, n=n, h=h, projected=n)
    correct = (n * D * d + d) + single_fwd + (d * f + f) + (f * d + d) + (d * C + C)
    rows.append(_row("paper, linears counted correctly (embedding n D d, FFN/head on 1 token)",
                     correct, co))  # fmt: skip
    rows.append(_row("CoOadTR paper convention (OadTR-style regular: every row, GELU)", *(
        oadtr_macs(**P, blocks=1, continual=c, convention="paper") for c in (False, True))))  # fmt: skip
    rows.append(
        _row("clean MACs (costream): regular = all n rows, head on every token", *both("clean"))
    )
    # a regular layer computing only the newest row: all n keys and values projected
    newest_row = 2 * n * d * d + 2 * d * d + 2 * n * d + 2 * d * f
    last_row = n * D * d + newest_row + d * C
    rows.append(
        _row("clean MACs, regular computes the newest row only", last_row, both("clean")[1])
    )
    rows.append(_row("clean, FLOPs = 2 x MACs (ratio unchanged)", *(2 * x for x in both("clean"))))
    rows.append(_row("paper, d=128 (no widening), FFN 128", *both("paper", d_model=128, ffn=128)))
    rows.append(_row("paper, n=117 (full 1 s sub-clips of 30 s)", *both("paper", window=117)))
    rows.append(_row("paper, n=64", *both("paper", window=64)))
    v = vggish_macs()
    rows.append(_row("paper + VGGish front-end, each sub-clip embedded once", reg + v, co + v))
    rows.append(_row("paper + VGGish, regular re-embeds all n sub-clips", reg + n * v, co + v))
    for r in rows:
        r["within_2pct"] = abs(float(r["ratio"]) / target - 1) <= 0.02  # type: ignore[arg-type]
    return rows


def nystrom_regime_table(
    windows: tuple[int, ...] = (120, 240, 480, 960, 1920),
    landmarks: tuple[int | None, ...] = (None, 1, 2, 4, 8),
) -> list[dict[str, object]]:
    """Regular softmax model / continual Nyström (fixed landmarks) in the GTZAN setting (clean).

    For each window n and landmark count m (``None``: m = n // 10, the papers' choice): one-block
    whole-model MACs (``regular``, ``continual``, ``ratio``), the exact continual softmax model's
    ratio for comparison (``softmax_ratio``, CoSi), and the attention part alone (``attn_ratio``:
    2 n^2 d of regular softmax attention over 7 m d + h m^2 per step).
    """
    P = GTZAN
    rows: list[dict[str, object]] = []
    d, h = P["d_model"], P["heads"]
    for n in windows:
        reg = oadtr_macs(**{**P, "window": n}, blocks=1, continual=False, convention="clean")
        co_softmax = oadtr_macs(**{**P, "window": n}, blocks=1, continual=True, convention="clean")
        for m_ in landmarks:
            m = max(1, n // 10) if m_ is None else m_
            attn = continual_nystrom_macs(n, d, h, m, landmark_mode="fixed")
            co = co_softmax - 2 * n * d + attn
            rows.append({"n": n, "m": m, "regular": reg, "continual": round(co),
                         "ratio": reg / co, "softmax_ratio": reg / co_softmax,
                         "attn_ratio": 2 * n * n * d / attn})  # fmt: skip
    return rows
