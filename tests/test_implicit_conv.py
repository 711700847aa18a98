"""The Triton implicit-GEMM 3x3 convolution (lgm_core/models/implicit_conv.py) and the GroupNorm statistics it
takes as a prologue (fused_norm.group_norm_scale_shift): the same sums as F.conv2d / group_norm + F.conv2d.

Without CUDA the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1); shapes and
tiles are small there.
"""

import os

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SMALL = None  # tile config for the interpreter, set by the fixture


@pytest.fixture
def ic():
    pytest.importorskip("triton")
    if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not 1 (tests/conftest.py sets it)")
    from lgm_core.models import implicit_conv

    return implicit_conv


def small(ic, o, block_m=32, block_h=0):
    """A small tile (the interpreter runs every program in Python; on a GPU it exercises the masks)."""
    return ic.ConvConfig(block_m=block_m, block_n=min(64, 1 << (ic.padded(o) - 1).bit_length()), block_k=16,
                         num_warps=4,
                         num_stages=1 if not CUDA else 2, block_h=block_h)


def nhwc(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("n,c,h,w,o,dtype,bias", [
    (2, 9, 8, 8, 64, torch.float32, True),     # LGM's conv_in: 9 channels padded to 16 in the weights
    (1, 32, 8, 12, 14, torch.float16, False),  # LGM's conv_out: 14 outputs padded to 16, non-square image
    (3, 32, 5, 7, 16, torch.float32, True),    # pixel count not a multiple of the tile
])
@pytest.mark.parametrize("tma", [False, True])
def test_conv_equals_conv2d(ic, n, c, h, w, o, dtype, bias, tma):
    g = torch.Generator().manual_seed(1)
    x = nhwc(torch.randn(n, c, h, w, generator=g).to(dtype)).to(DEVICE)
    weight = (torch.randn(o, c, 3, 3, generator=g) / (9 * c) ** 0.5).to(dtype).to(DEVICE)
    b = torch.randn(o, generator=g).to(dtype).to(DEVICE) if bias else None
    taps = ic.tap_weights(weight)
    assert taps.shape == (9, ic.padded(c), ic.padded(o))
    cfg = small(ic, o, block_m=16, block_h=2 if tma else 0)
    if tma and not ic.supports(x, taps, config=cfg):
        # TMA takes whole 16-byte rows of two channel blocks or more (conv_in's 9 channels, 32 in fp16 rows: no)
        assert c % 16 or c <= cfg.block_k or not ic._tma_available(x.device)
        pytest.skip("TMA does not take this input (the gathered kernel runs it)")
    y = ic.conv3x3(x, taps, b, out_channels=o, config=cfg)
    # float64 reference: cuDNN's float32 convolution may round its inputs to TF32 (torch's default)
    ref = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1).float()
    assert y.shape == (n, o, h, w) and y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-5 if dtype == torch.float32 else 4e-3  # fp32 accumulation; fp16: one rounding of the output
    assert float((y.float() - ref).abs().max()) <= tol * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("silu,with_add", [(True, True), (False, False)])
def test_prologue_equals_group_norm_then_conv(ic, silu, with_add):
    from lgm_core.models import fused_norm

    n, c, h, w, o = 2, 64, 8, 8, 32
    g = torch.Generator().manual_seed(2)
    x = nhwc(torch.randn(n, c, h, w, generator=g).half() * 3 + 1).to(DEVICE)
    gw, gb = torch.randn(c, generator=g).to(DEVICE), torch.randn(c, generator=g).to(DEVICE)
    add = torch.randn(c, generator=g).half().to(DEVICE) if with_add else None
    weight = (torch.randn(o, c, 3, 3, generator=g) / (9 * c) ** 0.5).half().to(DEVICE)
    scale, shift = fused_norm.group_norm_scale_shift(x, gw, gb, 32, 1e-5, add=add)
    assert scale.shape == shift.shape == (n, c) and scale.dtype == torch.float32
    act = fused_norm.group_norm(x, gw, gb, 32, 1e-5, silu=silu, add=add)
    # the statistics are the GroupNorm's: its output is the rounded affine (then SiLU) of x
    z = x.float() * scale[:, :, None, None] + shift[:, :, None, None]
    z = F.silu(z) if silu else z
    assert float((z.half().float() - act.float()).abs().max()) <= 2e-3 * float(act.abs().max())
    y = ic.conv3x3(x, ic.tap_weights(weight), None, scale=scale, shift=shift, silu=silu, config=small(ic, o))
    ref = F.conv2d(act.double(), weight.double(), None, padding=1).float()  # zero padding of the activation
    assert y.shape == (n, o, h, w)
    assert float((y.float() - ref).abs().max()) <= 4e-3 * max(1.0, float(ref.abs().max()))


