"""Whether a machine does the mini zoo's training arithmetic bit for bit: three steps, in seconds.

    python -m glue_bench.zoo.mini.probe   # and whether this machine builds the committed evidence's zoo
    qemu-x86_64 -cpu Haswell .venv/bin/python -m glue_bench.zoo.mini.probe   # another CPU, emulated

A replicate could be extended or checked on another machine only where its build trains the same
bits there. Building a model and comparing its fingerprint (`build --fingerprints`) takes minutes;
this trains the micro architecture for three steps on seeded random tokens with the build's loop,
under the build's settings (`build.REPRODUCIBLE`), and prints the weights' fingerprint twice: as
the build trains (`torch`) and with the optimizer's square root made of correctly rounded
operations (`ieee-sqrt`). Measured (docs/zoos.md, "The same zoo on every machine"): `torch`
differs between this suite's AMD CPU and QEMU's emulation of any CPU, Intel or AMD, because
torch's float sqrt is MKL's vector sqrt (not correctly rounded, and its result hangs on the
hardware); `ieee-sqrt` is the same on both.
"""

from __future__ import annotations

import contextlib
import os
import sys

STEPS = 3


def fingerprint(ieee_sqrt: bool) -> str:
    """The weights after `STEPS` training steps of the micro model (seeded: the same every time here)."""
    import torch

    from glue_bench.provenance import state_fingerprint
    from glue_bench.training import train
    from glue_bench.zoo.mini.spec import SIZES
    from glue_bench.zoo.mini.train import new_model, train_tokenizer

    size = SIZES["micro"]
    # a byte-level tokenizer (the model's vocabulary and special tokens), not the zoo's trained one
    tokenizer = train_tokenizer(["probe"], vocab_size=size.vocab_size, split_digits=True)
    model = new_model(size.arch, tokenizer, seed=0)

    class RandomTokens:  # the build's ops on seeded tokens: its data would cost a build's first minute
        generator = torch.Generator().manual_seed(0)

        def batch(self, n: int) -> torch.Tensor:
            return torch.randint(len(tokenizer), (n, size.seq_len), generator=self.generator)

    with _ieee_sqrt() if ieee_sqrt else contextlib.nullcontext():
        train(model, RandomTokens(), STEPS, lr=3e-3, batch_size=size.batch_size, seed=0, desc="probe")
    return state_fingerprint(model)


@contextlib.contextmanager
def _ieee_sqrt():
    """Tensor.sqrt (AdamW's denominator on the CPU) as 1 / (1 / sqrt(x)): torch's rsqrt and
    reciprocal are IEEE divisions and square roots, each correctly rounded, where torch.sqrt calls
    MKL's vector sqrt. 0 stays 0 (1 / inf)."""
    import torch

    original = torch.Tensor.sqrt
    torch.Tensor.sqrt = lambda self: self.rsqrt().reciprocal()
    try:
        yield
    finally:
        torch.Tensor.sqrt = original


# The probe on the machine that built the committed evidence's zoo (zoo v10's replicates 25-29: AMD
# EPYC, Zen 3, torch 2.13.0+cpu): a machine printing the same `torch` fingerprint trains the same bits.
EVIDENCE_MACHINE = {"torch": "1eeca01773b4483b", "ieee-sqrt": "993aa4ae619db4b2"}


def verdict(torch_fingerprint: str) -> str:
    """What the `torch` fingerprint says about building the committed evidence's replicates here."""
    if torch_fingerprint == EVIDENCE_MACHINE["torch"]:
        return ("the same as on the machine that built the committed evidence's zoo: a replicate built here "
                "is that zoo (check with build --fingerprints results/zoo_weights.csv)")
    return (f"not the {EVIDENCE_MACHINE['torch']} of the machine that built the committed evidence's zoo: a "
            "replicate built here is another zoo, so give it a replicate number of its own (docs/zoos.md)")


def main() -> None:
    from glue_bench.zoo.mini.build import REPRODUCIBLE, reproducible_here

    if not reproducible_here():  # torch and MKL read them at start: begin again with them
        os.execve(sys.executable, [sys.executable, "-m", "glue_bench.zoo.mini.probe", *sys.argv[1:]],
                  {**os.environ, **REPRODUCIBLE})
    import torch

    as_built = fingerprint(False)
    print(f"torch {as_built} ieee-sqrt {fingerprint(True)} "
          f"({STEPS} steps, torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()} kernels)")
    print(f"torch {as_built}: {verdict(as_built)}")


if __name__ == "__main__":
    main()
