"""The streaming engine: in-memory and on-disk outputs, reuse between candidates, seeds, vocab."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from glue_bench.merge import METHODS, MergeError, get_method
from glue_bench.merge import methods as _registers_the_methods  # noqa: F401
from glue_bench.merge.engine import Merger, TensorSource, check_compatible, merge_models
from glue_bench.merge.params import validate_params as _validate_params

MODELS = ("chat_a", "chat_b")


@pytest.fixture
def dirs(micro_cache):
    from glue_bench.zoo.mini.build import model_dir

    return {n: model_dir(n, "micro") for n in MODELS + ("base",)}


def sources(dirs, names=MODELS):
    return [TensorSource(n, dirs[n]) for n in names]


def test_unknown_method_names_the_known_ones():
    with pytest.raises(MergeError, match="unknown merge method 'nope'; known: .*linear.*ties"):
        get_method("nope")


def test_in_memory_merge_equals_the_weighted_average_of_the_files(dirs):
    model, timings = merge_models(sources(dirs), "linear", {"weights": [3.0, 1.0]})
    a, b = (load_file(dirs[n] / "model.safetensors") for n in MODELS)
    state = model.state_dict()
    for key in a:
        assert torch.allclose(state[key], 0.75 * a[key] + 0.25 * b[key], atol=1e-6), key
    assert set(timings) == {"load_s", "merge_s"}


def test_a_merge_does_not_touch_its_input_files(dirs, tmp_path):
    copies = {}
    for n in MODELS:
        shutil.copytree(dirs[n], tmp_path / n)
        copies[n] = (tmp_path / n / "model.safetensors").read_bytes()
    merge_models([TensorSource(n, tmp_path / n) for n in MODELS], "ties",
                 {"density": 0.3}, base=TensorSource("base", dirs["base"]))
    assert all((tmp_path / n / "model.safetensors").read_bytes() == copies[n] for n in MODELS)


def test_saved_sharded_checkpoint_loads_and_equals_the_in_memory_merge(dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    merger = Merger(sources(dirs), "ties", TensorSource("base", dirs["base"]))
    params = {"density": 0.5, "weights": [0.7, 0.3]}
    in_memory = merger.to_model(params).state_dict()
    out = merger.save(params, tmp_path / "merged", max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    assert (out / "tokenizer.json").exists() and not list(tmp_path.glob(".merged.partial*"))
    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for key, value in in_memory.items():
        assert torch.equal(loaded[key], value), key
    with pytest.raises(MergeError, match="exists and is not empty"):
        merger.save(params, out)
    assert AutoModelForCausalLM.from_pretrained(out) is not None  # the refused save left it intact


class CountingSource(TensorSource):
    reads = 0

    def get(self, key):
        CountingSource.reads += 1
        return super().get(key)


def test_cached_merger_reads_once_and_matches_fresh_merges(dirs):
    cached = Merger([CountingSource(n, dirs[n]) for n in MODELS], "task_arithmetic",
                    CountingSource("base", dirs["base"]), cache=True)
    model = None
    for weights in ([0.2, 0.5], [0.9, 0.1], [0.4, 0.4]):
        model = cached.to_model({"weights": weights}, model)
        fresh = merge_models(sources(dirs), "task_arithmetic", {"weights": weights},
                             base=TensorSource("base", dirs["base"]))[0].state_dict()
        for key, value in model.state_dict().items():
            assert torch.equal(value, fresh[key]), key
    assert CountingSource.reads == 3 * len(cached.keys)  # two models and the base, read once


def test_cache_budget_bounds_what_is_kept(dirs):
    merger = Merger(sources(dirs), "linear", cache=True, cache_budget_bytes=300_000)
    dict(merger.tensors({}))
    assert 0 < merger._cached_bytes <= 300_000 and len(merger._cached) < len(merger.keys)


def test_randomised_merges_are_reproducible_by_seed(dirs):
    def run(seed):
        merger = Merger(sources(dirs), "dare_ties", TensorSource("base", dirs["base"]))
        return dict(merger.tensors({"density": 0.3, "seed": seed}))

    first, again, other = run(1), run(1), run(2)
    key = "model.layers.0.mlp.up_proj.weight"
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first[key], other[key])


def test_base_is_checked_only_when_the_method_uses_it(dirs, tmp_path):
    (tmp_path / "odd").mkdir()
    save_file({"w": torch.zeros(2)}, tmp_path / "odd" / "model.safetensors")
    merger = Merger(sources(dirs), "linear", TensorSource("odd", tmp_path / "odd"))
    assert len(dict(merger.tensors({}))) == len(merger.keys)
    with pytest.raises(MergeError, match="differ in tensors"):
        Merger(sources(dirs), "ties", TensorSource("odd", tmp_path / "odd")).to_model({})


def test_models_of_different_shapes_are_refused(tmp_path):
    for name, shape in (("m1", (4, 4)), ("m2", (4, 5))):
        (tmp_path / name).mkdir()
        save_file({"w": torch.zeros(shape)}, tmp_path / name / "model.safetensors")
    with pytest.raises(MergeError, match=r"'m1' and 'm2' cannot be merged: tensor 'w' has shape \[4, 4\] vs \[4, 5\]"):
        check_compatible([TensorSource(n, tmp_path / n) for n in ("m1", "m2")])


def _with_extra_tokens(src, dst, new_tokens):
    """A copy of a micro model whose tokenizer and embeddings gained `new_tokens` at the end."""
    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    tok.add_tokens(new_tokens)
    tok.save_pretrained(dst)
    state = load_file(dst / "model.safetensors")
    config = json.loads((dst / "config.json").read_text())
    extra = len(new_tokens)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        state[key] = torch.cat([state[key], torch.full((extra, state[key].shape[1]), 7.0)])
    config["vocab_size"] += extra
    save_file(state, dst / "model.safetensors")
    (dst / "config.json").write_text(json.dumps(config))


def test_extended_vocabulary_merges_shared_rows_and_keeps_the_new_ones(dirs, tmp_path):
    _with_extra_tokens(dirs["chat_b"], tmp_path / "chat_b_plus", ["<pad_x>", "<pad_y>"])
    model = merge_models([TensorSource("a", dirs["chat_a"]), TensorSource("b+", tmp_path / "chat_b_plus")],
                         "linear", {})[0]
    a = load_file(dirs["chat_a"] / "model.safetensors")["model.embed_tokens.weight"]
    b = load_file(dirs["chat_b"] / "model.safetensors")["model.embed_tokens.weight"]
    merged = model.state_dict()["model.embed_tokens.weight"]
    assert merged.shape[0] == a.shape[0] + 2 and model.config.vocab_size == a.shape[0] + 2
    assert torch.allclose(merged[:a.shape[0]], (a + b) / 2, atol=1e-6)
    assert torch.equal(merged[a.shape[0]:], torch.full((2, a.shape[1]), 7.0))


def test_vocabularies_that_disagree_are_refused(dirs, tmp_path):
    from transformers import AutoTokenizer

    _with_extra_tokens(dirs["chat_b"], tmp_path / "other", ["<x>"])
    tok = AutoTokenizer.from_pretrained(tmp_path / "other")
    vocab = tok.get_vocab()
    swapped = {v: k for k, v in vocab.items()}
    a_token, b_token = swapped[5], swapped[6]
    data = json.loads((tmp_path / "other" / "tokenizer.json").read_text())
    data["model"]["vocab"][a_token], data["model"]["vocab"][b_token] = 6, 5
    (tmp_path / "other" / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(MergeError, match=r"different tokenizers \(token id 5 is"):
        check_compatible([TensorSource("a", dirs["chat_a"]), TensorSource("other", tmp_path / "other")])


@pytest.mark.parametrize("method, params", [("ties", {"density": 0.4}), ("dare_ties", {"density": 0.4, "seed": 3})])
def test_cached_sparsified_task_vectors_give_the_same_merges(dirs, method, params):
    cached = Merger(sources(dirs), method, TensorSource("base", dirs["base"]), cache=True)
    for weights in ([0.2, 0.5], [0.9, -0.3], [0.9, 0.0], [0.9, 0.1]):
        # a negative weight subtracts only without normalize (which would cancel its sign: refused)
        call = {**params, "weights": weights, **({"normalize": False} if min(weights) < 0 else {})}
        ours = dict(cached.tensors(call))
        fresh = dict(Merger(sources(dirs), method, TensorSource("base", dirs["base"])).tensors(call))
        # the same arithmetic, on a stack kept for the next weights or on one made for this merge
        assert all(torch.equal(ours[k], fresh[k]) for k in fresh)
    assert cached._memo and all(len(m) == 1 for m in cached._memo.values())  # one stack, reused


WRITES_OUT = sorted(name for name, m in METHODS.items() if m.writes_out)


@pytest.mark.parametrize("method", WRITES_OUT)
def test_methods_that_write_into_the_model_s_tensors_give_the_same_merge(dirs, method):
    base = TensorSource("base", dirs["base"])
    params = {"weights": [0.7, 0.4]}
    fresh = dict(Merger(sources(dirs), method, base).tensors(params))
    merger = Merger(sources(dirs), method, base)
    outputs = {key: torch.full_like(tensor, float("nan")) for key, tensor in fresh.items()}
    for key, merged in merger.tensors(params, outputs):
        assert merged is outputs[key], f"{method} did not write {key} into its output"
        assert torch.equal(merged, fresh[key]), key
    model = merger.to_model(params)  # the same through the model's own parameters
    assert all(torch.equal(p, fresh[k]) for k, p in model.named_parameters())


def test_checked_parameters_are_taken_as_checked_only_by_their_method_and_number_of_models():
    linear = get_method("linear")
    checked = linear.validate({"weights": 2.0}, 3)
    assert dict(checked) == {"weights": [2.0, 2.0, 2.0], "normalize": True}
    assert linear.validate(checked, 3) is checked
    with pytest.raises(MergeError, match=r"linear.weights: 3 values given for 4 models"):
        linear.validate(checked, 4)  # another number of models: checked again
    with pytest.raises(MergeError, match=r"slerp: unknown parameter\(s\) normalize, weights"):
        get_method("slerp").validate(checked, 2)  # another method's: checked again
    with pytest.raises(MergeError, match=r"linear.weights\[1\]"):
        linear.validate({**checked, "weights": [2.0, "x", 2.0]}, 3)  # a plain dict, however it was made


def test_a_merge_job_looks_its_method_up_and_checks_its_parameters_once(micro_cache, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from glue_bench.merge import registry
    from glue_bench.run import run_job

    calls = []
    monkeypatch.setattr(registry, "validate_params", lambda *a: calls.append(a[0]) or _validate_params(*a))
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["zoo=mini2", "mini_size=micro", "method=ties", "method.params.density=0.5",
                                           "eval.tasks=[mini_arc]", "eval.limit=4", f"results_path={tmp_path}/r.sqlite"])
    assert run_job(cfg)["status"] == "done"
    assert calls == ["ties"]


def test_a_new_method_and_a_new_zoo_are_one_function_and_two_yamls(micro_cache, tmp_path):
    """docs/extending.md's worked examples: a merge method registered by one function with its
    parameters declared once, its conf/method YAML, and a zoo YAML, found on Hydra's search path. The
    method keeps the first model whole, so the merge must score exactly what that model scores."""
    from hydra import compose, initialize_config_dir

    from glue_bench.merge import METHODS, Param, register
    from glue_bench.results import read_results
    from glue_bench.run import run_job

    @register("_first", (Param("unused", 1.0, "a parameter declared once, with its default"),))
    def first(tensors, unused):
        """The first model's tensor, as it is."""
        return tensors[0].clone()

    conf = tmp_path / "conf"
    (conf / "method").mkdir(parents=True)
    (conf / "zoo").mkdir()
    (conf / "method" / "_first.yaml").write_text("name: _first\nparams:\n  unused: 1.0\n")
    (conf / "zoo" / "pair.yaml").write_text("name: pair\nsource: mini\nbase: base\nmodels:\n  - chat_b\n  - chat_a\n")
    try:
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["zoo=pair", "mini_size=micro", "method=_first", "eval.tasks=[mini_arc]",
                                               "eval.limit=8", f"results_path={tmp_path}/r.sqlite",
                                               f"hydra.searchpath=[file://{conf}]"])
        assert run_job(cfg)["status"] == "done"
    finally:
        del METHODS["_first"]
    rows = read_results(tmp_path / "r.sqlite")
    merged, first_model = (rows[rows["candidate"] == c].set_index(["task", "metric"]) for c in ("_first(pair)", "chat_b"))
    assert set(merged["zoo"]) == {"pair"} and set(merged["method"]) == {"_first"}
    assert len(merged) > 0 and merged["value"].sort_index().equals(first_model["value"].sort_index())


def _mapped_kib(path) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1] in "0123456789abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
@pytest.mark.parametrize("apart", [False, True])
def test_released_pages_leave_the_process(tmp_path, monkeypatch, apart):
    """A merged tensor's pages are dropped from the process once released, one source after
    another or over threads (release_pages), and read again correctly afterwards."""
    from glue_bench.merge import engine

    monkeypatch.setattr(engine, "_RELEASED_APART", 0 if apart else 1 << 62)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    tensors = {f"m{i}": torch.full((256, 1024), float(i)) for i in range(3)}  # 1 MiB each
    found = []
    for name, tensor in tensors.items():
        (tmp_path / name).mkdir()
        save_file({"w": tensor}, str(tmp_path / name / "model.safetensors"))
        found.append(TensorSource(name, tmp_path / name))
    for source in found:
        assert float(source.get("w").sum()) == float(tensors[source.name].sum())  # faults the pages in
    files = [tmp_path / s.name / "model.safetensors" for s in found]
    assert all(_mapped_kib(f) >= 1000 for f in files)
    engine.release_pages(found, "w")
    assert all(_mapped_kib(f) <= 8 for f in files)  # at most the header's page
    assert float(found[1].get("w").sum()) == float(tensors["m1"].sum())
