"""GPU acceptance: one command, one GPU, <= 8 minutes; exits non-zero when a check fails.

Made to succeed on the first try on an offline cluster node (docs/install.md): it imports
nothing beyond the standard library until its **preflight** has printed the environment
(Python, torch, CUDA, GPU name and memory, the version of every dependency) and checked
every import and the data; a missing piece is one line that names it and the command that
installs it, and only the sections that need it are skipped. The sections then run one by
one, each with its own time budget (a section over it is stopped and marked failed); a
section that fails or raises never stops the others, and the report is rewritten after
every section, so a run cut short still leaves what it measured.

Sections (each a function in ``CHECKS``; more can be registered with :func:`register_check`,
and a module ``benchmarks/device_views.py`` defining ``acceptance_check(ctx) -> CheckResult``
is picked up automatically):

(a) ``loader``: the MoCo pair loader on CIFAR-10 with 14 workers: plain vs contrastive vs
    cropmix query, images/s and the ratios to plain (``benchmarks/dataloader.py``'s
    interleaved rounds). Targets: cropmix >= 0.9x plain, contrastive >= 0.65x plain.
(b) ``steps``: the ``MoCoCropMix`` ResNet-50 224-px training step against the lightly
    reference of ``benchmarks/moco_step.py`` (both bf16 autocast, both channels_last), and
    the ``MAECropMix`` ViT-B/16 step against ``benchmarks/mae_step.py``'s reference (both bf16
    autocast, both contiguous): ms/step, ratio, and the peak GPU memory of each measured with
    only that model resident. Target: ours <= 1.05x the reference's time.
(c) ``pretrain_eval``: a short ResNet-18 MoCo + CropMix pretraining on CIFAR-10 (bf16-mixed),
    then the end-of-fit linear probe and kNN; **asserts that both evaluations ran on the GPU**,
    on the pretraining's accelerator and precision; reports accuracy and time.
(d) ``device_views`` (from ``benchmarks/device_views.py``): the ``augment_on="device"`` views (``MoCoViews`` / ``MAEViews``),
    contrastive MoCo pairs/s at 224 px, batch 256, decode excluded (target >= 5,000), and a
    ResNet-50 ``MoCoCropMix`` step fed by them vs the step on pre-made tensors (>= 0.95x),
    both sides bf16 and channels_last.

How the run is sized (no GPU was available to time it; estimates from the H100/H200
throughput in docs/benchmarks.md, budgets are hard caps about 3x the estimate):

=============  ==========================================  ======  ==========  ======
section        full size                                   budget  ``--quick``  budget
=============  ==========================================  ======  ==========  ======
start-up       imports, CUDA init, CIFAR-10 extraction      ~40 s   same        ~40 s
loader         3 pipelines x 3 rounds x 10 batches of 256   75 s   2 x 5        35 s
steps          warm-up 3 + 3 rounds x 5 steps, each side   110 s   2 + 2 x 3    55 s
pretrain_eval  5 epochs of 50k images, probe 30 epochs     150 s   1, 10        70 s
device_views   2 queries + 3 x 10 steps each side           75 s   same         35 s
total                                                      ~450 s              ~235 s
=============  ==========================================  ======  ==========  ======

Writes ``<out>/gpu_acceptance.md`` (markdown table) and ``<out>/gpu_acceptance.json``;
``--out`` defaults to ``outputs/gpu_acceptance/`` in the checkout (ignored by git).

    python benchmarks/gpu_acceptance.py                      # the GPU run (needs CUDA), <= 8 min
    python benchmarks/gpu_acceptance.py --quick              # smaller sizes, < 4 min
    python benchmarks/gpu_acceptance.py --preflight          # only print and check the environment
    python benchmarks/gpu_acceptance.py --cpu-smoke          # same code, toy sizes, CPU (tests)

Data: ``--data-root``; when unset, the checkout's ``data/`` folder (ignored by git; put the
archive there with ``python tools/stage_data.py /path/to/cifar10-jpeg.tar.gz``), then
``$SSL_CROPMIX_CIFAR10``. The CPU smoke run uses CIFAR-10 for its loader section when found,
and the built-in demo photos otherwise.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

ARCHIVE_NAME = "cifar10-jpeg.tar.gz"  # as ssl_cropmix.data.cifar.ARCHIVE_NAME (not imported before preflight)
ENV_VAR = "SSL_CROPMIX_CIFAR10"
DEFAULT_OUT = REPO / "outputs" / "gpu_acceptance"
#: ``(full, quick, cpu smoke)`` seconds per section; a section without an entry gets ``DEFAULT_BUDGET``.
BUDGETS: dict[str, tuple[float, float, float]] = {
    "loader": (75, 35, 240),
    "steps": (110, 55, 300),
    "pretrain_eval": (150, 70, 300),
    "device_views": (75, 35, 240),
}
DEFAULT_BUDGET = (60.0, 30.0, 240.0)
#: What each section imports (checked by the preflight) and whether it needs CIFAR-10 on the GPU run.
NEEDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "loader": (("dataloader", "ssl_cropmix.data.datasets", "ssl_cropmix.data.cifar"), True),
    "steps": (("moco_step", "mae_step", "ssl_cropmix.methods.moco", "ssl_cropmix.methods.mae",
               "ssl_cropmix.models.vit"), False),
    "pretrain_eval": (("pytorch_lightning", "ssl_cropmix.callbacks", "ssl_cropmix.data.datamodule",
                       "ssl_cropmix.methods.moco"), True),
    "device_views": (("device_views", "ssl_cropmix.data.device_views", "ssl_cropmix.methods.moco"), False),
}
#: Import name of a distribution where it differs from the name with '-' -> '_'.
IMPORT_NAMES = {"pytorch-lightning": "pytorch_lightning", "pillow": "PIL", "scikit-image": "skimage",
                "pytest-timeout": "pytest_timeout"}


@dataclass
class Context:
    """What every check gets: device, sizes, where data and outputs are.

    ``data_root`` is the CIFAR-10 location the preflight found (None: not found).
    """

    device: Any  # torch.device
    smoke: bool
    data_root: str | None
    workers: int
    tmp: Path
    pretrain_epochs: int
    quick: bool = False


@dataclass
class CheckResult:
    """One check's outcome: ``rows`` become table lines ``| check | item | value | target | ok |``."""

    name: str
    passed: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    budget_seconds: float | None = None


