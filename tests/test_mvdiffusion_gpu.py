"""CUDA-only checks of the pipeline's CUDA-graph path against eager execution (tiny models)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from lgm_core.mvdiffusion import MultiViewPipeline
from lgm_core.runtime import building_cuda_graph_scope
from lgm_core.testing import make_tiny_pipeline_folder

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def folders(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("mvgpu")
    return {k: make_tiny_pipeline_folder(root / k, k) for k in ("mvdream", "imagedream")}


@pytest.mark.parametrize("kind", ["mvdream", "imagedream"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_graph_equals_eager(folders, kind, dtype):
    pipe = MultiViewPipeline.from_pretrained(folders[kind], dtype=dtype, device="cuda")
    img = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)) if kind == "imagedream" else None

    def run(graphs, prompts="owl", steps=3, **kw):
        pipe.use_cuda_graphs = graphs
        # eagerly, the kernels a graph holds (fused Triton ones included): the comparison is graph vs no graph
        with building_cuda_graph_scope() if not graphs else contextlib.nullcontext():
            return pipe(prompts, image=img, num_inference_steps=steps, generator=torch.Generator().manual_seed(1),
                        output_type="latent", **kw).latents

    eager = run(False)
    graph = run(True)
    assert len(pipe._unet_graphs.graphs) == 1
    encoders = [pipe._text_graphs] + ([pipe._image_graphs, pipe._encode_graphs] if kind == "imagedream" else [])
    assert all(not r.failed and len(r.graphs) == 1 for r in encoders)  # the encoders are graphed too
    with torch.no_grad():
        decoded = pipe.decode_latents(graph)  # use_cuda_graphs is on after run(True)
        pipe.use_cuda_graphs = False
        with building_cuda_graph_scope():
            decoded_eager = pipe.decode_latents(graph)
        torch.testing.assert_close(decoded, decoded_eager, atol=1e-3 if dtype == torch.float16 else 1e-5, rtol=0)
    assert not pipe._decode_graphs.failed and len(pipe._decode_graphs.graphs) == 1
    torch.testing.assert_close(graph, eager, atol=1e-3 if dtype == torch.float16 else 1e-5, rtol=0)
    # another batch size gets its own graph; going back reuses the first with fresh conditions
    b_eager = run(False, ["owl", "cat"])
    b_graph = run(True, ["owl", "cat"])
    torch.testing.assert_close(b_graph, b_eager, atol=1e-3 if dtype == torch.float16 else 1e-5, rtol=0)
    torch.testing.assert_close(run(True, "cat"), run(False, "cat"), atol=1e-3 if dtype == torch.float16 else 1e-5, rtol=0)
    assert len(pipe._unet_graphs.graphs) == 2

    def cancel(i, n, lat):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(True, steps=4, callback=cancel)
    torch.testing.assert_close(run(True), graph, atol=0, rtol=0)
    # weights moved behind the pipeline's back (as ComfyUI's offloading does): graphs are captured
    # again instead of replaying reads of freed memory
    pipe.unet.cpu()
    filler = torch.empty(64 << 20, device="cuda")  # occupy the freed blocks so the weights come back elsewhere
    pipe.unet.cuda()
    del filler
    torch.testing.assert_close(run(True), graph, atol=0, rtol=0)
    # re-capture worked (no fall back to eager)
    assert pipe.use_cuda_graphs and not pipe._unet_graphs.failed and len(pipe._unet_graphs.graphs) == 1
    out = pipe("owl", image=img, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (4, 256, 256, 3)


@pytest.mark.parametrize("kind", ["mvdream", "imagedream"])
def test_optimize_for_inference_channels_last(folders, kind):
    """The default fast path (graphs + channels-last UNet + fused kernels) stays within fp16 noise:
    its distance to the fp32 pipeline is no larger than (1.5x) that of plain fp16 eager execution on
    contiguous weights with torch's kernels."""
    from lgm_core.models import unet as unet_module

    img = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)) if kind == "imagedream" else None

    def run(pipe):
        return pipe("owl", image=img, num_inference_steps=3, generator=torch.Generator().manual_seed(1),
                    output_type="latent").latents.float()

    ref = MultiViewPipeline.from_pretrained(folders[kind], dtype=torch.float32, device="cuda")
    ref.use_cuda_graphs = False
    reference = run(ref)
    pipe = MultiViewPipeline.from_pretrained(folders[kind], dtype=torch.float16, device="cuda")
    pipe.use_cuda_graphs = False
    fused = unet_module.FUSED_GROUPNORM
    unet_module.FUSED_GROUPNORM = False
    try:
        plain = run(pipe)
    finally:
        unet_module.FUSED_GROUPNORM = fused
    pipe.optimize_for_inference()
    convs = [p for p in pipe.unet.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    vae_convs = [p for p in pipe.vae.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in vae_convs)  # with the fused VAE blocks
    captures = []
    real_capture = pipe._unet_graphs._capture
    pipe._unet_graphs._capture = lambda static: captures.append(1) or real_capture(static)
    fast = run(pipe)
    assert len(pipe._unet_graphs.graphs) == 1
    noise = (plain - reference).abs().max()
    assert (fast - reference).abs().max() <= 1.5 * noise + 1e-3
    # the q/k/v concatenation the warm-up creates is keyed with the weights: the next call replays
    assert any(m._qkv is not None for m in pipe.unet.modules() if hasattr(m, "_qkv"))
    torch.testing.assert_close(run(pipe), fast, atol=0, rtol=0)
    assert captures == [1]
    # output_type="pt" stays on the GPU; the fused channels-last VAE decodes within fp16 noise of eager
    out = pipe("owl", image=img, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.device.type == "cuda" and out.images.shape == (4, 256, 256, 3)
    with torch.no_grad():
        pipe.use_cuda_graphs = False
        eager_images = pipe.decode_latents(out.latents.view(1, -1, *out.latents.shape[1:])[:, :4].flatten(0, 1))
    assert float((eager_images - out.images).abs().max()) < 2e-2