def test_default_tile_for_any_output_count(ic):
    """40 outputs pad to 48: the default tile covers them with a power-of-two block (masked)."""
    x = nhwc(torch.randn(1, 16, 4, 4)).to(DEVICE)
    weight = torch.randn(40, 16, 3, 3).to(DEVICE)
    assert ic.default_config(16, 40).block_n == 64
    y = ic.conv3x3(x, ic.tap_weights(weight), out_channels=40, config=None if CUDA else small(ic, 40, block_m=16))
    ref = F.conv2d(x.double(), weight.double(), None, padding=1).float()
    assert float((y - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_table_applies_to_its_dtype_only(ic):
    key = next(iter(ic.CHOICES))
    assert ic.choose(*key, dtype=torch.float16) is ic.CHOICES[key]
    assert ic.choose(*key, dtype=torch.bfloat16) is None and ic.choose(*key, dtype=torch.float32) is None
    assert ic.choose(1, 1, 1, 1, 1) is None


def test_rejects_bad_input(ic):
    x = nhwc(torch.randn(1, 16, 4, 4)).to(DEVICE)
    taps = ic.tap_weights(torch.randn(8, 16, 3, 3).to(DEVICE))
    with pytest.raises(ValueError, match="channels-last"):
        ic.conv3x3(x.contiguous(), taps, config=small(ic, 8))  # NCHW memory
    with pytest.raises(ValueError, match="channels-last"):
        ic.conv3x3(x, ic.tap_weights(torch.randn(8, 32, 3, 3).to(DEVICE)), config=small(ic, 8))  # wrong C
    with pytest.raises(ValueError, match="together"):
        ic.conv3x3(x, taps, scale=torch.ones(1, 16, device=DEVICE), config=small(ic, 8))
    with pytest.raises(ValueError, match="prologue"):
        ic.conv3x3(x, taps, silu=True, config=small(ic, 8))
    assert ic.supports(x, taps, config=small(ic, 8, block_m=32))  # without the prologue the tile is fine
    with pytest.raises(ValueError, match="multiple of"):  # 16 pixels per image, tile of 32: blocks straddle
        ic.conv3x3(x, taps, scale=torch.ones(1, 16, device=DEVICE), shift=torch.zeros(1, 16, device=DEVICE),
                   config=small(ic, 8, block_m=32))
    with pytest.raises(ValueError, match="bias"):
        ic.conv3x3(x, taps, torch.zeros(3, device=DEVICE), config=small(ic, 8))
    with pytest.raises(ValueError, match="tap_weights"):
        ic.tap_weights(torch.randn(8, 16, 1, 1))


@pytest.mark.skipif(not CUDA, reason="CUDA graphs")
def test_tma_tile_replays_from_a_cuda_graph(ic):
    """The TMA kernel's descriptors are captured with the graph: replays after other allocations stay right."""
    x = nhwc(torch.randn(4, 128, 32, 32, device="cuda").half())
    weight = (torch.randn(128, 128, 3, 3, device="cuda") / 34).half()
    taps = ic.tap_weights(weight)
    cfg = ic.ConvConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3, block_h=4)
    if not ic.supports(x, taps, config=cfg):
        pytest.skip("no TMA on this GPU / Triton")
    ref = F.conv2d(x.double(), weight.double(), None, padding=1).float()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ic.conv3x3(x, taps, config=cfg)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = ic.conv3x3(x, taps, config=cfg)
    junk = [torch.randn(1 << 20, device="cuda") for _ in range(4)]  # noqa: F841  (takes freed memory)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert float((y.float() - ref).abs().max()) <= 4e-3 * float(ref.abs().max())


def test_lgm_fused_path_takes_listed_shapes(ic, monkeypatch):
    """With a shape listed in CHOICES, LGM's fused path runs it on the kernel (conv_in with its bias, a
    ResnetBlock's convolutions without) and the Gaussians match the cuDNN path's."""
    from lgm_core.models import fused_norm, unet
    from lgm_core.models.lgm import LGM, LGMConfig
    from lgm_core.runtime import building_cuda_graph_scope

    monkeypatch.setattr(unet, "FUSED_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(unet, "FUSED_GROUPNORM", True)
    monkeypatch.setattr(unet, "_fused_module", fused_norm)
    monkeypatch.setattr(ic, "CHOICES", {})
    config = LGMConfig(down_channels=(32, 32, 32), down_attention=(False, False, False), mid_attention=False,
                       up_channels=(32, 32), up_attention=(False, False), splat_size=4, input_size=8, output_size=8)
    torch.manual_seed(0)
    dtype = torch.float16  # the fused path is for half types (the interpreter gets bf16 dots wrong)
    model = LGM(config).to(DEVICE, dtype).eval().use_channels_last()
    x = torch.randn(1, 4, 9, 8, 8, device=DEVICE)

    def run():
        with torch.inference_mode(), building_cuda_graph_scope():
            return model._forward_gaussians(x).float()

    base = run()
    calls = []
    real = ic.conv3x3
    monkeypatch.setattr(ic, "conv3x3", lambda *a, **k: calls.append(tuple(a[0].shape)) or real(*a, **k))
    tile = small(ic, 32, block_m=16)
    ic.CHOICES[(9, 32, 4, 8, 8)] = tile  # conv_in
    ic.CHOICES[(32, 32, 4, 8, 8)] = tile  # the first level's ResnetBlock convolutions
    got = run()
    assert (4, 9, 8, 8) in calls and calls.count((4, 32, 8, 8)) >= 2
    assert float((got - base).abs().max()) <= 2e-2  # half-precision activations, sums in another order