Check = Callable[[Context], CheckResult]
CHECKS: list[tuple[str, Check]] = []


def register_check(name: str, fn: Check) -> None:
    """Add a check (run in registration order)."""
    CHECKS.append((name, fn))


def _row(item: str, value: Any, target: str = "", ok: bool = True) -> dict[str, Any]:
    return {"item": item, "value": value, "target": target, "ok": bool(ok)}


def _sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ----------------------------------------------------------------------------- preflight
@dataclass
class Preflight:
    """What the preflight saw: ``problems`` are one line each; ``blocked`` maps a section to
    the problem line that keeps it from running."""

    environment: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)
    data_root: str | None = None
    data_line: str = ""


def _requirements() -> list[str]:
    """ssl_cropmix's dependencies (with the ``demo`` extra), from this checkout's pyproject.toml."""
    try:
        import tomllib

        proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        return list(proj["dependencies"]) + list(proj.get("optional-dependencies", {}).get("demo", []))
    except Exception:  # Python 3.10 (no tomllib) or no pyproject: the installed metadata
        from importlib.metadata import PackageNotFoundError, requires

        try:
            return [r.split(";")[0] for r in requires("ssl_cropmix") or [] if "extra" not in r or "demo" in r]
        except PackageNotFoundError:
            return ["torch", "torchvision", "pytorch-lightning", "lightly", "timm", "jsonargparse[signatures]",
                    "torchmetrics", "safetensors", "tensorboard", "pillow", "numpy", "scikit-image", "matplotlib"]


def install_hint(req: str) -> str:
    """The command that installs ``req`` here: from the checkout's wheelhouse when there is one."""
    wh = REPO / "wheelhouse"
    if wh.is_dir() and any(wh.glob("*.whl")):
        return f"python -m pip install --no-index --find-links {wh} '{req}'"
    return f"python -m pip install '{req}'  (offline node: docs/install.md, tools/wheelhouse.py)"


