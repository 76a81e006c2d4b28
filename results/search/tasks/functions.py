"""Functions the task YAMLs name with `!function functions.<name>`.

lm-eval imports this file from beside the rendered YAMLs, so it only imports from glue_bench by
absolute path.
"""



def winogrande_answer_index(doc: dict) -> int:
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_contexts(doc: dict) -> list[str]:
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]


def winogrande_continuation(doc: dict) -> str:
    return doc["sentence"][doc["sentence"].index("_") + 1:].strip()


def mbpp_prompt(doc: dict) -> str:
    tests = "\n".join(doc["test_list"])
    return (f"You are an expert Python programmer, and here is your task: {doc['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def _passes(program: str) -> float:
    from glue_bench.evaluate.sandbox import run_untrusted  # only code tasks need the sandbox

    return float(run_untrusted(program).passed)


def mbpp_pass_at_1(doc: dict, results: list[str]) -> dict:
    program = results[0].split("[DONE]")[0] + "\n\n" + "\n".join(doc["test_list"]) + "\n"
    return {"pass_at_1": _passes(program)}


def humaneval_pass_at_1(doc: dict, results: list[str]) -> dict:
    program = (doc["prompt"] + results[0] + "\n\n" + doc["test"] + f"\ncheck({doc['entry_point']})\n")
    return {"pass_at_1": _passes(program)}
