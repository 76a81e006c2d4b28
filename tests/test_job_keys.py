"""Job keys and candidate kinds: a store written before the kinds existed stays valid, and every
unsupported combination is refused in one line before any work."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from glue_bench.errors import JobError
from glue_bench.job import Job
from glue_bench.kinds import kind_for

CONF = str(Path(__file__).resolve().parents[1] / "conf")

# computed with glue_bench/run.py at 10bc9d0 (before the kinds): job_key(candidate_payload(cfg)), and
# computed again when zoo v3, v4, v5, v6, v7, v8, v9 and then v10 changed every model's key (the models, not the key's computation,
# changed; the selective job's key also with the CMA-ES budget, 200 -> 50 trials)
PINNED = {
    ("merge", "mini"): (["zoo=mini4", "method=ties"], "885839533794ee90"),
    ("merge", "micro"): (["zoo=mini4", "method=ties"], "437d17f7ac6a23b5"),
    ("merge", "models"): (["zoo=mini4", "method=linear", "strategy.models=[math,code]"], "481257550a45837a"),
    ("selective", "mini"): (["zoo=mini4", "method=linear", "strategy=evolutionary"], "e87707a99a815059"),
    ("recipe", "mini"): (["zoo=mini8", "method=linear", "strategy=glue_recipe", "mixture=model", "router=prompt"],
                         "0bc2cf544ea475d4"),
    ("recipe", "micro"): (["zoo=mini8", "method=linear", "strategy=glue_recipe", "mixture=model", "router=prompt"],
                          "059c30d9064c725a"),
    ("mixture", "model"): (["zoo=mini4", "mixture=model", "router=prompt"], "e9105f6de32c8bd2"),
    ("mixture", "ffn"): (["zoo=mini4", "mixture=ffn", "router=prompt"], "a93675935fafc427"),
    ("stack", "mini"): (["zoo=mini2", "strategy=stack"], "534c59cf19c8f1e3"),
    ("stack", "micro"): (["zoo=mini2", "strategy=stack"], "08da532ee8964f6d"),
}


def _compose(overrides, tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[*overrides, f"results_path={tmp_path}/r.sqlite"])


@pytest.mark.parametrize("case", sorted(PINNED), ids="-".join)
def test_every_kind_keeps_the_job_key_it_had_before_the_kinds(case, tmp_path, monkeypatch):
    """On the test splits of the time (version 1): the same keys; on today's, other keys (other items)."""
    from glue_bench.evaluate import tasks

    overrides, pinned = PINNED[case]
    size = "micro" if case[1] == "micro" else "mini"
    cfg = _compose([*overrides, f"mini_size={size}"], tmp_path)
    today = Job.from_config(cfg, unused=kind_for(cfg).unused(cfg)).key
    assert tasks.SPLITS_VERSION > 1 and today != pinned
    monkeypatch.setattr(tasks, "SPLITS_VERSION", 1)
    size = "micro" if case[1] == "micro" else "mini"
    cfg = _compose([*overrides, f"mini_size={size}"], tmp_path)
    kind = kind_for(cfg)
    assert kind.name == case[0]
    assert Job.from_config(cfg, unused=kind.unused(cfg)).key == pinned


def test_a_single_model_keeps_its_key(tmp_path, monkeypatch):
    from glue_bench.evaluate import tasks

    cfg = _compose(["zoo=mini4", "mini_size=mini"], tmp_path)
    job = Job.from_config(cfg)
    assert job.base.key == "mini-v10/mini/base-517c5a8c"  # the test splits grew, the model did not change
    assert job.sub_key({"single": job.base.key}) != "13c20d7aeb7fa46c"  # judged on other items: another job
    monkeypatch.setattr(tasks, "SPLITS_VERSION", 1)
    job = Job.from_config(cfg)  # its eval settings resolved once, when it is made
    assert job.sub_key({"single": job.base.key}) == "13c20d7aeb7fa46c"  # recomputed at zoo v10 (a new base key)