def _dependency_lines(pf: Preflight) -> dict[str, str]:
    """Check every dependency's version and import; returns {import name: problem line}."""
    from importlib.metadata import PackageNotFoundError, requires, version

    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging comes with Lightning
        Requirement = None  # type: ignore[assignment]
    broken: dict[str, str] = {}
    todo = [(r, "ssl_cropmix") for r in _requirements()]
    seen = set()
    while todo:
        raw, parent = todo.pop(0)
        req = Requirement(raw) if Requirement else None
        name = req.name if req else raw.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        mod = IMPORT_NAMES.get(key, key.replace("-", "_"))
        shown = raw if parent == "ssl_cropmix" else f"{raw} (via {parent})"
        try:
            v = version(name)
        except PackageNotFoundError:
            v = None
        problem = None
        try:
            importlib.import_module(mod)
        except Exception as e:
            problem = (f"MISSING dependency {shown}: import {mod} failed ({type(e).__name__}: {e}); "
                       f"install: {install_hint(raw.split(';')[0])}")
        if problem is None and req is not None and v is not None and req.specifier and \
                not req.specifier.contains(v.split("+")[0], prereleases=True):
            problem = (f"WRONG VERSION {name} {v} does not meet {req.specifier}; "
                       f"install: {install_hint(raw.split(';')[0])}")
        pf.environment.setdefault("versions", {})[name] = v
        pf.lines.append(f"  {name:<22} {v or '-':<14} {str(req.specifier) if req else ''}"
                        + ("" if problem is None else "   <- " + problem.split(':')[0]))
        if problem:
            pf.problems.append(problem)
            broken[mod] = problem
        if req is not None and req.extras and v is not None:  # e.g. jsonargparse[signatures]
            for dep in requires(name) or []:
                d = Requirement(dep)
                if d.marker is not None and any(d.marker.evaluate({"extra": e}) for e in req.extras):
                    todo.append((str(d).split(";")[0], f"{name}[{','.join(sorted(req.extras))}]"))
    return broken


def find_data(data_root: str | None) -> tuple[Path | None, str]:
    """Where the CIFAR-10 data is: ``data_root`` if given, else the checkout's ``data/``, then
    ``$SSL_CROPMIX_CIFAR10``. Returns ``(path or None, the one line saying where it looked)``.

    A location counts when it is the extracted ``cifar10`` folder (``train/`` + ``test/``), a
    folder holding it or the archive, or the archive itself (as ``resolve_cifar10`` reads it).
    """
    if data_root is not None:
        candidates = [("--data-root", Path(data_root))]
    else:
        env = os.environ.get(ENV_VAR)
        candidates = [("checkout data/", REPO / "data"), (f"${ENV_VAR}", Path(env) if env else None)]
    looked = ["--data-root (unset)"] if data_root is None else []
    for label, p in candidates:
        if p is None:
            looked.append(f"{label} (unset)")
            continue
        p = p.expanduser()
        hit = next((c for c in (p, p / "cifar10") if (c / "train").is_dir() and (c / "test").is_dir()), None)
        if hit is None and (p.is_file() or (p / ARCHIVE_NAME).is_file()):
            hit = p
        looked.append(f"{label} {p} ({'found' if hit else 'no ' + ARCHIVE_NAME + ' or cifar10/'})")
        if hit is not None:
            return p, "; ".join(looked)
    return None, "; ".join(looked)


def check_data(pf: Preflight, smoke: bool, data_root: str | None, sections: list[str]) -> None:
    """Find (and open or extract) CIFAR-10 for ``pf``: sets ``data_root`` and ``data_line``; on
    the GPU run a missing archive is one problem line that blocks the sections needing data."""
    where, looked = find_data(data_root)
    if where is not None:
        from ssl_cropmix.data.cifar import resolve_cifar10

        t0 = time.perf_counter()
        try:
            root = resolve_cifar10(where)
            pf.data_root = str(root)
            pf.data_line = (f"data: CIFAR-10 at {root} ({time.perf_counter() - t0:.0f}s to open/extract); "
                            f"looked in: {looked}")
        except Exception as e:
            pf.data_line = f"data: CIFAR-10 at {where} is unreadable ({type(e).__name__}: {e}); looked in: {looked}"
            where = None
    else:
        pf.data_line = f"data: CIFAR-10 not found; looked in: {looked}"
    if where is None:
        if smoke:
            pf.data_line += "; the CPU smoke run uses the built-in demo photos instead"
        else:
            problem = (f"MISSING data {ARCHIVE_NAME} (looked in: {looked}); copy it into the checkout with: "
                       f"python tools/stage_data.py /path/to/{ARCHIVE_NAME}  (or pass --data-root)")
            pf.problems.append(problem)
            for s in sections:
                if NEEDS.get(s, ((), False))[1]:
                    pf.blocked.setdefault(s, problem)


