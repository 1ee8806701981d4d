"""The registered rewards and scorers without a measured row, each with the exact reason.

A row here is regenerated like the others: when it names ``dry_run`` requirements (the official package as
its authors pin it), the runner asks pip whether they resolve for this interpreter (``pip install
--dry-run``, nothing installed) and the table shows pip's own answer next to the reason, so "does not
install" is pip's error, not our guess. Rows whose official code is a GitHub repository only (no PyPI
package) or that have no official counterpart say so.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REASON_ROWS", "ReasonRow"]


@dataclass(frozen=True)
class ReasonRow:
    name: str  # a registered reward or scorer (``scorer:<name>`` for scorers)
    official: str
    reason: str
    dry_run: tuple[str, ...] = ()  # the official pins, asked of pip when the row runs


_OURS_ONLY = "no official implementation to compare with: "

REASON_ROWS: dict[str, ReasonRow] = {
    row.name: row
    for row in (
        ReasonRow(
            "ocr", "Flow-GRPO `flow_grpo/ocr.py` over `paddleocr==2.9.1` (`PaddleOCR(use_angle_cls=False, "
            "lang='en')`)",
            "the package resolves (pip below), but `PaddleOCR()` downloads its PP-OCR detection and "
            "recognition models at construction (they are not in the wheels), so it cannot run offline "
            "here; our backend is `rapidocr` (the PP-OCR models as ONNX, inside its wheel), a different "
            "runtime of the same model family, so even with the models a row would compare runtimes, not "
            "the rule. The rule is the `ocr-edit-distance` row",
            ("paddleocr==2.9.1", "paddlepaddle==2.6.2")),
        ReasonRow(
            "geneval", "GenEval `evaluation/evaluate_images.py` (mmdetection 2.x Mask2Former Swin-S + OpenAI "
            "CLIP ViT-L/14 colour)",
            "GenEval is a GitHub repository, not a package, and its detector needs mmdet 2.x with "
            "`mmcv-full` 1.x, an sdist on PyPI whose compiled ops build against the torch in use (the "
            "official environment: torch 1.12.1 + CUDA 11.3); pip's answer below. Our `mmdet` backend is "
            "mmdetection 3.3 (the same config renamed), and the default backend is transformers' "
            "Mask2Former with different weights. The rule is the `geneval-rules` row",
            ("mmdet==2.28.2", "mmcv-full==1.7.1")),
        ReasonRow(
            "t2i_compbench_detection", "T2I-CompBench `UniDet_eval/` (UniDet on detectron2)",
            "UniDet is vendored in the T2I-CompBench repository (GitHub only) and needs detectron2, which is "
            "not on PyPI; our reward takes any detector (GenEval backends by default), so its numbers match "
            "the official ones only with UniDet plugged in. The rule is the `t2i-compbench-rules` row"),
        ReasonRow(
            "editreward", "TIGER-AI-Lab/EditReward `EditRewardInferencer`",
            "EditReward's inferencer lives in its GitHub repository only (pip below); its code grew out of "
            "HPSv3's (`<|Reward|>` pooling, ranknet heads; our two rewards share `QwenVLRewardModel`, which "
            "the `hpsv3` row measures), over Qwen2.5-VL. Covered by `tests/test_reward_editreward.py`'s "
            "reference computation and official pixel-budget check", ("editreward",)),
        ReasonRow(
            "unifiedreward", "CodeGoat24/UnifiedReward inference scripts (transformers `generate` / vLLM), "
            "Flow-GRPO's and DiffusionNFT's `Final Score` parsing",
            "no package (GitHub scripts over transformers + `qwen-vl-utils`); the score is parsed from "
            "generated text, and random weights generate no `Final Score`, so a row could only compare token "
            "ids, not scores. Prompt and parsing are checked against the official text in "
            "`tests/test_reward_unifiedreward.py` and `tests/test_reward_unifiedreward_rules.py`"),
        ReasonRow(
            "unifiedreward_pairwise", "Pref-GRPO's UnifiedReward-Think pairwise win rate",
            "as `unifiedreward`: GitHub scripts, a generated verdict; the win-rate rule is checked by hand "
            "in `tests/test_reward_unifiedreward.py::test_pairwise_local_matches_pref_grpo`"),
        ReasonRow(
            "promptecho", "PromptEcho (arXiv 2604.12652)",
            "the authors publish no reward code (the PyPI name `promptecho` is an unrelated LLM "
            "record/replay tool); ours follows the paper's formula, checked against a hand-computed "
            "teacher-forced CE in `tests/test_reward_promptecho.py`"),
        ReasonRow(
            "scorer:vqa", "DPG-Bench `compute_dpg_bench.py` (mPLUG-large through `modelscope`)",
            "a different answerer by design: the official one is mPLUG-large from the ModelScope hub "
            "(fetched at run time), ours a Qwen-VL yes/no first-token reader, so the answers are not meant "
            "to match; the question-graph rule is the `dpg-rules` row"),
        ReasonRow(
            "scorer:soft_vqa", "GenEval 2 `evaluation.py` (Soft-TIFA over Qwen3-VL-8B)",
            "GenEval 2's script is GitHub only (no package); "
            "`tests/test_soft_vqa.py::test_parity_with_official_generate_path` checks ours against its "
            "`generate(max_new_tokens=1, output_scores=True)` path written out in the test"),
        ReasonRow(
            "scorer:judge",
            "DenseAlignBench pairwise judge (`gemini-2.0-flash` over an OpenAI-compatible API)",
            "the official judge is a hosted model (network, key): nothing to run here; the protocol "
            "(instructions, parsing) is checked in `tests/test_judges.py`"),
        ReasonRow(
            "scorer:vlm_chat", "TIIF-Bench / UniGenBench judges (GPT-4o, Gemini, or their released Qwen "
            "judges)",
            "hosted models or 7B+ checkpoints driven by repository scripts (no package); the benchmarks' "
            "parsing rules are checked in their own tests"),
        ReasonRow("brightness", "–", _OURS_ONLY + "mean BT.601 luma, a model-free smoke-test reward"),
        ReasonRow("multi", "–", _OURS_ONLY + "a weighted sum of other rewards, each with its own row"),
        ReasonRow("remote", "–", _OURS_ONLY + "a transport to a reward served elsewhere (the served reward "
                  "has its own row)"),
    )
}
