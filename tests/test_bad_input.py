"""Malformed input at every entry point, as a careless or unlucky user gives it: config-group
overrides, zoo YAML, model files, results stores and search storages. Each gets exit status 1,
exactly one `glue_bench: error:` line naming what is wrong (for an unknown config option, Hydra's
"Could not find" made one line), no traceback, no model evaluated, and a store whose rows are the
ones it had.

The CLI runs in-process (`glue_bench.__main__.cli`, what `python -m glue_bench` runs): one
interpreter for every case, so the table costs seconds, not a Python start-up per input."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from glue_bench.__main__ import cli

ARC = ["eval.tasks=[mini_arc]", "eval.limit=4"]
MLP = "model.layers.0.mlp.up_proj.weight"
EVOLUTIONARY = ["strategy=evolutionary", "strategy.search.n_trials=2"]

# (id, arguments after `python -m glue_bench`, what the error line says). `{name}` is a file or
# folder the `world` fixture made; zoo=<id> is that case's zoo YAML (ZOOS), found on hydra.searchpath.
CASES = [
    # config groups: an unknown option, an unknown key, an override that does not parse
    ("zoo-unknown", ["zoo=nope"], "Could not find 'zoo/nope'"),
    ("method-unknown", ["method=nope"], "Could not find 'method/nope'"),
    ("strategy-unknown", ["strategy=nope"], "Could not find 'strategy/nope'"),
    ("mixture-unknown", ["mixture=nope"], "Could not find 'mixture/nope'"),
    ("router-unknown", ["router=nope"], "Could not find 'router/nope'"),
    ("eval-unknown", ["eval=nope"], "Could not find 'eval/nope'"),
    ("experiment-unknown", ["experiment=nope"], "Could not find 'experiment/nope'"),
    ("override-unknown-key", ["zoo.nosuch.deep=1"], "Could not override 'zoo.nosuch.deep'"),
    ("override-unparsable", ["eval.limit=[1"], "override 'eval.limit=[1' does not parse"),
    # eval
    ("eval-limit-zero", ["eval.limit=0"], "eval.limit=0: expected null (the whole test split) or a positive integer"),
    ("eval-limit-negative", ["eval.limit=-3"], "eval.limit=-3"),
    ("eval-limit-text", ["eval.limit=abc"], "eval.limit='abc'"),
    ("eval-limit-beyond-int64", ["eval.limit=99999999999999999999"], "eval.limit=99999999999999999999: at most"),
    ("eval-threads-zero", ["eval.threads=0"], "eval.threads=0: expected null (one fewer than the cores) or a positive integer"),
    ("eval-limit-fraction", ["eval.limit=0.5"], "eval.limit=0.5"),
    ("eval-tasks-empty", ["eval.tasks=[]"], "eval.tasks=[]: expected a non-empty list of task names"),
    ("eval-tasks-not-a-list", ["eval.tasks=mini_arc"], "eval.tasks='mini_arc': expected a non-empty list"),
    ("eval-tasks-unknown", ["eval.tasks=[nosuch_task]"], "eval.tasks: nosuch_task declared nowhere"),
    ("eval-tasks-twice", ["eval.tasks=[mini_arc,mini_arc]"], "a task is listed twice"),
    ("eval-tasks-code-only", ["eval.tasks=[mini_mbpp]"], "only code tasks"),
    ("eval-batch-zero", ["eval.batch_size=0"], "eval.batch_size=0: expected a positive integer"),
    ("eval-batch-text", ["eval.batch_size=many"], "eval.batch_size='many'"),
    ("eval-device-unknown", ["eval.device=quantum"], "eval.device='quantum': expected cpu, cuda, cuda:N or mps"),
    ("eval-device-cuda", ["eval.device=cuda"], "eval.device=cuda: no CUDA device here"),
    ("eval-code-flag", ["eval.allow_code_execution=maybe"], "eval.allow_code_execution='maybe': expected true or false"),
    ("eval-unknown-setting", ["+eval.bogus=1"], "eval: unknown setting(s) bogus"),
    # method parameters, all refused before any tensor is read
    ("weights-negative", ["method.params.weights=[-1,1]"], "weights[0] = -1"),
    ("weights-all-zero", ["method.params.weights=[0,0]"], "weights are all zero"),
    ("weights-count", ["method.params.weights=[1,2,3]"], "3 values given for 2 models"),
    ("weights-nan", ["method.params.weights=nan"], "linear.weights"),
    ("density-range", ["method=ties", "method.params.density=1.5"], "density"),
    ("select-topk-zero", ["method=sce", "method.params.select_topk=0"], "sce.select_topk = 0: must be > 0"),
    ("nearswap-t-negative", ["method=nearswap", "method.params.t=-1"], "nearswap.t = -1: must be >= 0"),
    ("method-unknown-param", ["+method.params.bogus=1"], "unknown parameter(s) bogus"),
    # a merge whose output is not finite, from finite inputs (the singles are in the store already)
    ("weights-beyond-float32", ["method.params.weights=[1e39,1]"], "must be within float32's range"),
    ("merge-overflows", ["method.params.weights=[3e38,3e38]", "method.params.normalize=false"],
     "holds NaN or inf (its inputs are finite: check the method's parameters)"),
    # strategy, mixture, router
    ("strategy-models-twice", ["strategy.models=[chat_a,chat_a]"], "chat_a listed twice"),
    ("strategy-models-unknown", ["strategy.models=[nope]"], "nope not in zoo mini2"),
    ("strategy-models-not-a-list", ["strategy.models=chat_a"], "strategy.models='chat_a': expected a non-empty list"),
    ("strategy-unknown-setting", ["strategy=heuristic_average", "+strategy.search.bogus=1"], "bogus"),
    ("strategy-without-method", ["method=none", "strategy=evolutionary"], "needs a merge method"),
    ("router-without-mixture", ["router=mlp"], "only mixtures route"),
    ("mixture-with-search", ["mixture=ffn", "strategy=heuristic_average"], "not implemented"),
    ("router-no-prompts", ["mixture=ffn", "router=prompt", "router.n_prompts=0"],
     "router.n_prompts=0: expected a positive integer"),
    ("router-steps-zero", ["mixture=ffn", "router=mlp", "router.steps=0"], "router.steps=0: expected a positive integer"),
    ("router-lr-negative", ["mixture=ffn", "router=mlp", "router.lr=-1"], "router.lr=-1: expected a positive number"),
    ("router-layer-negative", ["mixture=model", "router=prompt", "router.layer=-1"], "router.layer=-1"),
    ("router-layer-beyond-the-base", ["mixture=model", "router=prompt", "router.layer=99"],
     "router.layer=99: the base base has hidden states 0..2"),
    ("recipe-router-layer-beyond", ["zoo=mini4", "strategy=glue_recipe", "mixture=model", "router=prompt",
                                    "router.layer=99"], "router.layer=99"),
    ("search-no-trials", [*EVOLUTIONARY[:1], "strategy.search.n_trials=0"], "strategy.search.n_trials=0: expected an integer >= 1"),
    ("search-popsize-zero", [*EVOLUTIONARY, "strategy.search.popsize=0"], "strategy.search.popsize=0"),
    ("search-sigma-negative", [*EVOLUTIONARY, "strategy.search.sigma0=-1"], "strategy.search.sigma0=-1"),
    ("search-grid-outside", ["strategy=heuristic_coefficient", "strategy.search.grid=[0,1.5]"],
     "strategy.search.grid=[0, 1.5]: expected a non-empty list of shares strictly between 0 and 1"),
    ("search-warm-stage", ["strategy=heuristic_evolutionary", "strategy.search.evolutionary.n_trials=-2"],
     "strategy.search.evolutionary.n_trials=-2"),
    ("proxy-size-zero", ["strategy=heuristic_average", "strategy.proxy.size=0"], "strategy.proxy.size=0"),
    ("proxy-size-whole-limit", ["strategy=heuristic_average", "strategy.proxy.size=400"],  # the world's eval.limit=4
     "strategy.proxy.size=400: would leave no final test items for mini_arc (4 items, eval.limit=4)"),
    ("proxy-size-whole-split", ["strategy=heuristic_average", "strategy.proxy.size=400", "eval.limit=500"],
     "strategy.proxy.size=400: would leave no final test items for mini_arc (400 items)"),
    ("proxy-seed-text", ["strategy=heuristic_average", "strategy.proxy.seed=abc"], "strategy.proxy.seed='abc'"),
    ("method-params-null", ["method.params=null"], "method.params=null: expected a mapping"),
    ("ties-negative-normalized", ["method=ties", "method.params.weights=[-1,-1]"], "cancels a negative weight's sign"),
    ("task-arithmetic-sum-zero", ["method=task_arithmetic", "method.params.weights=[1,-1]", "method.params.normalize=true"],
     "their sum 0 is the divisor and must be > 0"),
    ("multislerp-sum-zero", ["method=multislerp", "method.params.weights=[1,-1]"], "sum to 0 with normalize_weights=true"),
    # the config's own settings
    ("mini-size-unknown", ["mini_size=huge"], "mini_size='huge': expected one of"),
    ("force-not-bool", ["force=maybe"], "force='maybe': expected true or false"),
    ("save-not-bool", ["save=2"], "save=2: expected true or false"),
    ("replicate-negative", ["zoo.replicate=-1"], "a replicate is a non-negative integer, got -1"),
    ("replicate-text", ["zoo.replicate=abc"], "a replicate is a non-negative integer, got 'abc'"),
    # zoo YAML
    ("zoo-no-base", ["zoo=zoo-no-base"], "zoo zoo-no-base: no 'base'"),
    ("zoo-no-models", ["zoo=zoo-no-models"], "zoo zoo-no-models: no 'models'"),
    ("zoo-models-empty", ["zoo=zoo-models-empty"], "'models' must be a non-empty list"),
    ("zoo-models-string", ["zoo=zoo-models-string"], "'models' must be a non-empty list of models, got 'chat_a'"),
    ("zoo-model-twice", ["zoo=zoo-model-twice"], "model 'chat_a' is listed twice"),
    ("zoo-same-model-two-names", ["zoo=zoo-same-model-two-names"], "model 'b' and 'a' are the same model"),
    ("zoo-source-unknown", ["zoo=zoo-source-unknown"], "source must be one of mini, local, hub, got 'nope'"),
    ("zoo-entry-no-path", ["zoo=zoo-entry-no-path"], "models[1]: a model mapping needs a string name and path"),
    ("zoo-entry-number", ["zoo=zoo-entry-number"], "models[0]: expected a model name"),
    ("zoo-mini-model-unknown", ["zoo=zoo-mini-model-unknown"], "unknown mini-zoo model 'nope'"),
    ("zoo-yaml-unparsable", ["zoo=zoo-yaml-unparsable"], "a YAML file does not parse: while parsing a flow sequence"),
    # model files
    ("weights-truncated", ["zoo=weights-truncated"], "model.safetensors is truncated"),
    ("config-not-json", ["zoo=config-not-json"], "config.json is not JSON"),
    ("config-not-a-config", ["zoo=config-not-a-config"], "is not a model config"),
    ("config-without-weights", ["zoo=config-without-weights"], "has no weights"),
    ("no-tokenizer", ["zoo=no-tokenizer"], "has no tokenizer"),
    ("weights-garbage", ["zoo=weights-garbage"], "model.safetensors is not a safetensors file"),
    ("weights-empty-file", ["zoo=weights-empty-file"], "shorter than a header"),
    ("index-names-missing-shard", ["zoo=index-names-missing-shard"], "which is not in"),
    ("model-dir-missing", ["zoo=model-dir-missing"], "does not exist"),
    ("tensor-missing", ["zoo=tensor-missing"], f"do not match config.json (tensor '{MLP}' is missing"),
    ("layers-one-more", ["zoo=layers-one-more"], "do not match config.json (tensor 'model.layers.2."),
    ("layers-one-fewer", ["zoo=layers-one-fewer"], "do not match config.json (tensor 'model.layers.1."),
    ("vocab-disagrees", ["zoo=vocab-disagrees"], "tensor 'model.embed_tokens.weight' has shape"),
    ("model-type-unknown", ["zoo=model-type-unknown"], "describes no causal LM transformers can build"),
    ("tokenizer-truncated", ["zoo=tokenizer-truncated"], "tokenizer.json is not JSON"),
    ("tokenizer-other-ids", ["zoo=tokenizer-other-ids"], "have different tokenizers (token id"),
    ("weights-nan-single", ["zoo=weights-nan-single", "method=none"], f"tensor '{MLP}' in model.safetensors holds NaN"),
    ("weights-inf-merged", ["zoo=weights-inf-merged"], f"tensor '{MLP}' in model.safetensors holds NaN or inf"),
    # results stores
    ("store-not-a-database", ["results_path={notdb}"], "not a glue_bench results database"),
    ("store-foreign-sqlite", ["results_path={foreign}"], "not a glue_bench results database (missing table"),
    ("store-is-a-directory", ["results_path={folder}"], "is a directory (expected an SQLite file)"),
    ("store-uncreatable", ["results_path=/proc/nope/results.sqlite"], "cannot create its folder"),
    ("store-read-only", ["results_path={readonly_store}"], "cannot write to it"),
    ("store-path-empty", ["results_path=''"], "results_path='': expected the path"),
    # search storages
    ("storage-not-a-database", [*EVOLUTIONARY, "strategy.search.storage=sqlite:///{notdb}"], "file is not a database"),
    ("storage-unknown-scheme", [*EVOLUTIONARY, "strategy.search.storage=foo://bar"], "study storage foo://bar"),
    ("storage-not-a-url", [*EVOLUTIONARY, "strategy.search.storage=not_a_url"], "not a database URL"),
    ("storage-uncreatable", [*EVOLUTIONARY, "strategy.search.storage=sqlite:////proc/nope/s.sqlite"],
     "cannot create its folder"),
    ("storage-read-only", [*EVOLUTIONARY, "strategy.search.storage=sqlite:///{readonly_storage}"],
     "cannot write to it: attempt to write a readonly database"),
]

# the zoo YAML of each zoo case; {chat_a}, {base}, {<case>} are model folders
ZOOS = {
    "zoo-no-base": "source: mini\nmodels: [chat_a, chat_b]\n",
    "zoo-no-models": "source: mini\nbase: base\n",
    "zoo-models-empty": "source: mini\nbase: base\nmodels: []\n",
    "zoo-models-string": "source: mini\nbase: base\nmodels: chat_a\n",
    "zoo-model-twice": "source: mini\nbase: base\nmodels: [chat_a, chat_b, chat_a]\n",
    "zoo-same-model-two-names": "source: local\nbase: {base}\nmodels: [{{name: a, path: {chat_a}}}, {{name: b, path: {chat_a}}}]\n",
    "zoo-source-unknown": "source: nope\nbase: base\nmodels: [chat_a, chat_b]\n",
    "zoo-entry-no-path": "source: local\nbase: {base}\nmodels: [{chat_a}, {{name: x}}]\n",
    "zoo-entry-number": "source: mini\nbase: base\nmodels: [1, 2]\n",
    "zoo-mini-model-unknown": "source: mini\nbase: base\nmodels: [chat_a, nope]\n",
    "zoo-yaml-unparsable": "source: mini\nbase: base\nmodels: [chat_a, chat_b\n",
    "model-dir-missing": "source: local\nbase: {base}\nmodels: [{chat_a}, /nonexistent/model]\n",
}
BROKEN_MODELS = ("weights-truncated", "config-not-json", "config-not-a-config", "config-without-weights", "no-tokenizer",
                 "weights-garbage", "weights-empty-file", "index-names-missing-shard", "weights-nan-single",
                 "weights-inf-merged", "tensor-missing", "layers-one-more", "layers-one-fewer", "vocab-disagrees",
                 "model-type-unknown", "tokenizer-truncated", "tokenizer-other-ids")


def _break(case: str, folder, good) -> None:
    """`folder`: a copy of the good model `good`, broken as `case` says."""
    shutil.copytree(good, folder)
    weights = folder / "model.safetensors"
    if case == "weights-truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "config-not-json":
        (folder / "config.json").write_text("{model_type: llama,")
    elif case == "config-not-a-config":
        (folder / "config.json").write_text("[1, 2]")
    elif case == "config-without-weights":
        weights.unlink()
    elif case == "no-tokenizer":
        (folder / "tokenizer.json").unlink()
    elif case == "weights-garbage":
        weights.write_bytes((40).to_bytes(8, "little") + b"this is not the JSON header you expect" * 10)
    elif case == "weights-empty-file":
        weights.write_bytes(b"")
    elif case in ("tensor-missing", "layers-one-more", "layers-one-fewer", "vocab-disagrees", "model-type-unknown"):
        config = json.loads((folder / "config.json").read_text())
        if case == "tensor-missing":
            tensors = load_file(weights)
            del tensors[MLP]
            save_file(tensors, weights, metadata={"format": "pt"})
        elif case == "layers-one-more":
            config["num_hidden_layers"] += 1
        elif case == "layers-one-fewer":
            config["num_hidden_layers"] -= 1
        elif case == "vocab-disagrees":
            config["vocab_size"] += 7
        else:
            config["model_type"] = "not_a_model_type"
        (folder / "config.json").write_text(json.dumps(config))
    elif case == "tokenizer-truncated":
        text = (folder / "tokenizer.json").read_text()
        (folder / "tokenizer.json").write_text(text[: len(text) // 2])
    elif case == "tokenizer-other-ids":  # the same vocabulary size, two token ids swapped
        tok = json.loads((folder / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        a, b = sorted(vocab, key=vocab.get)[300:302]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        (folder / "tokenizer.json").write_text(json.dumps(tok))
    elif case == "index-names-missing-shard":
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {MLP: "model-00002.safetensors"}}))
    else:  # one MLP tensor not finite
        tensors = load_file(weights)
        tensors[MLP][0, 0] = float("nan") if "nan" in case else float("inf")
        save_file(tensors, weights, metadata={"format": "pt"})


def _immutable(path, on: bool) -> bool:
    """chattr +i: a file even root cannot write (the tests run as root on CI); False where unsupported."""
    return subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def world(micro_cache, tmp_path_factory):
    """The files the cases name, zoo YAMLs on a search path, and a store holding mini2's single models."""
    from glue_bench.zoo.mini.build import ensure_models

    root = tmp_path_factory.mktemp("bad_input")
    models = ensure_models(["base", "chat_a", "chat_b"], "micro", progress=False)
    files = {"base": models["base"], "chat_a": models["chat_a"], "chat_b": models["chat_b"],
             "notdb": root / "notdb.sqlite", "foreign": root / "foreign.sqlite", "folder": root / "folder",
             "readonly_store": root / "readonly.sqlite", "readonly_storage": root / "readonly_storage.sqlite"}
    files["notdb"].write_bytes(b"not a database, just bytes" * 100)
    files["folder"].mkdir()
    with sqlite3.connect(files["foreign"]) as conn:
        conn.execute("CREATE TABLE other (x)")
    for case in BROKEN_MODELS:
        files[case] = root / "models" / case
        _break(case, files[case], models["chat_a"])
    zoo_dir = root / "conf" / "zoo"
    zoo_dir.mkdir(parents=True)
    for case in BROKEN_MODELS:
        ZOOS.setdefault(case, f"source: local\nbase: {{base}}\nmodels: [{{chat_b}}, {{{case}}}]\n")
    for case, text in ZOOS.items():
        (zoo_dir / f"{case}.yaml").write_text(f"name: {case}\n" + text.format(**files))
    store = root / "store.sqlite"
    code, err = _run(["zoo=mini2", "method=none", *ARC, f"hydra.run.dir={root}/run"], store)
    assert code == 0, err[-3000:]
    shutil.copy(store, files["readonly_store"])
    from optuna.storages import RDBStorage

    RDBStorage(f"sqlite:///{files['readonly_storage']}").engine.dispose()  # a study storage, then made read-only
    immutable = [p for p in (files["readonly_store"], files["readonly_storage"]) if _immutable(p, True)]
    yield {"files": files, "store": store, "searchpath": f"hydra.searchpath=[file://{root / 'conf'}]",
           "immutable": immutable}
    for path in immutable:
        _immutable(path, False)