def preflight(smoke: bool, data_root: str | None, sections: list[str]) -> Preflight:
    """Print the environment and check every import and the data, before any section.

    Never raises: each missing piece is one line in ``problems`` (naming it and the install
    command), and the sections that need it are listed in ``blocked``.
    """
    pf = Preflight()
    env = pf.environment
    env.update(python=f"{platform.python_version()} ({sys.executable})", platform=platform.platform(),
               cpu_count=os.cpu_count())
    pf.lines.append(f"python {env['python']} on {env['platform']}, {env['cpu_count']} CPUs")
    try:
        import torch
    except Exception as e:
        pf.problems.append(f"MISSING dependency torch ({type(e).__name__}: {e}); install the site's CUDA build of "
                           f"torch first (docs/install.md)")
        pf.blocked = {s: pf.problems[-1] for s in sections}
        return pf
    cuda = torch.cuda.is_available()
    env.update(torch=torch.__version__, torch_cuda_build=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
               cuda_available=cuda)
    pf.lines.append(f"torch {torch.__version__} (CUDA build {torch.version.cuda}, cuDNN {env['cudnn']}), "
                    f"CUDA available: {cuda}")
    try:  # the device views' fused colour kernels need it (without it they run eager: slower, same views)
        from importlib.metadata import version as _version

        env["triton"] = _version("triton")
    except Exception:
        env["triton"] = None
    pf.lines.append(f"triton {env['triton'] or 'not installed (device views: eager colour ops)'}")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   gpu_capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count())
        pf.lines.append(f"GPU 0 of {env['gpu_count']}: {props.name}, {env['gpu_memory_gib']} GiB, "
                        f"compute capability {env['gpu_capability']}, {props.multi_processor_count} SMs")
    pf.lines.append("dependencies (installed version, ssl_cropmix's range):")
    broken = _dependency_lines(pf)
    for s in sections:
        mods, _ = NEEDS.get(s, ((), False))
        for m in mods:
            if m in broken:
                pf.blocked[s] = broken[m]
                break
            try:
                importlib.import_module(m)
            except Exception as e:
                top = (getattr(e, "name", None) or "").split(".")[0]
                line = broken.get(top) or (f"BROKEN import {m} for section {s}: {type(e).__name__}: "
                                           f"{str(e).splitlines()[0] if str(e) else ''}"
                                           + (f"; install: {install_hint(top)}" if isinstance(e, ModuleNotFoundError)
                                              else ""))
                if line not in pf.problems:
                    pf.problems.append(line)
                broken[m] = pf.blocked[s] = line
                break
    check_data(pf, smoke, data_root, sections)
    pf.lines.append(pf.data_line)
    return pf


# ----------------------------------------------------------------------------- (a) loader
def _cifar_train(ctx: Context):
    from ssl_cropmix.data.datasets import ImageFolderDataset

    if ctx.data_root is not None:
        return ImageFolderDataset(Path(ctx.data_root) / "train")
    # CPU smoke without CIFAR-10: the built-in demo photos
    from ssl_cropmix.data.demo import write_demo_folder

    return ImageFolderDataset(write_demo_folder(ctx.tmp / "demo") / "train")


