"""The runtime policy: defaults, and the CUDA-graph runner's bookkeeping exercised on the CPU with a
stand-in capture (static buffers, one capture per signature, re-capture when the weights move, eager
fallback). The real CUDA capture is checked against eager in test_lgm_gpu / test_mvdiffusion_gpu."""

from __future__ import annotations

import logging

import torch

from lgm_core import runtime
from lgm_core.runtime import CUDAGraphRunner, _Graph


class CPUGraphRunner(CUDAGraphRunner):
    """Graphs CPU inputs: a "capture" records ``fn`` over the static buffers, a replay re-runs it into
    the static output — so reading anything but the static buffers would give wrong results."""

    device_types = ("cpu",)
    fail = False

    def _capture(self, static):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures = getattr(self, "captures", 0) + 1
        output = self.fn(*static)
        return _Graph(static, lambda: output.copy_(self.fn(*static)), output)


def test_defaults_follow_one_policy():
    device, dtype = runtime.resolve_device_dtype()
    assert device == runtime.default_device()
    assert dtype == (torch.float16 if device.type == "cuda" else torch.float32)
    assert runtime.default_dtype("cuda") == torch.float16 and runtime.default_dtype("cpu") == torch.float32
    assert runtime.resolve_device_dtype("cpu", torch.bfloat16) == (torch.device("cpu"), torch.bfloat16)


def test_runner_replays_with_fresh_inputs_and_outputs():
    layer = torch.nn.Linear(3, 2)
    runner = CPUGraphRunner(lambda x, bias: layer(x) + (0 if bias is None else bias), weights=layer)
    with torch.no_grad():
        a, b = torch.rand(4, 3), torch.rand(4, 3)
        out_a = runner(a, None)
        out_b = runner(b, None)
        torch.testing.assert_close(out_b, layer(b))  # the new input was copied into the static buffer
        torch.testing.assert_close(out_a, layer(a))  # and the earlier result was not overwritten
        assert runner.captures == 1 and len(runner.graphs) == 1
        runner(torch.rand(2, 3), None)  # another shape: its own graph
        runner(a, torch.ones(2))
        assert runner.captures == 3 and len(runner.graphs) == 3


def test_runner_captures_again_when_the_weights_move():
    layer = torch.nn.Linear(3, 2)
    runner = CPUGraphRunner(layer, weights=layer)
    x = torch.rand(4, 3)
    with torch.no_grad():
        runner(x)
        layer.weight.data = layer.weight.data * 2  # new storage, as .to() / offloading gives
        torch.testing.assert_close(runner(x), layer(x))
    assert runner.captures == 2 and len(runner.graphs) == 1


def test_runner_runs_eagerly_with_autograd_when_disabled_and_after_a_failed_capture(caplog):
    layer = torch.nn.Linear(3, 2)
    runner = CPUGraphRunner(layer, weights=layer)
    x = torch.rand(4, 3)
    y = runner(x)  # autograd recording: eager, differentiable
    assert y.requires_grad and not runner.graphs
    runner.enabled = False
    with torch.no_grad():
        runner(x)
    assert not runner.graphs
    runner.enabled, runner.fail = True, True
    with caplog.at_level(logging.WARNING, logger="lgm_core"), torch.no_grad():
        torch.testing.assert_close(runner(x), layer(x))
        runner(x)
    assert runner.failed and not runner.graphs
    assert sum("capture" in r.message for r in caplog.records) == 1  # logged once
    cuda_runner = CUDAGraphRunner(layer, weights=layer)  # the real runner: CPU inputs never captured
    with torch.no_grad():
        torch.testing.assert_close(cuda_runner(x), layer(x))
    assert not cuda_runner.graphs


def test_lgm_graph_path_is_inert_on_cpu():
    from lgm_core.models.lgm import LGM
    from lgm_core.testing import tiny_lgm_config

    model = LGM(tiny_lgm_config()).eval()
    assert model.optimize_for_inference() is model and model._graph_runner is not None
    x = torch.rand(1, 4, 9, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_gaussians(x), model._forward_gaussians(x))
    assert not model._graph_runner.graphs


