"""The parity rows' plumbing by hand (no side venv): every registered reward has a row, the transformers-4.45
layout of the tiny Qwen2-VL, pip's dry-run answer as the table shows it, and the side venv build lock."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from evalsuite.parity import envs
from evalsuite.parity.legacy import qwen2_vl_config_v4, qwen2_vl_folder_v4
from evalsuite.parity.models import MODEL_ROWS, PROBE_ROWS
from evalsuite.parity.reasons import REASON_ROWS
from evalsuite.parity.runner import run_reason_row
from evalsuite.registry import BUILTINS


def test_every_registered_reward_and_scorer_has_a_row() -> None:
    """A new reward cannot land without a measured row or a stated reason in docs/parity.md."""
    covered = {row.reward or row.name for row in MODEL_ROWS.values()} | set(PROBE_ROWS) | set(REASON_ROWS)
    registered = set(BUILTINS["rewards"]) | {f"scorer:{name}" for name in BUILTINS["scorers"]}
    assert registered - covered == set()
    assert set(REASON_ROWS) - registered == set(), "a reason row names nothing registered"
    for row in REASON_ROWS.values():
        assert row.reason and row.official, row.name


_V5_CONFIG = {
    "architectures": ["Qwen2VLForConditionalGeneration"], "dtype": "float32", "image_token_id": 497,
    "model_type": "qwen2_vl", "tie_word_embeddings": False, "transformers_version": "5.25.0",
    "video_token_id": 498, "vision_end_token_id": 495, "vision_start_token_id": 494,
    "text_config": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "vocab_size": 507, "pad_token_id": 485, "rms_norm_eps": 1e-6,
        "layer_types": ["full_attention", "full_attention"], "model_type": "qwen2_vl_text",
        "rope_parameters": {"mrope_section": [2, 3, 3], "rope_theta": 1e6, "rope_type": "default"},
    },
    "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 32, "model_type": "qwen2_vl_vision",
                      "initializer_range": 0.02,
                      "rope_parameters": {"rope_theta": 1e4, "rope_type": "axial"}},
}


def test_qwen2_vl_config_in_the_4_45_layout_by_hand() -> None:
    """What Qwen/Qwen2-VL-7B-Instruct's config.json looks like: text settings at the top, M-RoPE as
    ``rope_scaling: {type: mrope}`` (4.45 reads ``config.hidden_size``; nested it would be the 7B default)."""
    assert qwen2_vl_config_v4(_V5_CONFIG) == {
        "architectures": ["Qwen2VLForConditionalGeneration"], "image_token_id": 497, "model_type": "qwen2_vl",
        "tie_word_embeddings": False, "video_token_id": 498, "vision_end_token_id": 495,
        "vision_start_token_id": 494, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 507, "pad_token_id": 485,
        "rms_norm_eps": 1e-6, "rope_theta": 1e6,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 32}, "torch_dtype": "float32",
    }
    scaled = json.loads(json.dumps(_V5_CONFIG))
    scaled["text_config"]["rope_parameters"]["rope_type"] = "linear"
    with pytest.raises(ValueError, match="M-RoPE"):
        qwen2_vl_config_v4(scaled)


def test_tiny_qwen2_vl_folder_in_the_4_45_layout(tmp_path: Path) -> None:
    from evalsuite.tiny import write_tiny

    base = write_tiny(tmp_path / "tiny", names=["hpsv3"])["hpsv3"] / "base"
    old = qwen2_vl_folder_v4(base, tmp_path / "v4")
    assert {p.name for p in old.iterdir()} == {
        "config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
        "chat_template.json", "tokenizer.json", "tokenizer_config.json"}
    assert (old / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()
    image = json.loads((old / "preprocessor_config.json").read_text())
    assert (image["min_pixels"], image["max_pixels"]) == (3136, 12845056) and "size" not in image
    template = (base / "chat_template.jinja").read_text()
    assert json.loads((old / "chat_template.json").read_text()) == {"chat_template": template}
    tok_config = json.loads((old / "tokenizer_config.json").read_text())
    assert "<|image_pad|>" in tok_config["additional_special_tokens"]
    assert tok_config["chat_template"] == template
    new_merges = json.loads((base / "tokenizer.json").read_text())["model"]["merges"]
    old_merges = json.loads((old / "tokenizer.json").read_text())["model"]["merges"]
    assert old_merges == [" ".join(m) for m in new_merges] and all(isinstance(m, str) for m in old_merges)


class _Proc:
    def __init__(self, returncode: int, out: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, out, ""


def test_dry_run_answer_as_the_table_shows_it(monkeypatch) -> None:
    said = ("WARNING: Location 'file:///x/' is ignored: it is neither a file nor a directory.\n"
            "Would install Cython-3.0 paddleocr-2.9.1 paddlepaddle-2.6.2 six-1.17.0\n")
    monkeypatch.setattr(envs.subprocess, "run", lambda *a, **k: _Proc(0, said))
    assert envs.dry_run(("paddleocr==2.9.1", "paddlepaddle==2.6.2")) == (
        True, "would install 4 packages, among them paddleocr-2.9.1 paddlepaddle-2.6.2")
    failed = ("Collecting x\nERROR: Could not find a version that satisfies the requirement editreward "
              "(from versions: none)\nERROR: No matching distribution found for editreward\n")
    monkeypatch.setattr(envs.subprocess, "run", lambda *a, **k: _Proc(1, failed))
    ok, answer = envs.dry_run(("editreward",))
    assert not ok and answer.endswith("ERROR: No matching distribution found for editreward")
    result = run_reason_row(REASON_ROWS["editreward"], "cmd")
    assert result.status == "not run" and result.error.startswith(REASON_ROWS["editreward"].reason)
    assert "`pip install --dry-run editreward`: fails: ERROR: Could not find" in result.error


_HOLDER = """
import sys, time
from pathlib import Path
from evalsuite.parity.envs import build_lock
folder = Path(sys.argv[1])
with build_lock("lock-test", 60):
    (folder / "held").touch()
    while not (folder / "release").exists():
        time.sleep(0.05)
    (folder / "venv-written").touch()  # what a real build leaves before releasing the lock