def check_loader(ctx: Context) -> CheckResult:
    import torch
    from dataloader import run_rounds

    source = _cifar_train(ctx)
    batches, repeats = (1, 2) if ctx.smoke else ((5, 2) if ctx.quick else (10, 3))
    a = argparse.Namespace(batches=batches, repeats=repeats, num_workers=ctx.workers,
                           batch_size=4 if ctx.smoke else 256)
    pipelines = ["plain", "contrastive", "cropmix"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as benchmarks/dataloader.py: one torch thread per loader process
    try:
        res = run_rounds(source, 32, pipelines, a)
    finally:
        torch.set_num_threads(threads)
    data = "CIFAR-10 train" if ctx.data_root is not None else "demo photos"
    rows, ok_all = [_row("images", f"{data}, {len(source)} files")], True
    targets = {"plain": None, "contrastive": 0.65, "cropmix": 0.9}
    for k in pipelines:
        ips = statistics.median(res[k])
        ratio = statistics.median([x / p for x, p in zip(res[k], res["plain"])])
        t = targets[k]
        ok = ips > 0 and (ctx.smoke or t is None or ratio >= t)
        ok_all &= ok
        rows.append(_row(f"{k} query, {ctx.workers} workers: images/s", round(ips, 1)))
        if t is not None:
            rows.append(_row(f"{k} / plain", round(ratio, 3), f">= {t}" + (" (not enforced in smoke)" if ctx.smoke else ""), ok))
    return CheckResult("loader", ok_all, rows)


# ----------------------------------------------------------------------------- (b) steps
Side = tuple[Any, Callable[[], Any], Any]  # (module, loss_fn, optimizer)


def _free(dev: Any) -> None:
    import torch

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _training_step(side: Side, amp: dict[str, Any], losses: list | None = None) -> Callable[[], None]:
    import torch

    module, loss_fn, opt = side
    module.train()

    def run() -> None:
        with torch.autocast(**amp):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if losses is not None:
            losses.append(loss.detach())

    return run


def peak_memory(dev: Any, make: Callable[[], Side], amp: dict[str, Any], steps: int = 2) -> int:
    """Peak GPU bytes of one side alone: built, ``steps`` training steps, then freed.

    Counted from the memory already allocated before it is built (the shared inputs), so
    the number is the side's own weights, gradients, optimiser state, activations and
    workspace; no other model is resident meanwhile. 0 on a CPU.
    """
    import torch

    if dev.type != "cuda":
        return 0
    _free(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    side = make()
    run = _training_step(side, amp)
    for _ in range(steps):
        run()
    _sync(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    del side, run
    _free(dev)
    return int(peak)


def _step_rows(label: str, times: dict[str, list[float]], peak: dict[str, int], smoke: bool, limit: float = 1.05
               ) -> tuple[list[dict[str, Any]], bool]:
    ratio = statistics.median([o / r for o, r in zip(times["ours"], times["ref"])])
    ok = smoke or ratio <= limit
    gib = 1024**3
    mem = (f"{peak['ref'] / gib:.2f} / {peak['ours'] / gib:.2f}" if peak["ref"] or peak["ours"] else "n/a (CPU)")
    return [
        _row(f"{label}: reference ms/step", round(1e3 * statistics.median(times["ref"]), 2)),
        _row(f"{label}: ours ms/step", round(1e3 * statistics.median(times["ours"]), 2)),
        _row(f"{label}: ours / reference", round(ratio, 3), f"<= {limit}" + (" (not enforced in smoke)" if smoke else ""), ok),
        _row(f"{label}: peak GPU memory reference / ours, each alone (GiB)", mem),
    ], ok


def _compare_training(
    ctx: Context,
    label: str,
    method: str,
    amp: dict[str, Any],
    steps: int,
    repeats: int,
    make_ref: Callable[[], Side],
    make_ours: Callable[[], Side],
) -> tuple[list[dict[str, Any]], bool]:
    """Peak memory of each side alone (:func:`peak_memory`), then full training steps
    (autocast forward, backward, optimiser step) of both, timed interleaved; rows of
    :func:`_step_rows` plus "<method> losses finite".

    ``make_ref`` / ``make_ours`` build ``(module, loss_fn, optimizer)`` on the device with
    the same memory format and precision. Our losses are kept on the device (no host sync
    inside the timed steps) and checked once at the end.
    """
    import torch
    from timing import interleaved_times

    peak = {"ref": peak_memory(ctx.device, make_ref, amp), "ours": peak_memory(ctx.device, make_ours, amp)}
    losses: list[torch.Tensor] = []
    ref, ours = make_ref(), make_ours()
    warmup = 1 if ctx.smoke else (2 if ctx.quick else 3)
    times = interleaved_times({"ref": _training_step(ref, amp), "ours": _training_step(ours, amp, losses)}, steps,
                              repeats, warmup, lambda: _sync(ctx.device))
    del ref, ours
    _free(ctx.device)
    rows, ok = _step_rows(label, times, peak, ctx.smoke)
    finite = bool(torch.isfinite(torch.stack(losses).float()).all())
    return rows + [_row(f"{method} losses finite", finite, "True", finite)], ok and finite


def check_steps(ctx: Context) -> CheckResult:
    import torch
    from mae_step import ReferenceMAE
    from moco_step import ReferenceMoCo

    from ssl_cropmix.methods.mae import MAECropMix
    from ssl_cropmix.methods.moco import MoCoCropMix
    from ssl_cropmix.models.vit import build_vit

    dev = ctx.device
    cl = torch.channels_last
    amp = dict(device_type=dev.type, dtype=torch.bfloat16)
    rows: list[dict[str, Any]] = []
    ok_all = True
    steps, repeats = (1, 1) if ctx.smoke else ((3, 2) if ctx.quick else (5, 3))
    sgd = dict(lr=0.03, momentum=0.9, weight_decay=1e-4)

    # MoCo: ResNet-50 at 224 px (smoke: ResNet-18 at 16 px, small head); both sides channels_last
    bb, size, bs, queue, small, hidden = (("resnet18", 16, 4, 64, True, 64) if ctx.smoke
                                          else ("resnet50", 224, 128, 65536, False, 2048))
    g = torch.Generator().manual_seed(0)
    xq = torch.rand(bs, 3, size, size, generator=g).to(dev).contiguous(memory_format=cl)
    xk = torch.rand(bs, 3, size, size, generator=g).to(dev).contiguous(memory_format=cl)
    y = torch.zeros(bs, dtype=torch.long, device=dev)

    def make_ref() -> Side:
        torch.manual_seed(0)
        m = ReferenceMoCo(bb, small, hidden, 128, queue, 0.999).to(dev, memory_format=cl)
        return m, lambda: m.step(xq, xk), torch.optim.SGD([p for p in m.parameters() if p.requires_grad], **sgd)

    def make_ours() -> Side:
        torch.manual_seed(0)
        m = MoCoCropMix(backbone=bb, small_image=small, proj_hidden_dim=hidden, queue_size=queue, cosine_lr=False,
                        lr=0.03).to(dev, memory_format=cl)
        m.log = lambda *a, **k: None  # outside a Trainer
        return (m, lambda: m.training_step(((xq, xk), y), 0)["loss"],
                torch.optim.SGD([p for p in m.parameters() if p.requires_grad], **sgd))

    r, ok = _compare_training(ctx, f"MoCoCropMix {bb} {size}px b{bs} bf16 channels_last", "MoCo", amp, steps, repeats,
                              make_ref, make_ours)
    rows += r
    ok_all &= ok
    del xq, xk
    _free(dev)

    # MAE: ViT-B/16 at 224 px (smoke: a 1-block ViT-Tiny at 16 px, patch 4); both sides contiguous
    if ctx.smoke:
        model, img, patch, vkw, bs, ddim, ddepth, dheads = "vit_tiny_patch16_224", 16, 4, {"depth": 1}, 4, 32, 1, 2
    else:
        model, img, patch, vkw, bs, ddim, ddepth, dheads = "vit_base_patch16_224", 224, 16, {}, 128, 512, 8, 16
    x = torch.rand(bs, 3, img, img, generator=g).to(dev)
    labels = torch.zeros(bs, dtype=torch.long, device=dev)

    def make_ref_mae() -> Side:
        torch.manual_seed(0)
        m = ReferenceMAE(build_vit(model, img_size=img, patch_size=patch, vit_kwargs=vkw), ddim, ddepth, dheads,
                         0.75).to(dev)
        return m, lambda: m.step(x), torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4,
                                                       betas=(0.9, 0.95))

    def make_ours_mae() -> Side:
        torch.manual_seed(0)
        m = MAECropMix(model, img_size=img, patch_size=patch, vit_kwargs=vkw, decoder_dim=ddim, decoder_depth=ddepth,
                       decoder_num_heads=dheads).to(dev)
        m.log = lambda *a, **k: None
        return (m, lambda: m.training_step((x, labels), 0)["loss"],
                torch.optim.AdamW(m.parameter_groups(0.05), lr=1e-4, betas=(0.9, 0.95)))

    r, ok = _compare_training(ctx, f"MAECropMix {model} {img}px b{bs} bf16", "MAE", amp, steps, repeats,
                              make_ref_mae, make_ours_mae)
    rows += r
    ok_all &= ok
    return CheckResult("steps", ok_all, rows)


# ----------------------------------------------------------------------------- (c) pretrain + eval
def check_pretrain_eval(ctx: Context) -> CheckResult:
    import pytorch_lightning as pl

    from ssl_cropmix.callbacks import KNNMonitor, LinearProbe, OnlineLinearProbe
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MoCoViews
    from ssl_cropmix.data.sources import DemoSource, ImageFolderSource
    from ssl_cropmix.methods.moco import MoCoCropMix

    if ctx.smoke:
        # fp32: bf16 on the CPU is emulated and slow; the bf16 paths run in the "steps" smoke
        dm = CropMixDataModule(DemoSource(), MoCoViews(query="contrastive"), image_size=16, batch_size=8,
                               num_workers=ctx.workers, persistent_workers=False)
        trainer_kw: dict[str, Any] = dict(accelerator="cpu", devices=1, precision="32-true", limit_train_batches=1,
                                          limit_val_batches=1)
        probe_epochs, knn_k, queue = 2, 20, 64
    else:
        dm = CropMixDataModule(ImageFolderSource(str(ctx.data_root), val_split="test"), MoCoViews(query="contrastive"),
                               image_size=32, batch_size=512, num_workers=ctx.workers)
        trainer_kw = dict(accelerator="gpu", devices=1, precision="bf16-mixed")
        probe_epochs, knn_k, queue = (10 if ctx.quick else 30), 200, 4096
    epochs = ctx.pretrain_epochs
    # The CPU-sized fast probe (cached un-augmented features, BN + linear, SGD lr 0.1 x 256/256):
    # a short CIFAR run, not the paper's 90-epoch LARS protocol; the protocol string says so.
    # (the smoke's 64 demo images cannot fill 256: an explicit batch larger than the data is refused)
    probe = LinearProbe("moco", optimizer="sgd", base_lr=0.1, batch_size=64 if ctx.smoke else 256, head_norm=True,
                        epochs=probe_epochs, cached_features=True)
    knn = KNNMonitor(k=knn_k, every_n_epochs=epochs)
    model = MoCoCropMix(backbone="resnet18", small_image=True, queue_size=queue, momentum=0.99, base_lr=0.06,
                        weight_decay=5e-4, **({"proj_hidden_dim": 64} if ctx.smoke else {}))
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[OnlineLinearProbe(), knn, probe], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=ctx.tmp / "pretrain", **trainer_kw)
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    total = time.perf_counter() - t0
    res = probe.results[-1]
    hw = res.hardware
    want = "cuda" if not ctx.smoke else "cpu"
    probe_dev = str(hw.get("device"))
    knn_dev = str(knn.last_device)
    rows = [
        _row("pretraining epochs", epochs),
        _row("linear probe top-1 / top-5 (%)", f"{res.top1:.2f} / {res.top5:.2f}",
             "> 20 top-1" if not ctx.smoke else "", ctx.smoke or res.top1 > 20),
        _row("kNN top-1 (%)", round(knn.history[-1][1], 2), "> 20" if not ctx.smoke else "", ctx.smoke or knn.history[-1][1] > 20),
        _row("probe parameters' device during its steps", probe_dev, f"{want}*", probe_dev.startswith(want)),
        _row("kNN feature device", knn_dev, f"{want}*", knn_dev.startswith(want)),
        _row("probe trainer accelerator / precision", f"{hw.get('accelerator')} / {hw.get('precision')}",
             f"{type(trainer.accelerator).__name__} / {trainer.precision}",
             hw.get("accelerator") == type(trainer.accelerator).__name__ and hw.get("precision") == str(trainer.precision)),
        _row("probe wall time (s)", round(res.wall_seconds, 1)),
        _row("pretraining + evaluation wall time (s)", round(total, 1)),
        _row("probe protocol", res.protocol),
    ]
    return CheckResult("pretrain_eval", all(r["ok"] for r in rows), rows)


register_check("loader", check_loader)
register_check("steps", check_steps)
register_check("pretrain_eval", check_pretrain_eval)


def _optional_checks() -> None:
    """Checks other scripts provide: ``benchmarks/<module>.py`` with ``acceptance_check``.

    Registered by name without importing the module; the preflight checks its imports."""
    for mod in ("device_views",):
        if not (HERE / f"{mod}.py").is_file() or mod in [n for n, _ in CHECKS]:
            continue

        def run(ctx: Context, mod: str = mod) -> CheckResult:
            return importlib.import_module(mod).acceptance_check(ctx)

        register_check(mod, run)


# ----------------------------------------------------------------------------- running the sections
class SectionTimeout(BaseException):
    """Raised inside a section that ran past its budget (a BaseException, so that a
    library's ``except Exception`` does not swallow it)."""


def budget_for(name: str, smoke: bool, quick: bool) -> float:
    full, q, s = BUDGETS.get(name, DEFAULT_BUDGET)
    return s if smoke else (q if quick else full)


def run_section(name: str, fn: Check, ctx: Context, budget: float) -> CheckResult:
    """Run one section under its time budget; an exception or a timeout becomes a failed
    result with a one-line error (plus the traceback in the JSON), never a crash."""
    use_alarm = budget > 0 and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()

    def on_alarm(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"stopped after its {budget:.0f}s budget")

    old = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    t0 = time.perf_counter()
    try:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, budget)
        res = fn(ctx)
    except SectionTimeout as e:
        res = CheckResult(name, False, error=f"SectionTimeout: {e}")
    except Exception as e:  # a crashing check is a failed check; the others still run
        res = CheckResult(name, False, error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}")
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    res.seconds = round(time.perf_counter() - t0, 1)
    res.budget_seconds = budget
    _free(ctx.device)
    return res


