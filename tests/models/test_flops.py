import pytest
import torch
from costream.models import ContinualEncoder, encoder_macs, measured_macs, oadtr_macs
from torch import nn

PAPER = dict(d_model=1024, window=64, heads=8, ffn=1024, classes=22)


@pytest.mark.parametrize(
    "d_in,blocks,continual,logged",
    [
        (3072, 1, True, 9_598_998),  # CoOadTR-b1, A.Net (run log, exact)
        (4096, 1, True, 10_647_574),  # CoOadTR-b1, Kinetics (run log, exact)
        (3072, 2, True, 410_939_416),  # CoOadTR-b2, A.Net (run log)
        (3072, 1, False, 605_700_000),  # OadTR-b1, A.Net (paper table 605.7 M)
        (3072, 2, False, 1_008_100_000),  # OadTR-b2, A.Net (paper table 1008.1 M)
        (4096, 2, False, 1_075_700_000),  # OadTR-b2, Kinetics (paper table)
    ],
)
def test_paper_convention_reproduces_paper_within_2_percent(d_in, blocks, continual, logged):
    got = oadtr_macs(d_in=d_in, blocks=blocks, continual=continual, convention="paper", **PAPER)
    assert abs(got - logged) / logged < 0.02
    if continual and blocks == 1:
        assert got == logged


@pytest.mark.parametrize("convention", ["clean", "paper"])
def test_paper_configuration_ratios(convention):
    def ratio(blocks):
        kw = dict(d_in=3072, blocks=blocks, convention=convention, **PAPER)
        return oadtr_macs(continual=False, **kw) / oadtr_macs(continual=True, **kw)

    assert ratio(1) >= 60
    assert ratio(2) >= 2.4


def test_encoder_ratios_paper_configuration():
    kw = dict(d=1024, n=64, f=1024)
    assert (
        encoder_macs(layers=1, continual=False, **kw) / encoder_macs(layers=1, continual=True, **kw)
        >= 60
    )
    # without the embedding (which the regular model runs n times) the 2-block ratio is 2.39
    assert (
        encoder_macs(layers=2, continual=False, **kw) / encoder_macs(layers=2, continual=True, **kw)
        > 2.35
    )


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_formulas_match_torch_flop_counter(layers):
    d, h, n, f = 64, 4, 16, 96
    te = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(d, h, f, batch_first=True), layers, enable_nested_tensor=False
    ).eval()
    enc = ContinualEncoder.from_torch(te, window=n)
    state = enc.init_state(1)
    for _ in range(2 * n):
        enc.step(torch.randn(1, d), state)
    # regular: torch's own encoder (with grad enabled, so it skips the fused fast path)
    assert measured_macs(lambda: te(torch.randn(1, n, d))) == encoder_macs(
        layers=layers, d=d, n=n, f=f, continual=False
    )
    continual = measured_macs(lambda: enc.step(torch.randn(1, d), state))
    formula = encoder_macs(layers=layers, d=d, n=n, f=f, continual=True)
    if layers == 1:
        assert continual == formula
    else:
        # the retroactive layer's running-sum updates and divisions (3 n d) are elementwise, which
        # the counter does not see; guard recomputes add 2 d_h per recomputed row (rare)
        assert formula - 3 * n * d <= continual <= formula - 3 * n * d + 2 * d * n // 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="1 and 2 continual blocks"):
        oadtr_macs(d_in=8, blocks=3, continual=True, convention="paper", **PAPER)
    with pytest.raises(ValueError, match="Unknown convention"):
        oadtr_macs(d_in=8, blocks=1, continual=True, convention="ptflops", **PAPER)