def _run(args: list[str], store) -> tuple[int, str]:
    """`python -m glue_bench ARGS` in this process: (exit status, stderr)."""
    import io
    import os
    from contextlib import redirect_stderr

    argv, env = sys.argv, os.environ.get("GLUE_BENCH_RESULTS")
    sys.argv = ["glue_bench", "mini_size=micro", *args]
    os.environ["GLUE_BENCH_RESULTS"] = str(store)
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            cli()
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
        if env is None:
            del os.environ["GLUE_BENCH_RESULTS"]
        else:
            os.environ["GLUE_BENCH_RESULTS"] = env
    return code, err.getvalue()


def _rows(store) -> list[tuple]:
    with sqlite3.connect(store) as conn:
        return sorted(conn.execute("SELECT * FROM results")) + sorted(conn.execute("SELECT * FROM jobs"))


@pytest.mark.parametrize("case, args, says", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line_and_leaves_the_store(case, args, says, world, tmp_path, capfd):
    if case.startswith(("store-read-only", "storage-read-only")) and not world["immutable"]:
        pytest.skip("chattr +i is not supported on this file system")
    if case == "eval-device-cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    store = tmp_path / "store.sqlite"
    shutil.copy(world["store"], store)
    before = _rows(store)
    args = [a.format(**world["files"]) for a in args]
    if not any(a.startswith("zoo=") for a in args):
        args.append("zoo=mini2")
    if any(a.startswith("strategy=") and a != "strategy=all" for a in args) and not any("proxy.size" in a for a in args):
        args.append("strategy.proxy.size=2")  # within eval.limit=4: a proxy set of 2 leaves 2 final items a task
    code, err = _run([*ARC, *args, world["searchpath"], f"hydra.run.dir={tmp_path}/run"], store)
    err += capfd.readouterr().err  # what lm-eval or a subprocess wrote to the descriptor itself
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err[-3000:]
    assert [line for line in lines if line.startswith("glue_bench: error:")] == [lines[-1]], err[-3000:]
    assert says in lines[-1], lines[-1]
    assert "Traceback" not in err and "HYDRA_FULL_ERROR" not in err
    assert "[glue_bench] evaluating" not in err  # refused before any model was evaluated
    assert _rows(store) == before
    if case == "store-not-a-database":
        assert world["files"]["notdb"].read_bytes() == b"not a database, just bytes" * 100


@pytest.mark.parametrize("case, argv, says", [
    ("missing", ["--results", "{tmp}/nope.sqlite"], "nope.sqlite: no such file"),
    ("directory", ["--results", "{tmp}"], "is a directory"),
    ("foreign", ["--results", "{tmp}/foreign.sqlite"], "not a glue_bench results database"),
    ("out-unwritable", ["--results", "{tmp}/store.sqlite", "--out", "/proc/no/tables"], "--out /proc/no/tables: cannot write"),
    ("archive-suffix", ["--results", "{tmp}/store.sqlite", "--archive", "{tmp}/x.txt"], "expected a .parquet file"),
])
def test_the_tables_command_fails_in_one_line(case, argv, says, world, tmp_path, capsys):
    from glue_bench.errors import entry_point
    from glue_bench.tables import main

    shutil.copy(world["store"], tmp_path / "store.sqlite")
    (tmp_path / "foreign.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(SystemExit) as exit_:
        entry_point(main)([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 1 and "Traceback" not in err
    assert says in lines[-1] and lines[-1].startswith("glue_bench: error:")


def test_an_interrupted_command_says_so_in_one_line_and_exits_130(capsys):
    from glue_bench.errors import entry_point

    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        entry_point(interrupted)([])
    assert exit_.value.code == 130
    assert capsys.readouterr().err.startswith("glue_bench: error: interrupted: nothing partial is stored")


@pytest.mark.parametrize("case", ["cache-is-a-file", "cache-uncreatable", "run-dir-uncreatable"])
def test_the_environment_s_paths_are_one_line(case, world, tmp_path, monkeypatch):
    store = tmp_path / "store.sqlite"
    shutil.copy(world["store"], store)
    before = _rows(store)
    run_dir = f"hydra.run.dir={tmp_path}/run"
    if case == "cache-is-a-file":
        (tmp_path / "cache").write_text("a file")
        monkeypatch.setenv("GLUE_BENCH_CACHE", str(tmp_path / "cache"))
    elif case == "cache-uncreatable":
        monkeypatch.setenv("GLUE_BENCH_CACHE", "/proc/no/cache")
    else:
        run_dir = "hydra.run.dir=/proc/no/run"
    code, err = _run(["zoo=mini2", *ARC, run_dir], store)
    lines = [line for line in err.splitlines() if line.strip()]
    says = {"cache-is-a-file": f"GLUE_BENCH_CACHE={tmp_path / 'cache'}: is a file, expected a folder",
            "cache-uncreatable": "GLUE_BENCH_CACHE=/proc/no/cache: cannot create it",
            "run-dir-uncreatable": "glue_bench: error: /proc/no"}[case]
    assert code == 1 and says in lines[-1] and lines[-1].startswith("glue_bench: error:"), err[-2000:]
    assert "Traceback" not in err and _rows(store) == before


def test_a_read_only_zoo_cache_serves_what_it_holds(world, tmp_path, monkeypatch):
    """Its task YAMLs name another folder's data (a copy): rendered into one of the process's own."""
    import os

    cache = tmp_path / "cache"
    shutil.copytree(os.environ["GLUE_BENCH_CACHE"], cache, ignore=shutil.ignore_patterns("statistics", "*.lock"))
    if not _immutable(cache, True) or subprocess.run(["chattr", "-R", "+i", str(cache)]).returncode:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        monkeypatch.setenv("GLUE_BENCH_CACHE", str(cache))
        code, err = _run(["zoo=mini2", "method=none", *ARC, f"hydra.run.dir={tmp_path}/run"], tmp_path / "r.sqlite")
    finally:
        subprocess.run(["chattr", "-R", "-i", str(cache)])
    assert code == 0, err[-3000:]