def markdown(results: list[CheckResult], header: str, pending: list[str] = ()) -> str:
    lines = [header, "", "| check | item | value | target | ok |", "|---|---|---|---|---|"]
    for r in results:
        for row in r.rows:
            lines.append(f"| {r.name} | {row['item']} | {row['value']} | {row['target']} | {'yes' if row['ok'] else 'NO'} |")
        if r.error:
            lines.append(f"| {r.name} | error | {r.error.splitlines()[0]} | | NO |")
        budget = f" of {r.budget_seconds:.0f}s budget" if r.budget_seconds else ""
        lines.append(f"| {r.name} | **check** ({r.seconds}s{budget}) | {'PASS' if r.passed else 'FAIL'} | | "
                     f"{'yes' if r.passed else 'NO'} |")
    for name in pending:
        lines.append(f"| {name} | not run yet | | | |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, header: str, results: list[CheckResult], pending: list[str], meta: dict[str, Any]) -> str:
    """(Re)write ``gpu_acceptance.md`` and ``.json`` with every section finished so far."""
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(results, header, pending)
    (out / "gpu_acceptance.md").write_text(md)
    (out / "gpu_acceptance.json").write_text(json.dumps(
        {**meta, "passed": bool(results) and not pending and all(r.passed for r in results),
         "checks": [asdict(r) for r in results], "pending": list(pending)}, indent=2, default=str))
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="same code at toy size on the CPU (no GPU needed)")
    p.add_argument("--quick", action="store_true", help="smaller sizes and budgets: < 4 minutes on one GPU")
    p.add_argument("--preflight", action="store_true", help="only print the environment and check imports and data")
    p.add_argument("--data-root", default=None,
                   help=f"CIFAR-10 ({ARCHIVE_NAME}, a folder holding it, or the extracted cifar10/); default: the "
                        f"checkout's data/, then ${ENV_VAR}")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default min(14, CPUs); smoke 0)")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="default 5 (--quick 1, smoke 1)")
    p.add_argument("--checks", default=None, help="comma-separated subset of the sections")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for gpu_acceptance.md / .json "
                   "(default: outputs/gpu_acceptance/ in the checkout, ignored by git)")
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    _optional_checks()
    names = [n for n, _ in CHECKS if not a.checks or n in a.checks.split(",")]
    mode = "CPU smoke" if a.cpu_smoke else ("GPU quick" if a.quick else "GPU")
    print(f"gpu_acceptance ({mode}): preflight", flush=True)
    pf = preflight(a.cpu_smoke, a.data_root, names)
    for line in pf.lines:
        print(f"  {line}", flush=True)
    for line in pf.problems:
        print(line, flush=True)
    if "torch" not in pf.environment:
        return 2
    import torch

    no_gpu = not a.cpu_smoke and not torch.cuda.is_available()
    if no_gpu:
        print("gpu_acceptance: no CUDA GPU on this machine; run with --cpu-smoke for the CPU toy run", file=sys.stderr)
    if a.preflight:
        n = len(pf.problems) + no_gpu
        print(f"preflight: {'OK' if not n else f'{n} problem(s)'}")
        return 0 if not n else 1
    if no_gpu:
        return 2
    threads = torch.get_num_threads()
    if a.cpu_smoke:
        torch.set_num_threads(1)  # toy sizes: one thread is fastest, and shared CI machines are not oversubscribed
    try:
        return _run_sections(a, pf, names, mode, t_start)
    finally:
        torch.set_num_threads(threads)


