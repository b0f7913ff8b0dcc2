"""Host time of a bf16 matmul launch: a row count M seen for the first time, the same M again, M rounded up to 64.

    python bench/matmul_shapes.py

The `default` rows are the ones NOTES.md quotes. The `cublaslt` and `cublas` rows that follow reuse the same row
counts, which the first rows have already shown cuBLAS, so they measure cached lookups and say nothing about the
libraries' first-time cost.
"""
import time, torch, statistics as st, random
dev = 'cuda'
for lib in ['default', 'cublaslt', 'cublas']:
    if lib != 'default': torch.backends.cuda.preferred_blas_library(lib)
    for (N, K, bias) in [(1536, 1536, False), (256, 1536, True), (8960, 1536, False), (1536, 8960, False), (151936, 1536, False)]:
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16); b = torch.randn(N, device=dev, dtype=torch.bfloat16)
        x = torch.randn(14000, K, device=dev, dtype=torch.bfloat16)
        f = (lambda a: torch.addmm(b, a, w.T)) if bias else (lambda a: a @ w.T)
        torch.cuda.synchronize()
        new, old = [], []
        Ms = random.Random(N + K).sample(range(5000, 13000), 12)
        for M in Ms:
            a = x[:M]; torch.cuda.synchronize()
            t = time.perf_counter(); f(a); new.append(time.perf_counter() - t); torch.cuda.synchronize()
            t = time.perf_counter(); f(a); old.append(time.perf_counter() - t); torch.cuda.synchronize()
        pad = []
        for M in Ms:   # multiples of 64 after the first few
            a = x[:(M + 63) // 64 * 64]; torch.cuda.synchronize()
            t = time.perf_counter(); f(a); pad.append(time.perf_counter() - t); torch.cuda.synchronize()
        print(f"{lib:9s} N={N:6d} K={K:5d} bias={bias!s:5s}: new M {1e3*st.median(new):6.2f} ms (max {1e3*max(new):6.2f}), same M again {1e3*st.median(old):6.3f} ms, M rounded to 64 (first time) {1e3*st.median(pad):6.2f}", flush=True)
