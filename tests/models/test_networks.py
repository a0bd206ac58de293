"""Localization networks: shapes, parameter count, the authors' weights, output activations, offsets head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path
from torch import Tensor

from dstorm3d.models.blocks import ScaledClamp
from dstorm3d.models.heads import OFFSETS_OUTPUTS, OffsetsHead, VolumeHead, build_head
from dstorm3d.models.network import LocalizationNet, build_localization_net
from dstorm3d.models.pretrained import load_authors_weights

AUTHORS_WEIGHTS = ("pretrained", "deepstorm3d_tetrapod_storm_weights.pkl")
PAPER_DILATIONS = (1, 1, 2, 4, 8, 16)


def n_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------- shapes
def test_paper_volume_net_output_shape():
    net = build_localization_net()
    assert isinstance(net.head, VolumeHead) and net.head.upsampling_factor == 4
    out = net(torch.rand(2, 1, 16, 16))
    assert out.shape == (2, 121, 64, 64)
    assert out.min() >= 0 and out.max() <= 800


@pytest.mark.parametrize("upsampling", [0, 1, 2])
def test_volume_head_upsampling_shapes(upsampling: int):
    net = build_localization_net(
        channels=8, dilations=(1, 1, 1), depth_slices=5, upsampling=upsampling, output_scale=100.0
    )
    out = net(torch.rand(3, 12, 20))  # (B, H, W) frames get a channel axis
    f = 2**upsampling
    assert out.shape == (3, 5, 12 * f, 20 * f)
    assert out.min() >= 0 and out.max() <= 100


def test_psf_learning_decoder_has_nine_blocks_at_camera_resolution():
    net = build_localization_net(dilations=(1,) * 6, depth_slices=51, upsampling=0, output_scale=100.0)
    head = net.head
    assert len(net.trunk.blocks) + 1 + len(head.residual_blocks) == 9
    assert head.depth_block.conv.in_channels == 65
    assert net(torch.rand(1, 1, 8, 8)).shape == (1, 51, 8, 8)


def test_offsets_head_shapes_and_ranges():
    net = build_localization_net(
        channels=16, dilations=(1, 2), head="offsets", offset_range=1.0, sigma_floor=0.01, sigma_max=1.0
    )
    assert isinstance(net.head, OffsetsHead)
    out = net(torch.rand(2, 1, 10, 14))
    assert tuple(out) == OFFSETS_OUTPUTS
    for value in out.values():
        assert value.shape == (2, 10, 14)
    # saturate the activations: huge pre-activations must still land in the documented closed ranges
    head = net.head
    with torch.no_grad():
        head.output_conv.weight.mul_(1e4)
    out = net(torch.randn(2, 1, 10, 14) * 10)
    assert torch.isfinite(out["logit"]).all()
    for name in ("x_offset", "y_offset"):
        assert out[name].abs().max() <= 1.0
    for name in ("z", "photons"):
        assert out[name].min() >= 0 and out[name].max() <= 1
    for name in ("x_sigma", "y_sigma", "z_sigma", "photons_sigma"):
        assert out[name].min() >= 0.01 - 1e-7 and out[name].max() <= 1.0
    assert out["x_offset"].abs().max() > 0.99  # the range is actually reached


def test_offsets_head_starts_with_sparse_detections():
    head = OffsetsHead(in_channels=9, channels=8, detection_prior=0.01)
    p = torch.sigmoid(head(torch.randn(1, 9, 6, 6))["logit"])
    assert p.mean() < 0.2


def test_build_head_rejects_unknown_kind():
    assert isinstance(build_head("volume", in_channels=5, channels=4, depth_slices=3), VolumeHead)
    with pytest.raises(ValueError, match="unknown head kind"):
        build_head("voxels")


def test_builder_takes_plain_data():
    hparams = {
        "channels": 8,
        "dilations": [1, 2],
        "head": "volume",
        "depth_slices": 4,
        "upsampling": 1,
        "output_scale": 50,
        "activation": "clamp_st",
        "residual_blocks": 1,
    }
    net = build_localization_net(**hparams)
    assert net.trunk.dilations == (1, 2) and len(net.head.residual_blocks) == 1
    assert net.head.output_activation.activation == "clamp_st" and net.head.output_scale == 50.0


# ---------------------------------------------------------------- parameter count
@pytest.mark.parametrize("depth", [121, 51, 7])
def test_parameter_count_formula(depth: int):
    net = build_localization_net(depth_slices=depth)
    assert n_parameters(net) == 263_618 + 19 * depth**2 + 586 * depth


def test_paper_parameter_count():
    assert n_parameters(build_localization_net()) == 612_703


# ---------------------------------------------------------------- output activations
def test_clamp_st_passes_gradient_where_hardtanh_does_not():
    a = torch.tensor([-2.0, -0.3, 0.25, 0.75, 1.5, 3.0])
    outputs, grads = {}, {}
    for activation in ("hardtanh", "clamp_st"):
        x = a.clone().requires_grad_(True)
        y = ScaledClamp(800.0, activation)(x)
        y.sum().backward()
        outputs[activation], grads[activation] = y.detach(), x.grad
    assert torch.equal(outputs["hardtanh"], outputs["clamp_st"])
    assert torch.equal(outputs["hardtanh"], 800.0 * a.clamp(0, 1))
    assert torch.equal(grads["hardtanh"], torch.tensor([0.0, 0.0, 800.0, 800.0, 0.0, 0.0]))
    assert torch.equal(grads["clamp_st"], torch.full_like(a, 800.0))


def test_volume_head_activations_agree_forward_and_differ_backward():
    head_ht = VolumeHead(in_channels=5, channels=4, depth_slices=3, upsampling=1, output_scale=10.0)
    head_st = VolumeHead(
        in_channels=5, channels=4, depth_slices=3, upsampling=1, output_scale=10.0, activation="clamp_st"
    )
    head_st.load_state_dict(head_ht.state_dict())
    with torch.no_grad():  # push every pre-activation below 0
        for head in (head_ht, head_st):
            head.output_conv.bias.fill_(-100.0)
    features = torch.randn(2, 5, 6, 6)
    out_ht, out_st = head_ht(features), head_st(features)
    assert torch.equal(out_ht, out_st) and out_ht.abs().max() == 0
    (-out_ht.sum()).backward()
    (-out_st.sum()).backward()
    assert head_ht.output_conv.bias.grad.abs().max() == 0
    assert head_st.output_conv.bias.grad.abs().min() > 0


def test_leaky_and_softplus_activations():
    a = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    y = ScaledClamp(1.0, "clamp_leaky")(a)
    y.sum().backward()
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(a.grad, torch.tensor([0.1, 1.0, 0.1]))
    soft = ScaledClamp(1.0, "softplus")(torch.tensor([-5.0, 0.5, 2.0]))
    assert soft[0] < 1e-3 and abs(soft[1] - 0.5) < 1e-3 and soft[2] == 1.0
    with pytest.raises(ValueError, match="unknown output activation"):
        ScaledClamp(1.0, "relu")


# ---------------------------------------------------------------- the authors' weights
def authors_forward(sd: dict[str, Tensor], frames: Tensor) -> tuple[Tensor, Tensor]:
    """The authors' network in eval mode written with torch.nn.functional from their raw state_dict.

    Returns ``(Hardtanh(0, 800) output, layer10 pre-activation)``, both ``(B, D, 4H, 4W)``.
    """

    def batch_norm(x: Tensor, name: str) -> Tensor:
        return F.batch_norm(
            x,
            sd[f"{name}.running_mean"],
            sd[f"{name}.running_var"],
            sd[f"{name}.weight"],
            sd[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )

    def block(x: Tensor, name: str, dilation: int = 1) -> Tensor:
        weight, bias = sd[f"{name}.conv.weight"], sd[f"{name}.conv.bias"]
        x = F.conv2d(x, weight, bias, padding=dilation, dilation=dilation)
        return batch_norm(F.leaky_relu(x, 0.2), f"{name}.bn")

    image = batch_norm(frames, "norm")
    features = block(image, "layer1", 1)
    for index, dilation in zip(range(2, 7), PAPER_DILATIONS[1:]):
        features = features + block(torch.cat([features, image], 1), f"layer{index}", dilation)
    x = torch.cat([features, image], 1)
    x = block(F.interpolate(x, scale_factor=2, mode="nearest"), "deconv1")
    x = block(F.interpolate(x, scale_factor=2, mode="nearest"), "deconv2")
    x = block(x, "layer7")
    x = x + block(x, "layer8")
    x = x + block(x, "layer9")
    pre = F.conv2d(x, sd["layer10.weight"], sd["layer10.bias"])
    return F.hardtanh(pre, 0.0, 800.0), pre


def spots_frames(batch: int, size: int) -> Tensor:
    """Frames like counts/250: a noisy 0.15 baseline with a few bright Gaussian spots."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    frames = 0.15 + 0.03 * torch.randn(batch, 1, size, size)
    for b in range(batch):
        for _ in range(3):
            cy, cx = torch.rand(2) * (size - 1)
            frames[b, 0] += 0.8 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
    return frames