def test_the_method_is_part_of_a_merge_s_key_but_not_of_a_stack_s_or_an_ensemble_s(tmp_path):
    def key(*overrides):
        cfg = _compose(list(overrides), tmp_path)
        return Job.from_config(cfg, unused=kind_for(cfg).unused(cfg)).key

    assert key("zoo=mini2", "method=linear") != key("zoo=mini2", "method=ties")
    assert key("zoo=mini2", "strategy=stack", "method=linear") == key("zoo=mini2", "strategy=stack", "method=ties")
    assert key("zoo=mini2", "mixture=ensemble", "method=linear") == key("zoo=mini2", "mixture=ensemble", "method=ties")


@pytest.mark.parametrize("overrides, message", [
    (["router=prompt"], "router=prompt: only mixtures route"),
    (["mixture=model"], "mixture=model: needs a router"),
    (["strategy=glue_recipe"], "strategy glue_recipe: mixes its families at the model level"),
    (["strategy=glue_recipe", "mixture=model"], "mixture=model: needs a router"),
    (["strategy=glue_recipe", "mixture=model", "router=prompt", "method=none"], "strategy glue_recipe: needs a merge"),
    (["strategy=stack", "mixture=ffn", "router=prompt"], "strategy stack with mixture=ffn: not implemented"),
    (["strategy=stack", "router=prompt"], "router=prompt: only mixtures route"),
    (["strategy=evolutionary", "mixture=ffn", "router=prompt"], "strategy evolutionary with mixture=ffn"),
    (["strategy=evolutionary", "method=none"], "strategy evolutionary: needs a merge method"),
    (["strategy=heuristic_average", "router=prompt"], "router=prompt: only mixtures route"),
    (["mixture=ffn", "++mixture.level=expert", "router=prompt"], "level 'expert' is not implemented"),
    (["mixture=ensemble", "router=prompt"], "router=prompt: mixture=ensemble routes nothing"),
    (["strategy=heuristic_average", "mixture=ensemble"], "strategy heuristic_average with mixture=ensemble"),
])
def test_each_kind_refuses_what_it_does_not_build_in_one_line(overrides, message, tmp_path):
    with pytest.raises(JobError, match=message) as err:
        kind_for(_compose(["zoo=mini2", *overrides], tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["mixture=ffn", "router=prompt", "mixture.dense_layers=2"], r"mixture.dense_layers=2: must be in \[0, 1\]"),
    (["mixture=ffn", "router=prompt", "mixture.top_k=3"], "mixture.top_k=3: must be between 1 and the number of experts"),
    (["mixture=block", "router=prompt", "++mixture.routing=document"], "mixture.routing='document': token or sample"),
    (["mixture=ffn", "router=prompt", "++mixture.shared=zoo"], "mixture.shared='zoo': merge or base"),
    (["mixture=ffn", "router=prompt", "method=none"], "mixture.shared=merge: needs a merge method"),
    (["mixture=model", "router=prompt", "++mixture.top_k=2"], "a model-level mixture answers with one expert"),
])
def test_a_mixture_checks_every_setting_before_any_model_is_read(overrides, message, tmp_path, monkeypatch):
    from glue_bench import zoo

    def no_models(*args, **kwargs):
        raise AssertionError("a model was read before the settings were checked")
    for reader in ("load_model", "load_tokenizer", "ensure_available"):
        monkeypatch.setattr(zoo, reader, no_models)
    cfg = _compose(["zoo=mini2", "mini_size=micro", *overrides], tmp_path)  # micro: two layers
    kind = kind_for(cfg)
    job = Job.from_config(cfg, unused=kind.unused(cfg))
    with pytest.raises(JobError, match=message) as err:
        kind.check(job)
    assert "\n" not in str(err.value)


def test_a_new_kind_is_one_registered_class_asked_in_its_priority(tmp_path, monkeypatch):
    from glue_bench import kinds

    cfg = _compose(["zoo=mini2", "method=linear"], tmp_path)
    assert kind_for(cfg).name == "merge"  # every module of kinds/ imported: the registry is complete
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))  # the dummy leaves with the test

    def dummy(priority):
        class Echo(kinds.Kind):
            name = f"echo{priority}"

            @staticmethod
            def claims(cfg) -> bool:
                return cfg.strategy.name == "all" and cfg.mixture.name == "none"  # merge's configs too
        Echo.priority = priority
        return kinds.register(Echo)

    dummy(70)
    assert kind_for(cfg).name == "merge"   # merge (60) is asked first
    dummy(5)
    assert kind_for(cfg).name == "echo5"   # asked before every shipped kind
