"""Check a tile table (``implicit_conv_choices.json`` of ``probe_implicit_conv.py``) for correctness on the GPU:
each tile's output against cuDNN's, 3 eager calls and 3 replays from a CUDA graph; then LGM big (random
weights, batch 1) with the whole table against cuDNN only, eagerly (the graph's kernels), one entry at a time,
and from the project's graph runner. Found the 64-channel TMA tiles that Triton 3.6 gets wrong on the H200
(benchmarks/results/implicit_conv_diag_tma_h200.txt), which is why ``probe_implicit_conv`` now checks every tile.

    python benchmarks/probe_implicit_conv_diag.py implicit_conv_choices.json      # CUDA only, ~30 s
"""
import json, sys, torch, torch.nn.functional as F
sys.path[:0] = [str(__import__("pathlib").Path(__file__).resolve().parents[1]), str(__import__("pathlib").Path(__file__).resolve().parent)]
from lgm_core.models import implicit_conv as ic, unet
table = json.load(open(sys.argv[1]))
dev = "cuda"
for r in table:
    c, o, n, h, w = r["shape"]
    cfg = ic.ConvConfig(**r["config"])
    x = torch.randn(n, c, h, w, device=dev).half().contiguous(memory_format=torch.channels_last)
    wt = (torch.randn(o, c, 3, 3, device=dev) / (9 * c) ** 0.5).half().contiguous(memory_format=torch.channels_last)
    taps = ic.tap_weights(wt)
    ref = F.conv2d(x, wt, None, padding=1).float()
    eager = [float((ic.conv3x3(x, taps, None, out_channels=o, config=cfg).float() - ref).abs().max()) for _ in range(3)]
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ic.conv3x3(x, taps, None, out_channels=o, config=cfg)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = ic.conv3x3(x, taps, None, out_channels=o, config=cfg)
    junk = [torch.randn(1 << 20, device=dev) for _ in range(8)]
    graph = []
    for _ in range(3):
        g.replay(); torch.cuda.synchronize()
        graph.append(float((y.float() - ref).abs().max()))
    print(r["shape"], r["config"], "eager", [f"{e:.3g}" for e in eager], "graph", [f"{e:.3g}" for e in graph], flush=True)
# the network, eager (building a graph's kernels) and in the runner
from bench_lgm import build
from lgm_core.runtime import CUDAGraphRunner, building_cuda_graph_scope
model = build("big", dev, torch.float16).use_channels_last()
x = torch.randn(1, 4, 9, 256, 256, device=dev, generator=torch.Generator(dev).manual_seed(1))
def eager():
    with torch.inference_mode(), building_cuda_graph_scope():
        return model._forward_gaussians(x).float()
ic.CHOICES.clear(); base = eager()
ic.load_choices(sys.argv[1]); on = eager()
print("network eager: table vs none", float((on - base).abs().max()))
for shape in list(ic.CHOICES):
    keep = dict(ic.CHOICES); ic.CHOICES.clear(); ic.CHOICES[shape] = keep[shape]
    print("  only", shape, keep[shape].block_h, float((eager() - base).abs().max()))
    ic.CHOICES.update(keep)
runner = CUDAGraphRunner(model._forward_gaussians, weights=model)
with torch.inference_mode():
    for _ in range(3):
        print("network graph: table vs none", float((runner(x).float() - base).abs().max()))
