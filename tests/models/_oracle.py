"""Shared oracle loop: run a continual module step by step and compare with its regular twin."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def stream_schedule(B: int, n: int, steps_after: int = 3) -> tuple[int, list[int], dict[int, int]]:
    """Streams starting at different steps, one reset mid-stream: (T, starts, resets)."""
    starts = [0, 1, n // 2 + 2, n + 3][:B] + [0] * max(0, B - 4)
    T = max(starts) + steps_after * n + 2
    resets = {max(starts) + n + 1: B - 1}  # step -> row reset before being fed that step
    return T, starts, resets


def run_against_oracle(
    step: Callable[[Tensor, object], tuple[Tensor, object]],
    state: object,
    oracle: Callable[[Tensor], Tensor],
    X: Tensor,
    n: int,
    select: Callable[[Tensor], Tensor] = lambda y: y,
) -> tuple[float, float, int]:
    """Feed X (B, T, d) with each row starting at its own step; returns (max abs err, max |ref|, checks).

    Row b is reset at its start step (and at its reset step), so rows sit at different positions;
    each warm row's output is compared with ``oracle`` on that row's last n tokens.
    """
    B, T, _ = X.shape
    _, starts, resets = stream_schedule(B, n, steps_after=(T - 2) // n)
    since = [0] * B  # first step of each row's current segment (rows are fed from step 0)
    worst, scale, checks = 0.0, 0.0, 0
    for s in range(T):
        for b in range(B):
            if s == starts[b] or resets.get(s) == b:
                state.reset([b])
                since[b] = s
        y, state = step(X[:, s], state)
        seen = torch.tensor([s - since[b] + 1 for b in range(B)])
        expect_warm = seen >= n
        assert torch.equal(state.warm, expect_warm), (s, state.warm, expect_warm)
        rows = [b for b in range(B) if expect_warm[b]]
        if rows:
            windows = torch.stack([X[b, s - n + 1 : s + 1] for b in rows])  # (R, n, d)
            ref = oracle(windows)
            got = select(y)[rows]
            worst = max(worst, (got - ref).abs().max().item())
            scale = max(scale, ref.abs().max().item())
            checks += len(rows)
    return worst, scale, checks
