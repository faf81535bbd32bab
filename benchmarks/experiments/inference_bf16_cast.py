"""bf16 weights (cast copy) vs autocast, and leaky_relu for one-slope PReLU, on the MONAI benchmark U-Net.

Run from the repo root (docs/inference.md, "Tried and dropped")::

    .venv/bin/python benchmarks/experiments/inference_bf16_cast.py
"""
import torch, time, copy
import torch.nn.functional as F
from monai.networks.nets import UNet
from napari_cnnseg.core.netprep import inference_copy, wrap_module
torch.manual_seed(0)
net = UNet(3,1,2,channels=(16,32,64,128),strides=(2,2,2),num_res_units=2,norm="batch").eval()
w = wrap_module(net,2,divisor=8)
fast = inference_copy(w, torch.device("cpu"))
fastb = inference_copy(w, torch.device("cpu"), dtype=torch.bfloat16)
class LReLU(torch.nn.Module):
    def __init__(s, a): super().__init__(); s.a = float(a)
    def forward(s, x): return F.leaky_relu(x, s.a)
fastl = copy.deepcopy(fastb)
for parent in list(fastl.modules()):
    for n, c in list(parent.named_children()):
        if isinstance(c, torch.nn.PReLU) and c.weight.numel() == 1:
            setattr(parent, n, LReLU(c.weight.item()))
def bench(f, n=3):
    f(); best=1e9
    for _ in range(n):
        t=time.perf_counter(); f(); best=min(best, time.perf_counter()-t)
    return best
x = torch.randn(4,1,96,96,96).contiguous(memory_format=torch.channels_last_3d)
xb = x.to(torch.bfloat16)
with torch.inference_mode():
    ref = fast(x)
    with torch.autocast("cpu", torch.bfloat16):
        ra = fast(x).float()
    rb = fastb(xb).float(); rl = fastl(xb).float()
    print("diff autocast", (ra-ref).abs().max().item(), "cast", (rb-ref).abs().max().item(), "lrelu", (rl-ref).abs().max().item())
    for i in range(2):
        with torch.autocast("cpu", torch.bfloat16):
            print("autocast", bench(lambda: fast(x)))
        print("bf16 model", bench(lambda: fastb(xb)))
        print("bf16 model lrelu", bench(lambda: fastl(xb)))
        print("fp32", bench(lambda: fast(x)))
