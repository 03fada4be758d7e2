"""``ssl-cropmix robustness``: the paper's robustness table (Tables 2 / 7) for one checkpoint.

    ssl-cropmix robustness --ckpt run/checkpoints/last.ckpt --val imagenet/val \\
        --imagenet-a imagenet-a --imagenet-r imagenet-r --imagenet-sketch sketch \\
        --replace comixup/rep --noise comixup/noise [--accelerator gpu --devices 1 --precision 16-mixed]

The checkpoint is read with :func:`ssl_cropmix.checkpoints.load_module` (``weights_only``); its
module must return logits or have a ``classifier`` attribute. The table goes to
``--out-dir`` (default: the checkpoint's run directory, i.e. the parent of ``checkpoints/``).
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path


def _eps(text: str) -> float:
    """``"8/255"`` or ``"0.0314"``."""
    try:
        v = float(Fraction(text))
    except (ValueError, ZeroDivisionError) as e:
        raise argparse.ArgumentTypeError(f"--fgsm-eps must be a number or a fraction like 8/255, got {text!r}") from e
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"--fgsm-eps must be in [0, 1] (pixel units), got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssl-cropmix robustness",
        description="Clean top-1, RMS calibration error (PixMix), FGSM (8/255 in pixel space), Co-Mixup's "
        "Replace / Noise sets, ImageNet-A / -R (200-class logits) and ImageNet-Sketch for one checkpoint "
        "(paper Tables 2 / 7). Sets left out are reported as 'not given'.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint of a module returning logits (e.g. CropMixClassifier)")
    p.add_argument("--backbone", default=None, help="architecture name, passed to load_module")
    g = p.add_argument_group("test sets (folders; each optional)")
    g.add_argument("--val", default=None, help="clean validation ImageFolder (ImageNet: val/<wnid>/*.JPEG)")
    g.add_argument("--replace", default=None, help="Co-Mixup background-replacement set (input.pkl/label.pkl or <wnid>/ folders)")
    g.add_argument("--noise", default=None, help="Co-Mixup background Gaussian-noise set (same layouts)")
    g.add_argument("--imagenet-a", default=None, help="ImageNet-A root (<wnid>/*.jpg)")
    g.add_argument("--imagenet-r", default=None, help="ImageNet-R root (<wnid>/*.jpg)")
    g.add_argument("--imagenet-sketch", default=None, help="ImageNet-Sketch root (sketch/<wnid>/*.JPEG)")
    g.add_argument("--imagenet-wnids", default=None,
                   help="the 1000 ImageNet wnids: a text file or your ImageNet train folder (default: timm's list)")
    e = p.add_argument_group("protocol")
    e.add_argument("--image-size", type=int, default=224)
    e.add_argument("--mean", type=float, nargs=3, default=None, help="normalisation mean (default ImageNet's)")
    e.add_argument("--std", type=float, nargs=3, default=None, help="normalisation std (default ImageNet's)")
    e.add_argument("--fgsm-eps", type=_eps, default=8 / 255, help="FGSM budget in [0, 1] pixels (default 8/255)")
    e.add_argument("--calibration-bin-size", type=int, default=100, help="PixMix adaptive bin size (default 100)")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--num-workers", type=int, default=8)
    t = p.add_argument_group("trainer")
    t.add_argument("--accelerator", default="auto")
    t.add_argument("--devices", default="1", help="as in pl.Trainer (e.g. 1, 2, 'auto')")
    t.add_argument("--num-nodes", type=int, default=1)
    t.add_argument("--precision", default="32-true", help="as in pl.Trainer (e.g. 16-mixed, bf16-mixed)")
    p.add_argument("--out-dir", default=None, help="where robustness-<ckpt>.md/.json go (default: the run directory)")
    return p


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, evaluate, write the table; returns the exit status."""
    a = build_parser().parse_args(argv)
    import torch

    from ssl_cropmix.checkpoints import load_module
    from ssl_cropmix.data.views import IMAGENET_MEAN, IMAGENET_STD
    from ssl_cropmix.evaluation.robustness import (
        resolve_classifier,
        robustness_sets,
        run_robustness,
        write_robustness_table,
    )
    from ssl_cropmix.methods.mae import MAECropMix
    from ssl_cropmix.methods.moco import MoCoCropMix

    mean = tuple(a.mean) if a.mean else IMAGENET_MEAN
    std = tuple(a.std) if a.std else IMAGENET_STD
    sets = robustness_sets(
        a.val, a.replace, a.noise, a.imagenet_a, a.imagenet_r, a.imagenet_sketch,
        image_size=a.image_size, mean=mean, std=std, imagenet_wnids=a.imagenet_wnids,
    )
    if not sets:
        build_parser().error("give at least one test set (--val, --replace, --noise, --imagenet-a/-r/-sketch)")
    module = load_module(a.ckpt, a.backbone)
    if isinstance(module, (MoCoCropMix, MAECropMix)):
        # Their forward returns backbone features (B, D), which would be scored as D "logits".
        raise SystemExit(
            f"{a.ckpt}: the checkpoint is a self-supervised {type(module).__name__}, whose forward gives features, "
            "not class scores; fine-tune it first (ssl-cropmix finetune --ckpt ...) and evaluate that checkpoint"
        )
    classifier = resolve_classifier(module).eval()
    try:  # a plain holder (backbone only) has no forward at all
        with torch.no_grad():
            probe = classifier(torch.zeros(2, 3, a.image_size, a.image_size))
    except NotImplementedError:
        probe = None
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2:
        raise SystemExit(
            f"{a.ckpt}: the checkpoint's module ({type(module).__name__}) does not return logits (B, C); "
            "evaluate a classifier (CropMixClassifier, a fine-tuned model) or a module with a `classifier` attribute"
        )
    ev = run_robustness(
        classifier, sets, batch_size=a.batch_size, num_workers=a.num_workers,
        trainer_kwargs={"accelerator": a.accelerator, "devices": _devices(a.devices), "num_nodes": a.num_nodes,
                        "precision": a.precision, "enable_progress_bar": True},
        mean=mean, std=std, fgsm_eps=a.fgsm_eps, calibration_bin_size=a.calibration_bin_size,
    )
    if ev.trainer.global_rank != 0:
        return 0
    ckpt = Path(a.ckpt)
    out = Path(a.out_dir) if a.out_dir else (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent)
    proto = {"sets": {s.name: str(getattr(s.dataset, "root", "")) for s in sets}, "image_size": a.image_size,
             "precision": a.precision}
    md, js = write_robustness_table(ev, out, str(ckpt), stem=f"robustness-{ckpt.stem}", protocol=proto)
    print(md.read_text())
    print(f"wrote {md} and {js}")
    print(json.dumps(json.loads(js.read_text())["columns"]))
    return 0