@pytest.mark.data
def test_authors_weights_load_strictly():
    path = shared_path(*AUTHORS_WEIGHTS)
    net = build_localization_net()
    assert load_authors_weights(net, path) is net
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(net.trunk.input_norm.running_var, sd["norm.running_var"])
    assert torch.equal(net.head.residual_blocks[1].conv.weight, sd["layer9.conv.weight"])
    assert torch.allclose(net.head.output_conv.weight * 800, sd["layer10.weight"], rtol=1e-6, atol=0)


@pytest.mark.data
def test_authors_weights_reject_a_net_that_does_not_fit():
    path = shared_path(*AUTHORS_WEIGHTS)
    with pytest.raises(ValueError, match="D = 121.*D = 51"):
        load_authors_weights(build_localization_net(depth_slices=51), path)
    with pytest.raises(ValueError, match=r"layer1\.conv\.weight.*\(64, 1, 3, 3\).*\(32, 1, 3, 3\)"):
        load_authors_weights(build_localization_net(channels=32), path)
    with pytest.raises(ValueError, match="deconv2"):
        load_authors_weights(build_localization_net(upsampling=1), path)
    with pytest.raises(TypeError, match="VolumeHead"):
        load_authors_weights(build_localization_net(head="offsets"), path)


@pytest.mark.data
@pytest.mark.parametrize("activation", ["hardtanh", "clamp_st"])
def test_authors_weights_reproduce_their_forward_pass(activation: str):
    sd = torch.load(shared_path(*AUTHORS_WEIGHTS), map_location="cpu", weights_only=True)
    net = load_authors_weights(build_localization_net(activation=activation), sd).eval()
    pre_activation = {}
    net.head.output_conv.register_forward_hook(lambda module, args, out: pre_activation.update(a=out))
    frames = spots_frames(2, 16)
    with torch.no_grad():
        ours = net(frames)
        theirs, theirs_pre = authors_forward(sd, frames)
    assert isinstance(net, LocalizationNet) and ours.shape == theirs.shape == (2, 121, 64, 64)
    assert theirs.max() > 10  # the spots light up voxels: not a trivially all-zero volume
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-3)
    torch.testing.assert_close(800.0 * pre_activation["a"], theirs_pre, rtol=1e-5, atol=2e-3)


def test_inward_clamp_passes_only_gradients_that_point_back_into_range():
    from dstorm3d.models.blocks import unit_clamp

    a = torch.tensor([-0.5, -0.5, 0.5, 1.5, 1.5], requires_grad=True)
    out = unit_clamp(a, "clamp_inward")
    assert torch.equal(out.detach(), a.detach().clamp(0, 1))
    # loss gradients: +1 pushes a down (descent), -1 pushes a up
    out.backward(torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0]))
    assert a.grad.tolist() == [0.0, -1.0, 1.0, 1.0, 0.0]
