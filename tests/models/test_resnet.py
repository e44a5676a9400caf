import torch

from costream.models.resnet import IdentityBackbone, fold_batch_norm, normalize_imagenet, resnet18


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


def test_normalize_leaves_its_input_alone_and_keeps_channels_last():
    x = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    f = x.float()
    y = normalize_imagenet(f)  # float input: still a copy, never normalised in place
    torch.testing.assert_close(f, x.float(), rtol=0, atol=0)
    assert y.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(y, (x.permute(0, 3, 1, 2).float() / 255 - mean) / std)


def test_folded_batch_norm_is_the_same_function():
    torch.manual_seed(0)
    net = resnet18(0.25).eval()
    for m in net.modules():  # trained-looking statistics (fresh ones fold to a no-op)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.3, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    folded = fold_batch_norm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # a copy
    x = torch.randint(0, 256, (3, 64, 48, 3), dtype=torch.uint8)
    with torch.inference_mode():
        want, got = net(x), folded(x)
    assert not torch.equal(want, got)  # folded for real
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
