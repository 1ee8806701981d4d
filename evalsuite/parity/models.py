"""The measured rows: shared weights in the official checkpoint format, official code in its side venv, ours
here, the same image files and prompts on both sides.

Each row's ``prepare`` writes the weights into a work folder and returns what both sides need; the side
script (``side/<script>``) and our reward (by registered name) then score the same request.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evalsuite.parity.legacy import clip_folder_v4, qwen2_vl_folder_v4

__all__ = ["MODEL_ROWS", "PROBE_ROWS", "PROMPTS", "ModelRow", "Prepared", "ProbeRow", "write_images"]

# Varied on purpose: short, long (ImageReward truncates at 35 tokens), punctuation, digits, casing.
PROMPTS = (
    "a red cube on top of a blue sphere",
    "A photo of an astronaut riding a horse on the moon, highly detailed, 8k",
    "two cats and one dog",
    "a storefront with the text 'OPEN 24/7' written on it",
    "an oil painting of a lighthouse at dusk; waves crash against the rocks while seagulls circle overhead "
    "and a small fishing boat heads home under a sky of orange, purple and deep blue clouds",
    "bird",
)
# (width, height): square, landscape, portrait, and sizes that need upscaling.
SIZES = ((256, 256), (320, 200), (200, 300), (224, 224), (97, 131), (512, 384))


def write_images(folder: Path) -> list[Path]:
    """Seeded PNGs (noise over colour gradients and a block), one per size; the same files every run."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240607)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], axis=-1)
        pixels = base * 0.6 + rng.uniform(0, 100, size=(h, w, 3))
        pixels[h // 4: h // 2, w // 3: 2 * w // 3] = rng.uniform(0, 255, size=3)
        path = folder / f"image{i}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@dataclass
class Prepared:
    """What a row's ``prepare`` produced: our reward's kwargs, the side request, a weights description."""

    reward_kwargs: dict[str, Any]
    request: dict[str, Any]
    weights: str


@dataclass(frozen=True)
class ModelRow:
    name: str  # our registered reward
    env: str  # evalsuite.parity.envs.ENVS key
    script: str  # evalsuite/parity/side/<script>
    official: str  # what the official side runs
    prepare: Callable[[Path], Prepared]
    full: bool = False  # full-size weights: run only with --full
    cause: str = ""  # the documented cause of a known gap (the row then does not fail the command)
    reward: str = ""  # our registered reward, when the row's name is not it
    shims: str = ""  # what the side needs besides its pins, shown in the table's notes
    package: str = ""  # the official package, when it is not the side venv's first requirement


def _count_params(state: dict[str, Any]) -> int:
    return sum(v.numel() for k, v in state.items() if not k.endswith("position_ids"))


def _bert_vocab_folder(tokenizer_json: Path, target: Path) -> None:
    """``vocab.txt`` (ids in order) from a WordPiece ``tokenizer.json``: what the official code reads as
    ``bert-base-uncased``."""
    vocab = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    target.mkdir(parents=True, exist_ok=True)
    ordered = sorted(vocab, key=vocab.__getitem__)
    (target / "vocab.txt").write_text("\n".join(ordered) + "\n", encoding="utf-8")


def _prepare_imagereward(work: Path) -> Prepared:
    """Full-size random ImageReward (BLIP ViT-L/16 at 224 px, 12-layer 768-wide BERT with cross-attention,
    MLP(768)): the official architecture is fixed, so tiny weights cannot load there."""
    import torch

    from evalsuite.tiny.imagereward import write_tiny_imagereward

    folder = write_tiny_imagereward(work / "imagereward", seed=0, vision_width=1024, vision_layers=24,
                                    image_size=224, patch_size=16, text_width=768, text_layers=12,
                                    text_heads=12, proj_dim=256)
    _bert_vocab_folder(folder / "tokenizer.json", work / "bert-base-uncased")
    n = _count_params(torch.load(folder / "ImageReward.pt", map_location="cpu", weights_only=True))
    med = json.loads((folder / "med_config.json").read_text(encoding="utf-8"))
    return Prepared(
        {"model": str(folder)},
        {"checkpoint": str(folder / "ImageReward.pt"), "med_config": str(folder / "med_config.json")},
        f"full-size random, official `ImageReward.pt` + `med_config.json` ({n / 1e6:.0f} M parameters; "
        f"vocabulary {med['vocab_size']} tokens, {med['max_position_embeddings']} positions)",
    )


# A small OpenAI-layout CLIP: head width 64 as OpenAI's build_model infers heads from width // 64.
_SMALL_CLIP = {
    "embed_dim": 64, "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "layers": 2, "width": 128, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}


def _small_openai_clip(work: Path, name: str, embed_dim: int) -> tuple[Path, Path, str]:
    """One small random CLIP written twice: an OpenAI state dict for ``clip.load(path)`` (``work/<name>
    -openai.pt``) and open_clip's ``local-dir`` folder for our rewards (``work/<name>``; same tensors, same
    key names). Returns both paths and a description."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from evalsuite.tiny._common import resolve, seeded

    model_cfg = {**_SMALL_CLIP, "embed_dim": embed_dim}
    with seeded(0, "parity", name):
        model = open_clip.CLIP(**model_cfg)
    # OpenAI ships fp16 weights and ``build_model`` rounds every matmul weight to fp16 (``convert_weights``):
    # fp16-representable values make the two files hold what the official loader keeps.
    state = {k: (v.half().float() if v.is_floating_point() else v).detach().contiguous().clone()
             for k, v in model.state_dict().items()}
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / resolve("evalsuite.rewards.clip_models:WEIGHTS_FILE")))
    pre = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    config = {"model_cfg": model_cfg,
              "preprocess_cfg": {k: pre[k] for k in ("mean", "std", "interpolation", "resize_mode")}}
    (folder / resolve("evalsuite.rewards.clip_models:CONFIG_FILE")).write_text(json.dumps(config, indent=2))
    openai_file = work / f"{name}-openai.pt"
    torch.save(state, openai_file)
    n = _count_params(state) / 1e6
    return folder, openai_file, (f"small random CLIP ({n:.0f} M parameters, ViT 64 px/16, 2+2 layers, "
                                 f"width 128, embedding {embed_dim})")


def _prepare_clipscore(work: Path) -> Prepared:
    """The small CLIP: OpenAI state dict for the official side, open_clip folder for our CLIPScore."""
    folder, openai_file, described = _small_openai_clip(work, "clip", _SMALL_CLIP["embed_dim"])
    return Prepared({"model": str(folder)}, {"checkpoint": str(openai_file)},
                    f"{described}, OpenAI state dict for `clip.load` + open_clip folder")


def _prepare_aesthetic(work: Path) -> Prepared:
    """The tiny aesthetic MLP (`evalsuite tiny` aesthetic: official ``sac+logos+ava1-l14-linearMSE.pth``
    layout, 768 -> ... -> 1) over the small CLIP projecting to 768 (its ``clip/`` backbone replaced: the tiny
    one's 16-wide heads cannot be read by ``build_model``, which infers heads as width // 64)."""
    from evalsuite.tiny import write_tiny
    from evalsuite.tiny._common import resolve

    folder = write_tiny(work / "tiny", names=["aesthetic"])["aesthetic"]
    backbone = folder / resolve("evalsuite.rewards.aesthetic:BACKBONE_DIR")
    shutil.rmtree(backbone)
    widths = resolve("evalsuite.rewards.aesthetic:MLP_WIDTHS")
    clip_folder, openai_file, described = _small_openai_clip(work, "aesthetic-clip", widths[0])
    shutil.copytree(clip_folder, backbone)
    mlp = folder / resolve("evalsuite.rewards.aesthetic:CHECKPOINT")
    return Prepared({"model": str(folder)}, {"checkpoint": str(openai_file), "mlp": str(mlp)},
                    f"{described} + tiny random MLP (official widths), official "
                    "`sac+logos+ava1-l14-linearMSE.pth` state dict + OpenAI state dict for `clip.load`")


def _prepare_pickscore(work: Path) -> Prepared:
    """The tiny PickScore (a transformers ``CLIPModel`` + ``CLIPProcessor`` folder, `evalsuite tiny`)."""
    from evalsuite.tiny import write_tiny

    folder = write_tiny(work / "tiny", names=["clip"])["clip"]
    # The hub's PickScore/laion folders are in the pre-v5 layout the official side reads.
    side = clip_folder_v4(folder, work / "pickscore-v4-layout")
    return Prepared({"model": str(folder)}, {"model": str(side)},
                    "tiny random `CLIPModel` folder (`evalsuite tiny` clip), transformers format")


def _prepare_hpsv2(work: Path) -> Prepared:
    """The tiny HPSv2.1 checkpoint (ViT-H-14 stand-in); the side builds it with hpsv2's vendored open_clip."""
    import open_clip

    from evalsuite.tiny import write_tiny

    folder = write_tiny(work / "tiny", names=["hpsv2"])["hpsv2"]
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    cfg = next(folder.glob("tiny-*.json"))
    return Prepared({"model": str(folder)},
                    {"checkpoint": str(folder / "HPS_v2.1_compressed.pt"), "arch_config": str(cfg),
                     "bpe": str(bpe)},
                    "tiny random, official `HPS_v2.1_compressed.pt` (`{'state_dict': ...}`)")


def _prepare_hpsv3(work: Path) -> Prepared:
    """The tiny HPSv3 (`evalsuite tiny` hpsv3: ``HPSv3.safetensors`` already under the 4.45 key names) and
    its tiny Qwen2-VL base, copied in the layout transformers 4.45 reads for the official side."""
    from safetensors.torch import load_file

    from evalsuite.tiny import write_tiny

    folder = write_tiny(work / "tiny", names=["hpsv3"])["hpsv3"]
    checkpoint = folder / "checkpoint" / "HPSv3.safetensors"
    side_base = qwen2_vl_folder_v4(folder / "base", work / "qwen2-vl-v4-layout")
    n = _count_params(load_file(str(checkpoint)))
    return Prepared({"model": str(folder / "checkpoint"), "base_model": str(folder / "base")},
                    {"checkpoint": str(checkpoint), "base": str(side_base)},
                    f"tiny random Qwen2-VL ({n / 1e3:.0f} k parameters, real patch geometry and pixel "
                    "budget) + ranknet head, official `HPSv3.safetensors` (strict load) + base folder in "
                    "the 4.45 layout")


_V4_LAYOUT = ("the side reads a copy of the folder in the pre-v5 layout the hub's PickScore/laion folders "
              "have: `preprocessor_config.json`, BPE merges as strings (tokenizers < 0.20)")


MODEL_ROWS: dict[str, ModelRow] = {
    row.name: row
    for row in (
        ModelRow("imagereward", "image-reward", "official_imagereward.py",
                 "`ImageReward.load(path, med_config=...)` + `model.score(prompt, path)`",
                 _prepare_imagereward, full=True,
                 shims="the side's cwd holds `bert-base-uncased/vocab.txt` (our tokenizer's vocabulary), "
                 "which `BertTokenizer.from_pretrained('bert-base-uncased')` reads instead of the hub"),
        ModelRow("clipscore", "clip", "official_clipscore.py",
                 "`clip.load(path, jit=False)`, `preprocess`, `clip.tokenize`, cosine (T2I-CompBench "
                 "`CLIP_similarity.py`)", _prepare_clipscore,
                 shims="the side calls what `clip.load(path, jit=False)` calls (`build_model`, "
                 "`_transform`): under torch >= 2.6 `clip.load` on a state-dict file fails with EOFError "
                 "(its fallback `torch.load` reads the file from where the failed `torch.jit.load` left "
                 "it); weights are fp16-representable, as OpenAI's files and `build_model`'s "
                 "`convert_weights` make them"),
        ModelRow("aesthetic", "clip", "official_aesthetic.py",
                 "improved-aesthetic-predictor `simple_inference.py` (GitHub only, 3ade56d): `clip.load`, "
                 "`encode_image`, numpy `normalized`, `MLP(768).layers`", _prepare_aesthetic,
                 package="openai-clip", shims="the script is not a package: the side writes its inference "
                 "lines (`MLP` as an `nn.Module`: the script's `LightningModule` adds only training hooks); "
                 "`clip.load` as in the `clipscore` row"),
        ModelRow("pickscore", "clip", "official_pickscore.py",
                 "README: `AutoProcessor`/`AutoModel`, `logit_scale.exp() * text_embs @ image_embs.T`",
                 _prepare_pickscore, shims=_V4_LAYOUT, package="transformers==4.36.2"),
        ModelRow("hpsv2", "hpsv2", "official_hpsv2.py", "`hpsv2.img_score.score` on a model built as "
                 "`initialize_model` builds it (vendored open_clip, tiny architecture)", _prepare_hpsv2,
                 shims="the 1.2.0 wheel lacks `bpe_simple_vocab_16e6.txt.gz`; the side copies open_clip's "
                 "(the same file) into it before importing `hpsv2`"),
        ModelRow("hpsv3", "hpsv3", "official_hpsv3.py", "`HPSv3RewardInferencer(config, checkpoint)` + "
                 "`.reward(paths, prompts)[:, 0]` (`hpsv3/inference.py`, config `HPSv3_7B.yaml`)",
                 _prepare_hpsv3,
                 shims="the side's config is the official `HPSv3_7B.yaml` with `model_name_or_path` = the "
                 "tiny base folder and float32 (`bf16: False`, `torch_dtype: float32`; the release runs "
                 "bfloat16); the base folder is the tiny Qwen2-VL rewritten in the transformers-4.45 layout "
                 "(flat `config.json` with `rope_scaling: {type: mrope}`, `preprocessor_config.json` with "
                 "`min/max_pixels`, `chat_template.json`, BPE merges as strings) by "
                 "`evalsuite.parity.legacy.qwen2_vl_folder_v4`"),
    )
}


@dataclass(frozen=True)
class ProbeRow:
    """An official package that installs in its side venv but is not measured yet: the side process imports
    it (proving the pins work and reporting the versions) and the table gives ``reason``."""

    name: str
    env: str
    official: str
    imports: tuple[str, ...]
    dists: dict[str, str]  # distribution -> module, for the versions report
    reason: str


PROBE_ROWS: dict[str, ProbeRow] = {
    row.name: row
    for row in (
        ProbeRow("blip_vqa", "lavis", "LAVIS `blip_vqa` (probed; T2I-CompBench's `BLIPvqa_eval` runs its own "
                 "BLIP copy with `vqa_prob`, see the notes)", ("lavis.models",),
                 {"salesforce-lavis": "lavis", "transformers": "transformers", "torch": "torch",
                  "numpy": "numpy"},
                 "installs and imports with `numpy<2` (its `opencv-python-headless==4.5.5.64` is built "
                 "for numpy 1; without the pin `import lavis.models` fails with `ImportError: "
                 "numpy.core.multiarray failed to import`). Not measured, because T2I-CompBench does not "
                 "run LAVIS: `BLIPvqa_eval/` vendors salesforce/BLIP's `models/` (`blip.py`, `med.py`, "
                 "`vit.py`: the BLIP GitHub repository, not LAVIS), and its `models/blip_vqa.py` adds to "
                 "`BLIP_VQA.forward` an `inference='vqa_prob'` branch (probabilities formatted "
                 "`'{:.4f}'`) and the method `vqa_prob`: the decoder fed the hard-coded [DEC] id 30522 "
                 "once, softmax over the vocabulary at that position, `P(2748 'yes') / (P(2748) + "
                 "P(2053 'no'))`; `BLIP_vqa.py` runs it with `configs/vqa.yaml`. LAVIS 1.0.2's `BlipVQA` "
                 "(`lavis/models/blip_models/blip_vqa.py`) has only `rank` and `generate` in "
                 "`predict_answers`. Neither T2I-CompBench nor salesforce/BLIP is on PyPI, so the modified "
                 "file cannot be installed in a side venv offline (CI), and its hard-coded ids need the "
                 "real `bert-base-uncased` vocabulary (hub only). Covered by `tests/test_blip_vqa.py`'s "
                 "reference (the `vqa_prob` lines over HF `BlipForQuestionAnswering`)"),
    )
}
