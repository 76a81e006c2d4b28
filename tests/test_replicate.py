"""Replicate zoos: replicate 0 is the mini zoo as it always was (paths, keys, data, job keys);
replicate r > 0 is another whole build (data, init, training), deterministic, with its own keys."""

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from conftest import apt_install
from glue_bench.job import Job
from glue_bench.results import read_results
from glue_bench.zoo import ZooError, model_ref, resolve_zoo, zoo_config
from glue_bench.evaluate.tasks import TASKS
from glue_bench.zoo.mini import data
from glue_bench.zoo.mini.build import main as build_main
from glue_bench.zoo.mini.build import model_dir, size_dir
from glue_bench.zoo.mini.spec import VERSION, replicated

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _compose(overrides, tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[*overrides, f"results_path={tmp_path}/r.sqlite"])


# computed when zoo v10 was made (v2's, pinned at bd61413 before replicates existed, kept replicate 0's
# keys unchanged by the replicates; v3 to v6 are other zoos: v3 new recipes' data, v4 built
# reproducibly, v5 its fine-tunes trained longer, v6 three experts' recipes, v7 stem's, v8 math's restarts, v9 the math experts' and the sizes' retries, v10 every domain expert's steps, so new keys)
@pytest.mark.parametrize("name, size, key", [
    ("base", "micro", "mini-v10/micro/base-24d1b7e9"), ("base", "mini", "mini-v10/mini/base-517c5a8c"),
    ("chat_a", "micro", "mini-v10/micro/chat_a-748c4e89"), ("math_altinit", "mini", "mini-v10/mini/math_altinit-8ae9a436"),
    ("foreign_chat", "micro", "mini-v10/micro/foreign_chat-2779de02"),
])
def test_replicate_0_keeps_today_s_keys_and_paths(name, size, key, monkeypatch, tmp_path):
    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path))
    assert model_ref(name, "mini", size).key == model_ref(name, "mini", size, 0).key == key
    version, size_name, directory = key.split("/")
    assert model_dir(name, size, 0) == tmp_path / version / size_name / "models" / directory


def test_replicate_0_keeps_today_s_data():
    splits = data.build_splits(replicated(data.SEED, 0))
    # the splits of zoo v3 (replicate 0 draws with the seeds it always did), computed when v3 was made
    first = {task: {"train": s["train"], "test": s["test"][:data.FIRST_TEST_ITEMS[task]]} for task, s in splits.items()}
    assert _digest(first) == "de935c362c59aeb5"
    assert _digest(data.domain_corpora(splits, replicated(data.SEED, 0))) == "d3505821ffe3a04e"


def test_replicate_1_draws_other_test_items_and_other_world_facts():
    zero, one = data.build_splits(replicated(data.SEED, 0)), data.build_splits(replicated(data.SEED, 1))
    for task in TASKS:
        assert zero[task]["test"] != one[task]["test"], task
        assert len(zero[task]["test"]) == len(one[task]["test"]), task
    assert data.creatures(seed=replicated(data.SEED, 1)) != data.creatures()
    assert data.thing_ranks(replicated(data.SEED, 1)) != data.thing_ranks()


def test_a_replicate_lives_in_its_own_directory_and_keys(monkeypatch, tmp_path):
    monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path))
    assert size_dir("micro", 1) == tmp_path / f"mini-{VERSION}" / "micro-r1"
    ref = model_ref("chat_a", "mini", "micro", 1)
    assert ref.key.startswith(f"mini-{VERSION}/micro-r1/chat_a-") and ref.key != model_ref("chat_a", "mini", "micro").key
    assert Path(ref.location).parent == tmp_path / f"mini-{VERSION}" / "micro-r1" / "models" and ref.replicate == 1


def _build_base(cache: Path, **env_vars) -> dict:
    """Replicate 1's micro base, built in a fresh process into `cache` (`env_vars` set in it): its tensors."""
    env = {**os.environ, "GLUE_BENCH_CACHE": str(cache), **env_vars}
    code = ("from glue_bench.zoo.mini.build import ensure_models; "
            "ensure_models(['base'], 'micro', progress=False, replicate=1)")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=300)
    return load_file(cache / f"mini-{VERSION}" / "micro-r1" / "models" / model_dir("base", "micro", 1).name
                     / "model.safetensors")


