"""A huge or broken image is one bad sample with an error naming it and its file, never a lost batch."""

import io
import json
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageFile

from evalsuite.cli import main
from evalsuite.evaluate import evaluate
from evalsuite.images import BadImageError, image_file_problem, to_rgb
from tests.toy_benchmark import ToyBenchmark


def png_with_header_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height``: a bomb's header at a bomb-free cost."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), "white").save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_patched_header_is_what_pil_reads():
    with Image.open(io.BytesIO(png_with_header_size(300, 200))) as img:
        assert img.size == (300, 200)
    with pytest.raises(Image.DecompressionBombError):  # what used to escape as a traceback
        Image.open(io.BytesIO(png_with_header_size(20000, 20000)))


def test_huge_header_is_refused_without_decoding(tmp_path, monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path = tmp_path / "huge.png"
    path.write_bytes(png_with_header_size(10000, 10000))  # 100 MP: under PIL's bomb error, over ours
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(BadImageError, match="exceeds") as info:
        to_rgb(path, "s1")
    assert "'s1'" in str(info.value) and str(path) in str(info.value)


def test_bomb_and_corrupt_files_name_sample_and_path(tmp_path):
    bomb, corrupt = tmp_path / "bomb.png", tmp_path / "corrupt.png"
    bomb.write_bytes(png_with_header_size(20000, 20000))
    corrupt.write_bytes(b"\x89PNG not really")
    for path in (bomb, corrupt):
        with pytest.raises(BadImageError) as info:
            to_rgb(path, "7")
        assert str(info.value).startswith("sample '7': ") and str(path) in str(info.value)
    assert image_file_problem(bomb) and image_file_problem(corrupt)


def _good(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(path)


def test_score_cli_keeps_the_good_images_of_a_batch_with_a_bomb(tmp_path, capsys):
    for i in range(3):
        _good(tmp_path / f"good{i}.png", 60 * i)
    (tmp_path / "bomb.png").write_bytes(png_with_header_size(20000, 20000))
    names = ["good0.png", "bomb.png", "good1.png", "good2.png"]
    listing = tmp_path / "listing.jsonl"
    listing.write_text("".join(json.dumps({"image": n, "prompt": "x"}) + "\n" for n in names))
    out = tmp_path / "scores.jsonl"
    main(["score", str(listing), "--reward", "brightness", "--output", str(out), "--device", "cpu",
          "--batch-size", "4"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows] == [str(tmp_path / n) for n in names]
    good = [r for r in rows if r["image"] != str(tmp_path / "bomb.png")]
    assert all(r["error"] is None and r["score"] is not None for r in good)
    bad = rows[1]
    assert "sample '1'" in bad["error"] and str(tmp_path / "bomb.png") in bad["error"]
    assert "exceeds" in bad["error"] and not bad["applicable"]


def test_evaluate_images_dir_with_a_bomb_scores_the_rest(tmp_path):
    made = tmp_path / "made"
    bench = ToyBenchmark()
    samples = bench.samples(bench.prompts()[:2], base_seed=0)
    for n, s in enumerate(samples):
        _good(made / bench.image_path(s), 50 * n)
    bomb = made / bench.image_path(samples[1])
    bomb.write_bytes(png_with_header_size(20000, 20000))
    res = evaluate(ToyBenchmark(), tmp_path / "scored", images_dir=made, limit=2)
    rows = res.per_sample.set_index("id")
    err = rows.loc[samples[1].id, "error"]
    assert repr(samples[1].id) in err and str(bomb) in err and pd.isna(rows.loc[samples[1].id, "score"])
    assert rows["error"].isna().sum() == len(samples) - 1
    page = (tmp_path / "scored" / "report.html").read_text()  # written: the bomb only lacks a thumbnail
    assert str(samples[1].id) in page


def test_remote_reward_reports_a_bomb_file_per_sample(tmp_path):
    from evalsuite import get_reward
    from evalsuite.remote import RemoteReward
    from evalsuite.sample import Sample
    from evalsuite.server import RewardServer

    _good(tmp_path / "good.png", 200)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_header_size(20000, 20000))
    with RewardServer({"brightness": get_reward("brightness")}, port=0) as srv:
        out = RemoteReward(srv.url, "brightness").score(
            [Sample("a", "x", tmp_path / "good.png"), Sample("b", "x", bomb)])
    assert out.errors[0] is None and out.applicable[0]
    assert "sample 'b'" in out.errors[1] and str(bomb) in out.errors[1] and "exceeds" in out.errors[1]
