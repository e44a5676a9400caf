import torch

from costream.models.resnet import IdentityBackbone, normalize_imagenet, resnet18


def test_resnet18_parameter_count_and_dims():
    assert sum(p.numel() for p in resnet18().parameters()) == 11_176_512  # torchvision minus fc
    assert resnet18(0.25).dim == 128
    keys = set(resnet18().state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight"} <= keys
    assert not any(k.startswith("fc.") for k in keys)


def test_normalize_imagenet_by_hand():
    x = torch.tensor([[[[0, 255, 128]]]], dtype=torch.uint8)  # (1, 1, 1, 3)
    y = normalize_imagenet(x)
    assert y.shape == (1, 3, 1, 1)
    want = [(0 - 0.485) / 0.229, (1 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    torch.testing.assert_close(y.flatten(), torch.tensor(want))


def test_identity_backbone_casts_to_float32():
    x = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    y = IdentityBackbone()(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x.float(), rtol=0, atol=0)
