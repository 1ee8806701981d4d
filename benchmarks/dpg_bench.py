"""DPG-Bench (ELLA, arXiv:2403.05135): 1065 dense prompts, each checked against a graph of yes/no questions.

Protocol (TencentQQGYLab/ELLA ``dpg_bench/compute_dpg_bench.py`` + ``dist_eval.sh``): 4 images per prompt,
each answered separately by a VQA model (official: mPLUG-large), dependency zeroing, quadrant score = mean
over questions, item score = mean over quadrants, DPG-Bench = mean item score x 100, plus L1/L2 category
tables. The rules, and exactly where ``mode="official"`` (the script's quirks, bit for bit) and
``mode="corrected"`` differ, are in ``dpg_rules``; the VQA backends in
``evalsuite.rewards.vqa``, reached through the registry (scorer ``vqa``).

Images. The official layout is one 2x2 grid ``<id>.png`` per prompt, cut into R x R quadrants
(``--resolution R``, quadrant k = top-left, top-right, bottom-left, bottom-right, ``--pic-num`` of them).
- ``layout="singles"`` (default; what ``evaluate()`` generates): ``images/<id>/<k:04d>.png``; image k *is*
  quadrant k, scored directly. ``write_official_grids()`` tiles a run into grids for the official script.
- ``layout="grid"``: score official grids made elsewhere (``evaluate(images_dir=...)``): ``<id>.<grid_ext>``,
  quadrant k cropped with the script's boxes for ``resolution`` (default: half the grid width). As in the
  script, PIL pads a box that leaves the image with black.
One sample = one quadrant: its record holds the answers and the quadrant score; ``aggregate`` builds items.

Every result names the mode, the question graph and the VQA backend and model: numbers from different VQA
models (mPLUG vs Qwen2.5-VL) are not interchangeable, and reproductions with mPLUG itself are reported 2-6
points below published numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from evalsuite.benchmark import Benchmark, PromptRecord, safe_name, split_sample_id
from evalsuite.benchmarks import dpg_rules as rules
from evalsuite.data import data_file, digest, resolve
from evalsuite.errors import ConfigError, EvalsuiteError
from evalsuite.images import to_rgb
from evalsuite.registry import get_scorer
from evalsuite.sample import Sample
from evalsuite.scorer import describe_vqa
from evalsuite.store import atomic_save_image

PROMPTS_KEY = "dpg_bench/prompts.jsonl"
CSV_KEY = "dpg_bench/dpg_bench.csv"
LAYOUTS = ("singles", "grid")
NOT_INTERCHANGEABLE = (
    "VQA backends are not interchangeable: compare DPG-Bench numbers only at equal vqa/vqa_model"
)


# -- images ------------------------------------------------------------------------------------------
def quadrant_box(k: int, resolution: int) -> tuple[int, int, int, int]:
    """The script's crop box of quadrant ``k`` (0 TL, 1 TR, 2 BL, 3 BR) in a grid of R x R cells."""
    r = resolution
    boxes = ((0, 0, r, r), (r, 0, 2 * r, r), (0, r, r, 2 * r), (r, r, 2 * r, 2 * r))
    if not 0 <= k < len(boxes):
        raise ValueError(f"quadrant index must be 0..3, got {k}")
    return boxes[k]


def split_grid(grid: Image.Image, resolution: int | None = None, pic_num: int = 4) -> list[Image.Image]:
    """The first ``pic_num`` R x R quadrants of a 2x2 grid (R defaults to half the grid width)."""
    r = resolution or grid.width // 2
    if r < 1:
        raise ValueError(f"grid {grid.width}x{grid.height} is too small for quadrants")
    return [grid.crop(quadrant_box(k, r)) for k in range(pic_num)]


def make_grid(images: Sequence[Image.Image]) -> Image.Image:
    """Tile up to 4 same-size images into the official 2x2 grid (missing cells stay black)."""
    if not 1 <= len(images) <= 4:
        raise ValueError(f"a DPG-Bench grid holds 1 to 4 images, got {len(images)}")
    size = images[0].size
    if any(im.size != size for im in images):
        raise ValueError(f"grid images differ in size: {[im.size for im in images]}")
    w, h = size
    if w != h:
        raise ValueError(f"the official grid has square R x R cells, got {w}x{h}")
    grid = Image.new("RGB", (2 * w, 2 * w))
    for k, im in enumerate(images):
        grid.paste(im.convert("RGB"), quadrant_box(k, w)[:2])
    return grid


