import inspect
import subprocess
import sys

import pytest
import torch

from costream.models.online import ContinualOnlineTransformer
from costream.models.protocol import ContinualModel, StepOutput
from costream.models.state import StreamState
from costream.models.zoo import get_model, list_models, model_info

CONTINUAL = [name for name in list_models() if model_info(name).continual]
SMALL = dict(d_model=16, window=8, heads=2, ffn=16, classes=3, pe_size=15)


def _small(name):
    small = dict(SMALL)
    family = model_info(name).family
    if family == "audio":
        small |= dict(n_mels=4, patch=2, channels=4)
    else:
        small |= dict(d_in=12)
    if "nystrom" in name:
        small |= dict(attention="nystrom:m=4,landmarks=fixed")
    return get_model(name, **small)


def test_there_are_continual_models_of_every_family():
    assert {model_info(n).family for n in CONTINUAL} == {"oadtr", "audio", "gtzan"}


@pytest.mark.parametrize("name", CONTINUAL)
def test_every_continual_zoo_model_is_a_continual_model(name):
    m = _small(name)
    assert isinstance(m, ContinualModel)
    assert m.window == 8 and isinstance(m.config.d_in, int)
    state = m.init_state(2)
    assert isinstance(state, StreamState) and state.batch_size == 2
    x = torch.randn(2, m.config.d_in)
    out, state = m.step(x, state)
    assert isinstance(out, StepOutput) and out.scores.shape == (2, 3)
    assert out.warm.dtype == torch.bool and out.warm.tolist() == [False, False]
    out, state = m.step(x, state, index=torch.tensor([5, 9]))
    assert out.scores.shape == (2, 3) and state.t.tolist() == [2, 2]


def test_the_protocol_spells_the_real_signatures():
    for method in ("init_state", "step"):
        want = inspect.signature(getattr(ContinualOnlineTransformer, method))
        got = inspect.signature(getattr(ContinualModel, method))
        assert list(got.parameters) == list(want.parameters)
        for p in got.parameters:
            assert got.parameters[p].default == want.parameters[p].default


def test_a_regular_model_is_not_a_continual_model():
    regular = get_model("oadtr_b1", d_in=12, **SMALL)
    assert not isinstance(regular, ContinualModel)  # no init_state / step


def test_importing_costream_models_pulls_in_neither_beam_nor_kafka():
    code = (
        "import sys, costream.models, costream.models.zoo, costream.models.flops; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('apache_beam', 'kafka')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "[]"
