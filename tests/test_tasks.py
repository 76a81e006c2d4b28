"""A task is declared once: a shipped task's primary metric in its YAML's metadata, a registry
task's in registry_tasks.yaml; a task declared nowhere is refused, never left out of the tables."""

import shutil

import pytest

from glue_bench.evaluate import EvalError, eval_config
from glue_bench.evaluate.tasks import PRIMARY_METRIC, REGISTRY_TASKS, TASKS_SRC, declared

DUMMY = """task: mini_dummy
dataset_path: json
dataset_kwargs:
  data_files:
    test: "@DATA_DIR@/mini_dummy/test.jsonl"
output_type: multiple_choice
test_split: test
doc_to_text: "{{question}}"
doc_to_target: 0
doc_to_choice: !function functions.dummy_choices
metadata:
  version: 1.0
  primary_metric: acc
  domain: reason
  test_items: 30
  column: 7
"""


@pytest.fixture
def task_dir(tmp_path):
    shutil.copytree(TASKS_SRC, tmp_path / "tasks", ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    shutil.copy(REGISTRY_TASKS, tmp_path / "registry_tasks.yaml")
    return tmp_path


def test_a_new_shipped_task_is_its_yaml(task_dir):
    (task_dir / "tasks" / "mini_dummy.yaml").write_text(DUMMY)
    tasks = declared(task_dir / "tasks", task_dir / "registry_tasks.yaml")
    dummy = tasks["mini_dummy"]
    assert (dummy.primary_metric, dummy.domain, dummy.test_items, dummy.runs_code) == ("acc", "reason", 30, False)
    # the study's tasks keep their place in front of it (the tables' column order)
    assert list(tasks)[:6] == ["mini_arc", "mini_winogrande", "mini_mmlu", "mini_gsm8k", "mini_mbpp", "mini_humaneval"]


def test_a_new_registry_task_is_one_line(task_dir):
    registry = task_dir / "registry_tasks.yaml"
    registry.write_text(registry.read_text() + "hellaswag: acc_norm\n")
    tasks = declared(task_dir / "tasks", registry)
    assert tasks["hellaswag"].primary_metric == "acc_norm" and not tasks["hellaswag"].shipped
    assert list(tasks)[-1] == "hellaswag"


def test_a_yaml_without_a_primary_metric_is_an_error_naming_it(task_dir):
    (task_dir / "tasks" / "mini_dummy.yaml").write_text(DUMMY.replace("  primary_metric: acc\n", ""))
    with pytest.raises(ValueError, match="mini_dummy.yaml: metadata.primary_metric missing"):
        declared(task_dir / "tasks", task_dir / "registry_tasks.yaml")


def test_a_registry_entry_without_a_metric_is_an_error_naming_it(task_dir):
    (task_dir / "registry_tasks.yaml").write_text("tinyArc:\n")
    with pytest.raises(ValueError, match="tinyArc: expected its primary metric"):
        declared(task_dir / "tasks", task_dir / "registry_tasks.yaml")


def test_an_undeclared_task_is_refused_in_one_line():
    with pytest.raises(EvalError) as err:
        eval_config({"tasks": ["mini_arc", "hellaswag"]})
    assert "hellaswag declared nowhere" in str(err.value) and "\n" not in str(err.value)


def test_the_declared_metrics_are_the_study_s():
    # written out from the study's tables (acc_norm for ARC, acc for WinoGrande and MMLU, strict
    # exact match for GSM8K, pass@1 for code) and tinyBenchmarks' release: not read from the YAMLs
    assert list(PRIMARY_METRIC.items()) == list({
        "mini_arc": "acc_norm", "mini_winogrande": "acc", "mini_mmlu": "acc", "mini_gsm8k": "exact_match,strict-match",
        "mini_mbpp": "pass_at_1", "mini_humaneval": "pass_at_1", "humaneval_real": "pass_at_1",
        "tinyArc": "acc_norm", "tinyWinogrande": "acc_norm", "tinyMMLU": "acc_norm", "tinyGSM8k": "exact_match,strict-match"}.items())  # in the tables' column order


def test_the_mini_tasks_keep_the_study_s_order_by_their_column_whatever_their_file_names(task_dir):
    from glue_bench.evaluate.tasks import TASKS

    assert TASKS == ("mini_arc", "mini_winogrande", "mini_mmlu", "mini_gsm8k", "mini_mbpp", "mini_humaneval")
    (task_dir / "tasks" / "mini_arc.yaml").rename(task_dir / "tasks" / "zz_renamed.yaml")
    (task_dir / "tasks" / "mini_dummy.yaml").write_text(DUMMY.replace("column: 7", "column: 0"))
    order = [name for name, task in declared(task_dir / "tasks", task_dir / "registry_tasks.yaml").items() if task.column is not None]
    assert order[:3] == ["mini_dummy", "mini_arc", "mini_winogrande"]


def test_a_mini_task_without_its_column_or_on_another_s_is_an_error_naming_it(task_dir):
    (task_dir / "tasks" / "mini_dummy.yaml").write_text(DUMMY.replace("  column: 7\n", ""))
    with pytest.raises(ValueError, match="mini_dummy.yaml: a mini task's metadata has both"):
        declared(task_dir / "tasks", task_dir / "registry_tasks.yaml")
    (task_dir / "tasks" / "mini_dummy.yaml").write_text(DUMMY.replace("column: 7", "column: 6"))
    with pytest.raises(ValueError, match="mini_humaneval and mini_dummy: the same metadata.column|mini_dummy and mini_humaneval: the same"):
        declared(task_dir / "tasks", task_dir / "registry_tasks.yaml")