def test_compiled_or_eager_uses_the_given_compiler_and_falls_back():
    from lgm_core.runtime import CompiledOrEager

    calls = []

    def compiler(fn):
        def compiled(x):
            calls.append("compiled")
            if x < 0:
                raise RuntimeError("no Triton here")
            return fn(x) + 100
        return compiled

    f = CompiledOrEager(lambda x: x * 2, compiler=compiler)
    assert f(3) == 106 and calls == ["compiled"]
    assert f(-1) == -2 and not f.ok      # compiled call failed: eager from now on
    assert f(3) == 6 and calls == ["compiled", "compiled"]


def test_runner_marks_warm_up_and_capture_as_graph_building():
    """``runtime.building_cuda_graph()`` is true while a runner captures (the fused kernels' condition)
    and false for the replays and for eager calls."""
    seen = []

    def fn(x):
        seen.append(runtime.building_cuda_graph())
        return x * 2

    runner = CPUGraphRunner(fn)
    with torch.no_grad():
        runner(torch.ones(3))
        assert seen == [True, False]  # the stand-in capture runs fn, then its replay (outside the capture)
        runner(torch.ones(3))
        assert seen == [True, False, False]  # later calls only replay
    assert not runtime.building_cuda_graph()


def test_runner_keys_buffers_its_warm_up_creates():
    """A buffer the captured function creates from the weights on its first run (the diffusion UNet's
    concatenated q/k/v weights) joins the weights key after the capture: the next call replays instead
    of capturing again."""
    module = torch.nn.Linear(3, 3)
    module.register_buffer("cache", None, persistent=False)

    def fn(x):
        if module.cache is None:
            module.cache = module.weight.detach() * 2
        return x @ module.cache

    runner = CPUGraphRunner(fn, weights=module)
    with torch.no_grad():
        runner(torch.ones(1, 3))
        runner(torch.ones(1, 3))
    assert runner.captures == 1


def test_cudnn_benchmark_only_around_a_capture(monkeypatch):
    """cuDNN's algorithm search is on while a runner made with cudnn_benchmark=True captures
    (CUDNN_BENCHMARK) and the user's setting is back afterwards; without it, or with the switch off, it is
    left alone."""
    seen = []
    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "benchmark", False)
    with runtime._cudnn_benchmark():
        seen.append(cudnn.benchmark)
    assert seen == [True] and cudnn.benchmark is False
    with runtime._cudnn_benchmark(False):  # a runner without cudnn_benchmark (LGM's)
        seen.append(cudnn.benchmark)
    monkeypatch.setattr(runtime, "CUDNN_BENCHMARK", False)
    with runtime._cudnn_benchmark():
        seen.append(cudnn.benchmark)
    assert seen == [True, False, False] and cudnn.benchmark is False
    assert not CUDAGraphRunner(lambda x: x).cudnn_benchmark


def test_runner_captures_again_after_an_in_place_weight_change():
    """An in-place change of a weight (load_state_dict without assign, ``mul_``) drops the graphs: values the
    capture derived from the weights (the UNet's concatenated q/k/v) are rebuilt. Weights made in inference
    mode (as ComfyUI loads models) have no version counter and are keyed by address alone."""
    module = torch.nn.Linear(3, 3)
    runner = CPUGraphRunner(lambda x: module(x), weights=module)
    with torch.no_grad():
        runner(torch.ones(1, 3))
        runner(torch.ones(1, 3))
        assert runner.captures == 1
        module.load_state_dict({k: v * 2 for k, v in module.state_dict().items()})  # copies in place
        runner(torch.ones(1, 3))
    assert runner.captures == 2
    with torch.inference_mode():
        frozen = torch.nn.Linear(3, 3)
    runner = CPUGraphRunner(lambda x: frozen(x), weights=frozen)
    with torch.inference_mode():
        runner(torch.ones(1, 3))
        runner(torch.ones(1, 3))
    assert runner.captures == 1