"""


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_two_processes_build_a_side_venv_once(tmp_path: Path, monkeypatch) -> None:
    """While another process holds the build lock, ``build`` waits for it and then reuses what it built
    instead of building again (or deleting it half-written)."""
    monkeypatch.setenv("EVALSUITE_PARITY_CACHE", str(tmp_path / "cache"))
    env = envs.SideEnv("lock-test", ("nothing==1",))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)])
    try:
        _wait_for(tmp_path / "held")
        # held: a short wait gives up
        with pytest.raises(envs.SideEnvError, match="build lock"), envs.build_lock("lock-test", 0.2):
            pass
        checked, built = threading.Event(), []
        current = envs._is_current

        def is_current(venv: Path, spec: dict) -> bool:
            if (tmp_path / "venv-written").exists():  # the holder's build is done: stamp it as finished
                (venv / "bin").mkdir(parents=True, exist_ok=True)
                (venv / "bin" / "python").touch()
                (venv / "evalsuite-parity.json").write_text(json.dumps(spec))
            answer = current(venv, spec)
            checked.set()
            return answer

        monkeypatch.setattr(envs, "_is_current", is_current)
        monkeypatch.setattr(envs, "_build", lambda *a: built.append(a) or 1.0)
        outcome = []
        waiter = threading.Thread(target=lambda: outcome.append(envs.build(env, timeout=60)))
        waiter.start()
        checked.wait(60)  # the waiter found no venv and now queues on the lock
        (tmp_path / "release").touch()
        waiter.join(60)
        assert holder.wait(60) == 0
        assert outcome == [(tmp_path / "cache" / "lock-test", 0.0)] and built == []
    finally:
        (tmp_path / "release").touch()
        holder.wait(60)
