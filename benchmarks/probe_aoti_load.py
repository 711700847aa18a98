"""Which AOTInductor constant-handling variants load and run on CUDA, each in its own process (issue 15).

Usage on the device: python benchmarks/probe_aoti_load.py quick   (or: big in_so_cl,ext_copy_cl)
Result on the H200 (torch 2.11.0+cu130): every variant segfaults in aoti_load_package; see
benchmarks/results/probe_lgm_kernels_h200.md.
"""
import faulthandler, json, os, subprocess, sys, time
faulthandler.enable()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]
import torch

def child(variant, cfgname):
    from bench_lgm import build
    from lgm_core.models.lgm import LGMConfig
    from bench_floor import QUICK_LGM
    cfg = QUICK_LGM if cfgname == "quick" else LGMConfig.preset("big")
    cl = "cl" in variant
    model = build(cfg, "cuda", torch.float16).use_channels_last(cl)
    x = torch.randn(1, 4, 9, cfg.input_size, cfg.input_size, device="cuda")
    class W(torch.nn.Module):
        def __init__(s, m): super().__init__(); s.m = m
        def forward(s, x): return s.m._forward_gaussians(x)
    w = W(model)
    with torch.no_grad():
        ref = model._forward_gaussians(x).float()
        ep = torch.export.export(w, (x,), strict=False)
    ext = "ext" in variant
    path = f"/tmp/aotm_{variant}_{cfgname}.pt2"
    t = time.perf_counter()
    opts = {"aot_inductor.package_constants_in_so": False} if ext else {}
    torch._inductor.aoti_compile_and_package(ep, package_path=path, inductor_configs=opts)
    build_s = time.perf_counter() - t
    print("built", variant, build_s, os.path.getsize(path) / 2**20, flush=True)
    t = time.perf_counter()
    pkg = torch._inductor.aoti_load_package(path)
    fq = pkg.get_constant_fqns()
    print("fqns", len(fq), "of", len(w.state_dict()), flush=True)
    if ext:
        sd = w.state_dict()
        consts = {k: sd[k] for k in fq}
        if "contig" in variant:
            consts = {k: v.contiguous() for k, v in consts.items()}
        pkg.load_constants(consts, check_full_update=True, user_managed="um" in variant)
    print("loaded", flush=True)
    with torch.no_grad():
        out = pkg(x); torch.cuda.synchronize()
    load_s = time.perf_counter() - t
    e = float((out.float() - ref).abs().max())
    print("RESULT", json.dumps(dict(variant=variant, cfg=cfgname, build_s=build_s, load_s=load_s, err=e,
          mb=os.path.getsize(path) / 2**20, fqns=len(fq))), flush=True)

if __name__ == "__main__":
    if len(sys.argv) > 3:
        child(sys.argv[1], sys.argv[2]); raise SystemExit
    cfgname = sys.argv[1] if len(sys.argv) > 1 else "quick"
    variants = sys.argv[2].split(",") if len(sys.argv) > 2 else ["in_so", "in_so_cl", "ext_um", "ext_copy", "ext_um_cl", "ext_copy_cl", "ext_um_cl_contig", "ext_copy_cl_contig"]
    for v in variants:
        r = subprocess.run([sys.executable, __file__, v, cfgname, 'child'], capture_output=True, text=True, timeout=300)
        lines = [l for l in r.stdout.splitlines() if l.startswith(("RESULT", "built", "fqns", "loaded"))]
        print(v, "rc", r.returncode, lines, r.stderr[-600:] if r.returncode else "", flush=True)
