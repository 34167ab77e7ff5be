#!/usr/bin/env python3
"""Step time of nanoGPT's own code against the harness's, measured in the same rounds.

Each round times `steps` training steps of nanoGPT's "baby GPT" (its model.py: 4 layers, 4 heads,
d_model 128, context 64, 12 sequences, AdamW, clip 1.0, dropout 0, one thread) in this process,
and runs `ssr bench step experiments/study-speed.yaml` for the same number of steps. The rounds
alternate which side goes first, so drift of a shared machine hits both alike. A ratio is taken
within a round (median over its steps) and averaged over rounds, with a Student-t 95 % interval.

  .venv/bin/python tools/vs_nanogpt.py /path/to/nanoGPT [--rounds 8] [--steps 10]

nanoGPT is not part of this repository: clone github.com/karpathy/nanoGPT and pass its directory.
"""
import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time

import mpmath
import torch


def t_quantile(df, p=0.975):
    # P(T <= q) for Student's t with df degrees of freedom, through the regularised incomplete beta.
    cdf = lambda q: 1 - 0.5 * mpmath.betainc(df / 2, 0.5, 0, df / (df + q * q), regularized=True)
    return float(mpmath.findroot(lambda q: cdf(q) - p, 2.0))


def mean_ci(xs):
    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, t_quantile(len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5


def nanogpt_round(model, opt, inp, tgt, warmup, steps):
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        _, loss = model(inp, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def ssr_round(ssr, speed_file, warmup, steps, csv_path):
    subprocess.run([ssr, "bench", "step", speed_file, "--threads", "1", "--warmup", str(warmup), "--repeats", str(steps),
                    "--no-store", "--csv", csv_path], check=True, stdout=subprocess.DEVNULL)
    per_case = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            per_case.setdefault(row["case"], []).append(float(row["step_ms"]))
    return {case: statistics.median(ms) for case, ms in per_case.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nanogpt", help="a checkout of github.com/karpathy/nanoGPT (its model.py is imported)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side and round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per side and round")
    ap.add_argument("--ssr", default="build/ssr")
    ap.add_argument("--speed-file", default="experiments/study-speed.yaml")
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.nanogpt, "model.py")):
        sys.exit(f"error: {a.nanogpt}/model.py not found: pass a checkout of github.com/karpathy/nanoGPT")

    sys.path.insert(0, a.nanogpt)
    from model import GPT, GPTConfig  # nanoGPT's own code

    torch.set_num_threads(1)
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    tokens = torch.randint(65, (12, 65))  # (sequences, context + 1)
    inp, tgt = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # (sequences, context) each

    rounds = []  # per round: {"nanoGPT": ms, case: ms, ...}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            row = {}
            order = ["nanogpt", "ssr"] if r % 2 == 0 else ["ssr", "nanogpt"]
            for side in order:
                if side == "nanogpt":
                    row["nanoGPT"] = nanogpt_round(model, opt, inp, tgt, a.warmup, a.steps)
                else:
                    row.update(ssr_round(a.ssr, a.speed_file, a.warmup, a.steps, os.path.join(tmp, "round.csv")))
            rounds.append(row)
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in row.items()), file=sys.stderr)

    cases = list(rounds[0].keys())
    dense = next(c for c in cases if "dense" in c)
    print(f"# {a.rounds} rounds x {a.steps} timed steps per side (median per round), one thread, 12 x 64 tokens a step\n")
    print("| case | step ms (median of rounds) | ÷ nanoGPT (mean, 95 % CI) | ÷ dense (mean, 95 % CI) |")
    print("|---|---|---|---|")
    for c in cases:
        med = statistics.median(r[c] for r in rounds)
        vs_ng = mean_ci([r[c] / r["nanoGPT"] for r in rounds])
        vs_dense = mean_ci([r[c] / r[dense] for r in rounds])
        print(f"| {c} | {med:.1f} | {vs_ng[0]:.3f} ± {vs_ng[1]:.3f} | {vs_dense[0]:.3f} ± {vs_dense[1]:.3f} |")


if __name__ == "__main__":
    main()
