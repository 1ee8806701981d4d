"""Rewards, benchmarks and generators by name: built-ins plus third-party entry points.

Entries are resolved lazily (``"module:attr"`` strings), so listing them costs no model imports
and one broken plugin is reported by name without breaking the others. Third-party packages
register through the entry-point groups ``evalsuite.rewards``, ``evalsuite.benchmarks``,
``evalsuite.generators``, ``evalsuite.scorers``, ``evalsuite.trainers``, ``evalsuite.rewriters`` and
``evalsuite.flow_families``::

    [project.entry-points."evalsuite.rewards"]
    my_reward = "my_pkg.rewards:MyReward"
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

from evalsuite.errors import PluginError, UnknownNameError

Kind = Literal["rewards", "benchmarks", "generators", "scorers", "trainers", "rewriters", "flow_families"]
KINDS: tuple[Kind, ...] = (
    "rewards", "benchmarks", "generators", "scorers", "trainers", "rewriters", "flow_families"
)
ENTRY_POINT_GROUPS: dict[Kind, str] = {kind: f"evalsuite.{kind}" for kind in KINDS}
BUILTIN = "built-in"

# Built-ins, by kind. Later modules add their own rows here (one line per reward/benchmark).
BUILTINS: dict[Kind, dict[str, str]] = {
    "rewards": {
        "brightness": "evalsuite.rewards.brightness:Brightness",
        "multi": "evalsuite.rewards.multi:MultiReward",
        "promptecho": "evalsuite.rewards.promptecho:PromptEcho",
        "imagereward": "evalsuite.rewards.imagereward:ImageReward",
        "pickscore": "evalsuite.rewards.pickscore:PickScore",
        "clipscore": "evalsuite.rewards.clipscore:CLIPScore",
        "ocr": "evalsuite.rewards.ocr:OCRReward",
        "geneval": "evalsuite.rewards.geneval:GenEvalReward",
        "editreward": "evalsuite.rewards.editreward:EditReward",
        "remote": "evalsuite.remote:RemoteReward",
        "blip_vqa": "evalsuite.rewards.blip_vqa:BlipVQA",
        "t2i_compbench_detection": "evalsuite.rewards.compbench_detection:CompBenchDetection",
        "hpsv2": "evalsuite.rewards.hpsv2:HPSv2",
        "aesthetic": "evalsuite.rewards.aesthetic:LAIONAesthetic",
        "unifiedreward": "evalsuite.rewards.unifiedreward:UnifiedReward",
        "unifiedreward_pairwise": "evalsuite.rewards.unifiedreward:UnifiedRewardPairwise",
        "hpsv3": "evalsuite.rewards.hpsv3:HPSv3",
    },
    "benchmarks": {
        "geneval": "evalsuite.benchmarks.geneval:GenEval",
        "densealignbench": "evalsuite.benchmarks.densealign:DenseAlignBench",
        "t2i_compbench": "evalsuite.benchmarks.t2i_compbench:T2ICompBench",
        "dpg_bench": "evalsuite.benchmarks.dpg_bench:DPGBench",
        "geneval2": "evalsuite.benchmarks.geneval2:GenEval2",
        "drawbench": "evalsuite.benchmarks.drawbench:DrawBench",
        "unigenbench": "evalsuite.benchmarks.unigenbench:UniGenBench",
        "tiif_bench": "evalsuite.benchmarks.tiif_bench:TIIFBench",
    },
    "generators": {
        "diffusers": "evalsuite.generator:DiffusersGenerator",
    },
    "trainers": {  # evalsuite.trainer.Trainer objects
        "rewriter": "evalsuite.harness.trainers:REWRITER",
        "flow": "evalsuite.harness.trainers:FLOW",
    },
    "rewriters": {  # load(path, device=, dtype=) -> an object with rewrite(prompts, seed) -> list[str]
        "reprompt": "evalsuite.harness.rewriter:load_rewriter",
    },
    "flow_families": {  # evalsuite.harness.flow_families.FlowFamily classes: the flow policy's model seam
        "flux": "evalsuite.harness.flow_families.flux:FluxFamily",
        "sd3": "evalsuite.harness.flow_families.sd3:SD3Family",
        "qwenimage": "evalsuite.harness.flow_families.qwenimage:QwenImageFamily",
        "qwenimage-edit": "evalsuite.harness.flow_families.qwenimage_edit:QwenImageEditFamily",
        "zimage": "evalsuite.harness.flow_families.zimage:ZImageFamily",
    },
    # Model forwards that are not rewards (contracts in evalsuite.scorer): factories taking a spec.
    "scorers": {
        "vqa": "evalsuite.rewards.vqa:get_vqa",
        "soft_vqa": "evalsuite.rewards.soft_vqa:get_soft_vqa",
        "judge": "evalsuite.rewards.judges:make_judge",
        "vlm_chat": "evalsuite.rewards.vlm_chat:make_chat",
    },
}

log = logging.getLogger(__name__)


def singular(kind: str) -> str:
    """One of a kind, for messages and listings: rewards → reward, flow_families → flow_family."""
    return kind[:-3] + "y" if kind.endswith("ies") else kind.removesuffix("s")


@dataclass
class Entry:
    """One registered name. ``source`` is ``built-in``, ``runtime`` or ``<distribution> <version>``."""

    kind: Kind
    name: str
    target: str | Any
    source: str
    error: str | None = None
    _obj: Any = field(default=None, repr=False)

    def load(self) -> Any:
        if self._obj is not None:
            return self._obj
        if self.error is not None:
            raise PluginError(self._broken())
        try:
            if isinstance(self.target, str):
                module, _, attr = self.target.partition(":")
                obj = importlib.import_module(module)
                for part in attr.split(".") if attr else ():
                    obj = getattr(obj, part)
            else:
                obj = self.target.load()  # an importlib.metadata.EntryPoint
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            raise PluginError(self._broken()) from e
        self._obj = obj
        return obj

    def _broken(self) -> str:
        return f"{singular(self.kind)} {self.name!r} from {self.source} is broken: {self.error}"

    @property
    def target_name(self) -> str:
        """``module:attr`` of what the name loads (an entry point's value, or a runtime object's origin)."""
        if isinstance(self.target, str):
            return self.target
        if isinstance(self.target, metadata.EntryPoint):
            return self.target.value
        qualname = getattr(self.target, "__qualname__", type(self.target).__qualname__)
        return f"{getattr(self.target, '__module__', '?')}:{qualname}"


class Registry:
    """Name → class lookup for each kind; discovery of entry points happens once, on first use."""

    def __init__(self, builtins: dict[Kind, dict[str, str]] | None = None) -> None:
        self._entries: dict[Kind, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.conflicts: list[str] = []
        for kind, table in (builtins if builtins is not None else BUILTINS).items():
            for name, target in table.items():
                self._entries[kind][name] = Entry(kind, name, target, BUILTIN)
        self._discovered = False

    def register(self, kind: Kind, name: str, obj: Any = None, *, source: str = "runtime"):
        """Register ``obj`` (a class or factory) under ``name``; usable as a decorator."""
        self._check_kind(kind)

        def add(target: Any) -> Any:
            entry = Entry(kind, name, target, source)
            entry._obj = target
            self._entries[kind][name] = entry
            return target

        return add if obj is None else add(obj)

    def discover(self, *, refresh: bool = False) -> None:
        """Read the entry-point groups of every installed distribution."""
        if self._discovered and not refresh:
            return
        if refresh:
            for kind in KINDS:
                kept = self._entries[kind].items()
                self._entries[kind] = {n: e for n, e in kept if e.source == BUILTIN}
            self.conflicts = []
        self._discovered = True
        for kind, group in ENTRY_POINT_GROUPS.items():
            try:
                eps = metadata.entry_points(group=group)
            except Exception as e:
                log.warning("could not read entry points of %s: %s", group, e)
                continue
            for ep in eps:
                dist = getattr(ep, "dist", None)
                source = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "entry point"
                existing = self._entries[kind].get(ep.name)
                if existing is not None and existing.source != source:
                    self.conflicts.append(
                        f"{singular(kind)} {ep.name!r} from {source} ignored: "
                        f"already provided by {existing.source}"
                    )
                    continue
                self._entries[kind][ep.name] = Entry(kind, ep.name, ep, source)

    def entries(self, kind: Kind | None = None) -> list[Entry]:
        self.discover()
        kinds = KINDS if kind is None else (self._check_kind(kind),)
        return [e for k in kinds for _, e in sorted(self._entries[k].items())]

    def names(self, kind: Kind) -> list[str]:
        return [e.name for e in self.entries(kind)]

    def entry(self, kind: Kind, name: str) -> Entry:
        self.discover()
        self._check_kind(kind)
        try:
            return self._entries[kind][name]
        except KeyError:
            known = ", ".join(sorted(self._entries[kind])) or "none"
            raise UnknownNameError(f"no {singular(kind)} named {name!r}; registered: {known}") from None

    def get(self, kind: Kind, name: str) -> Any:
        return self.entry(kind, name).load()

    def check(self) -> list[Entry]:
        """Try to load every entry; broken ones keep their ``error`` for reporting."""
        entries = self.entries()
        for e in entries:
            with contextlib.suppress(PluginError):
                e.load()
        return entries

    @staticmethod
    def _check_kind(kind: str) -> Kind:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        return kind  # type: ignore[return-value]


registry = Registry()


def get_reward(name: str, /, **kwargs: Any):
    """Build a reward by registry name, e.g. ``get_reward("pickscore", device="cuda")``."""
    return registry.get("rewards", name)(**kwargs)


def get_benchmark(name: str, /, **kwargs: Any):
    return registry.get("benchmarks", name)(**kwargs)


def get_generator(name: str, /, *args: Any, **kwargs: Any):
    factory = registry.get("generators", name)
    return factory.from_pretrained(*args, **kwargs) if hasattr(factory, "from_pretrained") else factory(
        *args, **kwargs
    )


def get_scorer(name: str, /, *args: Any, **kwargs: Any):
    """Build a non-reward scorer by registry name, e.g. ``get_scorer("judge", "local", device="cuda")``."""
    return registry.get("scorers", name)(*args, **kwargs)


def get_trainer(name: str, /):
    """A registered trainer (an ``evalsuite.trainer.Trainer``) by name."""
    return registry.get("trainers", name)


def load_rewriter(path: str, /, name: str = "reprompt", **kwargs: Any):
    """A trained prompt rewriter from ``path`` through the registered loader ``name``."""
    return registry.get("rewriters", name)(path, **kwargs)


def register_reward(name: str):
    return registry.register("rewards", name)


def register_benchmark(name: str):
    return registry.register("benchmarks", name)


def register_generator(name: str):
    return registry.register("generators", name)