def write_official_grids(
    run_dir: str | os.PathLike, dest: str | os.PathLike, item_ids: Sequence[str], pic_num: int = 4
) -> list[Path]:
    """Tile a singles-layout run (``<run_dir>/images/<id>/000k.png``) into ``<dest>/<id>.png`` grids."""
    out = []
    for item in item_ids:
        folder = Path(run_dir) / "images" / safe_name(item)
        images = [to_rgb(folder / f"{k:04d}.png", f"{item}/{k}") for k in range(pic_num)]
        out.append(atomic_save_image(Path(dest) / f"{safe_name(item)}.png", make_grid(images)))
    return out


# -- question graph ----------------------------------------------------------------------------------
def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a question-graph CSV as strings, in file order (no NaN guessing)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in rules.REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"DPG-Bench question graph {path}: missing columns {missing} "
            f"(expected the official columns {list(rules.CSV_COLUMNS)})"
        )
    return frame.to_dict(orient="records")


def load_graph(path: str | os.PathLike, mode: str) -> rules.Graph:
    try:
        return rules.build_graph(read_csv_rows(path), mode)
    except ValueError as e:
        raise ConfigError(f"DPG-Bench question graph {path}: {e}") from e


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DPGBench(Benchmark):
    """DPG-Bench with a pluggable yes/no VQA backend; ``mode`` is ``"official"`` or ``"corrected"``."""

    name = "dpg_bench"
    images_per_prompt = 4
    data_files = (PROMPTS_KEY, CSV_KEY)

    def __init__(
        self,
        *,
        mode: str = "official",
        vqa: Any = None,
        vqa_model: str | os.PathLike | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 32,
        vqa_options: dict[str, Any] | None = None,
        questions_csv: str | os.PathLike | None = None,
        layout: str = "singles",
        resolution: int | None = None,
        grid_ext: str = "png",
        data_dir: str | os.PathLike | None = None,
    ) -> None:
        try:
            self.mode = rules.check_mode(mode)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if layout not in LAYOUTS:
            raise ConfigError(f"DPG-Bench layout must be one of {LAYOUTS}, got {layout!r}")
        if resolution is not None and resolution < 1:
            raise ConfigError(f"DPG-Bench resolution must be >= 1, got {resolution}")
        self.layout = layout
        self.resolution = resolution
        self.grid_ext = grid_ext.lstrip(".")
        self.data_dir = data_dir
        self.questions_csv = None if questions_csv is None else Path(questions_csv)
        if self.questions_csv is not None and not self.questions_csv.is_file():
            raise ConfigError(f"DPG-Bench questions_csv {self.questions_csv} is not a file")
        # Used only where a backend class is instantiated (built-in name, class, "module:Class").
        options: dict[str, Any] = {
            "device": device,
            "dtype": dtype,
            "batch_size": batch_size,
            **(vqa_options or {}),
        }
        if vqa_model is not None:
            options["model"] = str(vqa_model)
        self.vqa = get_scorer("vqa", vqa, **options)
        self._graph: rules.Graph | None = None

    # -- description ----------------------------------------------------------------------------------
    def _graph_source(self) -> dict[str, Any]:
        spec = data_file(CSV_KEY)
        if self.questions_csv is None:
            return {"question_graph": f"official {CSV_KEY} (git blob {spec.git_blob})"}
        _, blob = digest(self.questions_csv, spec)
        official = blob == spec.git_blob
        return {
            "question_graph": f"{'official' if official else 'custom'} {self.questions_csv}",
            "question_graph_sha256": _sha256(self.questions_csv),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "images_per_prompt": self.images_per_prompt,
            "mode": self.mode,
            "layout": self.layout,
            "resolution": self.resolution,
            **self._graph_source(),
            **describe_vqa(self.vqa),
            "official_vqa": "mPLUG-large (damo/mplug_visual-question-answering_coco_large_en)",
            "note": NOT_INTERCHANGEABLE,
        }

    # -- data ---------------------------------------------------------------------------------------
    def graph(self, data_dir: str | os.PathLike | None = None) -> rules.Graph:
        """The question graph for this mode (loaded once: the given CSV, else the verified upstream file)."""
        if self._graph is None:
            path = self.questions_csv or resolve(CSV_KEY, data_dir if data_dir is not None else self.data_dir)
            self._graph = load_graph(path, self.mode)
        return self._graph

    def prompts(self, data_dir: str | None = None) -> list[PromptRecord]:
        path = resolve(PROMPTS_KEY, data_dir if data_dir is not None else self.data_dir)
        graph = self.graph(data_dir)
        records = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    meta = {"item_id": row["id"], "n_questions": len(graph.items.get(row["id"], {}))}
                    records.append(PromptRecord(row["id"], row["prompt"], meta))
        return records

    def _questions(self, sample: Sample, item: str) -> list[rules.Question]:
        """The item's questions: from ``metadata["questions"]`` if a caller put them there, else the graph."""
        if "questions" in sample.metadata:
            qs = [
                rules.Question(int(q["pid"]), str(q["question"]), str(q["tuple"]), tuple(q["parents"]))
                for q in sample.metadata["questions"]
            ]
        else:
            qs = list(self.graph().items.get(item, {}).values())
        if not qs:
            raise ValueError(
                f"sample {sample.id!r}: item {item!r} has no questions in the question graph "
                f"(the official script fails on it and leaves it out)"
            )
        return qs

    # -- layout -------------------------------------------------------------------------------------
    def image_path(self, sample: Sample) -> str:
        item, k = split_sample_id(sample)
        if self.layout == "grid":
            return f"{safe_name(item)}.{self.grid_ext}"
        return f"images/{safe_name(item)}/{k:04d}.png"

    def write_layout(self, out_dir, records: Sequence[PromptRecord]) -> None:
        if self.layout == "grid":
            raise ConfigError(
                "DPG-Bench layout='grid' reads official grids (evaluate(images_dir=...)); "
                "generate with layout='singles' and tile with write_official_grids()"
            )

    def quadrant(self, sample: Sample) -> Image.Image:
        """The image the VQA model sees for this sample: the sample itself, or its cell of the grid."""
        image = to_rgb(sample.image, sample.id)
        if self.layout == "singles":
            return image
        _, k = split_sample_id(sample)
        return image.crop(quadrant_box(k, self.resolution or image.width // 2))

    # -- scoring ------------------------------------------------------------------------------------
    def _ask(self, images: list[Image.Image], questions: list[str]) -> list[str]:
        answers = self.vqa.answer(images, questions)
        if len(answers) != len(questions):
            raise RuntimeError(f"VQA backend returned {len(answers)} answers for {len(questions)} questions")
        return [str(a) for a in answers]

    def score(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(samples)
        todo: list[tuple[int, str, int, list[rules.Question], Image.Image]] = []
        for i, s in enumerate(samples):
            try:
                item, k = split_sample_id(s)
                todo.append((i, item, k, self._questions(s, item), self.quadrant(s)))
            except (ValueError, TypeError, KeyError) as e:
                out[i] = self._failed(s, str(e))
        answers: dict[int, list[str] | str] = {}
        if todo:
            try:
                flat = self._ask(
                    [im for *_, qs, im in todo for _ in qs], [q.question for *_, qs, _ in todo for q in qs]
                )
                pos = 0
                for i, _, _, qs, _ in todo:
                    answers[i] = flat[pos : pos + len(qs)]
                    pos += len(qs)
            except EvalsuiteError as e:
                if not isinstance(e, ConfigError):
                    raise  # a missing backend is the user's setup to fix, not a per-sample failure
                answers = self._ask_one_by_one(samples, todo)
            except Exception:
                answers = self._ask_one_by_one(samples, todo)
        for i, item, k, qs, _ in todo:
            got = answers[i]
            out[i] = (
                self._failed(samples[i], got)
                if isinstance(got, str)
                else self._quadrant_record(item, k, qs, got)
            )
        return out  # type: ignore[return-value]

    def _ask_one_by_one(self, samples, todo) -> dict[int, list[str] | str]:
        """Isolate the samples the VQA backend fails on, so the rest of the batch is still scored."""
        answers: dict[int, list[str] | str] = {}
        for i, _, _, qs, im in todo:
            try:
                answers[i] = self._ask([im] * len(qs), [q.question for q in qs])
            except Exception as e:
                answers[i] = f"sample {samples[i].id!r}: VQA failed: {type(e).__name__}: {e}"
        return answers

    def _failed(self, sample: Sample, error: str) -> dict[str, Any]:
        try:
            item, k = split_sample_id(sample)
        except ValueError:
            item, k = sample.id, -1
        return {"score": None, "item_id": item, "quadrant": k, "mode": self.mode, "error": error}

    def _quadrant_record(
        self, item: str, k: int, qs: list[rules.Question], answers: list[str]
    ) -> dict[str, Any]:
        parents = {q.pid: q.parents for q in qs}  # graph order, last duplicate wins (as the script)
        by_pid = dict(zip([q.pid for q in qs], answers))
        raw = {pid: rules.is_yes(by_pid[pid], self.mode) for pid in parents}
        record: dict[str, Any] = {
            "score": None,
            "item_id": item,
            "quadrant": k,
            "mode": self.mode,
            "pids": list(parents),
            "questions": [{q.pid: q.question for q in qs}[p] for p in parents],  # shown by the report
            "answers": [by_pid[p] for p in parents],
            "l2": [rules.l2_category(q.tuple) for q in {q.pid: q for q in qs}.values()],
            "raw": list(raw.values()),
            "final": None,
            "n_questions": len(parents),
            "n_yes": int(sum(raw.values())),
            "n_zeroed": None,
            "missing_parents": rules.missing_parents(parents),
            "error": None,
        }
        try:
            final = rules.zero_dependents(raw, parents, self.mode)
        except rules.MissingParentError as e:
            record["reason"] = (
                f"official mode: {e}; the official script raises KeyError here and leaves "
                f"item {item!r} out of every score"
            )
            return record
        record.update(
            score=rules.mean(list(final.values())),
            final=list(final.values()),
            n_zeroed=int(sum(r > f for r, f in zip(raw.values(), final.values()))),
        )
        return record

    # -- aggregation --------------------------------------------------------------------------------
    def summarize(self, per_sample) -> rules.Summary:
        import pandas as pd

        items: dict[str, list[rules.QuadrantResult]] = {}
        for row in per_sample.to_dict(orient="records"):
            score = row.get("score")
            ok = score is not None and not pd.isna(score)
            items.setdefault(str(row["item_id"]), []).append(
                rules.QuadrantResult(
                    int(row["quadrant"]),
                    float(score) if ok else None,
                    row.get("l2") if ok else (),
                    row.get("raw") if ok else (),
                    row.get("final") if ok else (),
                )
            )
        return rules.summarize(items, self.mode)

    def aggregate(self, per_sample):
        import pandas as pd

        summ = self.summarize(per_sample)
        n_items = len(summ.item_scores)
        rows = [{"category": "DPG-Bench", "level": "overall", "score": summ.score, "n": n_items}]
        for level, table in (("L1", summ.l1), ("L2", summ.l2)):  # "L1/other" and "L2/other" may both exist
            for k, (v, n) in table.items():
                rows.append({"category": f"{level}/{k}", "level": level, "score": v, "n": n})
        return pd.DataFrame(rows).set_index("category")[["score", "level", "n"]]

    def summary(self, table, per_sample) -> dict[str, Any]:
        summ = self.summarize(per_sample)
        desc = describe_vqa(self.vqa)
        head: dict[str, Any] = {
            "dpg_score": summ.score,
            "mode": self.mode,
            "vqa": desc["vqa"],
            "vqa_model": desc["vqa_model"],
            "n_items": len(summ.item_scores),
            "n_items_left_out": len(summ.failed_items),
        }
        head.update({f"L1/{k}": v for k, (v, _) in summ.l1.items()})
        return head
