"""Evaluation's model work on a machine that is not idle: torch's thread settings, quiet and beside
one busy core, in one run.

    python benchmarks/busy_bench.py [--size mini] [--repeats 5]

Each setting runs in a fresh process (OpenMP reads its environment once, at start): a Llama of the
mini zoo's shapes (random weights: the work, not the answers, is measured) scores a batch of 32
sequences of 128 tokens (loglikelihood's shape) and greedily decodes 48 tokens for 4 prompts
(generation's). "busy" runs the same beside one Python process spinning on one core, as another
job or a sandboxed program would. Settings: torch's default (a thread per core, libgomp's
spin-then-sleep wait), OMP_WAIT_POLICY=PASSIVE (waiting threads sleep at once), shorter spins
(GOMP_SPINCOUNT), and one thread fewer than the cores (what glue_bench evaluates on unless
`eval.threads` says otherwise: on 2 cores, one). Printed: the median seconds of each, and each
one's ratio to the default on a quiet machine. Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORK = r"""
import json, statistics, sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from glue_bench.zoo.mini.spec import SIZES
arch, repeats = SIZES[sys.argv[1]].arch, int(sys.argv[2])
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=arch["hidden"], intermediate_size=arch["intermediate"],
                                     num_hidden_layers=arch["layers"], num_attention_heads=arch["heads"],
                                     num_key_value_heads=arch["heads"], max_position_embeddings=1024)).eval()
score_batch = torch.randint(3, 2048, (32, 128))
prompts = torch.randint(3, 2048, (4, 64))
def score():
    with torch.inference_mode():
        torch.log_softmax(model(score_batch).logits, -1)
def generate():
    with torch.inference_mode():
        model.generate(prompts, max_new_tokens=48, min_new_tokens=48, do_sample=False, pad_token_id=0)
out = {}
for name, work in (("score", score), ("generate", generate)):
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); work(); times.append(time.perf_counter() - start)
    out[name] = statistics.median(times)
out["threads"] = torch.get_num_threads()
print(json.dumps(out))
"""

SETTINGS = {  # name -> environment; glue_bench's own default is set aside for the "default" row
    "2 threads, spin (torch's default)": {"OMP_WAIT_POLICY": ""},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "2 threads, GOMP_SPINCOUNT=10000": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},
    "2 threads, GOMP_SPINCOUNT=1000": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "1000"},
    "1 thread (glue_bench's default on 2 cores)": {"OMP_WAIT_POLICY": "", "OMP_NUM_THREADS": "1"},
}


def measure(env: dict, size: str, repeats: int) -> dict:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    full.update({k: v for k, v in env.items() if v})
    done = subprocess.run([sys.executable, "-c", WORK, size, str(repeats)], env=full, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="mini")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    results = {}
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            time.sleep(0.5 if busy else 0)
            for name, env in SETTINGS.items():
                results[(name, busy)] = measure(env, args.size, args.repeats)
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    print(f"{args.size} shapes, median of {args.repeats}; ratio: to the default on a quiet machine (lower is faster)")
    print(f"{'setting':<44}{'machine':>8}{'score s':>10}{'ratio':>8}{'generate s':>12}{'ratio':>8}")
    base = results[(next(iter(SETTINGS)), False)]
    for (name, busy), r in results.items():
        print(f"{name:<44}{'busy' if busy else 'quiet':>8}{r['score']:>10.3f}{r['score'] / base['score']:>8.2f}"
              f"{r['generate']:>12.3f}{r['generate'] / base['generate']:>8.2f}")


if __name__ == "__main__":
    main()
