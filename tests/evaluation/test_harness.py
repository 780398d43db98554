"""The zero-shot prompts: the first request lm-evaluation-harness builds from each vendored task file, pinned to the
strings the harness's own task configs produce (HellaSwag's capitalised ctx_b, LAMBADA's leading space, PIQA's and
ARC's Question/Answer frame, WinoGrande's partial scoring)."""

import os

import pytest

from mohawk.evaluation.harness import TASKS, write_tasks

FIRST = {
    "hellaswag": ("Roof shingle removal: A man is sitting on a roof. He", " is using wrap to wrap a pair of skis."),
    "piqa": (
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will "
        "also need to supply it with a water bottle and a food dish.",
    ),
    "arc_easy": (
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
        " Sunlight is the source of energy for nearly all ecosystems.",
    ),
    "arc_challenge": (
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is "
        "the most likely effect of this increase in rotation?\nAnswer:",
        " Planetary density will decrease.",
    ),
    "openbookqa": (
        "A person wants to start saving money so that they can afford a nice vacation at the end of the "
        "year. After looking over their budget and expenses, they decide the best way to save money is to",
        " make more phone calls",
    ),
    "winogrande": ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
    "lambada_openai": (None, " signs"),
}


@pytest.fixture(scope="module")
def first_requests(tmp_path_factory):
    pytest.importorskip("lm_eval")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    d = tmp_path_factory.mktemp("tasks")
    names = write_tasks(d, list(TASKS))
    tasks = TaskManager(include_path=str(d), include_defaults=False).load(names)["tasks"]
    out = {}
    for name, lm_name in zip(TASKS, names, strict=True):
        task = tasks[lm_name]
        task.build_all_requests(limit=1, rank=0, world_size=1)
        out[name] = task.instances[0].args
    return out


@pytest.mark.parametrize("task", list(TASKS))
def test_first_request_is_the_harness_prompt(first_requests, task):
    context, continuation = first_requests[task]
    want_context, want_continuation = FIRST[task]
    assert continuation == want_continuation
    if want_context is not None:
        assert context == want_context
    else:  # LAMBADA: the passage up to its last word, which is the continuation (with its leading space)
        assert context.endswith("I don't care about") and not context.endswith(" ")
