#!/usr/bin/env python3
"""Times attn against its peers on the same shapes, threads and machine, in one run.

Peers: PyTorch's scaled_dot_product_attention on the CPU, and a plain numpy implementation
(softmax(Q·Kᵀ/√d)·V with numpy's own BLAS). For each shape the three run back to back (attn first,
through `attn bench --csv`), and the script prints the medians and the ratios attn/peer (> 1 means
attn is faster). With --backward it times the backward pass instead: torch.autograd.grad of SDPA's
output (the forward graph built once outside the timing) and numpy's materialised
dV = Pᵀ·dO, dS = P∘(dO·Vᵀ − rowsum), dQ = dS·K, dK = dSᵀ·Q, against `attn bench --backward`.

torch and numpy are benchmark-only dependencies: this script installs them into .venv-bench (from
the Python package index) when they are missing and re-runs itself there. The library, the CLI and
the tests never need them.

Shapes with a 16-bit K/V type (bf16, f16) run attn with `--kv-dtype` (Q fp32, K and V 16-bit) and
torch with Q, K and V all in that type (its SDPA takes one dtype); numpy has no bf16 and is skipped.

Each measurement, of attn and of torch alike, is the median of at least --reps calls (5) that add up
to at least --min-time seconds (0.25), so a shape of a few milliseconds gets tens of calls.

usage: bench/peers.py [--threads N] [--reps N] [--min-time S] [--quick] [--backward] [--attn PATH]
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-bench")

# (B, Hq, Hkv, Lq, Lk, D, causal): the forward shapes of `attn bench`'s default list
SHAPES = [
    (1, 2, 2, 1024, 1024, 64, False),
    (1, 2, 2, 2048, 2048, 64, False),
    (1, 2, 2, 4096, 4096, 64, False),
    (1, 2, 2, 8192, 8192, 64, False),
    (1, 2, 2, 2048, 2048, 128, False),
    (1, 2, 2, 4096, 4096, 128, False),
    (1, 2, 2, 4096, 4096, 64, True),
    (1, 2, 2, 4096, 4096, 128, True),
    (4, 8, 8, 512, 512, 64, False),
    (32, 12, 12, 128, 128, 32, False),  # the BERT encoder's attention (models/bert)
    (1, 32, 8, 1, 32768, 128, True),
    (1, 1, 1, 64, 32768, 128, True),
    # a 16-bit KV cache: decode, and a prefill
    (1, 32, 8, 1, 32768, 128, True, "bf16"),
    (1, 32, 8, 1, 32768, 128, True, "f16"),
    (1, 2, 2, 4096, 4096, 64, False, "bf16"),
]
# the training shapes of `attn bench --backward`
SHAPES_BACKWARD = [
    (1, 2, 2, 2048, 2048, 64, False),
    (1, 2, 2, 4096, 4096, 64, False),
    (1, 2, 2, 2048, 2048, 128, False),
    (1, 2, 2, 4096, 4096, 128, False),
    (1, 2, 2, 4096, 4096, 64, True),
    (1, 2, 2, 4096, 4096, 128, True),
    (4, 8, 8, 512, 512, 64, False),
]
QUICK_BACKWARD = [(1, 2, 2, 512, 512, 64, False), (1, 2, 2, 512, 512, 64, True)]
QUICK = [(1, 2, 2, 512, 512, 64, False), (1, 2, 2, 512, 512, 64, True), (1, 8, 2, 1, 4096, 128, True),
         (1, 8, 2, 1, 4096, 128, True, "bf16")]


def ensure_venv():
    """Re-executes inside .venv-bench, creating it and installing torch and numpy if needed."""
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        print("peers: creating .venv-bench with torch and numpy (benchmark-only, one time)", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    check = subprocess.run([py, "-c", "import torch, numpy"], capture_output=True)
    if check.returncode != 0:
        subprocess.check_call([py, "-m", "pip", "install", "-q", "torch", "numpy"])
    os.execv(py, [py] + sys.argv)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


# After a parallel call, torch's OpenMP threads (libgomp) and numpy's OpenBLAS threads busy-wait
# for the next one before they sleep; a measurement started in that window shares the cores with
# them (attn bench of L = 1024 D = 64 on 2 threads: 5.1 and 5.4 ms right after torch's SDPA and a
# numpy product, 2.69-2.70 ms after a 0.3 s pause, 2.70-2.71 alone). So every measurement, of
# attn and of the peers alike, starts after such a pause.
SETTLE_S = 0.3


def settle():
    import time
    time.sleep(SETTLE_S)


def time_call(fn, reps, min_time=0.0):
    """Median of at least reps timed calls adding up to at least min_time seconds (at most 1000
    calls) after a warm-up: the rule `attn bench --reps --min-time` times attn by."""
    import time
    fn()  # warm-up
    times = []
    while len(times) < 1000 and (len(times) < reps or sum(times) < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def attn_time(attn, shape, threads, reps, min_time, backward):
    B, Hq, Hkv, Lq, Lk, D, causal, *kv = shape
    spec = f"{B},{Hq},{Hkv},{Lq},{Lk},{D}" + (",causal" if causal else "")
    out = subprocess.run([attn, "bench", "--csv", "--no-machine", "--shape", spec, "--threads",
                          str(threads), "--reps", str(reps), "--min-time", str(min_time)]
                         + (["--backward"] if backward else [])
                         + (["--kv-dtype", kv[0]] if kv else []),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"peers: attn bench failed: {out.stderr.strip()}")
    header, row = out.stdout.strip().splitlines()[:2]
    rec = dict(zip(header.split(","), row.split(",")))
    return float(rec["t_med_ms"]) / 1e3, rec["kernel"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.25,
                    help="seconds of timed calls per measurement at least (attn and torch alike)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds of attn and torch per shape; the ratio is the median "
                         "of the rounds' ratios, so both see the same moments of a shared machine")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--attn", default=os.path.join(ROOT, "build", "attn"))
    args = ap.parse_args()
    # numpy's BLAS reads its thread count at import time
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    ensure_venv()
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    torch.set_num_threads(args.threads)
    print(f"peers: torch {torch.__version__} (cpu capability {torch.backends.cpu.get_cpu_capability()}),"
          f" numpy {np.__version__}, {args.threads} threads, median of at least {args.reps} calls and"
          f" {args.min_time:g} s of them after a warm-up,"
          f" {args.rounds} alternating rounds of attn and torch (times: median over rounds; ratio:"
          f" median of the rounds' ratios){'; BACKWARD pass' if args.backward else ''}")
    print(f"{'shape':44} {'attn ms':>9} {'torch ms':>9} {'numpy ms':>9} "
          f"{'attn/torch':>10} {'attn/numpy':>10}")
    rng = np.random.default_rng(0)
    worst = None
    if args.backward:
        shapes = QUICK_BACKWARD if args.quick else SHAPES_BACKWARD
    else:
        shapes = QUICK if args.quick else SHAPES
    for shape in shapes:
        B, Hq, Hkv, Lq, Lk, D, causal, *kv = shape
        kv = kv[0] if kv else None
        q = rng.uniform(-1, 1, (B, Hq, Lq, D)).astype(np.float32)
        k = rng.uniform(-1, 1, (B, Hkv, Lk, D)).astype(np.float32)
        v = rng.uniform(-1, 1, (B, Hkv, Lk, D)).astype(np.float32)
        do = rng.uniform(-1, 1, (B, Hq, Lq, D)).astype(np.float32)

        tq, tk, tv = torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v)
        if kv:
            tdt = {"bf16": torch.bfloat16, "f16": torch.float16}[kv]
            tq, tk, tv = tq.to(tdt), tk.to(tdt), tv.to(tdt)
        # attn's bench aligns causal bottom-right; torch's is_causal is top-left. They agree when
        # Lq = Lk, and a single query (decode) sees every key; otherwise torch gets its own
        # bottom-right causal bias (torch.nn.attention.bias.causal_lower_right)
        torch_causal = causal and Lq == Lk
        bias = causal_lower_right(Lq, Lk) if causal and 1 < Lq != Lk else None
        gqa = Hq != Hkv

        def sdpa():
            return F.scaled_dot_product_attention(tq, tk, tv, attn_mask=bias, is_causal=torch_causal,
                                                  enable_gqa=gqa)

        def run_torch():
            with torch.no_grad():
                return sdpa()

        if args.backward:
            tq.requires_grad_(), tk.requires_grad_(), tv.requires_grad_()
            out = sdpa()
            tdo = torch.from_numpy(do)

            def run_torch():
                return torch.autograd.grad(out, (tq, tk, tv), tdo, retain_graph=True)

        rounds = []
        for _ in range(max(1, args.rounds)):
            settle()
            t_a, kernel = attn_time(args.attn, shape, args.threads, args.reps, args.min_time,
                                    args.backward)
            settle()
            rounds.append((t_a, time_call(run_torch, args.reps, args.min_time)))
        t_attn, t_torch = median([a for a, _ in rounds]), median([t for _, t in rounds])
        r_torch = median([t / a for a, t in rounds])

        group = Hq // Hkv
        kk, vv = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        mask = (np.triu(np.full((Lq, Lk), -np.inf, np.float32), 1 + Lk - Lq)
                if causal and Lq > 1 else None)

        def run_numpy():
            s = (q @ kk.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(D))
            if mask is not None:
                s = s + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            return (s / s.sum(axis=-1, keepdims=True)) @ vv

        if args.backward:
            scale = np.float32(1.0 / np.sqrt(D))

            def run_numpy():  # the materialised backward (dK, dV per query head)
                s = (q @ kk.transpose(0, 1, 3, 2)) * scale
                if mask is not None:
                    s = s + mask
                p = np.exp(s - s.max(axis=-1, keepdims=True))
                p /= p.sum(axis=-1, keepdims=True)
                dv = p.transpose(0, 1, 3, 2) @ do
                dp = do @ vv.transpose(0, 1, 3, 2)
                ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
                return (ds @ kk) * scale, (ds.transpose(0, 1, 3, 2) @ q) * scale, dv

        name = f"B={B} Hq={Hq} Hkv={Hkv} L={Lq}x{Lk} D={D}" + (" causal" if causal else "")
        worst = r_torch if worst is None else min(worst, r_torch)
        if kv:  # numpy has no bf16
            print(f"{name + ' ' + kv + ' K/V':44} {t_attn * 1e3:9.2f} {t_torch * 1e3:9.2f} "
                  f"{'-':>9} {r_torch:9.2f}x {'-':>10}", flush=True)
            continue
        settle()
        t_numpy = time_call(run_numpy, max(1, args.reps // 2))
        r_numpy = t_numpy / t_attn
        print(f"{name:44} {t_attn * 1e3:9.2f} {t_torch * 1e3:9.2f} {t_numpy * 1e3:9.2f} "
              f"{r_torch:9.2f}x {r_numpy:9.2f}x", flush=True)
    print(f"attn kernel: {kernel}; slowest ratio against torch: {worst:.2f}x")


if __name__ == "__main__":
    main()
