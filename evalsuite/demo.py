"""``evalsuite demo``: a whole GenEval pass (prompts → images → detector + colour scoring → report)
offline on tiny random checkpoints. Shows the machinery end to end; the numbers mean nothing."""

from __future__ import annotations

import json
from pathlib import Path

from evalsuite.evaluate import RunResult

NOTICE = ("tiny checkpoints with RANDOM weights: the images are noise and every number above is "
          "meaningless. Use real ids on a GPU: "
          "evalsuite run --bench geneval --model black-forest-labs/FLUX.1-dev")


def run_demo(
    out_dir: str | Path, *, per_task: int = 2, images_per_prompt: int = 2, seed: int = 0
) -> RunResult:
    from evalsuite.generator import DiffusersGenerator
    from evalsuite.leaderboard import add_run
    from evalsuite.registry import get_benchmark, registry
    from evalsuite.store import atomic_write_text
    from evalsuite.tiny import write_tiny
    from evalsuite.tiny.open_clip import write_tiny_open_clip

    out = Path(out_dir)
    tiny = write_tiny(out / "tiny", names=["flux", "mask2former"], seed=seed, overwrite=False)
    clip_dir = out / "tiny" / "open-clip-vit-l-14"
    if not clip_dir.exists():
        write_tiny_open_clip(clip_dir, "ViT-L-14", seed=seed)
    # GenEval-style prompts (seeded generator), a few per task, single objects trimmed to the same size.
    suite = registry.get("benchmarks", "geneval").generate_prompts(seed=seed + 1000, per_task=per_task)
    by_tag: dict[str, list] = {}
    for item in suite:
        by_tag.setdefault(item["tag"], []).append(item)
    prompts = [item for items in by_tag.values() for item in items[:per_task]]
    metadata = out / "prompts.jsonl"
    atomic_write_text(metadata, "".join(json.dumps(item) + "\n" for item in prompts))  # GenEval's format

    generator = DiffusersGenerator.from_pretrained(str(tiny["flux"]), dtype="float32", num_inference_steps=4,
                                                   guidance_scale=3.5, height=64, width=64, batch_size=8)
    # Random detector weights score ~0.01: zero thresholds so the rules have detections to judge.
    bench = get_benchmark("geneval", metadata=str(metadata), detector_model=str(tiny["mask2former"]),
                          clip_model=str(clip_dir), threshold=0.0, counting_threshold=0.0)
    from evalsuite.evaluate import evaluate

    result = evaluate(bench, out / "run", generator=generator, images_per_prompt=images_per_prompt,
                      gen_batch_size=8, score_batch_size=8, seed=seed,
                      run_info={"demo": {"notice": NOTICE}})
    add_run(out / "leaderboards", out / "run", model="tiny FLUX (random weights)")
    return result
