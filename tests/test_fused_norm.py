"""The fused Triton GroupNorm(+SiLU) (lgm_core/models/fused_norm.py) and when GroupNorm32 uses it.

Without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors; tests that
need Triton skip when it is not installed. References are computed in float64, so the tolerance is the
output dtype's rounding: half an fp16 ulp; one bf16 ulp, because the interpreter truncates to bf16.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lgm_core.models import unet
from lgm_core.models.unet import GroupNorm32, ResnetBlock
from lgm_core.runtime import building_cuda_graph_scope

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture(scope="module")
def fn():
    pytest.importorskip("triton")
    if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not 1 (tests/conftest.py sets it)")
    from lgm_core.models import fused_norm
    return fused_norm


def reference(x, w, b, silu):
    y = F.group_norm(x.double(), 32, w.double(), b.double(), 1e-5)
    return F.silu(y) if silu else y


def assert_rounding_close(got, ref, dtype):
    assert got.dtype == dtype
    ulp_rel = 2.0 ** -11 if dtype == torch.float16 else 2.0 ** -7
    err = (got.double() - ref).abs()
    bound = ref.abs() * ulp_rel + 1e-4  # 1e-4: float32 statistics, far below one ulp of values ~1
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max()):.3g}"


def make(shape, dtype, channels_last, mean=0.0, std=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g) * std + mean).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, generator=g).to(dtype)
    b = torch.randn(c, generator=g).to(dtype)
    return x.to(DEVICE), w.to(DEVICE), b.to(DEVICE)


@pytest.mark.parametrize("path", ["one_pass", "split"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 64, 9, 7), (1, 192, 5, 11), (3, 384, 1, 1), (1, 1024, 3, 5),
                                   (1, 2048, 2, 3)])
def test_matches_float64_group_norm(fn, shape, dtype, channels_last, path, monkeypatch):
    """Groups of 2, 6, 12, 32 and 64 channels (192, 384: channel counts that are not powers of two, which
    take the split reduction in both paths; 2048: LGM big's widest up-block input), through the
    one-program kernel and the split reduction."""
    monkeypatch.setattr(fn, "ONE_PASS_MAX", 0 if path == "split" else 32768)
    x, w, b = make(shape, dtype, channels_last, mean=3.0, std=2.0)
    for silu in (False, True):
        y = fn.group_norm(x, w, b, 32, 1e-5, silu=silu)
        assert y.shape == x.shape
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert_rounding_close(y.cpu(), reference(x.cpu(), w.cpu(), b.cpu(), silu), dtype)


@pytest.mark.parametrize("programs_per_sm", [1, 64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_split_reduction_and_large_mean(fn, channels_last, programs_per_sm, monkeypatch):
    """Several pixel tiles per stats program (1 program per SM) or many programs per group (64), several
    merge steps in _finalize, and a mean far from zero (where E[x^2] - E[x]^2 would cancel; the shifted
    sums do not): 64 channels (groups of 2) at odd 13x11 with tiny tiles."""
    monkeypatch.setattr(fn, "TILE", 64)
    monkeypatch.setattr(fn, "STATS_TILE", 64)
    monkeypatch.setattr(fn, "REDUCE_BLOCK", 4)
    monkeypatch.setattr(fn, "ONE_PASS_MAX", 0)
    monkeypatch.setattr(fn, "STATS_PROGRAMS_PER_SM", programs_per_sm)
    x, w, b = make((3, 64, 13, 11), torch.float16, channels_last, mean=300.0, std=50.0, seed=1)
    _, stats_p, _, num_pb, pix_per_prog = fn._stats_plan(3, 64, 13 * 11, channels_last, x.device)
    if programs_per_sm == 1:
        assert pix_per_prog > stats_p  # several tiles per program
    else:
        assert num_pb > 1  # several programs (partials) per channel
    y = fn.group_norm(x, w, b, 32, 1e-5, silu=True)
    assert_rounding_close(y.cpu(), reference(x.cpu(), w.cpu(), b.cpu(), True), torch.float16)
    add = (torch.randn(3, 64, generator=torch.Generator().manual_seed(9)) * 20).float().to(DEVICE)
    y = fn.group_norm(x, w, b, 32, 1e-5, add=add)  # fp32 [N, C] add with several partials per channel
    summed = x.cpu().double() + add.cpu().double()[:, :, None, None]
    assert_rounding_close(y.cpu(), reference(summed, w.cpu(), b.cpu(), False), torch.float16)


@pytest.mark.parametrize("channels_last", [False, True])
def test_shifted_sums_with_an_outlier_first_pixel(fn, channels_last, monkeypatch):
    """The statistics are sums of deviations from each channel's first pixel: a first pixel 30 standard
    deviations from the group mean (a border outlier) still gives the output within half an fp16 ulp."""
    monkeypatch.setattr(fn, "ONE_PASS_MAX", 0)
    monkeypatch.setattr(fn, "STATS_TILE", 256)
    x, w, b = make((2, 64, 32, 32), torch.float16, channels_last, mean=5.0, std=1.0, seed=11)
    x[:, :, 0, 0] = 35.0
    y = fn.group_norm(x, w, b, 32, 1e-5)
    assert_rounding_close(y.cpu(), reference(x.cpu(), w.cpu(), b.cpu(), False), torch.float16)


@pytest.mark.parametrize("channels_last", [False, True])
def test_one_pass_large_mean_and_its_bound(fn, channels_last, monkeypatch):
    """The one-program kernel on groups of 8 channels x 143 pixels (an 8 x 256 tile) and a mean far from
    zero; a group whose tile exceeds ONE_PASS_MAX, or whose channel count is not a power of two, takes
    the split reduction."""
    monkeypatch.setattr(fn, "ONE_PASS_MAX", 2048)
    assert fn.one_pass_block(8, 13 * 11) == (8, 256)
    assert fn.one_pass_block(8, 13 * 21) is None  # 8 x 512 > 2048
    assert fn.one_pass_block(10, 13) is None  # 10 channels: masked lanes, misaligned rows
    for hw in ((13, 11), (13, 21)):
        x, w, b = make((2, 256, *hw), torch.float16, channels_last, mean=300.0, std=50.0, seed=1)
        y = fn.group_norm(x, w, b, 32, 1e-6, silu=True)
        ref = F.silu(F.group_norm(x.cpu().double(), 32, w.cpu().double(), b.cpu().double(), 1e-6))
        assert_rounding_close(y.cpu(), ref, torch.float16)


@pytest.mark.parametrize("channels_last", [False, True])
def test_one_pass_at_the_shipped_bound_with_one_channel_groups(fn, channels_last):
    """The shipped ONE_PASS_MAX with a full tile: groups of one channel (num_groups == C) over 128 x 128
    pixels, 1 x 16384 elements per program, the widest launch (16 warps)."""
    assert fn.one_pass_block(1, 128 * 128) == (1, 16384)
    x, w, b = make((1, 32, 128, 128), torch.float16, channels_last, mean=-2.0, std=3.0, seed=4)
    y = fn.group_norm(x, w, b, 32, 1e-5, silu=True)
    assert_rounding_close(y.cpu(), reference(x.cpu(), w.cpu(), b.cpu(), True), torch.float16)


@pytest.mark.parametrize("path", ["one_pass", "split"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("per_sample", [True, False])
def test_add_before_the_statistics(fn, channels_last, path, per_sample, monkeypatch):
    """``add`` ([N, C]: the diffusion ResBlock's timestep embedding; [C]: a folded convolution bias) is
    normalised with x, summed in fp32 in both paths: the result is GroupNorm(x + add) within the output
    rounding; a wrong shape is refused."""
    monkeypatch.setattr(fn, "ONE_PASS_MAX", 0 if path == "split" else 32768)
    x, w, b = make((2, 128, 6, 5), torch.float16, channels_last, mean=1.0, std=2.0, seed=2)
    assert (fn.one_pass_block(4, 30) is not None) == (path == "one_pass")
    add = (torch.randn(2, 128, generator=torch.Generator().manual_seed(3)) * 4).half().to(DEVICE)
    if not per_sample:
        add = add[1]
    for silu in (False, True):
        y = fn.group_norm(x, w, b, 32, 1e-5, silu=silu, add=add)
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        summed = x.cpu().double() + add.cpu().double().reshape(-1, 128)[:, :, None, None]
        ref = reference(summed, w.cpu(), b.cpu(), silu)
        assert_rounding_close(y.cpu(), ref, torch.float16)
    with pytest.raises(ValueError, match="add"):
        fn.group_norm(x, w, b, 32, 1e-5, add=add.reshape(-1)[:5])


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("biases", ["none", "a", "both"])
def test_residual_matches_float64(fn, channels_last, biases):
    """``residual`` = ((a + a_bias) + (b + b_bias)) * scale, rounded once (half an fp16 ulp of float64's
    result), in the inputs' layout; mismatched inputs are refused."""
    a, a_bias, b_bias = make((2, 96, 5, 7), torch.float16, channels_last, seed=4)
    b = make((2, 96, 5, 7), torch.float16, channels_last, mean=0.5, seed=5)[0]
    a_bias = None if biases == "none" else a_bias
    b_bias = b_bias if biases == "both" else None
    y = fn.residual(a, b, 0.7071067811865476, a_bias, b_bias)
    ref = a.cpu().double() + b.cpu().double()
    for v in (a_bias, b_bias):
        if v is not None:
            ref = ref + v.cpu().double().view(1, -1, 1, 1)
    ref = ref * 0.7071067811865476
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_rounding_close(y.cpu(), ref, torch.float16)
    other = b.contiguous(memory_format=torch.contiguous_format if channels_last else torch.channels_last)
    assert not fn.residual_supports(a, other) and not fn.residual_supports(a, b[:, :48])
    with pytest.raises(ValueError):
        fn.residual(a, other, 1.0)
    with pytest.raises(ValueError, match="a_bias"):
        fn.residual(a, b, 1.0, a_bias=torch.zeros(5, dtype=a.dtype, device=a.device))


def test_rejects_what_it_cannot_take(fn):
    x, w, b = make((1, 64, 4, 4), torch.float16, False)
    assert fn.supports(x, 32) and fn.supports(x.contiguous(memory_format=torch.channels_last), 32)
    odd = x.permute(0, 1, 3, 2)  # neither NCHW nor NHWC memory
    assert not fn.supports(odd, 32) and not fn.supports(x[:, :48], 32) and not fn.supports(x[0], 32)
    with pytest.raises(ValueError):
        fn.group_norm(odd, w, b, 32, 1e-5)


@pytest.fixture
def spy(fn, monkeypatch):
    """Lets GroupNorm32 dispatch on this test's device and counts fused calls (with their silu flag)."""
    calls = []
    real = fn.group_norm

    def counting(*args, **kwargs):
        calls.append(kwargs.get("silu", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(fn, "group_norm", counting)
    monkeypatch.setattr(unet, "FUSED_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(unet, "FUSED_GROUPNORM", True)
    monkeypatch.setattr(unet, "_fused_module", fn)
    monkeypatch.setattr(unet, "building_cuda_graph", lambda: True)  # as inside a CUDA-graph runner's capture
    return calls


def test_fused_only_while_a_graph_is_built(spy, monkeypatch):
    """Launched eagerly the fused kernels are slower than torch's (Triton's launcher): they run only
    while a CUDA graph is built, i.e. in the code a graph replays."""
    from lgm_core import runtime

    monkeypatch.setattr(unet, "building_cuda_graph", runtime.building_cuda_graph)
    gn = half_norm()
    x = torch.randn(2, 64, 6, 6, device=DEVICE).half()
    with torch.no_grad():
        gn(x, silu=True)
        assert spy == []
        with runtime.building_cuda_graph_scope():
            gn(x, silu=True)
        assert spy == [True]
        gn(x)
    assert spy == [True] and not runtime.building_cuda_graph()


def half_norm(dtype=torch.float16):
    torch.manual_seed(0)
    gn = GroupNorm32(64)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    return gn.to(DEVICE, dtype)


def test_groupnorm32_uses_fused_only_in_half_inference(spy, monkeypatch):
    gn = half_norm()
    x = torch.randn(2, 64, 6, 6, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch_out = F.silu(gn._group_norm(x))
        fused_out = gn(x, silu=True)
    assert spy == [True]
    assert (fused_out.float() - torch_out.float()).abs().max() < 1e-2  # one fp16 rounding apart at most
    with torch.inference_mode():
        gn(x)
    assert spy == [True, False]
    gn(x)  # autograd on (training): torch's kernels
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16 if DEVICE == "cpu" else torch.float16):
        gn(x)  # autocast (training's evaluation): torch's kernels
    with torch.no_grad():
        gn.float()(x.float())  # fp32: torch's kernels
        gn.half()(x.permute(0, 1, 3, 2))  # a layout the kernels do not take
        monkeypatch.setattr(unet, "FUSED_GROUPNORM", False)
        assert torch.equal(gn(x, silu=True), torch_out)  # switched off: exactly the torch path
        monkeypatch.setattr(unet, "FUSED_GROUPNORM", True)
        monkeypatch.setattr(unet, "_fused_module", False)  # Triton not importable
        gn(x)
    assert spy == [True, False]


def test_resnet_block_fuses_norm_and_silu(spy, monkeypatch):
    torch.manual_seed(0)
    block = ResnetBlock(64, 128).to(DEVICE, torch.bfloat16)
    x = torch.randn(1, 64, 5, 5, device=DEVICE).bfloat16()
    with torch.no_grad():
        y = block(x)
        monkeypatch.setattr(unet, "FUSED_GROUPNORM", False)
        y_torch = block(x)
    assert spy == [True, True] and y.dtype == torch.bfloat16
    assert (y.float() - y_torch.float()).abs().max() < 0.1


@pytest.mark.parametrize("c_in,c_out", [(64, 64), (64, 128)])
def test_resnet_block_folds_conv_biases(spy, fn, monkeypatch, c_in, c_out):
    """On the fused path the ResnetBlock's convolutions run without bias: conv1's bias goes into norm2's
    ``add``, conv2's and the shortcut's into ``residual`` (one kernel for biases, skip and scale); the
    result matches the unfused block within fp16 rounding, in its channels-last layout."""
    residual_calls = []
    real_residual = fn.residual
    monkeypatch.setattr(fn, "residual", lambda *a, **k: residual_calls.append(a[3:]) or real_residual(*a, **k))
    torch.manual_seed(0)
    block = ResnetBlock(c_in, c_out)
    with torch.no_grad():
        for m in (block.conv1, block.conv2, block.shortcut):
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_()  # nonzero biases, so that a lost one shows
    block = block.to(DEVICE, torch.float16).to(memory_format=torch.channels_last)
    x = torch.randn(2, c_in, 6, 5, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = block(x)
        monkeypatch.setattr(unet, "FUSED_GROUPNORM", False)
        y_torch = block(x)
        ref = block.float()(x.float())
    assert spy == [True, True] and len(residual_calls) == 1
    assert all(v is not None for v in residual_calls[0][: 2 if c_in != c_out else 1])
    assert y.is_contiguous(memory_format=torch.channels_last)
    tol = 2e-2 * float(ref.abs().max())  # a few fp16 roundings of values up to ref's size
    assert float((y.float() - ref).abs().max()) < tol and float((y_torch.float() - ref).abs().max()) < tol


def test_attention_residual_fused(spy, fn, monkeypatch):
    """MVAttention's ``(attn + x) * sqrt(1/2)`` is one residual kernel on channels-last input, equal to
    torch's ops within fp16 rounding."""
    calls = []
    real_residual = fn.residual
    monkeypatch.setattr(fn, "residual", lambda *a, **k: calls.append(1) or real_residual(*a, **k))
    torch.manual_seed(0)
    block = unet.MVAttention(64).to(DEVICE, torch.float16).to(memory_format=torch.channels_last)
    x = torch.randn(4, 64, 3, 4, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = block(x)
        monkeypatch.setattr(unet, "FUSED_GROUPNORM", False)
        y_torch = block(x)
    assert calls == [1] and y.is_contiguous(memory_format=torch.channels_last)
    assert float((y.float() - y_torch.float()).abs().max()) < 1e-2


def test_not_used_on_cpu_by_default():
    """No Triton needed: CPU tensors never reach the fused kernels unless a test opts in."""
    assert unet.FUSED_DEVICE_TYPES == ("cuda",)
    x = torch.randn(1, 64, 3, 3).half()
    with torch.no_grad():
        assert not unet.use_fused_groupnorm(x)
        gn = GroupNorm32(64).half()
        expected = F.silu(F.group_norm(x.float(), 32, gn.weight.float(), gn.bias.float(), 1e-5).half())
        assert torch.equal(gn(x, silu=True), expected)


def test_env_switch_off():
    code = "import lgm_core.models.unet as u; print(u.FUSED_GROUPNORM)"
    env = dict(os.environ, LGM_FUSED_NORM="0", PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stream_ordered_allocator_is_detected(monkeypatch):
    """cudaMallocAsync (ComfyUI's default on CUDA) turns the fused kernels off: Triton cannot check
    pointers into its pool during CUDA-graph capture (measured inside ComfyUI 0.33 on the H200)."""
    monkeypatch.setattr(torch.cuda, "get_allocator_backend", lambda: "cudaMallocAsync")
    assert unet._stream_ordered_allocator("cuda")
    assert not unet._stream_ordered_allocator("cpu")
    assert not unet.fused_groupnorm_available(torch.device("cuda"), torch.float16)
    monkeypatch.setattr(torch.cuda, "get_allocator_backend", lambda: "native")
    assert not unet._stream_ordered_allocator("cuda")


def test_fused_kernels_off_with_stream_ordered_allocator(spy, monkeypatch):
    gn = half_norm()
    x = torch.randn(1, 64, 4, 4, device=DEVICE).half()
    monkeypatch.setattr(unet, "_stream_ordered_allocator", lambda device_type: True)
    with torch.no_grad():
        gn(x, silu=True)
    assert spy == []
    assert not unet.fused_groupnorm_available(torch.device(DEVICE), torch.float16)
    monkeypatch.setattr(unet, "_stream_ordered_allocator", lambda device_type: False)
    assert unet.fused_groupnorm_available(torch.device(DEVICE), torch.float16)
    assert not unet.fused_groupnorm_available(torch.device(DEVICE), torch.float32)


def test_optimize_for_inference_keeps_cpu_layout():
    """On the CPU the default fast path changes nothing about the layout (channels-last is chosen only
    for CUDA models that get the fused kernels)."""
    from lgm_core.models.lgm import LGM, LGMConfig

    cfg = LGMConfig(down_channels=(32, 64), down_attention=(False, True), up_channels=(64,),
                    up_attention=(True,), splat_size=16, input_size=32, output_size=32)
    model = LGM(cfg).eval().optimize_for_inference()
    assert model._channels_last is False and model._graph_runner is not None


def test_build_or_launch_failure_falls_back_to_torch(spy, fn, monkeypatch, caplog):
    """Triton that imports but cannot build its launcher (no C compiler) must not break inference:
    one warning, then torch's kernels for good."""
    gn = half_norm()
    x = torch.randn(1, 64, 4, 4, device=DEVICE).half()

    def broken(*args, **kwargs):
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    monkeypatch.setattr(fn, "group_norm", broken)
    with torch.no_grad(), caplog.at_level("WARNING", logger="lgm_core"):
        out = gn(x, silu=True)
        again = gn(x, silu=True)
    assert torch.equal(out, F.silu(gn._group_norm(x))) and torch.equal(out, again)
    assert unet.FUSED_GROUPNORM is False
    assert sum("fused Triton kernels" in r.message for r in caplog.records) == 1


def test_optimize_for_inference_channels_last_when_fused(monkeypatch):
    """On a device with the fused kernels the default fast path stores the model channels-last; a
    second call keeps the same graph runner (its captured graphs)."""
    from lgm_core.models import lgm as lgm_module
    from lgm_core.models.lgm import LGM, LGMConfig

    cfg = LGMConfig(down_channels=(32, 64), down_attention=(False, True), up_channels=(64,),
                    up_attention=(True,), splat_size=16, input_size=32, output_size=32)
    model = LGM(cfg).eval()
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(unet, "fused_groupnorm_available", lambda device, dtype: True)
    model.optimize_for_inference()
    assert model._channels_last
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    runner = model._graph_runner
    model.optimize_for_inference()
    assert model._graph_runner is runner
    monkeypatch.setattr(unet, "fused_groupnorm_available", lambda device, dtype: False)
    other = LGM(cfg).eval()
    other.optimize_for_inference()
    assert not other._channels_last
    assert lgm_module is not None


def test_autocast_helper_matches_torch():
    assert unet._autocast_enabled("cpu") is False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert unet._autocast_enabled("cpu") is True
    assert unet._compiling() is False


def test_multiview_unet_fuses_its_group_norms(spy, monkeypatch):
    """The diffusion UNet (MVDream/ImageDream) goes through the same GroupNorm policy: every ResBlock's
    two GroupNorm+SiLU, each transformer's GroupNorm (eps 1e-6, no SiLU) and the output head's
    GroupNorm+SiLU are fused calls in half-precision inference, and the noise prediction stays within
    the half-precision rounding of torch's kernels."""
    from lgm_core.mvdiffusion.unet import MultiViewUNet, ResBlock, SpatialTransformer3D
    from lgm_core.testing.pipelines import TINY_UNET_CONFIG

    torch.manual_seed(0)
    model = MultiViewUNet(**TINY_UNET_CONFIG).eval()
    with torch.no_grad():  # non-trivial affine parameters (the default init is 1 / 0)
        for m in model.modules():
            if isinstance(m, GroupNorm32):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    model = model.to(DEVICE, torch.bfloat16)
    n_res = sum(isinstance(m, ResBlock) for m in model.modules())
    n_tf = sum(isinstance(m, SpatialTransformer3D) for m in model.modules())
    x = torch.randn(4, 4, 8, 8, device=DEVICE).bfloat16()
    t = torch.full((4,), 500, device=DEVICE)
    ctx = torch.randn(4, 5, TINY_UNET_CONFIG["context_dim"], device=DEVICE).bfloat16()
    cam = torch.randn(4, 16, device=DEVICE).bfloat16()
    with torch.no_grad():
        y = model(x, t, ctx, camera=cam, num_frames=4)
        monkeypatch.setattr(unet, "FUSED_GROUPNORM", False)
        y_torch = model(x, t, ctx, camera=cam, num_frames=4)
    assert spy.count(True) == 2 * n_res + 1 and spy.count(False) == n_tf
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    assert (y.float() - y_torch.float()).abs().max() < 0.1


@pytest.mark.parametrize("c_out", [64, 96])
def test_diffusion_resblock_folds_conv_biases(spy, fn, monkeypatch, c_out):
    """The diffusion ResBlock's fused path: conv1's bias joins the timestep embedding in the second
    GroupNorm's ``add``, conv2's and the skip convolution's biases go into one ``residual`` kernel; the
    result matches the float32 block like the unfused fp16 block does. In training mode the block keeps
    the written-out ops."""
    from lgm_core.mvdiffusion.unet import ResBlock

    residual_calls = []
    real_residual = fn.residual
    monkeypatch.setattr(fn, "residual", lambda *a, **k: residual_calls.append(1) or real_residual(*a, **k))
    torch.manual_seed(0)
    block = ResBlock(64, 32, out_channels=c_out).eval()
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_()
    block = block.to(DEVICE, torch.float16).to(memory_format=torch.channels_last)
    x = torch.randn(2, 64, 6, 5, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    emb = torch.randn(2, 32, device=DEVICE).half()
    with torch.no_grad():
        y = block(x, emb)
        assert residual_calls == [1] and spy == [True, True]
        monkeypatch.setattr(unet, "FUSED_GROUPNORM", False)
        y_torch = block(x, emb)
        ref = block.float()(x.float(), emb.float())
    tol = 2e-2 * float(ref.abs().max())
    assert float((y.float() - ref).abs().max()) < tol and float((y_torch.float() - ref).abs().max()) < tol
    monkeypatch.setattr(unet, "FUSED_GROUPNORM", True)
    block.half().train()
    with torch.no_grad():
        block(x, emb)
    assert residual_calls == [1]


def fail_second_group_norm(fn, monkeypatch):
    """Makes the second fused GroupNorm call fail as a Triton build failure does (a block's norm2)."""
    real = fn.group_norm
    calls = []

    def second_call_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("Failed to find C compiler.")
        return real(*args, **kwargs)

    monkeypatch.setattr(fn, "group_norm", second_call_fails)


def test_diffusion_resblock_survives_a_fused_kernel_failure(spy, fn, monkeypatch, caplog):
    """The diffusion ResBlock's folded ``add`` is fp32 ([N, C]: embedding + conv1's bias): when the fused
    GroupNorm fails there, torch's path casts it to the activations' dtype (fp16 out, right values)."""
    from lgm_core.mvdiffusion.unet import ResBlock

    torch.manual_seed(0)
    block = ResBlock(64, 32).eval()
    with torch.no_grad():
        block.in_layers[2].bias.normal_()
    block = block.to(DEVICE, torch.float16)
    x = torch.randn(2, 64, 4, 4, device=DEVICE).half()
    emb = torch.randn(2, 32, device=DEVICE).half()
    fail_second_group_norm(fn, monkeypatch)
    with torch.no_grad(), caplog.at_level("WARNING", logger="lgm_core"):
        y = block(x, emb)
        ref = block.float()(x.float(), emb.float())
    assert y.dtype == torch.float16 and unet.FUSED_GROUPNORM is False
    assert float((y.float() - ref).abs().max()) < 2e-2 * float(ref.abs().max())


def test_folded_biases_survive_a_fused_kernel_failure(spy, fn, monkeypatch, caplog):
    """If the fused GroupNorm cannot build mid-block, the folded bias (conv1's, now norm2's ``add``) is
    applied by torch's path: the block's result is still right."""
    torch.manual_seed(0)
    block = ResnetBlock(64, 64)
    with torch.no_grad():
        block.conv1.bias.normal_()
    block = block.to(DEVICE, torch.float16).to(memory_format=torch.channels_last)
    x = torch.randn(1, 64, 4, 4, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    fail_second_group_norm(fn, monkeypatch)
    with torch.no_grad(), caplog.at_level("WARNING", logger="lgm_core"):
        y = block(x)
        ref = block.float()(x.float())
    assert y.dtype == torch.float16 and unet.FUSED_GROUPNORM is False
    assert float((y.float() - ref).abs().max()) < 2e-2 * float(ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_geglu_matches_float64(fn, dtype):
    torch.manual_seed(0)
    h = (torch.randn(3, 7, 2 * 1100, device=DEVICE) * 3).to(dtype)  # D > GEGLU_BLOCK: two column blocks
    value, gate = h.double().chunk(2, dim=-1)
    ref = value * 0.5 * gate * (1 + torch.erf(gate / 2 ** 0.5))
    assert_rounding_close(fn.geglu(h), ref, dtype)
    assert fn.geglu(h[:, :0]).shape == (3, 0, 1100)
    with pytest.raises(ValueError, match="contiguous"):
        fn.geglu(h.transpose(0, 1))


@pytest.mark.parametrize("tile", [0, 256, 4096, 6000])
def test_geglu_tiles_match_float64(fn, tile, monkeypatch):
    """The tiled GEGLU kernel (GEGLU_TILE > 0): tiles of rows x the largest power of two dividing D
    (D = 320: 64 columns, several column tiles; a partial last row tile), and the row kernel as fallback
    for a D with too small a power-of-two factor (D = 1100: 4)."""
    monkeypatch.setattr(fn, "GEGLU_TILE", tile)
    torch.manual_seed(0)
    for d in (320, 1100):
        h = (torch.randn(5, 7, 2 * d, device=DEVICE) * 3).half()
        value, gate = h.double().chunk(2, dim=-1)
        ref = value * 0.5 * gate * (1 + torch.erf(gate / 2 ** 0.5))
        assert_rounding_close(fn.geglu(h), ref, torch.float16)


def test_geglu_module_dispatch(spy, fn, monkeypatch):
    """The diffusion transformers' GEGLU runs the fused kernel in half-precision inference only, and
    agrees with torch's ``value * gelu(gate)``."""
    from lgm_core.mvdiffusion.unet import GEGLU

    calls = []
    real = fn.geglu
    monkeypatch.setattr(fn, "geglu", lambda h: (calls.append(h.shape), real(h))[1])
    torch.manual_seed(0)
    layer = GEGLU(16, 24).to(DEVICE, torch.bfloat16)
    x = torch.randn(2, 5, 16, device=DEVICE).bfloat16()
    with torch.no_grad():
        y = layer(x)
        assert calls == [(2, 5, 48)] and y.shape == (2, 5, 24)
        value, gate = layer.proj(x).chunk(2, dim=-1)
        assert (y.float() - (value * F.gelu(gate)).float()).abs().max() < 0.05
        layer.float()(x.float())  # fp32: torch's ops
    layer(x.float())  # autograd on: torch's ops
    assert len(calls) == 1


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 7, 320), (2, 5, 96), (1, 3, 1280)])
def test_layer_norm_matches_float64(fn, shape, dtype, with_residual):
    """``layer_norm`` = LayerNorm over the last axis (fp32 statistics, one rounding); with a residual,
    also the sum ``s = x + r`` rounded as torch's add, and the norm of that rounded sum."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(shape, generator=g) * 2 + 3).to(dtype).to(DEVICE)
    r = (torch.randn(shape, generator=g)).to(dtype).to(DEVICE) if with_residual else None
    w = torch.randn(shape[-1], generator=g).to(dtype).to(DEVICE)
    b = torch.randn(shape[-1], generator=g).to(dtype).to(DEVICE)
    out = fn.layer_norm(x, w, b, 1e-5, residual=r)
    if with_residual:
        s, y = out
        torch_sum = (x + r).cpu()
        if dtype == torch.float16 or CUDA:  # the residual stream exactly as torch's add rounds it
            assert torch.equal(s.cpu(), torch_sum)
        else:  # Triton's interpreter truncates to bf16 instead of rounding: one ulp
            assert bool(((s.cpu().double() - torch_sum.double()).abs() <= torch_sum.double().abs() * 2.0 ** -7).all())
        base = s
    else:
        y, base = out, x
    ref = F.layer_norm(base.cpu().double(), shape[-1:], w.cpu().double(), b.cpu().double(), 1e-5)
    assert_rounding_close(y.cpu(), ref, dtype)
    with pytest.raises(ValueError):
        fn.layer_norm(x.transpose(-1, -2), w[:1].expand(shape[-2]).contiguous(), b, 1e-5)  # not contiguous


def test_transformer_block_fuses_layer_norms(spy, fn, monkeypatch):
    """The diffusion transformer block: norm1 is one fused LayerNorm, the first two residual adds are
    fused with norm2 / norm3; the block's output equals the written-out ops within fp16 rounding."""
    from lgm_core.mvdiffusion.unet import BasicTransformerBlock3D

    calls = []
    real = fn.layer_norm
    monkeypatch.setattr(fn, "layer_norm", lambda *a, **k: calls.append(
        k.get("residual", a[4] if len(a) > 4 else None) is not None) or real(*a, **k))
    torch.manual_seed(0)
    block = BasicTransformerBlock3D(64, 2, 32, context_dim=48).eval()
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    block = block.to(DEVICE, torch.float16)
    x = torch.randn(8, 6, 64, device=DEVICE).half()
    ctx = torch.randn(8, 5, 48, device=DEVICE).half()
    with torch.no_grad():
        y = block(x, ctx, num_frames=4)
        monkeypatch.setattr(unet, "FUSED_GROUPNORM", False)
        y_torch = block(x, ctx, num_frames=4)
        ref = block.float()(x.float(), ctx.float(), num_frames=4)
    assert calls == [False, True, True]
    tol = 2e-2 * float(ref.abs().max())
    assert float((y.float() - ref).abs().max()) < tol and float((y_torch.float() - ref).abs().max()) < tol


@pytest.mark.parametrize("kernel", ["residual", "layer_norm"])
def test_residual_and_layer_norm_failures_fall_back(spy, fn, monkeypatch, caplog, kernel):
    """A residual or LayerNorm kernel that cannot build gives torch's result (and switches the fused
    kernels off with one warning)."""
    from lgm_core.mvdiffusion.unet import BasicTransformerBlock3D

    def broken(*args, **kwargs):
        raise RuntimeError("Failed to find C compiler.")

    monkeypatch.setattr(fn, kernel, broken)
    torch.manual_seed(0)
    with torch.no_grad(), caplog.at_level("WARNING", logger="lgm_core"):
        if kernel == "residual":
            block = ResnetBlock(64, 64).to(DEVICE, torch.float16)
            x = torch.randn(1, 64, 4, 4, device=DEVICE).half()
            y, ref = block(x), block.float()(x.float())
        else:
            block = BasicTransformerBlock3D(64, 2, 32, context_dim=48).eval().to(DEVICE, torch.float16)
            x = torch.randn(4, 6, 64, device=DEVICE).half()
            ctx = torch.randn(4, 5, 48, device=DEVICE).half()
            y, ref = block(x, ctx, num_frames=4), block.float()(x.float(), ctx.float(), num_frames=4)
    assert y.dtype == torch.float16 and unet.FUSED_GROUPNORM is False
    assert float((y.float() - ref).abs().max()) < 2e-2 * float(ref.abs().max())
    assert sum("fused Triton kernels" in r.message for r in caplog.records) == 1


def test_off_the_fused_path_the_blocks_are_the_written_out_ops():
    """Outside the fused path (here: CPU, no graph being built) the helpers are exactly the original ops:
    LGM's ResnetBlock and MVAttention, the diffusion transformer block, bit for bit."""
    from lgm_core.mvdiffusion.unet import BasicTransformerBlock3D

    torch.manual_seed(0)
    with torch.no_grad():
        block = ResnetBlock(32, 64)
        x = torch.randn(2, 32, 5, 5)
        h = block.conv1(F.silu(block.norm1._group_norm(x)))
        h = block.conv2(F.silu(block.norm2._group_norm(h)))
        assert torch.equal(block(x), (h + block.shortcut(x)) * unet.SKIP_SCALE)
        att = unet.MVAttention(32)
        x = torch.randn(4, 32, 3, 3)
        y = att.norm(x).reshape(1, 4, 32, 3, 3).permute(0, 1, 3, 4, 2).reshape(1, 36, 32)
        y = att.attn(y).reshape(1, 4, 3, 3, 32).permute(0, 1, 4, 2, 3).reshape(4, 32, 3, 3)
        assert torch.equal(att(x), (y + x) * unet.SKIP_SCALE)
        tb = BasicTransformerBlock3D(64, 2, 32, context_dim=48).eval()
        x, ctx = torch.randn(8, 6, 64), torch.randn(8, 5, 48)
        xm = x.reshape(2, 24, 64)
        xm = tb.attn1(tb.norm1(xm)) + xm
        xs = xm.reshape(8, 6, 64)
        xs = tb.attn2(tb.norm2(xs), ctx) + xs
        assert torch.equal(tb(x, ctx, num_frames=4), tb.ff(tb.norm3(xs)) + xs)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
                        latent_channels=4, norm_num_groups=32, sample_size=16).eval()
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.GroupNorm)) and m.bias is not None:
                m.bias.normal_(0, 0.5)  # nonzero biases, so that a lost one shows
    return vae


def test_vae_resnets_on_the_fused_path(spy, fn, monkeypatch):
    """fused_vae.install: diffusers' ResnetBlock2D blocks of the VAE (decoder and encoder) run the fused
    GroupNorm+SiLU with conv1's bias as ``add`` and one residual kernel per block, the decoder's final
    GroupNorm+SiLU is one fused kernel; the decoded images match
    the float32 VAE like diffusers' own fp16 forward does. Off the fused path the output is diffusers'
    bit for bit, and uninstall restores the class forward."""
    from lgm_core.mvdiffusion import fused_vae

    residual_calls = []
    real_residual = fn.residual
    monkeypatch.setattr(fn, "residual", lambda *a, **k: residual_calls.append(1) or real_residual(*a, **k))
    vae = tiny_vae()
    blocks = [m for m in vae.decoder.modules() if fused_vae.is_plain_resnet(m)]
    assert len(blocks) == 2 + 2 * 2  # mid block's two, then layers_per_block + 1 per up block
    ref_vae = tiny_vae()
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        ref = ref_vae.decode(z).sample
    vae = vae.to(DEVICE, torch.float16)
    routed = len([m for m in vae.modules() if fused_vae.is_plain_resnet(m)]) + 1  # + the decoder's tail
    assert fused_vae.is_plain_decoder(vae.decoder) and not fused_vae.is_plain_decoder(vae.encoder)
    assert fused_vae.install(vae) == routed
    assert fused_vae.install(vae) == routed and set(vae.state_dict()) == set(ref_vae.state_dict())  # idempotent
    zh = z.to(DEVICE, torch.float16)
    with torch.no_grad():
        y = vae.decode(zh).sample
        assert len(residual_calls) == len(blocks) and spy == [True] * (2 * len(blocks) + 1)
        monkeypatch.setattr(unet, "FUSED_GROUPNORM", False)
        y_torch = vae.decode(zh).sample
    tol = 2e-2 * float(ref.abs().max())
    assert float((y.float().cpu() - ref).abs().max()) < tol
    assert float((y_torch.float().cpu() - ref).abs().max()) < tol
    # off the fused path (no graph being built): diffusers' forward, bit for bit
    monkeypatch.setattr(unet, "FUSED_GROUPNORM", True)
    monkeypatch.setattr(unet, "building_cuda_graph", lambda: False)
    plain = tiny_vae().to(DEVICE, torch.float16)
    with torch.no_grad():
        assert torch.equal(vae.decode(zh).sample, plain.decode(zh).sample)
    assert len(residual_calls) == len(blocks)
    fused_vae.uninstall(vae)
    assert all("forward" not in vars(m) for m in vae.modules())


def test_vae_blocks_that_are_not_plain_keep_diffusers_forward():
    """A ResnetBlock2D with a time embedding or resampling inside is not routed (the folded pass would
    not compute it)."""
    from diffusers.models.resnet import ResnetBlock2D

    from lgm_core.mvdiffusion import fused_vae

    assert fused_vae.is_plain_resnet(ResnetBlock2D(in_channels=32, out_channels=64, temb_channels=None))
    assert not fused_vae.is_plain_resnet(ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=16))
    assert not fused_vae.is_plain_resnet(ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=None, up=True))
    assert not fused_vae.is_plain_resnet(ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=None,
                                                       non_linearity="mish"))
    assert not fused_vae.is_plain_resnet(torch.nn.Conv2d(3, 3, 1))


def test_self_attention_fuses_qkv_on_the_fused_path(spy, monkeypatch):
    """On the fused path the diffusion UNet's self-attention runs q, k and v as one GEMM with the weights
    concatenated once (a non-persistent buffer: not in the state dict, moves with the module, rebuilt when a
    weight changes); the result equals the three-GEMM path within fp16 rounding. Cross-attention and
    off-path calls keep the three projections."""
    from lgm_core.mvdiffusion import unet as mv_unet

    torch.manual_seed(0)
    attn = mv_unet.MemoryEfficientCrossAttention(64, None, heads=4, dim_head=16).to(DEVICE, torch.float16)
    x = torch.randn(2, 9, 64, device=DEVICE).half()
    with torch.no_grad():
        y = attn(x)
        cached = attn._qkv
        assert cached is not None and cached.shape == (192, 64) and "_qkv" not in attn.state_dict()
        assert attn(x) is not None and attn._qkv is cached  # reused
        monkeypatch.setattr(mv_unet, "FUSE_QKV", False)
        y_three = attn(x)
        monkeypatch.setattr(mv_unet, "FUSE_QKV", True)
        assert float((y.float() - y_three.float()).abs().max()) < 2e-2 * float(y_three.abs().max())
        attn.to_k.weight.mul_(2)  # an in-place change: rebuilt
        y2 = attn(x)
        assert attn._qkv is not cached and torch.equal(attn._qkv[64:128], attn.to_k.weight)
        assert not torch.equal(y2, y)
        monkeypatch.setattr(unet, "building_cuda_graph", lambda: False)  # off the fused path: three GEMMs
        before = attn._qkv
        attn.to_v.weight.mul_(2)
        attn(x)
        assert attn._qkv is before
    attn.drop_qkv_cache()
    assert attn._qkv is None


def test_fused_qkv_with_weights_made_in_inference_mode(spy):
    """ComfyUI builds models inside torch.inference_mode(): their weights are inference tensors without a
    version counter; the q/k/v cache keys them by storage alone (reading ``_version`` would raise)."""
    from lgm_core.mvdiffusion import unet as mv_unet

    torch.manual_seed(0)
    with torch.inference_mode():
        attn = mv_unet.MemoryEfficientCrossAttention(64, None, heads=4, dim_head=16).to(DEVICE, torch.float16)
        assert attn.to_q.weight.is_inference()
        x = torch.randn(2, 9, 64, device=DEVICE).half()
        y = attn(x)
        cached = attn._qkv
        assert cached is not None and attn(x) is not None and attn._qkv is cached
    assert y.shape == x.shape


@pytest.mark.parametrize("path", ["one_pass", "split"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("biases", ["none", "both"])
def test_residual_group_norm_is_the_two_kernels_bitwise(fn, path, channels_last, dtype, biases, monkeypatch):
    """``residual_group_norm`` = ``residual`` then ``group_norm`` of its result, bit for bit (the join rounded
    once, the statistics of the rounded join), in the inputs' layout, on the one-pass and the split path."""
    if path == "split":
        monkeypatch.setattr(fn, "ONE_PASS_MAX", 0)
    a, w, b = make((2, 64, 5, 7), dtype, channels_last, seed=6)
    r, a_bias, b_bias = make((2, 64, 5, 7), dtype, channels_last, mean=3.0, seed=7)
    a_bias = None if biases == "none" else a_bias
    b_bias = b_bias if biases == "both" else None
    s_ref = fn.residual(a, r, 0.7071067811865476, a_bias, b_bias)
    for silu in (False, True):
        s, y = fn.residual_group_norm(a, r, 0.7071067811865476, a_bias, b_bias, w, b, 32, 1e-5, silu=silu)
        assert torch.equal(s, s_ref) and s.stride() == a.stride()
        assert torch.equal(y, fn.group_norm(s_ref, w, b, 32, 1e-5, silu=silu)) and y.stride() == a.stride()
        assert_rounding_close(y.cpu(), reference(s_ref.cpu(), w.cpu(), b.cpu(), silu), dtype)


def test_residual_group_norm_rejects_what_it_cannot_take(fn):
    a, w, b = make((1, 64, 4, 4), torch.float16, False)
    other = a.contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="residual_group_norm"):
        fn.residual_group_norm(a, other, 1.0, None, None, w, b, 32, 1e-5)
    with pytest.raises(ValueError, match="residual_group_norm"):
        fn.residual_group_norm(a[:, :48], a[:, :48], 1.0, None, None, w[:48], b[:48], 32, 1e-5)
    with pytest.raises(ValueError, match="b_bias"):
        fn.residual_group_norm(a, a, 1.0, None, torch.zeros(3, dtype=a.dtype, device=a.device), w, b, 32, 1e-5)


def test_blocks_join_residuals_into_the_next_group_norm(spy, fn, monkeypatch):
    """On the fused path a ResnetBlock's and an attention block's residual join run inside the next
    GroupNorm's kernels: bitwise the residual kernel then the GroupNorm, with no residual launch; the
    blocks called on their own still return tensors."""
    torch.manual_seed(0)
    net = unet.ResnetBlock(32, 64)
    att = unet.MVAttention(64)
    norm = GroupNorm32(64)
    with torch.no_grad():
        for p in [*net.parameters(), *att.parameters(), *norm.parameters()]:
            if p.dim() == 1:
                p.normal_(0.0, 0.3)
    net, att, norm = (m.to(DEVICE, torch.float16).to(memory_format=torch.channels_last) for m in (net, att, norm))
    x = torch.randn(4, 32, 3, 4, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(unet, "JOIN_RESIDUAL_INTO_NORM", True)
    joined_calls = counting_calls(fn, "residual_group_norm", monkeypatch)
    residual_calls = counting_calls(fn, "residual", monkeypatch)

    def chain():
        h = att.joined(net.joined(x))
        assert isinstance(h, unet.PendingResidual)
        return unet.norm_of_joined(norm, h, silu=True)

    with torch.no_grad(), building_cuda_graph_scope():
        s, y = chain()
        assert (len(joined_calls), len(residual_calls)) == (2, 0)
        monkeypatch.setattr(unet, "JOIN_RESIDUAL_INTO_NORM", False)
        s_ref, y_ref = chain()
        assert (len(joined_calls), len(residual_calls)) == (2, 2)
        assert isinstance(net(x), torch.Tensor) and isinstance(att(s), torch.Tensor)
    assert torch.equal(s, s_ref) and torch.equal(y, y_ref)


def test_unet_joins_every_residual_that_feeds_a_group_norm(spy, fn, monkeypatch):
    """In LGM's U-Net every join followed by a GroupNorm (the next ResnetBlock, attention block or the
    final norm) is joined into it; the others (before a downsampling, a concatenation, an upsampling)
    stay residual kernels. The kernels are replaced by torch's ops here (fast), so this checks the
    routing and that the output is unchanged by it."""
    from lgm_core.models.lgm import LGM, LGMConfig

    def torch_group_norm(x, w, b, groups, eps, silu=False, add=None):
        if add is not None:
            x = x + add.to(x.dtype).view(1, -1, 1, 1)
        y = F.group_norm(x.float(), groups, w.float(), b.float(), eps)
        return (F.silu(y) if silu else y).to(x.dtype)

    def torch_residual(a, b, scale, a_bias=None, b_bias=None):
        y = a.float() + b.float()
        for v in (a_bias, b_bias):
            if v is not None:
                y = y + v.float().view(1, -1, 1, 1)
        return (y * scale).to(a.dtype)

    joined_calls, residual_calls = [], []
    monkeypatch.setattr(fn, "group_norm", torch_group_norm)
    monkeypatch.setattr(fn, "residual", lambda *a, **k: residual_calls.append(1) or torch_residual(*a, **k))
    monkeypatch.setattr(fn, "residual_group_norm", lambda a, b, sc, ab, bb, w, bi, g, eps, silu=False: (
        joined_calls.append(1) or (lambda t: (t, torch_group_norm(t, w, bi, g, eps, silu)))(torch_residual(a, b, sc, ab, bb))))
    cfg = LGMConfig(down_channels=(32, 32, 64), down_attention=(False, False, True), mid_attention=True,
                    up_channels=(64, 32), up_attention=(True, False), splat_size=4, input_size=8, output_size=8)
    monkeypatch.setattr(unet, "JOIN_RESIDUAL_INTO_NORM", True)
    torch.manual_seed(0)
    model = LGM(cfg).eval().to(DEVICE, torch.float16).use_channels_last()
    x = torch.randn(1, 4, 9, 8, 8, device=DEVICE)
    with torch.no_grad(), building_cuda_graph_scope():
        joined = model.forward_gaussians(x)
        n_joined, n_residual = len(joined_calls), len(residual_calls)
        monkeypatch.setattr(unet, "JOIN_RESIDUAL_INTO_NORM", False)
        separate = model.forward_gaussians(x)
    # 20 joins; into a GroupNorm: down 1 + 1 + 4 (into the next ResnetBlock, attention block or the mid
    # block), mid 2, up 3 (ResnetBlock -> attention) + 1 (the final norm); the other 8 feed a downsampling,
    # a concatenation or an upsampling
    assert (n_joined, n_residual) == (12, 8) and len(residual_calls) - n_residual == 20
    assert torch.equal(joined, separate)


def counting_calls(module, name, monkeypatch):
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls
