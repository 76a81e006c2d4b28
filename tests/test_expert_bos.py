"""Each model's own BOS convention: its zoo entry's add_bos_token, else its tokenizer_config.json's,
else eval.add_bos_token; every expert of a model-level mixture, every member of an ensemble of
other conventions and each single model is evaluated by its own, and a single model evaluated by
another convention than the eval setting's is another job."""

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from glue_bench.evaluate import EvalConfig
from glue_bench.zoo import ZooError, add_bos_token, check_zoo_config, model_ref


def _copy(src, dst, declared=None):
    """A local copy of a mini model whose tokenizer_config.json declares `declared` (None: nothing)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    assert "add_bos_token" not in config  # the mini zoo declares nothing: eval.add_bos_token decides
    if declared is not None:
        (dst / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": declared}))
    return dst


@pytest.fixture(scope="module")
def dirs(micro_cache, tmp_path_factory):
    from glue_bench.zoo.mini.build import model_dir

    root = tmp_path_factory.mktemp("local")
    a, b = model_dir("chat_a", "micro"), model_dir("chat_b", "micro")
    return {"plain_a": _copy(a, root / "plain_a"), "plain_b": _copy(b, root / "plain_b"),
            "says_true": _copy(a, root / "says_true", True), "says_false": _copy(b, root / "says_false", False)}


def _ref(dirs, which, entry=None, name=None):
    return model_ref({"name": name or which, "path": str(dirs[which]),
                      **({} if entry is None else {"add_bos_token": entry})}, "local")


@pytest.mark.parametrize("entry, which, eval_setting, expected", [
    (None, "plain_a", True, True), (None, "plain_a", False, False),        # nothing said: the eval setting
    (None, "says_false", True, False), (None, "says_true", False, True),   # the tokenizer config over it
    (False, "says_true", True, False), (True, "says_false", False, True),  # the zoo entry over both
])
def test_the_entry_comes_before_the_tokenizer_config_before_the_eval_setting(dirs, entry, which, eval_setting,
                                                                             expected):
    assert add_bos_token(_ref(dirs, which, entry), eval_setting) is expected


def test_a_mini_model_is_evaluated_with_bos(micro_cache):
    assert add_bos_token(model_ref("chat_a", "mini", "micro"), EvalConfig().add_bos_token) is True


def test_a_zoo_entry_s_add_bos_token_is_true_or_false():
    zoo = {"name": "z", "source": "local", "base": "b", "models": [{"name": "a", "path": "/x", "add_bos_token": "no"}]}
    with pytest.raises(ZooError, match=r"zoo z: models\[0\]: add_bos_token='no': expected true or false"):
        check_zoo_config(zoo)


def _mixture_router():
    return {"name": "prompt", "layer": None, "prompts": {"a": {"positive": ["Question: what is 2 plus 2?"]},
                                                         "b": {"positive": ["Once upon a time there was"]}}}


def test_each_expert_of_a_model_level_mixture_gets_its_own_bos(dirs):
    from glue_bench.mixture.build import model_mixture

    refs = [_ref(dirs, "plain_a", False, name="a"), _ref(dirs, "plain_b", name="b")]
    lm = model_mixture(refs, model_ref("base", "mini", "micro"), {"top_k": 1}, _mixture_router(), EvalConfig())
    assert [expert.add_bos_token for expert in lm.experts] == [False, True]
    bos = lm.experts[0].tokenizer.bos_token_id
    assert [expert.tok_encode("hello")[0] == bos for expert in lm.experts] == [False, True]


def test_ensemble_members_of_other_conventions_are_averaged_per_sequence_each_by_its_own(dirs):
    from glue_bench.mixture.ensemble import ensemble_of

    lm, averaging, _ = ensemble_of([_ref(dirs, "plain_a", False, name="a"), _ref(dirs, "plain_b", name="b")],
                                   EvalConfig())
    assert averaging == "sequence"
    assert {name: member.add_bos_token for name, member in lm.members.items()} == {"a": False, "b": True}
    lm, averaging, _ = ensemble_of([_ref(dirs, "plain_a", name="a"), _ref(dirs, "plain_b", name="b")], EvalConfig())
    assert averaging == "token" and lm.add_bos_token is True


class _Store:
    def __init__(self):
        self.keys = []

    def has_job(self, key):
        return False

    def append_job(self, key, rows, outcomes=(), *, replace=False, preset=None):
        self.keys.append(key)


def test_a_single_model_is_evaluated_by_its_own_convention_under_a_key_that_says_so(dirs, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    import glue_bench.job as job_module
    models = f"[{{name:a,path:'{dirs['plain_a']}',add_bos_token:false}},{{name:b,path:'{dirs['plain_b']}'}}]"
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["zoo=mini2", "zoo.source=local", f"zoo.models={models}",
                                           f"zoo.base={{name:b,path:'{dirs['plain_b']}'}}",
                                           f"results_path={tmp_path}/r.sqlite"])
    job = job_module.Job.from_config(cfg)
    job.store = _Store()
    used = {}

    def evaluate_model(model, tok, tasks_dir, eval_cfg, samples=None, add_bos_token=None):
        used[model.name_or_path] = add_bos_token
        return [], {"eval_s": 0.0, "outcomes": []}

    monkeypatch.setattr(job_module, "evaluate_model", evaluate_model)
    job.evaluate_singles()
    assert used == {str(dirs["plain_b"]): True, str(dirs["plain_a"]): False}
    a, b = (job.refs[0], job.refs[1])
    assert job.store.keys == [job.sub_key({"single": b.key}), job.sub_key({"single": a.key, "add_bos_token": False})]
    assert OmegaConf.select(cfg, "eval.add_bos_token") is True
