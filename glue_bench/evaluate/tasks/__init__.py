"""The mini tasks, declared once for every layer: which there are, the domain each measures, and
the size of each test split (one YAML each beside this file; their items are generated with the
mini zoo's training data, apart from it, by `glue_bench.zoo.mini.data`)."""

TASKS = ("mini_arc", "mini_winogrande", "mini_mmlu", "mini_gsm8k", "mini_mbpp", "mini_humaneval")
TASK_DOMAIN = {
    "mini_arc": "reason", "mini_winogrande": "reason", "mini_mmlu": "knowledge",
    "mini_gsm8k": "math", "mini_mbpp": "code", "mini_humaneval": "code",
}

# Items per test split. The first 200 / 200 / 200 / 100 are the splits of the first release for
# ARC, WinoGrande, MMLU and GSM8K; their rest were added so that the paired minimum detectable
# effect of the 6-task average reaches 0.03 (issue 21; benchmarks/power.py on the v2 zoo: median
# MDE 0.055 on the first release's items, 0.024 on these). The new items come from a random stream
# of their own, after every train item is drawn, and each is new by the key that defines an item
# of its task, so none was ever trained on. MMLU's questions ask every (creature, attribute) fact
# there is: its test split cannot grow without retraining. The code tasks' 200 problems are zoo
# v3's (held-out (template, constant) pairs, drawn with the train split): v2's 400 asked constants
# never trained on and sat at 1-2 % pass@1 for every model; v3's code expert passes ~0.9 of them.
SPLITS_VERSION = 3  # 1: the first release's test splits (FIRST_TEST_ITEMS); 2: TEST_ITEMS; 3: zoo v3's code problems
TEST_ITEMS = {"mini_arc": 400, "mini_winogrande": 400, "mini_mmlu": 200, "mini_gsm8k": 400,
              "mini_mbpp": 200, "mini_humaneval": 200}
