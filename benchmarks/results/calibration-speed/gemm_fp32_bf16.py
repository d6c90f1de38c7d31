"""fp32 against bf16 GEMM speed of torch on this machine, at the AWQ MLP-scoring shape (8192 tokens x 896 -> 4864), 2 threads."""
import time, torch
torch.set_num_threads(2)
x = torch.randn(8192, 896); w = torch.randn(4864, 896)
for dt in (torch.float32, torch.bfloat16):
    a, b = x.to(dt), w.to(dt)
    torch.nn.functional.linear(a, b)
    ts = []
    for _ in range(3):
        t = time.perf_counter(); torch.nn.functional.linear(a, b); ts.append(time.perf_counter() - t)
    print(dt, "median s", sorted(ts)[1], "GFLOP/s", 2 * 8192 * 896 * 4864 / sorted(ts)[1] / 1e9, flush=True)