@pytest.fixture(scope="module")
def replicate_1_cache(tmp_path_factory) -> Path:
    """A cache holding replicate 1's micro base (built once for the module)."""
    cache = tmp_path_factory.mktemp("r1")
    _build_base(cache)
    return cache


def test_replicate_1_builds_other_weights_the_same_each_time(micro_cache, replicate_1_cache, tmp_path):
    one = load_file(replicate_1_cache / f"mini-{VERSION}" / "micro-r1" / "models" / model_dir("base", "micro", 1).name
                    / "model.safetensors")
    zero = load_file(model_dir("base", "micro", 0) / "model.safetensors")  # micro_cache's replicate 0
    assert one.keys() == zero.keys()
    matrices = [k for k in zero if zero[k].ndim == 2 and one[k].shape == zero[k].shape]
    assert len(matrices) >= 10 and not any(torch.equal(one[k], zero[k]) for k in matrices)
    # again, from a process whose torch would pick other kernels (AVX2's, two threads: other weights
    # when trained in it, measured) and MKL another instruction set: the build is the same
    again = _build_base(tmp_path, ATEN_CPU_CAPABILITY="avx2", OMP_NUM_THREADS="2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    for key in one:
        assert torch.equal(again[key], one[key]), key


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates another x86-64 CPU on an x86-64 one")
def test_an_emulated_intel_cpu_trains_other_bits_until_sqrt_is_ieee_s():
    """The probe natively (this machine's CPU) and on QEMU's Haswell, an Intel CPU with other
    instruction sets: with torch's sqrt (MKL's) the weights differ, with an IEEE sqrt they agree."""
    if shutil.which("qemu-x86_64") is None:
        why = apt_install("qemu-user")
        if shutil.which("qemu-x86_64") is None:
            pytest.skip(f"QEMU's user-mode emulator is not installed and {why or 'apt-get installed none'}")
    from glue_bench.zoo.mini.build import REPRODUCIBLE

    def probe(*emulator: str) -> list[str]:
        # REPRODUCIBLE set from the start: the probe would otherwise start itself again, and QEMU's
        # user mode runs a program that a program starts natively
        done = subprocess.run([*emulator, sys.executable, "-m", "glue_bench.zoo.mini.probe"], capture_output=True,
                              text=True, timeout=900, env={**os.environ, **REPRODUCIBLE}, check=True)
        words = done.stdout.split()
        return [words[words.index("torch") + 1], words[words.index("ieee-sqrt") + 1]]

    native, emulated = probe(), probe("qemu-x86_64", "-cpu", "Haswell")
    assert native[1] == emulated[1]  # the build's other arithmetic: the same bits on both CPUs
    assert native[0] != emulated[0]  # MKL's vector sqrt: other bits (docs/zoos.md; the day it agrees, say so)


def test_the_probe_says_whether_a_machine_builds_the_committed_evidence_s_zoo():
    from glue_bench.zoo.mini.probe import EVIDENCE_MACHINE, verdict

    assert "is that zoo" in verdict(EVIDENCE_MACHINE["torch"])
    other = verdict("0" * 16)
    assert "another zoo" in other and EVIDENCE_MACHINE["torch"] in other and "\n" not in other


def test_a_build_s_weights_are_compared_with_the_recorded_ones(micro_cache, tmp_path, capsys):
    from glue_bench.zoo.mini.build import compare_fingerprints

    # the card's fingerprint is the weights': each tensor's name, dtype, shape and bytes, in name order
    tensors = load_file(model_dir("chat_a", "micro", 0) / "model.safetensors")
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(f"{name}:{tensors[name].dtype}:{tuple(tensors[name].shape)}".encode())
        digest.update(tensors[name].reshape(-1).view(torch.uint8).numpy())
    card = json.loads((model_dir("chat_a", "micro", 0) / "glue_bench_recipe.json").read_text())
    assert card["weights"] == digest.hexdigest()[:16]
    recorded = tmp_path / "zoo_weights.csv"
    assert compare_fingerprints(recorded, ["chat_a"], "micro", 0) == []  # base and chat_a recorded
    lines = recorded.read_text().splitlines()
    assert lines[0] == "version,size,replicate,model,weights" and len(lines) == 3
    assert lines[2] == f"{VERSION},micro,0,chat_a,{card['weights']}"
    assert compare_fingerprints(recorded, ["chat_a"], "micro", 0) == [] and recorded.read_text().splitlines() == lines
    recorded.write_text("\n".join([*lines[:2], lines[2][:-16] + "0" * 16]) + "\n")  # another machine's chat_a
    assert compare_fingerprints(recorded, ["chat_a"], "micro", 0) == ["chat_a"]
    assert "chat_a: " + card["weights"] + " DIFFERS from 0000000000000000 recorded" in capsys.readouterr().out


def test_a_job_at_replicate_1_has_its_own_key_and_rows(replicate_1_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("GLUE_BENCH_CACHE", str(replicate_1_cache))
    only_base = ["zoo=mini2", "zoo.models=[base]", "mini_size=micro", "method=none",
                 "eval.tasks=[mini_arc]", "eval.limit=4"]
    zero = Job.from_config(_compose(only_base, tmp_path))
    job = Job.from_config(_compose([*only_base, "zoo.replicate=1"], tmp_path))
    assert job.key != zero.key and job.base.key != zero.base.key
    assert job.common["replicate"] == 1 and "replicate" not in zero.payload["zoo"]
    job.prepare()
    assert job.tasks_dir.is_relative_to(replicate_1_cache / f"mini-{VERSION}" / "micro-r1")
    job.evaluate_singles()
    rows = read_results(tmp_path / "r.sqlite")
    assert len(rows) > 0 and set(rows["replicate"]) == {1}
    stored = json.loads(rows["config"].iloc[0])["key"]
    assert stored == job.base.key


@pytest.mark.parametrize("replicate, message", [
    (-1, "a replicate is a non-negative integer, got -1"),
    ("x", "a replicate is a non-negative integer, got 'x'"),
    (1.5, "a replicate is a non-negative integer, got 1.5"),
    (True, "a replicate is a non-negative integer, got True"),
])
def test_a_bad_replicate_is_one_line_naming_the_zoo(replicate, message):
    with pytest.raises(ZooError, match=message) as err:
        resolve_zoo({**zoo_config("mini4"), "replicate": replicate}, "micro")
    assert "zoo mini4" in str(err.value) and "\n" not in str(err.value)


def test_a_hub_zoo_has_no_replicate_but_0():
    resolve_zoo({**zoo_config("which4"), "replicate": 0})
    with pytest.raises(ZooError, match="zoo which4: replicate=2 needs source: mini") as err:
        resolve_zoo({**zoo_config("which4"), "replicate": 2})
    assert "\n" not in str(err.value)


def test_the_build_cli_refuses_a_negative_replicate_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_main(["--size", "micro", "--replicate", "-1", "mini2"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "glue_bench: error: mini-zoo replicate: a replicate is a non-negative integer, got -1"


def test_candidate_scores_keep_one_replicate_s_rows_and_singles(tmp_path):
    from glue_bench.results import ResultStore
    from glue_bench.study import candidate_scores

    store = ResultStore(tmp_path / "r.sqlite")
    for n, (name, replicate, value) in enumerate([("base", 0, 0.1), ("chat_a", 0, 0.2), ("base", 1, 0.3),
                                                  ("chat_a", 1, 0.4), ("linear(mini2)", 0, 0.5),
                                                  ("linear(mini2)", 1, 0.6)]):
        single = "(" not in name
        config = {"key": model_ref(name, "mini", "micro", replicate).key} if single else {"mini_size": "micro"}
        store.append_job(f"job{n}", [dict(zoo="mini2", candidate=name, method="none" if single else "linear",
                                          mixture="none", task="mini_arc", metric="acc_norm", value=value,
                                          config=json.dumps(config), replicate=replicate)])
    df = read_results(tmp_path / "r.sqlite")
    for replicate, want in ((0, {"base": 0.1, "chat_a": 0.2, "linear(mini2)": 0.5}),
                            (1, {"base": 0.3, "chat_a": 0.4, "linear(mini2)": 0.6})):
        scores = candidate_scores(df, "mini2", mini_size="micro", replicate=replicate)
        assert scores["arc"].to_dict() == want, replicate