def _run_sections(a: argparse.Namespace, pf: Preflight, names: list[str], mode: str, t_start: float) -> int:
    """Run the selected sections one by one; rewrite the report after each."""
    import torch

    budgets = {n: budget_for(n, a.cpu_smoke, a.quick) for n in names}
    print(f"sections: {', '.join(f'{n} ({budgets[n]:.0f}s)' for n in names)}; start-up took "
          f"{time.perf_counter() - t_start:.0f}s", flush=True)
    dev = torch.device("cpu" if a.cpu_smoke else "cuda")
    gpu = pf.environment.get("gpu", "none (CPU smoke)")
    out = Path(a.out)
    results: list[CheckResult] = []
    md = ""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(device=dev, smoke=a.cpu_smoke, data_root=pf.data_root,
                      workers=a.workers if a.workers is not None else (0 if a.cpu_smoke else min(14, os.cpu_count() or 1)),
                      tmp=Path(tmp), pretrain_epochs=a.pretrain_epochs or (1 if a.cpu_smoke or a.quick else 5),
                      quick=a.quick)
        for i, (name, fn) in enumerate([(n, f) for n, f in CHECKS if n in names]):
            if name in pf.blocked:
                res = CheckResult(name, False, error=f"not run: {pf.blocked[name]}", budget_seconds=budgets[name])
            else:
                res = run_section(name, fn, ctx, budgets[name])
            print(f"[{'PASS' if res.passed else 'FAIL'}] {name} ({res.seconds}s of {budgets[name]:.0f}s)"
                  + (f": {res.error.splitlines()[0]}" if res.error else ""), flush=True)
            results.append(res)
            wall = time.perf_counter() - t_start
            header = (f"## GPU acceptance ({mode}): {gpu}, torch {torch.__version__}, CUDA "
                      f"{torch.version.cuda}, {wall:.0f}s total")
            md = write_report(out, header, results, names[i + 1:], {
                "device": gpu, "smoke": a.cpu_smoke, "quick": a.quick, "wall_seconds": round(wall, 1),
                "environment": pf.environment, "preflight_problems": pf.problems, "data": pf.data_line})
    print(md)
    print(f"report: {out / 'gpu_acceptance.md'} and .json")
    return 0 if results and all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
