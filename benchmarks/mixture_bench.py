"""Memory and per-token latency of each mixture level, relative to one dense model, in one run.

    python benchmarks/mixture_bench.py [--zoo mini4] [--size mini] [--repeats 7] [--threads N]

Builds, from the zoo's models (prompt-initialised routers, top-1, token routing):
- dense: the zoo's first model;
- ffn: an FFN-level mixture (shared parts from the linear merge of the experts);
- block: a block-level mixture (under token routing every block runs, for complete KV caches);
- hybrid ffn: the FFN-level mixture with its first half of layers dense;
- model: the model-level mixture (the router's encoder, the base, reads the text; one expert answers).
Prints, per level (timings interleaved round-robin, so machine noise hits all alike): parameter
memory (unique tensors held, bytes) and its ratio to dense; the median latency per token of
scoring (one forward over a batch of sequences) and of greedy generation (prompt, then new tokens
one by one with the KV cache), each as a ratio to dense measured beside it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def parameter_bytes(*modules) -> int:
    seen, total = set(), 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, timed in turn (round-robin) so that a noisy spell on the
    machine hits every candidate alike; one untimed warm-up call each first."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    from glue_bench.merge.engine import Merger, TensorSource
    from glue_bench.mixture.layered import block_mixture, ffn_mixture, layer_inputs
    from glue_bench.mixture.routers import HiddenStateEncoder, LinearGate, PromptRouter, gate_vectors
    from glue_bench.zoo import ensure_available, load_model, load_tokenizer, local_dir, resolve_zoo, zoo_config
    from glue_bench.zoo.mini.build import expert_prompts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="mini4")
    parser.add_argument("--size", default="mini")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8, help="sequences scored per forward")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    refs, base_ref = resolve_zoo(zoo_config(args.zoo), args.size)
    ensure_available(refs + [base_ref], args.size)
    tok = load_tokenizer(refs[0])
    names = [r.name for r in refs]
    prompts = {r.name: expert_prompts(r.name, replicate=r.replicate) for r in refs}

    def shared():
        merger = Merger([TensorSource(r.name, local_dir(r)) for r in refs], "linear")
        return merger.to_model({})

    def layered(build, at: str, dense_layers: int = 0):
        model = shared()
        means = [layer_inputs(model, tok, prompts[n], at) for n in names]
        layers = len(model.model.layers)
        routers = [None if l < dense_layers else LinearGate(gate_vectors([m[l] for m in means], [None] * len(names)))
                   for l in range(layers)]
        return build(model, [load_model(r) for r in refs], routers, 1)

    dense = load_model(refs[0])
    n_layers = len(dense.model.layers)
    candidates = {"dense": dense, "ffn": layered(ffn_mixture, "mlp"), "block": layered(block_mixture, "block"),
                  f"hybrid ffn ({n_layers // 2} dense)": layered(ffn_mixture, "mlp", n_layers // 2)}
    encoder = HiddenStateEncoder(load_model(base_ref), load_tokenizer(base_ref))
    router = PromptRouter.from_prompts(encoder, prompts)
    experts = [load_model(r) for r in refs]

    torch.manual_seed(0)
    ids = torch.randint(3, tok.vocab_size, (args.batch, args.seq_len))
    prompt = ids[:1, :args.seq_len // 2]
    text = [tok.decode(row) for row in ids]

    def score(model):
        return lambda: model(ids, use_cache=False)

    def generate(model):
        return lambda: model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                      do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)

    def model_level_score():
        chosen = router(text)  # one decision per sequence, then each expert scores its sequences
        for e, expert in enumerate(experts):
            rows = [i for i, c in enumerate(chosen) if c == e]
            if rows:
                expert(ids[rows], use_cache=False)

    def model_level_generate():
        expert = experts[router([tok.decode(prompt[0])])[0]]
        generate(expert)()

    memory = {label: parameter_bytes(model) for label, model in candidates.items()}
    memory["model"] = parameter_bytes(encoder.model, *experts)
    with torch.no_grad():
        scoring = interleaved_medians({**{label: score(m) for label, m in candidates.items()},
                                       "model": model_level_score}, args.repeats)
        generation = interleaved_medians({**{label: generate(m) for label, m in candidates.items()},
                                          "model": model_level_generate}, args.repeats)
    rows = [(label, memory[label], scoring[label], generation[label]) for label in memory]

    tokens_scored, tokens_generated = args.batch * args.seq_len, args.new_tokens
    _, dense_bytes, dense_score, dense_gen = rows[0]
    print(f"zoo {args.zoo} ({args.size}): {len(refs)} experts, {n_layers} layers, top-1, token routing, "
          f"torch threads {torch.get_num_threads()}; medians of {args.repeats}")
    print(f"scoring: {args.batch} x {args.seq_len} tokens per forward; generation: {prompt.shape[1]}-token prompt, "
          f"{args.new_tokens} new tokens (time per new token, prompt included)")
    print(f"{'level':<22}{'params MB':>10}{'x dense':>9}{'score us/tok':>14}{'x dense':>9}"
          f"{'gen ms/tok':>12}{'x dense':>9}")
    for label, nbytes, score_s, gen_s in rows:
        print(f"{label:<22}{nbytes / 1e6:>10.1f}{nbytes / dense_bytes:>9.2f}{score_s / tokens_scored * 1e6:>14.1f}"
              f"{score_s / dense_score:>9.2f}{gen_s / tokens_generated * 1e3:>12.2f}{gen_s / dense_gen:>9.2f}")


if __name__ == "__main__":
    main()