def test_runner_drops_older_graphs_when_a_capture_replaces_a_derived_buffer():
    """A capture whose warm-up rebuilt a derived weight (one of its settings changed) leaves graphs
    captured before holding the freed old buffer: they are dropped, and re-captured when called."""
    from lgm_core.models.derived import derived_weight

    module = torch.nn.Linear(3, 3)
    setting = {"scale": 2.0}

    def fn(x):
        w = derived_weight(module, "_scaled", (module.weight,), lambda w: w * setting["scale"],
                           params=(setting["scale"],))
        return x @ w

    runner = CPUGraphRunner(fn, weights=module)
    with torch.no_grad():
        runner(torch.ones(1, 3))
        runner(torch.ones(2, 3))  # another shape, the same derived weight: both graphs kept
        assert runner.captures == 2 and len(runner.graphs) == 2
        setting["scale"] = 3.0
        runner(torch.ones(3, 3))  # rebuilt during this warm-up: the two older graphs are stale
        assert len(runner.graphs) == 1
        out = runner(torch.ones(1, 3))
    assert runner.captures == 4 and torch.allclose(out, torch.ones(1, 3) @ (module.weight * 3.0))


def test_runner_walks_the_weights_once_and_sees_replaced_ones(monkeypatch):
    """The per-call weight check walks the module tree only when its structure changed (a child module
    swapped, a buffer added); a parameter assigned anew (ComfyUI's weight patching) is read from its slot.
    Each of those makes the next call capture again with the new tensors."""
    walks = []
    walk = runtime._WeightWatch._walk
    monkeypatch.setattr(runtime._WeightWatch, "_walk", lambda self, items: (walks.append(1), walk(self, items)))
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    runner = CPUGraphRunner(lambda x: model(x), weights=model)
    x = torch.rand(4, 3)
    with torch.no_grad():
        for _ in range(5):
            runner(x)
        assert runner.captures == 1 and len(walks) == 1
        model[0].weight = torch.nn.Parameter(model[0].weight * 2)  # a new tensor object: read from its slot
        torch.testing.assert_close(runner(x), model(x))
        assert runner.captures == 2 and len(walks) == 1
        model[1] = torch.nn.Linear(3, 2)  # a child module swapped: walked again
        torch.testing.assert_close(runner(x), model(x))
        assert runner.captures == 3 and len(walks) == 2
        model[1].register_buffer("extra", torch.zeros(1))  # a new entry (it may be read): walked, captured again
        runner(x)
        runner(x)
        assert runner.captures == 4 and len(walks) == 3
    tensors = [torch.ones(2)]
    runner = CPUGraphRunner(lambda x: x * tensors[0], weights=lambda: tensors)  # a callable source of tensors
    with torch.no_grad():
        runner(torch.ones(2))
        tensors[0] = torch.full((2,), 3.0)
        assert torch.equal(runner(torch.ones(2)), torch.full((2,), 3.0)) and runner.captures == 2


def test_weight_watch_holds_no_tensors_and_covers_the_edge_cases():
    """The watch keeps no weight alive (an offloaded model's old buffers are freed), sees a slot set to
    None and one deleted while another is added, takes inference-mode weights (no version counter) also
    after their storage changed, and falls back to a full walk for TorchScript modules."""
    import gc
    import weakref

    watch = runtime._WeightWatch()
    model = torch.nn.BatchNorm1d(3)
    key = watch.fingerprint(model)
    old = weakref.ref(model.running_mean)
    model.to(torch.float64)  # new buffer objects in the same slots
    gc.collect()
    assert old() is None, "the watch kept a replaced buffer alive"
    assert watch.fingerprint(model) != key

    lin = torch.nn.Linear(2, 2)
    lin.register_buffer("cache", torch.ones(1), persistent=False)
    key = watch.fingerprint(lin)
    lin._buffers["cache"] = None  # as drop_derived_weights does
    none_key = watch.fingerprint(lin)
    assert none_key != key
    del lin._buffers["cache"]
    lin.register_buffer("other", torch.zeros(1), persistent=False)  # same number of entries
    assert watch.fingerprint(lin) != none_key

    with torch.inference_mode():
        frozen = torch.nn.Linear(2, 2)
    first = watch.fingerprint(frozen)  # no version counters: version 0
    frozen.weight.data = torch.ones(2, 2)
    second = watch.fingerprint(frozen)
    assert second != first and second == watch.fingerprint(frozen)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still what some users hold
        scripted = torch.jit.script(torch.nn.Linear(2, 2))
    key = watch.fingerprint(scripted)
    with torch.no_grad():
        scripted.weight.mul_(2)
    assert watch.fingerprint(scripted) != key
