"""The reformulated convolutions of LGM's fused path (lgm_core/models/unet.py, lgm.py): sub-pixel
upsampling with its interleave joined to the skip concatenation, the padded input convolution and the
composed output head; and the derived-weight cache they (and the diffusion UNet's q/k/v) use.

Without CUDA the fused kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""

import os

import pytest
import torch
import torch.nn.functional as F

from lgm_core.models import derived, unet
from lgm_core.models import lgm as lgm_module
from lgm_core.models.lgm import LGM, LGMConfig
from lgm_core.runtime import building_cuda_graph_scope

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# the smallest LGM with an upsampling up block: 8 px in, splat 4 px
SMALL = LGMConfig(down_channels=(32, 32, 32), down_attention=(False, False, False), mid_attention=False,
                  up_channels=(32, 32), up_attention=(False, False), splat_size=4, input_size=8, output_size=8)


@pytest.fixture
def fn(monkeypatch):
    pytest.importorskip("triton")
    if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not 1 (tests/conftest.py sets it)")
    from lgm_core.models import fused_norm

    monkeypatch.setattr(unet, "FUSED_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(unet, "FUSED_GROUPNORM", True)
    monkeypatch.setattr(unet, "_fused_module", fused_norm)
    return fused_norm


def counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("shape", [(2, 5, 7, 6, 3), (1, 8, 4, 4, 16), (1, 3, 1, 2, 2)])
def test_phase_kernels_equal_upsample_then_conv(shape):
    n, c, h, w, o = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(o, c, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(o, generator=g, dtype=torch.float64)
    ref = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)
    kernels = unet.phase_kernels(weight)
    assert kernels.shape == (4 * o, c, 2, 2) and kernels.dtype == torch.float64
    z = F.conv2d(x, kernels, None, padding=1)
    got = unet.PhaseUpsampled(z, bias).materialize()
    assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-5  # taps summed in float32
    cl = unet.phase_kernels(weight.half().contiguous(memory_format=torch.channels_last))
    assert cl.dtype == torch.float16 and unet.channels_last(cl)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("skip_channels", [0, 6, 40])
def test_phase_upsample_kernel_matches_torch(fn, dtype, skip_channels):
    """The fused interleave + bias + concatenation equals ``cat([materialize(), skip])`` up to the one
    rounding (torch rounds the phase value and the bias sum separately)."""
    g = torch.Generator().manual_seed(1)
    o = 12
    z = torch.randn(2, 4 * o, 4, 6, generator=g).to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(o, generator=g).to(DEVICE, dtype)
    skip = None
    if skip_channels:
        skip = torch.randn(2, skip_channels, 6, 10, generator=g).to(DEVICE, dtype)
        skip = skip.contiguous(memory_format=torch.channels_last)
    got = fn.phase_upsample(z, bias, skip)
    up = unet.PhaseUpsampled(z.double(), bias.double()).materialize()
    ref = up if skip is None else torch.cat([up, skip.double()], 1)
    assert got.shape == (2, o + skip_channels, 6, 10) and got.dtype == dtype and unet.channels_last(got)
    ulp = 2.0 ** -11 if dtype == torch.float16 else 2.0 ** -7
    assert bool(((got.double() - ref).abs() <= ref.abs() * ulp + 1e-6).all())
    if skip is not None:
        assert torch.equal(got[:, o:], skip)  # the skip is copied exactly


def test_phase_upsample_rejects_what_it_cannot_take(fn):
    z = torch.randn(1, 8, 3, 3, device=DEVICE).half()  # contiguous, not channels-last
    bias = torch.zeros(2, device=DEVICE).half()
    assert not fn.phase_upsample_supports(z, bias, None)
    with pytest.raises(ValueError, match="phase_upsample"):
        fn.phase_upsample(z, bias)
    z = z.contiguous(memory_format=torch.channels_last)
    assert fn.phase_upsample_supports(z, bias, None)
    assert not fn.phase_upsample_supports(z, torch.zeros(3, device=DEVICE).half(), None)
    wrong = torch.zeros(1, 4, 5, 4, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    assert not fn.phase_upsample_supports(z, bias, wrong)  # 2H x 2W is 4 x 4


def small_lgm(dtype=torch.bfloat16, seed=0):
    torch.manual_seed(seed)
    model = LGM(SMALL).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.3)  # nonzero biases and norm shifts, so that a lost one shows
    fp32 = LGM(SMALL).eval()
    fp32.load_state_dict(model.state_dict())
    return model.to(DEVICE, dtype).use_channels_last(), fp32


@pytest.mark.parametrize("taps_on", [False, True], ids=["default", "tap-form"])
def test_lgm_fused_path_uses_the_conv_forms_and_stays_close(fn, monkeypatch, taps_on):
    """On the fused path the up block hands a PhaseUpsampled to the next block (one phase_upsample call),
    conv_in runs on 16 padded channels, (with TAP_CONV_MAX_PIXELS) the ResnetBlocks' 3x3 convolutions of
    small images in tap form and the head is one composed convolution; the Gaussians stay
    within a few bf16 roundings of the fp32 model, as the original ops, the state dict is unchanged and
    the derived weights are non-persistent buffers."""
    monkeypatch.setattr(unet, "TAP_CONV_MAX_PIXELS", 1024 if taps_on else 0)
    model, fp32 = small_lgm()
    x = torch.randn(1, 4, 9, 8, 8)
    phase_calls = counting(monkeypatch, fn, "phase_upsample")
    with torch.no_grad():
        ref = fp32.forward_gaussians(x)
        eager = model.forward_gaussians(x.to(DEVICE)).cpu()
        assert phase_calls == [] and not any(v is not None for v in model.buffers())  # eager: the original ops
        with building_cuda_graph_scope():
            fused = model.forward_gaussians(x.to(DEVICE)).cpu()
        assert phase_calls == [1]
        derived_names = {name for name, v in model.named_buffers() if v is not None}
        taps = {f"{name}.{conv}._tap_weight" for name, m in model.named_modules() if isinstance(m, unet.ResnetBlock)
                for conv in ("conv1", "conv2")} if taps_on else set()  # every level of this 8 px model is small
        assert derived_names == {"_head_weight", "_head_bias", "unet._conv_in_padded",
                                 "unet.up_blocks.0._phase_kernels"} | taps
        assert set(model.state_dict()) == set(fp32.state_dict())
    err_eager = float((eager - ref).abs().max())  # bf16 rounding of the original ops
    err = float((fused - ref).abs().max())
    assert err < max(3 * err_eager, 1e-2), (err, err_eager)
    model.release_cuda_graphs()
    assert not any(v is not None for v in model.buffers())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_tap_conv_equals_the_convolution(fn, dtype, bias):
    """tap_conv3x3 is conv2d(x, w, bias, padding=1) for images of any size (borders, non-square, channel
    counts off the kernel's blocks): products in float32 within one ulp of the output, in the input's
    dtype within three; channels-last output of the input's dtype."""
    from lgm_core.models import tap_conv

    g = torch.Generator().manual_seed(3)
    for n, c, h, w, o in ((2, 16, 8, 8, 24), (1, 8, 5, 7, 130), (3, 4, 1, 3, 8)):
        x = torch.randn(n, c, h, w, generator=g).to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)
        weight = (torch.randn(o, c, 3, 3, generator=g) / (3 * c ** 0.5)).to(DEVICE, dtype)
        b = torch.randn(o, generator=g).to(DEVICE, dtype) if bias else None
        ref = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
        ulp = (2.0 ** -10 if dtype == torch.float16 else 2.0 ** -7) * max(1.0, float(ref.abs().max()))  # one ulp
        taps = tap_conv.tap_weight(weight)
        assert taps.shape == (c, 9 * o)
        for fp32, bound in ((True, 1.0), (False, 3.0)):  # (the interpreter may truncate where CUDA rounds)
            got = tap_conv.tap_conv3x3(x, taps, b, fp32_products=fp32)
            assert got.shape == (n, o, h, w) and got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
            assert float((got.double() - ref).abs().max()) <= bound * ulp, (n, c, h, w, o, fp32)


