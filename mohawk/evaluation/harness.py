"""Zero-shot tasks through lm-evaluation-harness, on task data vendored in mohawk/assets/eval (no hub at run time).

Each task is an lm-eval task config (written as YAML into a temporary directory, ``dataset_path: json`` pointing at
the local file) with the harness's own prompts: HellaSwag, PIQA, WinoGrande, ARC-Easy, ARC-Challenge, OpenBookQA
(multiple choice: acc and length-normalised acc_norm) and LAMBADA-OpenAI (last-word accuracy and perplexity). Task
names carry a ``mohawk_`` prefix so they never resolve to the harness's hub-backed tasks.

``write_tasks(dir)`` also makes the tasks usable from the lm_eval CLI: ``lm_eval --include_path DIR --tasks
mohawk_piqa --model hf --model_args pretrained=STUDENT,trust_remote_code=True``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import yaml

from mohawk.data import ASSETS, open_text
from mohawk.errors import MohawkError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EVAL_DATA = ASSETS / "eval"
_MC = {
    "output_type": "multiple_choice",
    "doc_to_choice": "choices",
    "doc_to_target": "gold",
    "metrics": ["acc", "acc_norm"],
}
TASKS: dict[str, dict[str, Any]] = {
    "hellaswag": {**_MC, "doc_to_text": "{{query}}"},
    "piqa": {**_MC, "doc_to_text": "Question: {{goal}}\nAnswer:"},
    "winogrande": {
        "output_type": "multiple_choice",
        "doc_to_text": "gold",
        "doc_to_choice": "options",
        "doc_to_target": "continuation",
        "metrics": ["acc"],
    },  # the options are the contexts
    "arc_easy": {**_MC, "doc_to_text": "{{query}}\nAnswer:"},
    "arc_challenge": {**_MC, "doc_to_text": "{{query}}\nAnswer:"},
    "openbookqa": {**_MC, "doc_to_text": "query"},
    "lambada_openai": {
        "output_type": "loglikelihood",
        "doc_to_text": "context",
        "doc_to_target": "{{' ' + continuation}}",
        "metrics": ["perplexity", "acc"],
    },
}
HIGHER_IS_BETTER = {"acc": True, "acc_norm": True, "perplexity": False}
Limit = int | Sequence[int] | None  # the first N items, the items of these indices, or all


def task_config(name: str, data_file: Path) -> dict[str, Any]:
    t = TASKS[name]
    agg = {"acc": "mean", "acc_norm": "mean", "perplexity": "perplexity"}
    return {
        "task": f"mohawk_{name}",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": str(data_file)}},
        "output_type": t["output_type"],
        "validation_split": "validation",
        "test_split": None,
        "doc_to_text": t["doc_to_text"],
        "doc_to_target": t["doc_to_target"],
        **({"doc_to_choice": t["doc_to_choice"]} if "doc_to_choice" in t else {}),
        "metric_list": [
            {"metric": m, "aggregation": agg[m], "higher_is_better": HIGHER_IS_BETTER[m]} for m in t["metrics"]
        ],
        "metadata": {"version": 1.0},
    }


def task_file(name: str, data_files: dict[str, Path] | None = None) -> Path:
    """The items of task ``name``: data_files[name], else mohawk/assets/eval/{name}.jsonl.xz; refused if absent."""
    if name not in TASKS:
        raise MohawkError(f"unknown task {name!r}: available tasks are {', '.join(TASKS)}")
    path = Path((data_files or {}).get(name, EVAL_DATA / f"{name}.jsonl.xz"))
    if not path.is_file():
        raise MohawkError(f"task data for {name} not found: {path}")
    return path


def write_tasks(directory: Path, tasks: list[str], data_files: dict[str, Path] | None = None) -> list[str]:
    """Write one lm-eval YAML per task into ``directory``; returns the lm-eval task names.

    data_files: task -> file (default mohawk/assets/eval/{task}.jsonl.xz)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for name in tasks:
        cfg = task_config(name, task_file(name, data_files).resolve())
        (directory / f"mohawk_{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        names.append(cfg["task"])
    return names


def every_nth(
    tasks: list[str], every: int, limit: int | None = None, data_files: dict[str, Path] | None = None
) -> dict[str, Limit]:
    """{task: the indices 0, every, 2 every, ... of its items (the first ``limit`` of them)}: a ``limit`` for
    run_tasks that spans each task's whole file."""
    out: dict[str, Limit] = {}
    for name in tasks:
        with open_text(task_file(name, data_files)) as f:
            n = sum(1 for line in f if line.strip())
        out[name] = range(0, n, every)[:limit]
    return out


def _without_env_report() -> contextlib.AbstractContextManager[Any]:
    """A block in which lm-eval's results skip its environment report (torch's collect_env: pip, conda and
    nvidia-smi run as subprocesses, 2 s a call on the CPU machine, GPU time lost between scorings); mohawk's results
    record the device and the versions themselves."""
    from lm_eval import evaluator

    return mock.patch.object(evaluator, "add_env_info", lambda results: None)


def run_tasks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str],
    *,
    limit: Limit | dict[str, Limit] = None,
    batch_size: int = 8,
    device: str = "cpu",
    data_files: dict[str, Path] | None = None,
    seed: int = 0,
    items: bool = False,
    reference: bool = False,
) -> dict[str, dict[str, Any]]:
    """Score an HF causal LM (instance) on ``tasks``: {task: {metric: value, metric_stderr: value, n: docs}}.
    Accuracies are fractions in [0, 1]. ``limit``: for every task, or {task: its limit}: N (the first N items), a
    sequence of item indices (those items), or None (all); ``items``: also each item's scores in document order,
    {"items": {metric: [score, ...]}} (for paired bootstraps), and where indices were given their sorted list as
    "item_ids" (else the items are the first n). The requests are scored by BatchedHFLM with templates compiled once;
    ``reference``: by lm-eval's own HFLM loop and rendering (what the batched path is measured against)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        from mohawk.evaluation.batched_lm import BatchedHFLM, cached_templates
    except ImportError:
        raise MohawkError("zero-shot tasks need lm-evaluation-harness: pip install 'mohawk[eval]'") from None
    limits = limit if isinstance(limit, dict) else {t: limit for t in tasks}
    groups: dict[int | tuple[int, ...] | None, list[str]] = {}
    for t in tasks:  # one harness call per distinct limit (lm-eval takes either a count or indices, not both)
        lim = limits.get(t)
        if lim is not None and not isinstance(lim, int) and (not lim or min(lim) < 0):
            raise MohawkError(f"{t}: item indices must be a non-empty list of indices >= 0")
        groups.setdefault(lim if lim is None or isinstance(lim, int) else tuple(sorted(set(lim))), []).append(t)
    lm = (HFLM if reference else BatchedHFLM)(
        pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device)
    )
    templates = contextlib.nullcontext if reference else cached_templates
    results: dict[str, dict[str, Any]] = {}
    for group_limit, group in groups.items():
        with tempfile.TemporaryDirectory(prefix="mohawk-tasks-") as tmp, templates(), _without_env_report():
            names = write_tasks(Path(tmp), group, data_files)
            manager = TaskManager(include_path=tmp, include_defaults=False)
            ids = group_limit if isinstance(group_limit, tuple) else None
            out = simple_evaluate(
                model=lm,
                tasks=names,
                task_manager=manager,
                limit=None if ids else group_limit,
                samples={n: list(ids) for n in names} if ids else None,
                log_samples=items,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                bootstrap_iters=1000,
                verbosity="ERROR",
            )
        for name, lm_name in zip(group, names, strict=True):
            r = out["results"][lm_name]
            row: dict[str, Any] = {}
            for m in TASKS[name]["metrics"]:
                row[m] = float(r[f"{m},none"])
                err = r.get(f"{m}_stderr,none")
                row[f"{m}_stderr"] = float(err) if isinstance(err, (int, float)) else None
            row["n"] = int(out["n-samples"][lm_name]["effective"])
            if items:
                samples = sorted(out["samples"][lm_name], key=lambda x: x["doc_id"])
                row["items"] = {m: [float(x[m]) for x in samples] for m in TASKS[name]["metrics"]}
                if ids:
                    row["item_ids"] = list(ids)
            results[name] = row
    return results
