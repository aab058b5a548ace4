"""The triton backend on a GPU at training shapes: against chunked float32, determinism, autocast.

    python -m tools.kernels.gpu_large_shapes      # needs CUDA; tools/kernels/gpu_check.sh runs it

The unit tests use small shapes; this checks the issue's shapes (B = 512, 32 x 300 tokens)
and long query texts with ragged masks: scores and gradients of the triton kernels on bf16
inputs against the chunked backend on the same values in float32, the default (atomic)
backward against the deterministic (sorted) one, and two sorted backward passes bit for bit. A gradient can differ where two cosines tie to within float32
rounding (the max picks either token), so a large maximal difference at B = 512 is
reported with the number of such entries. Then the time of a forward+backward step on
float32 vectors (what bf16-mixed training feeds MaxSim) per backend, with and without autocast.
"""

import time

import torch
import torch.nn.functional as F

from lightning_modules.maxsim import maxsim_matrix
from lightning_modules.maxsim.dispatch import resolve_backend

dev = "cuda"
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
lin = torch.nn.Linear(384, 128).to(dev)
with torch.autocast("cuda", dtype=torch.bfloat16):
    v = F.normalize(lin(torch.randn(2, 8, 384, device=dev)), dim=-1)
    print("under bf16 autocast F.normalize gives", v.dtype, "; auto backend ->", resolve_backend("auto", v, v, None))


def t(fn, n=5):
    fn(); torch.cuda.synchronize()
    s = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - s) / n

g = torch.Generator(device=dev).manual_seed(0)
for (B, La, Lb, direction, red) in [(512, 32, 300, "a2b", "sum"), (256, 32, 300, "both", "mean"), (64, 256, 100, "both", "mean"), (48, 200, 77, "b2a", "sum")]:
    a = F.normalize(torch.randn(B, La, 128, device=dev, generator=g), dim=-1).bfloat16()
    b = F.normalize(torch.randn(B, Lb, 128, device=dev, generator=g), dim=-1).bfloat16()
    am = torch.rand(B, La, device=dev, generator=g) < 0.85; am[:, 0] = True
    bm = torch.rand(B, Lb, device=dev, generator=g) < 0.85; bm[:, 0] = True
    A, Bv = a.float().requires_grad_(True), b.float().requires_grad_(True)
    ref = maxsim_matrix(A, am, Bv, bm, direction=direction, reduction=red, backend="chunked")
    a16, b16 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    got = maxsim_matrix(a16, am, b16, bm, direction=direction, reduction=red, backend="triton")
    w = torch.randn(B, B, device=dev, generator=g)
    ga, gb = torch.autograd.grad(got, (a16, b16), w)
    ra, rb = torch.autograd.grad(ref, (A, Bv), w)
    torch.use_deterministic_algorithms(True)  # the sorted backward: twice, bit for bit
    sorted_runs = [torch.autograd.grad(maxsim_matrix(a16, am, b16, bm, direction=direction, reduction=red,
                                                     backend="triton"), (a16, b16), w) for _ in range(2)]
    torch.use_deterministic_algorithms(False)
    (sa, sb), (sa2, sb2) = sorted_runs
    print(f"CORRECT B={B} La={La} Lb={Lb} {direction}/{red}: score maxdiff {(got-ref).abs().max().item():.2e} "
          f"grad_a maxdiff {(ga.float()-ra).abs().max().item():.2e} (scale {ra.abs().max().item():.2e}) "
          f"grad_b maxdiff {(gb.float()-rb).abs().max().item():.2e} (scale {rb.abs().max().item():.2e}) "
          f"entries off by > 1e-2: {int(((ga.float()-ra).abs() > 1e-2).sum())}, {int(((gb.float()-rb).abs() > 1e-2).sum())}; "
          f"sorted path deterministic {torch.equal(sa, sa2) and torch.equal(sb, sb2)}; atomic vs sorted maxdiff "
          f"{max((ga.float() - sa.float()).abs().max().item(), (gb.float() - sb.float()).abs().max().item()):.2e}",
          flush=True)


# float32 token vectors (what bf16-mixed training hands MaxSim): each backend, with and without autocast
B, La, Lb = 256, 32, 180
a = F.normalize(torch.randn(B, La, 128, device=dev), dim=-1); b = F.normalize(torch.randn(B, Lb, 128, device=dev), dim=-1)
am = torch.ones(B, La, dtype=torch.bool, device=dev); bm = torch.ones(B, Lb, dtype=torch.bool, device=dev)
def step(backend, x, y, ac=False):
    def f():
        xa, ya = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=ac):
            s = maxsim_matrix(xa, am, ya, bm, backend=backend)
        s.float().sum().backward()
    return f
for name, fn in [("triton fp32", step("triton", a, b)), ("triton bf16", step("triton", a.bfloat16(), b.bfloat16())),
                 ("dense fp32", step("dense", a, b)), ("dense fp32+autocast", step("dense", a, b, True)),
                 ("chunked fp32+autocast", step("chunked", a, b, True)), ("triton fp32+autocast", step("triton", a, b, True))]:
    print(f"FP32 B={B} La={La} Lb={Lb} fwd+bwd {name}: {t(fn)*1e3:.2f} ms", flush=True)
