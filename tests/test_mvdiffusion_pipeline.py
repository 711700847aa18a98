"""MultiViewPipeline on tiny stand-in models saved in the hub layout (CPU, a few seconds)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch.nn.functional as F
import torch
from safetensors.torch import load_file, save_file

from lgm_core.cameras import default_input_cameras
from lgm_core.mvdiffusion import MultiViewPipeline
from lgm_core.mvdiffusion.cameras import mv_camera_matrices
from lgm_core.testing import make_tiny_pipeline_folder, tiny_lgm_config
from lgm_core.mvdiffusion.loading import ComponentError

STEPS = 2


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("mv")
    return {k: make_tiny_pipeline_folder(root / k, k) for k in ("mvdream", "imagedream")}


@pytest.fixture(scope="module")
def text_pipe(folders):
    return MultiViewPipeline.from_pretrained(folders["mvdream"], device="cpu")


@pytest.fixture(scope="module")
def image_pipe(folders):
    return MultiViewPipeline.from_pretrained(folders["imagedream"], device="cpu")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _image(seed=0, size=64):
    rng = np.random.default_rng(seed)
    return rng.random((size, size, 3), dtype=np.float32)


# ------------------------------------------------------------------------------------ tiny folders


def test_tiny_folder_layout(tmp_path, shared_dir):
    t0 = time.process_time()  # this process's CPU time: other jobs loading the machine do not count
    path = make_tiny_pipeline_folder(tmp_path / "imagedream-ipmv-diffusers", "imagedream")
    elapsed = time.process_time() - t0
    files = [p for p in path.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    assert size < 15e6, size
    assert elapsed < 20  # ~0.3 s of CPU when warm; generous for a cold start
    names = {str(p.relative_to(path)) for p in files}
    for required in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                     "vae/config.json", "text_encoder/model.fp16.safetensors", "tokenizer/vocab.json",
                     "tokenizer/merges.txt", "scheduler/scheduler_config.json", "image_encoder/model.safetensors",
                     "feature_extractor/preprocessor_config.json"):
        assert required in names
    assert not any(n.endswith(".py") for n in names)
    index = json.loads((path / "model_index.json").read_text())
    assert index["unet"] == ["mv_unet", "MultiViewUNetModel"]
    # rewriting in place replaces the folder atomically
    assert make_tiny_pipeline_folder(path, "mvdream") == path
    assert not (path / "image_encoder").exists()
    with pytest.raises(ValueError):
        make_tiny_pipeline_folder(tmp_path / "x", "sd15")


def test_loaded_components(text_pipe, image_pipe):
    assert not text_pipe.is_imagedream and text_pipe.num_frames == 4 and text_pipe.image_encoder is None
    assert image_pipe.is_imagedream and image_pipe.num_frames == 5
    assert type(text_pipe.scheduler).__name__ == "DDIMScheduler"
    assert text_pipe.dtype == torch.float32  # fp16 variant weights upcast on CPU
    ids = text_pipe.tokenizer(["a"], padding="max_length", max_length=77).input_ids[0]
    assert ids[:3] == [49406, 320, 49407] and ids[3] == 0  # BOS, "a", EOS, pad id 0


def test_strict_and_missing_components(folders, tmp_path):
    bad = shutil.copytree(folders["mvdream"], tmp_path / "bad")
    weights = bad / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    sd.pop("out.2.bias")
    save_file(sd, str(weights))
    with pytest.raises(RuntimeError, match="out.2.bias"):
        MultiViewPipeline.from_pretrained(bad)
    missing = shutil.copytree(folders["mvdream"], tmp_path / "missing")
    shutil.rmtree(missing / "vae")
    with pytest.raises(ComponentError, match="vae"):
        MultiViewPipeline.from_pretrained(missing)
    noweights = shutil.copytree(folders["mvdream"], tmp_path / "noweights")
    (noweights / "text_encoder" / "model.fp16.safetensors").rename(noweights / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(ComponentError, match="safetensors"):
        MultiViewPipeline.from_pretrained(noweights)
    with pytest.raises(ComponentError, match="model_index"):
        MultiViewPipeline.from_pretrained(folders["mvdream"] / "unet")
    with pytest.raises(ComponentError):
        MultiViewPipeline.from_pretrained(tmp_path / "does" / "not" / "exist")


# ------------------------------------------------------------------------------------ text path


def test_text_to_views(text_pipe):
    out = text_pipe("a ceramic owl", num_inference_steps=STEPS, generator=_gen(0), elevation=10.0)
    assert out.images.shape == (4, 256, 256, 3) and out.images.dtype == np.float32
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0 and out.images.std() > 0
    assert out.latents.shape == (4, 4, 32, 32)
    torch.testing.assert_close(out.camera_embedding, mv_camera_matrices(4, 10.0))
    views = out.views
    assert views.images.shape == (1, 4, 3, 256, 256) and views.elevation == 10.0
    torch.testing.assert_close(views.images[0, 0], torch.from_numpy(out.images[1]).permute(2, 0, 1))
    torch.testing.assert_close(views.images[0, 3], torch.from_numpy(out.images[0]).permute(2, 0, 1))
    torch.testing.assert_close(views.cameras, default_input_cameras(10.0))
    grid = out.grid()
    assert grid.shape == (512, 512, 3)
    np.testing.assert_array_equal(grid[:256, :256], out.images[1])  # LGM view 0 (front) top-left
    np.testing.assert_array_equal(grid[256:, 256:], out.images[0])  # LGM view 3 bottom-right


def test_determinism_under_seed(text_pipe):
    kw = dict(num_inference_steps=1, output_type="latent")
    torch.manual_seed(123)
    a = text_pipe("owl", generator=_gen(7), **kw)
    torch.manual_seed(456)  # the global RNG must not matter
    b = text_pipe("owl", generator=_gen(7), **kw)
    c = text_pipe("owl", generator=_gen(8), **kw)
    torch.testing.assert_close(a.latents, b.latents, atol=0, rtol=0)
    assert (a.latents - c.latents).abs().max() > 1e-3


def test_batch_grouping_object_major(text_pipe):
    """Objects are independent: a batch of 2 prompts x 2 samples equals the 4 single runs."""
    lat = torch.randn(16, 4, 32, 32, generator=_gen(3))
    batch = text_pipe(["owl", "cat"], num_images_per_prompt=2, num_inference_steps=1, latents=lat,
                      output_type="latent")
    assert batch.latents.shape == (16, 4, 32, 32) and batch.num_objects == 4 and batch.images is None
    for obj, prompt in enumerate(["owl", "owl", "cat", "cat"]):
        single = text_pipe(prompt, num_inference_steps=1, latents=lat[4 * obj: 4 * obj + 4], output_type="latent")
        torch.testing.assert_close(batch.latents[4 * obj: 4 * obj + 4], single.latents, atol=1e-4, rtol=1e-4)


def test_no_cfg_and_outputs(text_pipe):
    out = text_pipe("owl", guidance_scale=1.0, num_inference_steps=STEPS, generator=_gen(0), output_type="pt")
    assert isinstance(out.images, torch.Tensor) and out.images.shape == (4, 256, 256, 3)
    assert torch.isfinite(out.images).all()
    nocfg = text_pipe("owl", guidance_scale=1.0, num_inference_steps=STEPS, generator=_gen(0), output_type="latent")
    cfg = text_pipe("owl", guidance_scale=7.5, num_inference_steps=STEPS, generator=_gen(0), output_type="latent")
    torch.testing.assert_close(nocfg.latents, out.latents)
    assert (cfg.latents - out.latents).abs().max() > 1e-4
    pil = text_pipe("owl", num_inference_steps=1, generator=_gen(0), output_type="pil")
    assert len(pil.images) == 4 and pil.images[0].size == (256, 256)
    assert pil.views.images.shape == (1, 4, 3, 256, 256)


def test_callback_and_cancellation(text_pipe):
    seen = []
    text_pipe("owl", num_inference_steps=3, guidance_scale=1.0, generator=_gen(0), output_type="latent",
              callback=lambda i, n, lat: seen.append((i, n, tuple(lat.shape))))
    assert seen == [(1, 3, (4, 4, 32, 32)), (2, 3, (4, 4, 32, 32)), (3, 3, (4, 4, 32, 32))]

    class Stop(Exception):
        pass

    def cancel(i, n, lat):
        if i == 2:
            raise Stop()

    with pytest.raises(Stop):
        text_pipe("owl", num_inference_steps=5, guidance_scale=1.0, generator=_gen(0), callback=cancel)
    # the pipeline is usable again and deterministic after a cancelled run
    a = text_pipe("owl", num_inference_steps=1, generator=_gen(1), output_type="latent")
    b = text_pipe("owl", num_inference_steps=1, generator=_gen(1), output_type="latent")
    torch.testing.assert_close(a.latents, b.latents, atol=0, rtol=0)


def test_swapped_scheduler(folders):
    from diffusers import EulerDiscreteScheduler

    pipe = MultiViewPipeline.from_pretrained(folders["mvdream"], device="cpu")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    out = pipe("owl", num_inference_steps=STEPS, generator=_gen(0), output_type="latent")
    assert torch.isfinite(out.latents).all() and out.latents.shape == (4, 4, 32, 32)


def test_text_bad_inputs(text_pipe):
    with pytest.raises(ValueError, match="ImageDream"):
        text_pipe("owl", image=_image(), num_inference_steps=1)
    with pytest.raises(ValueError, match="latents"):
        text_pipe("owl", latents=torch.zeros(5, 4, 32, 32), num_inference_steps=1)
    with pytest.raises(ValueError, match="negative_prompt"):
        text_pipe(["a", "b"], negative_prompt=["x", "y", "z"], num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type"):
        text_pipe("owl", output_type="jpeg")
    with pytest.raises(ValueError, match="num_inference_steps"):
        text_pipe("owl", num_inference_steps=0)


# ------------------------------------------------------------------------------------ image path


def test_image_to_views(image_pipe):
    img = _image(0)
    out = image_pipe("", image=img, num_inference_steps=STEPS, generator=_gen(0))
    assert out.images.shape == (4, 256, 256, 3)  # reference slot dropped
    assert out.latents.shape == (5, 4, 32, 32)
    assert torch.all(out.camera_embedding[4] == 0)
    torch.manual_seed(1)  # the global RNG must not matter: the VAE sample comes from the generator too
    again = image_pipe("", image=torch.from_numpy(img), num_inference_steps=STEPS, generator=_gen(0),
                       output_type="latent")
    torch.testing.assert_close(out.latents, again.latents, atol=0, rtol=0)
    u8 = image_pipe("", image=(img * 255).astype(np.uint8), num_inference_steps=1, generator=_gen(0),
                    output_type="latent")
    assert u8.latents.shape == (5, 4, 32, 32)


def test_image_latents_override_and_batch(image_pipe):
    img = _image(1)
    ref = torch.randn(1, 4, 32, 32, generator=_gen(5))
    a = image_pipe("", image=img, image_latents=ref, num_inference_steps=1, generator=_gen(0), output_type="latent")
    b = image_pipe("", image=img, image_latents=ref, num_inference_steps=1, generator=_gen(0), output_type="latent")
    torch.testing.assert_close(a.latents, b.latents, atol=0, rtol=0)
    lat = torch.randn(10, 4, 32, 32, generator=_gen(2))
    batch = image_pipe("", image=np.stack([img, _image(2)]), latents=lat, image_latents=torch.cat([ref, -ref]),
                       num_inference_steps=1, output_type="latent")
    single = image_pipe("", image=_image(2), latents=lat[5:], image_latents=-ref, num_inference_steps=1,
                        output_type="latent")
    torch.testing.assert_close(batch.latents[5:], single.latents, atol=1e-4, rtol=1e-4)
    nocfg = image_pipe("", image=img, guidance_scale=1.0, num_inference_steps=1, generator=_gen(0),
                       output_type="latent")
    assert torch.isfinite(nocfg.latents).all()


def test_image_bad_inputs(image_pipe):
    with pytest.raises(ValueError, match="pass `image`"):
        image_pipe("owl", num_inference_steps=1)
    with pytest.raises(ValueError, match="RGBA"):
        image_pipe("", image=np.zeros((64, 64, 4), np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        image_pipe("", image=np.zeros((3, 64, 64), np.float32), num_inference_steps=1)
    with pytest.raises(TypeError, match="dtype"):
        image_pipe("", image=np.zeros((64, 64, 3), np.int64), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_pipe("", image=np.full((64, 64, 3), 2.0, np.float32), num_inference_steps=1)
    with pytest.raises(TypeError):
        image_pipe("", image="photo.png", num_inference_steps=1)
    with pytest.raises(ValueError, match="prompts"):
        image_pipe(["a", "b", "c"], image=np.stack([_image(0), _image(1)]), num_inference_steps=1)
    with pytest.raises(ValueError, match="image_latents"):
        image_pipe("", image=_image(0), image_latents=torch.zeros(1, 4, 16, 16), num_inference_steps=1)


def test_pipe_to_lgm_one_line(text_pipe):
    lgm_mod = pytest.importorskip("lgm_core.models.lgm")
    torch.manual_seed(0)
    lgm = lgm_mod.LGM(tiny_lgm_config()).eval()
    out = text_pipe("owl", num_inference_steps=1, generator=_gen(0))
    gaussians = lgm.reconstruct(out.views)
    assert gaussians.positions.shape[0] == 1 and torch.isfinite(gaussians.positions).all()


def test_pipeline_layer_chains_the_stages(text_pipe, image_pipe):
    """lgm_core.pipelines: the same views as calling the pipeline by hand, Gaussians from them."""
    from lgm_core.models.lgm import LGM
    from lgm_core.pipelines import DEFAULT_NEGATIVE_PROMPT, image_to_3d, text_to_3d

    torch.manual_seed(0)
    lgm = LGM(tiny_lgm_config()).eval()
    result = text_to_3d(text_pipe, lgm, "owl", steps=1, seed=3, elevation=5.0)
    by_hand = text_pipe("owl", negative_prompt=DEFAULT_NEGATIVE_PROMPT, num_inference_steps=1, generator=_gen(3),
                        elevation=5.0, output_type="pt")
    assert torch.equal(result.views.images, by_hand.views.images) and result.views.elevation == 5.0
    assert result.gaussians.num_gaussians == lgm.config.num_gaussians
    rgba = torch.zeros(48, 64, 4)
    rgba[10:30, 20:40] = torch.tensor([1.0, 0.0, 0.0, 1.0])  # an object with an alpha mask: recentred
    steps = []
    result = image_to_3d(image_pipe, lgm, rgba, steps=2, seed=1, callback=lambda i, n, _lat: steps.append((i, n)))
    assert result.views.images.shape == (1, 4, 3, 256, 256) and steps == [(1, 2), (2, 2)]
    assert torch.isfinite(result.gaussians.positions).all()


def test_clip_preprocessing_matches_transformers(image_pipe, spec_dir):
    from transformers import CLIPImageProcessor

    fe_dir = spec_dir / "mvdream_configs" / "imagedream-ipmv-diffusers" / "feature_extractor"
    processor = CLIPImageProcessor.from_pretrained(str(fe_dir))
    img = (np.random.default_rng(0).random((256, 300, 3)) * 255).astype(np.uint8)
    ref = processor(images=[img], return_tensors="pt").pixel_values
    ours = image_pipe._clip_pixels(img[None])  # parameters from the folder's preprocessor_config.json
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    saved = image_pipe.feature_extractor
    try:
        image_pipe.feature_extractor = processor  # a transformers processor instance works too
        torch.testing.assert_close(image_pipe._clip_pixels(img[None]), ref, atol=1e-5, rtol=0)
    finally:
        image_pipe.feature_extractor = saved


def test_optimize_for_inference_is_inert_on_cpu(folders):
    pipe = MultiViewPipeline.from_pretrained(folders["mvdream"], device="cpu")
    pipe.use_cuda_graphs = False
    assert pipe.optimize_for_inference() is pipe and pipe.use_cuda_graphs
    assert all(p.is_contiguous() for p in pipe.unet.parameters())  # the layout changes on CUDA only


def test_encoders_run_through_graph_runners(folders, monkeypatch):
    """The CLIP text and image encoders go through CUDA-graph runners (exercised here with the CPU
    stand-in capture of test_runtime): a replay with new inputs gives what the encoder computes, and
    ``use_cuda_graphs = False`` / ``release_cuda_graphs()`` run eagerly / drop every graph."""
    from test_runtime import CPUGraphRunner

    pipe = MultiViewPipeline.from_pretrained(folders["imagedream"], device="cpu")
    for name in ("_unet_graphs", "_text_graphs", "_image_graphs", "_decode_graphs", "_encode_graphs"):
        runner = getattr(pipe, name)
        setattr(pipe, name, CPUGraphRunner(runner.fn, weights=runner.weights, name=runner.name))
    with torch.no_grad():
        a, b = pipe.encode_prompt(["an owl"]), pipe.encode_prompt(["a red car"])
        torch.testing.assert_close(b, pipe._text_hidden_states(
            pipe.tokenizer(["a red car"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids))
        assert not torch.equal(a, b) and pipe._text_graphs.captures == 1
        img = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
        feats = pipe.encode_image_features(img)
        latents = pipe.encode_image_latents(img, torch.Generator().manual_seed(3))
        decoded = pipe.decode_latents(latents)
        pipe.use_cuda_graphs = False
        torch.testing.assert_close(pipe.encode_image_features(img), feats)
        assert pipe._image_graphs.captures == 1
        # the graphed VAE moments + diffusers' own sampling = AutoencoderKL's latent_dist.sample
        x = F.interpolate(img.permute(0, 3, 1, 2) * 2 - 1, (256, 256), mode="bilinear", align_corners=False)
        direct = pipe.vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(latents, direct * pipe.vae.config.scaling_factor)
        torch.testing.assert_close(decoded, pipe.decode_latents(latents))
        assert pipe._encode_graphs.captures == 1 and pipe._decode_graphs.captures == 1
    pipe.release_cuda_graphs()
    assert not any(r.graphs for r in pipe._graph_runners())


def test_vae_layout_follows_cuda_graphs(folders, monkeypatch):
    """optimize_for_inference puts the VAE's weights channels-last where its GroupNorms run fused (inside its
    graphs); switching the graphs off puts them back in contiguous memory (torch's channels-last GroupNorm is
    slow), switching them on again restores channels-last, and a move to where the fused kernels do not run
    (fp32) makes them contiguous again. Exercised on the CPU with the fused kernels'
    device list widened (bf16 weights, the interpreter's Triton)."""
    pytest.importorskip("triton")
    from lgm_core.models import unet

    monkeypatch.setattr(unet, "FUSED_DEVICE_TYPES", ("cuda", "cpu"))
    pipe = MultiViewPipeline.from_pretrained(folders["mvdream"], dtype=torch.bfloat16, device="cpu")
    conv = next(p for p in pipe.vae.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert conv.is_contiguous()
    pipe.use_cuda_graphs = False  # before optimize_for_inference: the layout is left alone
    assert conv.is_contiguous()
    pipe.optimize_for_inference()
    conv = next(p for p in pipe.vae.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    pipe.use_cuda_graphs = False
    assert conv.is_contiguous()
    pipe.use_cuda_graphs = True
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert all(p.is_contiguous() for p in pipe.unet.parameters())  # the UNet's layout changes on CUDA only
    pipe.to(dtype=torch.float32)  # no fused kernels for fp32: contiguous again
    assert conv.is_contiguous()