def test_tap_conv_rejects_what_it_cannot_take(fn):
    from lgm_core.models import tap_conv

    x = torch.randn(1, 4, 3, 3, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    w = tap_conv.tap_weight(torch.randn(5, 4, 3, 3)).to(DEVICE).half()
    with pytest.raises(ValueError, match="channels-last"):
        tap_conv.tap_conv3x3(x.contiguous(), w)  # NCHW memory
    with pytest.raises(ValueError, match="channels-last"):
        tap_conv.tap_conv3x3(x, w.float())  # another dtype
    with pytest.raises(ValueError, match="bias"):
        tap_conv.tap_conv3x3(x, w, torch.zeros(4, device=DEVICE).half())
    with pytest.raises(ValueError, match="3, 3"):
        tap_conv.tap_weight(torch.randn(5, 4, 1, 1))


def test_tap_form_only_for_small_plain_3x3_convolutions(fn, monkeypatch):
    """With TAP_CONV_MAX_PIXELS set (off by default) the ResnetBlock's convolutions take the tap form on the
    fused path for images of at most that many pixels; larger images, other convolutions and the eager
    path keep cuDNN's."""
    assert unet.TAP_CONV_MAX_PIXELS == 0
    monkeypatch.setattr(unet, "TAP_CONV_MAX_PIXELS", 1024)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).to(DEVICE, torch.float16)
    small = torch.randn(4, 8, 4, 4, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    large = torch.randn(4, 8, 32, 32, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    assert not unet.tap_conv_applies(conv, small)  # eager: no graph being built
    with building_cuda_graph_scope(), torch.no_grad():
        assert unet.tap_conv_applies(conv, small) and not unet.tap_conv_applies(conv, large)
        assert not unet.tap_conv_applies(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1).to(DEVICE).half(), small)
        assert not unet.tap_conv_applies(conv, small.contiguous())
        calls = counting(monkeypatch, unet._tap_conv(), "tap_conv3x3")
        y = unet.conv_without_bias(conv, small, taps=True)
        assert calls == [1] and conv._tap_weight.shape == (8, 72)
        ref = F.conv2d(small.float(), conv.weight.float(), None, padding=1)
        assert float((y.float() - ref).abs().max()) < 1e-2
        unet.conv_without_bias(conv, small)  # taps=False (the diffusion UNet's blocks): cuDNN
        assert calls == [1]
        monkeypatch.setattr(unet, "TAP_CONV_MAX_PIXELS", 0)
        assert not unet.tap_conv_applies(conv, small)


def test_phase_fallback_when_the_kernel_fails(fn, monkeypatch, caplog):
    """If the interleave kernel cannot build or launch, the next block joins the materialised upsampling
    with torch's ops: same values within rounding, the fused kernels switched off with a log line."""
    model, fp32 = small_lgm()
    x = torch.randn(1, 4, 9, 8, 8)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(fn, "phase_upsample", broken)
    with torch.no_grad(), building_cuda_graph_scope():
        got = model.forward_gaussians(x.to(DEVICE)).cpu()
        ref = fp32.forward_gaussians(x)
    assert not unet.FUSED_GROUPNORM and "unavailable" in caplog.text
    assert float((got - ref).abs().max()) < 0.1


def test_input_conv_pads_on_the_fused_path_only(fn, monkeypatch):
    torch.manual_seed(0)
    net = unet.MVUNet((32, 32), (False, False), False, (32,), (False,)).eval()
    net = net.to(DEVICE, torch.bfloat16).to(memory_format=torch.channels_last)
    x = torch.randn(4, 9, 6, 6, device=DEVICE).bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        plain = net.input_conv(x)
        assert net._buffers.get("_conv_in_padded") is None
        with building_cuda_graph_scope():
            padded = net.input_conv(x)
    w = net._conv_in_padded
    assert w.shape == (32, 16, 3, 3) and torch.equal(w[:, :9], net.conv_in.weight) and not w[:, 9:].any()
    assert float((padded.float() - plain.float()).abs().max()) <= 0.02 * float(plain.abs().max())
    monkeypatch.setattr(unet, "PAD_INPUT_CHANNELS", 32)  # another width: the cached weight is rebuilt
    with torch.no_grad(), building_cuda_graph_scope():
        wider = net.input_conv(x)
    assert net._conv_in_padded.shape == (32, 32, 3, 3)
    assert float((wider.float() - plain.float()).abs().max()) <= 0.02 * float(plain.abs().max())


def test_derived_weight_is_rebuilt_when_a_source_changes():
    lin = torch.nn.Linear(3, 4)
    made = []

    def make(w, b):
        made.append(1)
        return w * 2 + b[:, None]

    first = derived.derived_weight(lin, "_twice", (lin.weight, lin.bias), make)
    assert derived.derived_weight(lin, "_twice", (lin.weight, lin.bias), make) is first and len(made) == 1
    assert "_twice" not in lin.state_dict() and not first.requires_grad
    with torch.no_grad():
        lin.bias.add_(1.0)  # in place: the version counter moves
    second = derived.derived_weight(lin, "_twice", (lin.weight, lin.bias), make)
    assert len(made) == 2 and torch.allclose(second, first + 1.0)
    lin.double()  # cast: new storage and dtype
    third = derived.derived_weight(lin, "_twice", (lin.weight, lin.bias), make)
    assert len(made) == 3 and third.dtype == torch.float64
    assert derived.derived_weight(lin, "_twice", (lin.weight, lin.bias), make, params=(2,)) is not third
    assert len(made) == 4  # a setting of ``make`` changed
    derived.drop_derived_weights(lin)
    assert lin._twice is None
    derived.derived_weight(lin, "_twice", (lin.weight, lin.bias), make)
    assert len(made) == 5


def test_derived_weight_of_inference_tensors():
    """Inference-mode weights (ComfyUI loads models so) have no version counter: keyed by storage."""
    with torch.inference_mode():
        lin = torch.nn.Linear(3, 4)
    made = []
    w = derived.derived_weight(lin, "_t", (lin.weight,), lambda t: made.append(1) or t.t().contiguous())
    assert derived.derived_weight(lin, "_t", (lin.weight,), lambda t: made.append(1) or t.t()) is w
    assert len(made) == 1


def test_derived_weight_survives_a_cast_of_the_module():
    """``module.half()`` casts a float32 derived buffer while its fp16 sources stay as they are: the cache
    notices (the buffer itself changed) and rebuilds it in the dtype ``make`` gives."""
    lin = torch.nn.Linear(3, 4).half()

    def bias32(b):
        return b.float() * 2

    first = derived.derived_weight(lin, "_b32", (lin.bias,), bias32)
    assert first.dtype == torch.float32
    lin.half()  # a no-op for the fp16 weights, a cast for the fp32 buffer
    assert lin._b32.dtype == torch.float16
    assert derived.derived_weight(lin, "_b32", (lin.bias,), bias32).dtype == torch.float32


def test_load_state_dict_drops_derived_weights(fn):
    """An in-place load into inference-mode weights moves no version counter: LGM.load_state_dict drops
    the derived weights, so the next fused call uses the loaded values."""
    model, _ = small_lgm()
    other, _ = small_lgm(seed=1)
    x = torch.randn(4, 9, 8, 8).to(DEVICE, torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        with building_cuda_graph_scope():
            model.unet.input_conv(x)
        assert model.unet._conv_in_padded is not None
        model.load_state_dict(other.state_dict())
        assert not any(v is not None for v in model.buffers())
        with building_cuda_graph_scope():
            got = model.unet.input_conv(x)
        ref = other.unet.conv_in(x)
    assert float((got.float() - ref.float()).abs().max()) <= 0.02 * float(ref.abs().max())


def test_diffusion_unet_upsamples_in_sub_pixel_form(fn, monkeypatch):
    """The diffusion UNet's Upsample (opt-in: at most PHASE_UPSAMPLE_MAX_CHANNELS channels) hands a
    PhaseUpsampled to the next output block on the fused path; the noise prediction stays within bf16
    rounding of the written-out ops, and with the threshold at 0 (the default) the original upsampling runs."""
    from lgm_core.mvdiffusion import unet as mv_unet
    from lgm_core.mvdiffusion.unet import MultiViewUNet
    from lgm_core.testing.pipelines import TINY_UNET_CONFIG

    assert mv_unet.PHASE_UPSAMPLE_MAX_CHANNELS == 0
    monkeypatch.setattr(mv_unet, "PHASE_UPSAMPLE_MAX_CHANNELS", 640)

    torch.manual_seed(0)
    model = MultiViewUNet(**TINY_UNET_CONFIG).eval().to(DEVICE, torch.bfloat16).to(memory_format=torch.channels_last)
    x = torch.randn(4, 4, 8, 8, device=DEVICE).bfloat16().contiguous(memory_format=torch.channels_last)
    t = torch.full((4,), 500, device=DEVICE)
    ctx = torch.randn(4, 5, TINY_UNET_CONFIG["context_dim"], device=DEVICE).bfloat16()
    cam = torch.randn(4, 16, device=DEVICE).bfloat16()
    calls = counting(monkeypatch, fn, "phase_upsample")
    with torch.no_grad():
        with building_cuda_graph_scope():
            y = model(x, t, ctx, camera=cam, num_frames=4)
        assert calls == [1]
        monkeypatch.setattr(mv_unet, "PHASE_UPSAMPLE_MAX_CHANNELS", 0)
        with building_cuda_graph_scope():
            y_before = model(x, t, ctx, camera=cam, num_frames=4)
        assert calls == [1]
        ref = model.float()(x.float(), t, ctx.float(), camera=cam.float(), num_frames=4)
    err, err_before = (float((v.float() - ref).abs().max()) for v in (y, y_before))
    assert err < max(2 * err_before, 0.05), (err, err_before)
