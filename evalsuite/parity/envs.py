"""Side environments: a venv per official package, holding only its pins, run as a subprocess.

The official packages pin a transformers (4.x) that cannot sit next to ours (5.x). A side venv is made with
``python -m venv`` and a ``.pth`` file that appends *this* interpreter's site-packages after the side
venv's own, so torch, numpy, PIL, ... are reused (no reinstall) and only the pinned packages live in the
side venv, shadowing ours. The side script prints the versions it really imported; the table records them.

Venvs are cached under ``~/.cache/evalsuite/parity/<name>`` (``EVALSUITE_PARITY_CACHE`` moves it) and
rebuilt when their spec changes (a stamp file holds the spec). Building takes an exclusive lock on
``<name>.lock`` beside the venv, so two processes asking for the same venv at once (two test workers, CI and
a developer) build it once: the second waits, then finds the stamp and reuses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ENVS", "SideEnv", "SideEnvError", "build_lock", "cache_root", "dry_run", "run_side"]

SIDE_SCRIPTS = Path(__file__).resolve().parent / "side"


class SideEnvError(RuntimeError):
    """A side venv could not be built, or its script failed: the message is what the table shows."""


@dataclass(frozen=True)
class SideEnv:
    """One official package's environment: pip requirements installed in two steps (build tools first,
    then the pins without build isolation, so sdists build against the torch we already have)."""

    name: str
    requirements: tuple[str, ...]
    build_tools: tuple[str, ...] = ("setuptools<81", "wheel")
    modules: tuple[str, ...] = field(default=())  # whose versions the side script reports

    def spec(self) -> dict[str, Any]:
        return {"requirements": list(self.requirements), "build_tools": list(self.build_tools),
                "python": sys.version.split()[0], "base": _base_site_packages()}


# Pins: what the official package needs to import and run at all (see docs/parity.md for why each).
ENVS: dict[str, SideEnv] = {
    env.name: env
    for env in (
        SideEnv("image-reward", ("image-reward==1.5", "transformers==4.36.2", "diffusers==0.25.1",
                                 "huggingface_hub<0.26", "openai-clip", "setuptools<81")),
        SideEnv("clip", ("openai-clip", "transformers==4.36.2", "huggingface_hub<0.26", "setuptools<81")),
        SideEnv("hpsv2", ("hpsv2==1.2.0", "transformers==4.36.2", "huggingface_hub<0.26", "setuptools<81")),
        SideEnv("hpsv3", ("hpsv3==1.0.0", "setuptools<81")),
        SideEnv("lavis", ("salesforce-lavis==1.0.2", "numpy<2", "setuptools<81")),
    )
}


def cache_root() -> Path:
    return Path(os.environ.get("EVALSUITE_PARITY_CACHE", Path.home() / ".cache" / "evalsuite" / "parity"))


def _base_site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _pip(venv: Path, args: list[str], log: Path, timeout: float) -> None:
    cmd = [str(_python(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if proc.returncode:
        tail = [line for line in log.read_text(encoding="utf-8").splitlines()
                if line.strip() and "is ignored: it is neither" not in line][-6:]
        raise SideEnvError(f"pip install {' '.join(args)} failed: " + " | ".join(tail))


@contextlib.contextmanager
def build_lock(name: str, timeout: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``<cache>/<name>.lock`` (released when the holder exits, even killed), so
    one process builds a venv while the others wait for it."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with (cache_root() / f"{name}.lock").open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SideEnvError(f"side venv {name!r}: another process held its build lock for "
                                       f"{timeout:.0f} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_current(venv: Path, spec: dict[str, Any]) -> bool:
    stamp = venv / "evalsuite-parity.json"
    return (stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == spec
            and _python(venv).exists())


def build(env: SideEnv, *, timeout: float = 1200.0) -> tuple[Path, float]:
    """The venv for ``env`` (built now, or reused when its stamp matches); returns it and the build seconds
    (0.0 when reused). Concurrent callers build it once (``build_lock``)."""
    venv = cache_root() / env.name
    spec = env.spec()
    if _is_current(venv, spec):
        return venv, 0.0
    with build_lock(env.name, timeout):
        if _is_current(venv, spec):  # built by the process we waited for
            return venv, 0.0
        return venv, _build(env, venv, spec, timeout)


def _build(env: SideEnv, venv: Path, spec: dict[str, Any], timeout: float) -> float:
    stamp = venv / "evalsuite-parity.json"
    start = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, capture_output=True)
    ask = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([str(_python(venv)), "-c", ask], check=True, capture_output=True,
                             text=True).stdout.strip()
    # addsitedir appends ours after the venv's own site-packages and runs our .pth files too (the CPU
    # torchvision shim of scripts/cpu_compat lives in one).
    Path(purelib, "zz_evalsuite_base.pth").write_text(f"import site; site.addsitedir({spec['base']!r})\n",
                                                      encoding="utf-8")
    log = venv / "build.log"
    _pip(venv, list(env.build_tools), log, timeout)
    _pip(venv, ["--no-build-isolation", *env.requirements], log, timeout)
    stamp.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return time.monotonic() - start


def dry_run(requirements: tuple[str, ...], *, timeout: float = 600.0) -> tuple[bool, str]:
    """``pip install --dry-run --ignore-installed`` of ``requirements`` for this interpreter (installs
    nothing): ``(resolves, what pip said)``: the packages it would install, or its error."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
           "--disable-pip-version-check", *requirements]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"`pip install --dry-run` did not finish in {timeout:.0f} s"
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()
             if ln.strip() and "is ignored: it is neither" not in ln]
    would = next((ln for ln in lines if ln.startswith("Would install")), None)
    if proc.returncode == 0 and would:
        packages = would.split()[2:]
        asked = {re.split(r"[<>=!~\[ ]", r)[0].lower().replace("_", "-") for r in requirements}
        named = [p for p in packages if p.rsplit("-", 1)[0].lower().replace("_", "-") in asked]
        return True, f"would install {len(packages)} packages, among them {' '.join(named)}"
    errors = [ln for ln in lines if re.match(r"(ERROR\b|error\b|\w+Error: )", ln)] or lines[-3:]
    return False, " | ".join(errors[-3:])


def run_side(env: SideEnv, script: str, request: dict[str, Any], work: Path, *,
             timeout: float = 1800.0) -> dict[str, Any]:
    """Run ``side/<script>`` in ``env``'s venv on ``request`` (JSON in, JSON out, no pickle); its cwd is
    ``work`` (where the local tokenizer folders live)."""
    venv, _ = build(env)
    req, res = work / f"{script}.request.json", work / f"{script}.result.json"
    req.write_text(json.dumps(request), encoding="utf-8")
    res.unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    clean.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    proc = subprocess.run([str(_python(venv)), str(SIDE_SCRIPTS / script), str(req), str(res)], cwd=work,
                          env=clean, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode or not res.is_file():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise SideEnvError(f"official side script {script} failed: {' | '.join(lines[-3:])}")
    return json.loads(res.read_text(encoding="utf-8"))
