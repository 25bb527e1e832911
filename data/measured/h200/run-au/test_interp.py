import os, sys, torch
sys.path.insert(0, os.path.dirname(__file__))
from fused import fused_linear_backward, reference
torch.manual_seed(0)
for counts, K, N in [([0, 5, 64, 65, 128, 129, 192, 193, 256, 257, 300], 40, 72), ([3, 0, 70], 64, 64)]:
    R = sum(counts)
    x = torch.randn(R, K); dy = torch.randn(R, N); w = torch.randn(len(counts), K, N)
    offs = torch.tensor(counts).cumsum(0).to(torch.int32)
    for cfg in [(32, 32, 4, 2), (64, 64, 4, 2)]:
        dx, dw = fused_linear_backward(x, w, dy, offs, cfg)
        rdx, rdw = reference(x, w, dy, offs)
        print(counts[:3], K, N, cfg, float((dx - rdx).abs().max()), float((dw - rdw).abs().max()))
