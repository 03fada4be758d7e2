"""View recipes: small functions that return the transform of one training / evaluation stage.

* :func:`moco_v2_augmentation`: the MoCo v2 key view (Chen et al., 2020, "Improved
  Baselines with Momentum Contrastive Learning", Sec. 3), also the per-crop augmentation of
  the contrastive CropMix query (Han et al., 2022, Appendix A).
* :func:`moco_views`: ``TwoViews(query, key)`` with query ``plain`` / ``cropmix`` /
  ``scalemix`` / ``contrastive`` or any transform.
* :func:`mae_view`: MAE's RRC view or CropMix without intermediate augmentation (Han et al.,
  2022, Sec. 6 and App. B.3; the official code's default is Mixup with ``n in {2,3,4}``).
* :func:`supervised_view`: the supervised-classification training view of Sec. 4: CropMix
  (Mixup, channel permutation), the RRC baseline, the ResizeMix mixing op, or the plain
  probe augmentation.
* :func:`probe_views`: linear-probe / fine-tune train and val transforms, with small-image
  (CIFAR, <= 64 px) variants that never crop 32-px images to nothing.

Every view ends in one normalisation: images stay PIL / uint8 through the random ops and are
converted to float and normalised once, by :class:`ToNormalizedTensor`.

Performance: the MoCo v2 colour ops run in the PIL domain (C kernels; torchvision's tensor
``adjust_hue`` and a 23-px tensor Gaussian blur cost about twice as much at 224 px, see
``benchmarks/dataloader.py``), so the plain key/query pair is as fast as lightly's
``MoCoV2Transform`` while drawing every random number from torch's RNG. The CropMix
queries hand the colour ops a PIL image directly (``CropMix(keep_pil=True)``; for small
outputs, where per-call overhead dominates, the PIL backend from small sources and the
tensor backend from large ones (:class:`BySourceSize`); the tensor backend at 224 px).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import PIL.Image
import torch
from PIL import ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ssl_cropmix.transforms.functional import uint8_to_pil

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
QUERIES = ("plain", "cropmix", "scalemix", "contrastive")
#: The names a MoCo query may be given by (``MoCoViews(query=...)`` also takes a transform).
QueryName = Literal["plain", "cropmix", "scalemix", "contrastive"]
MAE_VIEWS = ("rrc", "cropmix_mixup", "cropmix_cutmix")
SUPERVISED_VIEWS = ("cropmix", "rrc", "resizemix", "plain")
AUTO_AUGMENTS = ("trivialaugment", "randaugment")
#: Images at most this many pixels wide use the small-image (CIFAR) variants by default.
SMALL_IMAGE_MAX = 64


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return size


def _check_stats(name: str, value: Sequence[float]) -> tuple[float, float, float]:
    if isinstance(value, str) or len(value) != 3:
        raise ValueError(f"{name} must be three floats (one per RGB channel), got {value!r}")
    out = tuple(float(v) for v in value)
    if name == "std" and min(out) <= 0:
        raise ValueError(f"std must be > 0 for every channel, got {value!r}")
    return out  # type: ignore[return-value]


class RandomGaussianBlurPIL(v2.Transform):
    """Gaussian blur with ``sigma ~ U(sigma)``, applied with probability ``p`` (MoCo v2).

    Hand-written because torchvision's ``v2.GaussianBlur`` blurs PIL images as float tensors
    with a fixed 23-px kernel (about 2x slower at 224 px), and lightly's ``GaussianBlur``
    draws from ``np.random``, a second RNG that torch seeding does not control (every
    random draw here comes from torch, optionally a ``generator``). PIL's
    ``ImageFilter.GaussianBlur`` is a C box-filter approximation whose ``radius`` is the standard deviation. Tensors are
    blurred through PIL too (uint8) or with ``F.gaussian_blur`` (float).

    Args:
        p: probability of blurring.
        sigma: ``(min, max)`` standard deviation in pixels.
        generator: optional ``torch.Generator`` (default: torch's global RNG).
    """

    def __init__(
        self, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0), generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"sigma must satisfy 0 < min <= max, got {sigma!r}")
        self.p, self.sigma, self.generator = float(p), (float(sigma[0]), float(sigma[1])), generator

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        u = torch.rand(2, generator=self.generator, dtype=torch.float64)
        lo, hi = self.sigma
        return {"apply": bool(u[0] < self.p), "sigma": lo + (hi - lo) * float(u[1])}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"]:
            return inpt
        s = params["sigma"]
        if isinstance(inpt, PIL.Image.Image):
            return inpt.filter(ImageFilter.GaussianBlur(radius=s))
        if isinstance(inpt, torch.Tensor) and inpt.dtype == torch.uint8 and inpt.ndim == 3:
            out = F.pil_to_tensor(F.to_pil_image(inpt).filter(ImageFilter.GaussianBlur(radius=s)))
            return v2.functional.to_image(out) if type(inpt) is not torch.Tensor else out
        k = 2 * int(round(3 * s)) + 1  # float tensors: a +-3 sigma kernel
        return F.gaussian_blur(inpt, [k, k], [s, s])


class ToNormalizedTensor(v2.Transform):
    """PIL / uint8 -> float32 ``(x / 255 - mean) / std`` in one fused step (the only
    normalisation of a view). Float inputs are taken as [0, 1].

    Shape:
        PIL (H, W) or ``(3, H, W)`` -> ``(3, H, W)`` float32.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.mean = _check_stats("mean", mean)
        self.std = _check_stats("std", std)
        std_t = torch.tensor(self.std).view(3, 1, 1)
        self._scale_u8 = 1.0 / (255.0 * std_t)
        self._scale_f = 1.0 / std_t
        self._shift = (-torch.tensor(self.mean).view(3, 1, 1) / std_t)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            inpt = F.pil_to_tensor(inpt)
        if not isinstance(inpt, torch.Tensor):
            return inpt
        x = inpt.as_subclass(torch.Tensor)
        scale = self._scale_u8 if x.dtype == torch.uint8 else self._scale_f
        return torch.addcmul(self._shift, x.to(torch.float32), scale)


class _ToPIL(v2.Transform):
    """uint8 ``(3, H, W)`` tensor -> PIL (so the colour ops below run on PIL's C kernels);
    PIL passes through. ``v2.ToPILImage`` goes through NumPy, ~5x slower at 32 px."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, torch.Tensor) and inpt.dtype == torch.uint8:
            return uint8_to_pil(inpt)
        return inpt


def moco_v2_augmentation(
    size: int = 224,
    normalize: bool = True,
    crop: bool = True,
    blur_prob: float = 0.5,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """The MoCo v2 view: RRC ``crop_scale`` -> flip -> colour jitter (0.4, 0.4, 0.4, 0.1)
    p=0.8 -> grayscale p=0.2 -> Gaussian blur sigma in [0.1, 2] p=``blur_prob`` -> normalize.

    Chen et al., 2020 (MoCo v2), Sec. 3; the same values as lightly's ``MoCoV2Transform``.

    Args:
        size: output side.
        normalize: end with :class:`ToNormalizedTensor`; ``False`` ends in a uint8 tensor.
        crop: start with ``RandomResizedCrop``; ``False`` is the per-crop augmentation that
            CropMix's ``view_transform`` applies to crops it already cut (uint8 in and out).
        blur_prob: blur probability (0 for 32-px images, as lightly's CIFAR-10 benchmark).
        crop_scale: RandomResizedCrop area range.
        mean, std: normalisation statistics.

    Shape:
        PIL image or ``(3, H, W)`` uint8 -> ``(3, size, size)`` (float32 when normalized).
    """
    size = _check_size(size)
    first = v2.RandomResizedCrop(size, scale=crop_scale, antialias=True) if crop else _ToPIL()
    last = ToNormalizedTensor(mean, std) if normalize else v2.PILToTensor()
    return v2.Compose([first, *_colour_ops(blur_prob), last])


def _colour_ops(blur_prob: float) -> list[v2.Transform]:
    """MoCo v2's flip, colour jitter, grayscale and blur (PIL in, PIL out)."""
    ops: list[v2.Transform] = [
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if blur_prob > 0:
        ops.append(RandomGaussianBlurPIL(p=blur_prob, sigma=(0.1, 2.0)))
    return ops


#: A PIL source with more than this many times the output's pixels is mixed by CropMix's
#: tensor backend, a smaller one by its PIL backend: PIL's per-crop antialiased resize costs
#: in proportion to the source area (measured, 32-px Mixup n~{2,3,4}, one thread: PIL 0.12 ms
#: from 48-px sources, 0.22 ms from 128 px, 0.49 ms from 256 px; tensor 0.23-0.30 ms).
PIL_BACKEND_MAX_AREA_RATIO = 24


class BySourceSize:
    """Apply ``small`` to PIL images of at most ``max_area_ratio x size**2`` pixels, ``large``
    otherwise (and to non-PIL inputs): two equally configured transforms that differ only in
    the backend, chosen per image from the source and output sizes by cost (both draw the
    same parameters from the same distributions).

    Args:
        small: the transform for small sources (e.g. ``CropMix(backend="pil")``).
        large: the transform for large sources and tensors (e.g. ``CropMix(backend="tensor")``).
        size: output side in pixels.
        max_area_ratio: source pixels / output pixels at which ``large`` takes over.
    """

    def __init__(self, small: Callable[[Any], Any], large: Callable[[Any], Any], size: int,
                 max_area_ratio: float = PIL_BACKEND_MAX_AREA_RATIO) -> None:
        self.small, self.large, self.max_pixels = small, large, max_area_ratio * size * size

    @property
    def transforms(self) -> list[Callable[[Any], Any]]:
        """``[small, large]``, as ``v2.Compose.transforms``: code that walks a recipe for its
        ``CropMix`` (``device_views``) finds it (both share one configuration)."""
        return [self.small, self.large]

    def __call__(self, img: Any) -> Any:
        if isinstance(img, PIL.Image.Image) and img.width * img.height <= self.max_pixels:
            return self.small(img)
        return self.large(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(small={self.small!r}, large={self.large!r}, max_pixels={self.max_pixels:.0f})"


class TwoViews:
    """Apply two transforms to the same image: ``img -> (query(img), key(img))``.

    The order is the contract of ``docs/architecture.md`` (batches ``((query, key), labels)``).
    """

    def __init__(self, query: Callable[[Any], Any], key: Callable[[Any], Any]) -> None:
        if not callable(query) or not callable(key):
            raise TypeError(f"query and key must be callable, got {query!r}, {key!r}")
        self.query, self.key = query, key

    def __call__(self, img: Any) -> tuple[Any, Any]:
        return self.query(img), self.key(img)

    def __repr__(self) -> str:
        return f"TwoViews(\n  query={self.query!r},\n  key={self.key!r})"


def moco_query(
    query: str | Callable[[Any], Any] = "contrastive",
    size: int = 224,
    small_image: bool | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    skip_invisible: bool = True,
) -> Callable[[Any], Any]:
    """The MoCo query view (Han et al., 2022, Table 3 / Appendix A).

    * ``"plain"``: the MoCo v2 key augmentation.
    * ``"cropmix"``: generic CropMix (crop_scale (0.2, 1), n in {2,3,4}, Mixup), then the
      MoCo v2 colour augmentation of the mixed image.
    * ``"scalemix"``: the Asym-Siam ScaleMix baseline (Wang et al., 2022, Sec. 4.2 and
      ``moco/loader.py``: ``scalemix(query_transform(x), query_transform(x))``): two crops
      from the shared range (0.2, 1), *each* with its own MoCo v2 flip / colour jitter /
      grayscale / blur draw, then CutMix; normalised once after mixing (normalisation is
      per pixel, so it commutes with the paste).
    * ``"contrastive"``: the paper's contrastive preset: crops from (0.2, 0.6) and
      (0.6, 1.0), each with the full colour augmentation, CutMix; normalised once after
      mixing.
    * a callable: used as is (it must return the final, normalised tensor).

    ``skip_invisible``: the ``"cropmix"`` query's uint8 Mixup skips the crops it cannot show
    (:class:`~ssl_cropmix.transforms.CropMix`'s ``skip_invisible``); ``False`` renders every crop.
    """
    from ssl_cropmix.transforms import CropMix, ScaleMix, contrastive_cropmix  # late: optional part

    size = _check_size(size)
    small = size <= SMALL_IMAGE_MAX if small_image is None else bool(small_image)
    blur = 0.0 if small else 0.5
    if callable(query) and not isinstance(query, str):
        return query
    if query not in QUERIES:
        raise ValueError(f"query must be one of {QUERIES} or a transform, got {query!r}")
    if query == "plain":
        return moco_v2_augmentation(size, blur_prob=blur, mean=mean, std=std)
    norm = ToNormalizedTensor(mean, std)
    # Small images: crop + resize in one PIL call per crop for the CutMix queries (per-call
    # overhead dominates at 32 px; see CropMix's ``backend``). Large images keep the tensor path.
    backend = "pil" if small else "tensor"
    if query in ("contrastive", "scalemix"):
        # Per-crop MoCo v2 colour augmentation, PIL in and out. With the PIL backend the crops,
        # their augmentation and the CutMix paste all stay PIL (keep_pil); the tensor backend
        # hands uint8 crops to _ToPIL and reads the augmented PIL views back.
        color = v2.Compose([_ToPIL(), *_colour_ops(blur)])
        kw = dict(view_transform=color, output_dtype=None, backend=backend, keep_pil=backend == "pil")
        if query == "contrastive":
            mix = contrastive_cropmix(size, **kw)
        else:
            mix = ScaleMix(size, crop_scale=(0.2, 1.0), **kw)
        return v2.Compose([mix, norm])
    # "cropmix": keep_pil: the mixed image stays PIL for the colour ops (no tensor round trip).
    # Small outputs: the backend by cost, per image (BySourceSize): PIL (one C crop + resize
    # per crop, one weighted sum) for small sources, tensor for large ones. Not the "numpy"
    # backend: its dense resize matrices grow with the source's height x width (32-px views
    # cut from 75-352-px demo tiles: ~25 ms per image against ~1 ms), and on 32-px sources it
    # is no faster than PIL.
    def mixup(backend: str) -> CropMix:
        return CropMix(size, crop_scale=(0.2, 1.0), num_crops=(2, 3, 4), mixing="mixup", output_dtype=None,
                       backend=backend, keep_pil=True, skip_invisible=skip_invisible)

    mix = BySourceSize(mixup("pil"), mixup("tensor"), size) if small else mixup("tensor")
    return v2.Compose([mix, *_colour_ops(blur), norm])  # PIL colour ops -> float


def moco_views(
    query: str | Callable[[Any], Any] = "contrastive",
    size: int = 224,
    small_image: bool | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    skip_invisible: bool = True,
) -> TwoViews:
    """MoCo pretraining views ``TwoViews(query, key)``: key = :func:`moco_v2_augmentation`,
    query = :func:`moco_query` (with ``skip_invisible``). ``small_image`` (default:
    ``size <= 64``) drops the blur.

    Shape:
        PIL image -> ``((3, size, size), (3, size, size))`` float32, normalised.
    """
    size = _check_size(size)
    small = size <= SMALL_IMAGE_MAX if small_image is None else bool(small_image)
    key = moco_v2_augmentation(size, blur_prob=0.0 if small else 0.5, mean=mean, std=std)
    return TwoViews(moco_query(query, size, small, mean, std, skip_invisible), key)


def mae_view(
    kind: Literal["rrc", "cropmix_mixup", "cropmix_cutmix"] = "cropmix_mixup",
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    skip_invisible: bool = True,
) -> v2.Compose:
    """The MAE pretraining view (He et al., 2022; Han et al., 2022, Sec. 6 and App. B.3).

    * ``"cropmix_mixup"`` (default): CropMix (0.2, 1), n in {2, 3, 4}, Mixup alpha 0.4, no
      intermediate augmentation, + flip: the official CropMix MAE code's defaults
      (``mae/main_pretrain.py``: ``--scale 0.2 --mix_ratio 0.4 --number 234 --operation 0``)
      and the paper's 10 %-data recipe (Table 9's Mixup row, Table 4's "+CropMix").
    * ``"cropmix_cutmix"``: CropMix (0.2, 1), n = 2, CutMix (Table 9's CutMix row).
    * ``"rrc"``: RandomResizedCrop (0.2, 1) bicubic + flip + normalize (plain MAE).

    The CropMix crops are resized bilinearly, as torchvision's ``RandomResizedCrop`` default
    in the official CropMix MAE code for ``n = 2`` (``mae/cropmix.py``; its ``n = 3, 4``
    branches pass ``interpolation=3``, bicubic: one interpolation for all ``n`` is ours, so
    that ``n`` is the only thing that changes between draws); plain MAE's RRC keeps MAE's
    bicubic. ``skip_invisible``: ``"cropmix_mixup"`` skips the crops its uint8 Mixup cannot
    show (:class:`~ssl_cropmix.transforms.CropMix`); ``False`` renders every crop.

    Shape:
        PIL image -> ``(3, size, size)`` float32, normalised.
    """
    size = _check_size(size)
    norm = ToNormalizedTensor(mean, std)
    if kind == "rrc":
        first: Any = v2.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=InterpolationMode.BICUBIC)
    elif kind in ("cropmix_mixup", "cropmix_cutmix"):
        from ssl_cropmix.transforms import CropMix

        mixup = kind == "cropmix_mixup"
        first = CropMix(
            size,
            crop_scale=(0.2, 1.0),
            num_crops=(2, 3, 4) if mixup else 2,
            mixing="mixup" if mixup else "cutmix",
            alpha=0.4,
            interpolation=InterpolationMode.BILINEAR,
            output_dtype=None,
            skip_invisible=skip_invisible,
        )
    else:
        raise ValueError(f"kind must be one of {MAE_VIEWS}, got {kind!r}")
    return v2.Compose([first, v2.RandomHorizontalFlip(), norm])


def supervised_view(
    kind: Literal["cropmix", "rrc", "resizemix", "plain"] = "cropmix",
    size: int = 224,
    small_image: bool | None = None,
    crop_scale: tuple[float, float] | None = None,
    num_crops: int | Sequence[int] | None = None,
    auto_augment: Literal["trivialaugment", "randaugment"] | None = None,
    random_erasing: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """The supervised-classification training view (Han et al., 2022, Sec. 4).

    * ``"cropmix"``: CropMix on ``crop_scale`` (default (0.01, 1)), Mixup alpha 0.4 with
      channel permutation as the intermediate augmentation, ``num_crops`` (default 2 for
      small images / CIFAR, n in {2, 3, 4} otherwise / ImageNet), then flip.
    * ``"rrc"``: the RandomResizedCrop baseline on ``crop_scale`` (default (0.08, 1), the
      ImageNet baseline; the CIFAR table uses the same range as CropMix), then flip.
    * ``"resizemix"``: CropMix with the ResizeMix mixing op (the donor resized by
      ``tau ~ U(0.1, 0.8)`` and pasted), otherwise as ``"cropmix"``.
    * ``"plain"``: the probe-train augmentation (:func:`probe_views`; pad-crop + flip for
      small images).

    ``auto_augment`` (TrivialAugmentWide / RandAugment(2, 9), torchvision) runs after the
    crop and flip on uint8 pixels, ``random_erasing`` (probability) after normalisation: the
    extra augmentations of the stronger ImageNet recipes (R2, R3).

    Shape:
        PIL image -> ``(3, size, size)`` float32, normalised.
    """
    size = _check_size(size)
    small = size <= SMALL_IMAGE_MAX if small_image is None else bool(small_image)
    if kind not in SUPERVISED_VIEWS:
        raise ValueError(f"kind must be one of {SUPERVISED_VIEWS}, got {kind!r}")
    if auto_augment is not None and auto_augment not in AUTO_AUGMENTS:
        raise ValueError(f"auto_augment must be one of {AUTO_AUGMENTS} or None, got {auto_augment!r}")
    if not isinstance(random_erasing, (int, float)) or not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"random_erasing must be a probability in [0, 1], got {random_erasing!r}")
    norm = ToNormalizedTensor(mean, std)
    if kind == "plain":
        if crop_scale is not None or num_crops is not None:
            raise ValueError(
                f"kind='plain' takes no crop_scale / num_crops, got crop_scale={crop_scale!r}, num_crops={num_crops!r}"
            )
        first: list[Any] = list(probe_views(size, small, mean, std)[0].transforms[:-1])
    elif kind == "rrc":
        if num_crops is not None:
            raise ValueError(f"kind='rrc' takes no num_crops, got {num_crops!r}")
        scale = tuple(crop_scale) if crop_scale is not None else (0.08, 1.0)
        first = [v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip()]
    else:
        from ssl_cropmix.transforms import CropMix

        n = num_crops if num_crops is not None else (2 if small else (2, 3, 4))
        mix = CropMix(
            size,
            crop_scale=tuple(crop_scale) if crop_scale is not None else (0.01, 1.0),
            num_crops=n,
            mixing="mixup" if kind == "cropmix" else "resizemix",
            alpha=0.4,
            intermediate="channel_permute",
            output_dtype=None,
        )
        first = [mix, v2.RandomHorizontalFlip()]
    extra: list[Any] = []
    if auto_augment == "trivialaugment":
        extra.append(v2.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR))
    elif auto_augment == "randaugment":
        extra.append(v2.RandAugment(num_ops=2, magnitude=9, interpolation=InterpolationMode.BILINEAR))
    if extra:  # torchvision's auto-augment ops take uint8 tensors (or PIL)
        extra = [v2.PILToTensor(), *extra]
    after = [v2.RandomErasing(p=float(random_erasing), value=0)] if random_erasing > 0 else []
    return v2.Compose([*first, *extra, norm, *after])


def probe_views(
    size: int = 224,
    small_image: bool | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[v2.Compose, v2.Compose]:
    """Linear-probe / fine-tune views ``(train, val)``.

    * large images: train = RandomResizedCrop (0.08, 1) + flip; val = resize to
      ``size / 0.875`` (256 for 224) + centre crop ``size`` (standard ImageNet evaluation).
    * small images (``small_image``, default ``size <= 64``): train = resize to ``size`` +
      RandomCrop ``size`` with 4/32 padding + flip; val = resize to ``size`` only (no
      centre crop that would cut a 32-px image down further).

    Shape:
        PIL image -> ``(3, size, size)`` float32, normalised.
    """
    size = _check_size(size)
    small = size <= SMALL_IMAGE_MAX if small_image is None else bool(small_image)
    norm = ToNormalizedTensor(mean, std)
    if small:
        pad = max(1, round(size * 4 / 32))
        train = v2.Compose(
            [v2.Resize((size, size), antialias=True), v2.RandomCrop(size, padding=pad, padding_mode="reflect"),
             v2.RandomHorizontalFlip(), norm]
        )
        val = v2.Compose([v2.Resize((size, size), antialias=True), norm])
    else:
        train = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), norm])
        val = v2.Compose([v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size), norm])
    return train, val
