"""Provenance: weight fingerprints (files and in-memory state) and the machine facts every row records."""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import LlamaConfig, LlamaForCausalLM

from glue_bench.kinds.merge import Merge
from glue_bench.kinds.mixture import Mixture
from glue_bench.kinds.recipe import Recipe
from glue_bench.mixture.model_level import ModelMixtureLM
from glue_bench.provenance import _blas, files_fingerprint, machine_facts, router_fingerprint, state_fingerprint
from glue_bench.results import read_results

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))


def test_a_state_fingerprint_is_the_same_for_the_same_weights_and_changes_with_one_weight():
    one, two = tiny_model(), tiny_model()
    assert state_fingerprint(one) == state_fingerprint(two)
    assert re.fullmatch(r"[0-9a-f]{16}", state_fingerprint(one))
    with torch.no_grad():
        two.model.layers[0].mlp.up_proj.weight[3, 5] += 1e-3
    assert state_fingerprint(one) != state_fingerprint(two)
    assert state_fingerprint(tiny_model(1)) != state_fingerprint(one)


def test_a_state_fingerprint_tells_dtypes_apart_and_takes_bfloat16():
    model = tiny_model()
    assert state_fingerprint(model.to(torch.bfloat16)) != state_fingerprint(tiny_model())


def test_a_files_fingerprint_follows_the_files_and_rehashes_a_rewritten_one(tmp_path):
    tiny_model().save_pretrained(tmp_path / "a")
    tiny_model().save_pretrained(tmp_path / "b")
    assert files_fingerprint(tmp_path / "a") == files_fingerprint(tmp_path / "b")
    whole = hashlib.sha256((tmp_path / "a" / "model.safetensors").read_bytes()).hexdigest()  # independent: one read
    expected = hashlib.sha256(f"model.safetensors:{whole}".encode()).hexdigest()[:16]
    assert files_fingerprint(tmp_path / "a") == expected
    changed = tiny_model()
    with torch.no_grad():
        changed.lm_head.weight[0, 0] += 1.0
    changed.save_pretrained(tmp_path / "b")  # rewritten in place, same size
    rewritten = tmp_path / "b" / "model.safetensors"
    os.utime(rewritten, ns=(rewritten.stat().st_atime_ns, rewritten.stat().st_mtime_ns + 10**9))  # a later write's mtime
    assert files_fingerprint(tmp_path / "b") != files_fingerprint(tmp_path / "a")
    assert files_fingerprint(tmp_path / "empty") is None


class _Encoder:
    def __init__(self, model, layer=None):
        self.model, self.layer = model, layer


class _Router:
    def __init__(self, encoder, gates):
        self.encoder, self.gates = encoder, gates


class _HFLM:
    def __init__(self, model):
        self.model = model


@pytest.mark.parametrize("kind", [Mixture(), Recipe()], ids=["mixture", "recipe"])
def test_a_model_level_mixture_s_fingerprint_follows_its_experts_and_its_router(kind):
    def mixture(expert_seed=0, gate=0.0, router=None):
        router = router or _Router(_Encoder(tiny_model()), torch.full((2, 8), gate))
        return ModelMixtureLM({"a": _HFLM(tiny_model(expert_seed)), "b": _HFLM(tiny_model(5))}, router)

    assert kind.fingerprint(mixture()) == kind.fingerprint(mixture())
    assert kind.fingerprint(mixture(expert_seed=1)) != kind.fingerprint(mixture())
    assert kind.fingerprint(mixture(gate=1.0)) != kind.fingerprint(mixture())
    assert kind.fingerprint(mixture(router=len)) is None  # a router without weights: missing, not a hash of less
    assert kind.fingerprint(_HFLM(tiny_model())) == state_fingerprint(tiny_model())  # the recipe's merge of all


def test_a_kind_s_fingerprint_of_an_hf_model_is_its_state_and_none_for_what_it_cannot_see():
    assert Merge().fingerprint(_HFLM(tiny_model())) == state_fingerprint(tiny_model())
    assert Merge().fingerprint(object()) is None and router_fingerprint(len) is None


def test_machine_facts_name_torch_its_cpu_kernels_and_blas():
    facts = json.loads(machine_facts("cpu"))
    assert facts["torch"] == torch.__version__
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert facts["threads"] == torch.get_num_threads() and facts["device"] == "cpu"
    assert set(facts) >= {"blas", "cpu"}


def test_blas_is_read_from_torch_s_build_settings():
    shown = "  - Build settings: BLAS_INFO=open, BUILD_TYPE=Release, LAPACK_INFO=open, TORCH_VERSION=2.3.0,\n"
    assert _blas(shown) == "BLAS_INFO=open LAPACK_INFO=open"
    assert _blas("nothing here") is None


def test_a_preset_links_the_jobs_it_stores_and_those_it_finds_stored(micro_cache, tmp_path):
    from glue_bench.results import ResultStore
    from glue_bench.run import run_job

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["zoo=mini2", "mini_size=micro", "method=linear", "eval.tasks=[mini_arc]",
                                           "eval.limit=4", f"results_path={tmp_path}/r.sqlite"])
    assert run_job(cfg, preset="merge_methods")["status"] == "done"
    assert run_job(cfg, preset="merge_vs_mixture")["status"] == "skipped"
    assert run_job(cfg)["status"] == "skipped"  # a plain run links nothing
    store = ResultStore(tmp_path / "r.sqlite")
    assert len(store.job_keys()) == 4  # the merge, the base and mini2's two models
    assert store.presets() == {key: "merge_methods,merge_vs_mixture" for key in store.job_keys()}


def test_stored_rows_carry_weights_and_machine(micro_cache, tmp_path):
    from glue_bench.run import run_job
    from glue_bench.zoo import local_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["zoo=mini2", "mini_size=micro", "method=linear", "eval.tasks=[mini_arc]",
                                           "eval.limit=4", f"results_path={tmp_path}/r.sqlite"])
    run_job(cfg)
    rows = read_results(tmp_path / "r.sqlite")
    assert rows["weights"].notna().all() and rows["machine"].notna().all()
    assert json.loads(rows["machine"].iloc[0])["torch"] == torch.__version__
    from glue_bench.zoo import resolve_zoo, zoo_config

    refs, base = resolve_zoo(zoo_config("mini2"), "micro")
    by_name = rows.drop_duplicates("candidate").set_index("candidate")["weights"]
    for ref in [base, *refs]:
        assert by_name[ref.name] == files_fingerprint(local_dir(ref)), ref.name
    assert by_name["linear(mini2)"] not in {by_name[r.name] for r in refs}

