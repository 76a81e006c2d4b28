"""save=true: a candidate as a standard HF checkpoint, with a model card giving its recipe and the
`lm_eval` command that reproduces its stored scores from the saved folder."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from omegaconf import OmegaConf

from glue_bench.console import log
from glue_bench.evaluate import selected_tasks
from glue_bench.job import ItemSet, Job


def lm_eval_command(folder: Path, job: Job, items: ItemSet | None = None) -> list[str]:
    """lm-eval's CLI on a saved checkpoint, with the job's tasks, items and settings. The seeds and
    BOS matter: the CLI's defaults (seeds 0,1234,1234,1234) draw other few-shot examples."""
    ev = job.eval_cfg
    tasks = [t for t in selected_tasks(ev) if items is None or t in items.samples]
    command = ["lm_eval", "run", "--model", "hf",
               "--model_args", f"pretrained={folder},add_bos_token={ev.add_bos_token}",
               "--tasks", ",".join(tasks), "--include_path", str(job.tasks_dir),
               "--device", ev.device, "--batch_size", str(ev.batch_size), "--seed", "0,0,0,0"]
    if items is not None:
        command += ["--samples", str(folder / "items.json")]
    elif ev.limit is not None:
        command += ["--limit", str(ev.limit)]
    if ev.allow_code_execution:
        command.append("--confirm_run_unsafe_code")
    return command


def save_checkpoint(model, tokenizer, out: Path, job: Job, label: str, *, items: ItemSet | None = None,
                    details: dict | None = None) -> Path:
    """`details`: what the config alone does not say (a search's choice), recorded in the card."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if items is not None:
        (out / "items.json").write_text(json.dumps(items.samples))
    command = shlex.join(lm_eval_command(out, job, items))
    card = (f"---\ntags: [merge, glue_bench]\n---\n# {label}: a candidate of zoo {job.cfg.zoo.name}\n\n"
            f"Made by glue_bench (job key `{job.key}`) from this resolved config:\n\n"
            f"```yaml\n{OmegaConf.to_yaml(OmegaConf.create({**job.payload, **(details or {})}))}```\n\n"
            "## Reproducing its scores with lm-eval\n\n"
            "The task YAMLs are glue_bench's, rendered with absolute data paths on the machine that "
            "made this folder (offline: `HF_DATASETS_OFFLINE=1`); the seeds and BOS setting are the "
            "ones glue_bench evaluates with:\n\n"
            f"```sh\n{command}\n```\n")
    (out / "README.md").write_text(card)
    log(f"saved the candidate to {out}")
    return out
