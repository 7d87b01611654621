"""The Meta-SGD update in PyTorch with torch.compile: the peer `cargo xtask bench --torch P`
times metasgd's in-place step against (same arrays, same sequence, interleaved runs).

Written as its best users write it: one function over (theta, alpha, g) with the contract's
sequence (docs/semantics.md: d = alpha * g; K subtractions theta - d; the accumulator
c = d + d + ...; alpha' = clamp(alpha - beta * (g * c), LO, HI)), compiled with torch.compile
(inductor fuses it into one loop over the elements) and writing both results in place
(`copy_` into the inputs: inductor stores into the input buffers, no temporaries). Threads:
torch.set_num_threads(T), the same count as ours.

Usage: torch_update.py [--sizes 20,24] [--dtypes f32,f64] [--threads 1,2] [--inner-steps K]
                       [--rounds R] [--batch-ms M]
Prints one line per case:
    torch_update dtype=f32 n=1048576 threads=1 ns_per_element=X
X: the median over R rounds of one timed batch of calls (at least M ms each) per round, after
a warm-up (compilation) outside the timing."""
import argparse
import statistics
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--sizes", default="20,24")
ap.add_argument("--dtypes", default="f32,f64")
ap.add_argument("--threads", default="1,2")
ap.add_argument("--inner-steps", type=int, default=5)
ap.add_argument("--rounds", type=int, default=15)
ap.add_argument("--batch-ms", type=float, default=20.0)
args = ap.parse_args()

K = args.inner_steps
BETA = 0.001
LO, HI = 1e-6, 1.0  # the clamp bounds of the benchmark's configuration are irrelevant to speed


def update(theta, alpha, g):
    d = alpha * g
    t = theta
    c = torch.zeros_like(d)
    for _ in range(K):
        t = t - d
        c = c + d
    a = torch.clamp(alpha - (g * c) * BETA, LO, HI)
    theta.copy_(t)
    alpha.copy_(a)


step = torch.compile(update, fullgraph=True, dynamic=False)

for threads in [int(t) for t in args.threads.split(",")]:
    torch.set_num_threads(threads)
    for name in args.dtypes.split(","):
        dtype = {"f32": torch.float32, "f64": torch.float64}[name]
        for p in [int(s) for s in args.sizes.split(",")]:
            n = 1 << p
            gen = torch.Generator().manual_seed(p)
            theta = torch.rand(n, generator=gen, dtype=dtype) * 4 - 2
            g = torch.rand(n, generator=gen, dtype=dtype) * 4 - 2
            alpha = torch.full((n,), 0.01, dtype=dtype)
            for _ in range(3):
                step(theta, alpha, g)
            start = time.perf_counter()
            step(theta, alpha, g)
            once = max(time.perf_counter() - start, 1e-7)
            reps = max(1, int(args.batch_ms / 1e3 / once + 0.999))
            samples = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                for _ in range(reps):
                    step(theta, alpha, g)
                samples.append((time.perf_counter() - start) / reps)
            ns = statistics.median(samples) * 1e9 / n
            print(
                f"torch_update dtype={name} n={n} threads={threads} ns_per_element={ns:.4f}",
                flush=True,
            )
