"""One side of the TRL comparison, run in its own process so its peak RSS is its own.

    python -m tests.benchmarks.trl_compare {ours|trl|trl-gc} CASE LM_DIR OUT_DIR STEPS  -> one JSON line

Both sides get the same model folder, the same 8 chat prompts (the tokenizer's chat template with its default
system message: identical token ids on both sides), the same keyword reward (negligible cost), G, completions
per step, max completion tokens, temperature 1 (no top-k/top-p), LoRA (r 16, alpha 32, all 7 projections),
fp32, lr, beta, one inner epoch and one optimizer step per step, the same micro-batch (TRL's
per_device_train_batch_size, with gradient_accumulation_steps making up the 32 completions of a step; TRL then
samples all 32 at once, as we do), one torch thread. TRL's GRPOConfig turns gradient
checkpointing on by default, ours does not: "trl" turns it off (same work as ours), "trl-gc" is TRL's default.

Time per step: the median of the gaps between consecutive step starts (ours: each call of
``train.step_prompts``; TRL: ``on_step_begin``), leaving out the first step (lazy initialisation),
so model loading and set-up are excluded on both sides and a noisy neighbour moves the median little.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

G, PROMPTS_PER_STEP, LR, BETA = 8, 4, 1e-4, 0.01
# case -> model (the tiny checkpoint or write_medium's), max completion tokens, micro-batch (completions per
# forward/backward; 8 is both trainers' default, 32 the whole step in one pass)
SIZES = {
    "tiny": {"model": "tiny", "new_tokens": 24, "micro": 32},
    "medium": {"model": "medium", "new_tokens": 64, "micro": 8},
    "medium-mb32": {"model": "medium", "new_tokens": 64, "micro": 32},
}
MEDIUM = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8}


def write_medium(tiny: Path, out: Path) -> Path:
    """A ~24M-parameter random Qwen2 (hidden 512, 8 layers, GQA 8/2 heads) with the tiny one's tokenizer,
    built offline the way the tiny checkpoint is: the size where the forward's arithmetic dominates."""
    import torch
    from transformers import AutoConfig, Qwen2Config, Qwen2ForCausalLM

    d = AutoConfig.from_pretrained(tiny).to_dict()
    d.pop("layer_types", None)
    d.update(MEDIUM, num_key_value_heads=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config.from_dict(d))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in tiny.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, out / f.name)
    return out


def keyword_share(text: str, keyword: str = "red") -> float:
    words = text.lower().split()
    return sum(w == keyword for w in words) / max(len(words), 1)


def _median_gap(starts: list[float]) -> tuple[float, int]:
    gaps = [b - a for a, b in itertools.pairwise(starts)][1:]  # the first step builds lazy state
    return statistics.median(gaps), len(gaps)


def run_ours(lm: str, out: Path, steps: int, case: str) -> dict:
    import evalsuite.harness.train as ht
    from tests.test_train import make_config

    s = SIZES[case]
    config = make_config(out, Path(lm), steps=steps, sft__steps=0, log_samples_every=0)
    config = replace(
        config,
        save_every=10**6,
        resume=False,
        policy=replace(config.policy, system_prompt="", response_prefix="", max_new_tokens=s["new_tokens"]),
        grpo=replace(
            config.grpo,
            group_size=G,
            prompts_per_step=PROMPTS_PER_STEP,
            num_inner_epochs=1,
            minibatches=1,
            micro_batch_size=s["micro"],
            beta=BETA,
        ),
        optim=replace(config.optim, lr=LR),
    )
    starts: list[float] = []
    step_prompts = ht.step_prompts

    def timed(*args, **kwargs):
        starts.append(time.perf_counter())
        return step_prompts(*args, **kwargs)

    ht.step_prompts = timed
    result = ht.train(config)
    median, n = _median_gap(starts)  # the last step's end is not timed (then come final/ and exit)
    tokens = statistics.mean(m["completions/tokens"] for m in result.metrics)
    return {"s_per_step": median, "gaps": n, "completion_tokens": tokens}


def run_trl(lm: str, out: Path, steps: int, case: str, gradient_checkpointing: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tests.test_train import ALL_LINEAR, CLASSES

    torch.set_num_threads(1)
    s = SIZES[case]

    def reward(completions, **kwargs):
        return [keyword_share(c if isinstance(c, str) else c[-1]["content"]) for c in completions]

    class Starts(TrainerCallback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.starts.append(time.perf_counter())

    rows = [{"prompt": [{"role": "user", "content": f"a photo of a {c}"}]} for c in CLASSES]
    n = G * PROMPTS_PER_STEP
    args = GRPOConfig(
        output_dir=str(out),
        use_cpu=True,
        report_to=[],
        num_generations=G,
        per_device_train_batch_size=s["micro"],
        gradient_accumulation_steps=n // s["micro"],
        max_completion_length=s["new_tokens"],
        max_steps=steps,
        learning_rate=LR,
        beta=BETA,
        temperature=1.0,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        bf16=False,
        disable_tqdm=True,
        gradient_checkpointing=gradient_checkpointing,
    )
    timer = Starts()
    trainer = GRPOTrainer(
        model=lm,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=ALL_LINEAR),
        callbacks=[timer],
    )
    trainer.train()
    median, gaps = _median_gap(timer.starts)
    lengths = [
        h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h
    ]
    return {"s_per_step": median, "gaps": gaps, "completion_tokens": statistics.mean(lengths)}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM of its own address space; ``ru_maxrss`` is not
    used there because it keeps the pre-exec high-water mark, i.e. the size of the forking parent (a pytest
    process holding every tiny model), which floored both sides at ~580 MB in the first version."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    which, case, lm, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if which == "ours":
        res = run_ours(lm, out, steps, case)
    else:
        res = run_trl(lm, out, steps, case, gradient_checkpointing=which == "trl-gc")
    print(json.dumps({"which": which, "case": case, "steps": steps, **res, "peak_rss_mb": peak_rss_mb()}))
