"""Run under ``TRITON_INTERPRET=1`` by tests/data/test_colour_kernel.py: Triton's interpreter
runs the fused kernels of ssl_cropmix.data.colour_kernel on CPU tensors, and this script
prints, as JSON, their largest difference from the eager torch ops on the same plans."""

from __future__ import annotations

import json

import torch

from ssl_cropmix.data import colour_kernel as K
from ssl_cropmix.data import device_views as D
from ssl_cropmix.data import views as V


def colour_case() -> float:
    """Jitter + grayscale of 24 rows (grays, ties, saturated colours), strided and contiguous."""
    g = torch.Generator().manual_seed(0)
    spec = D.colour_spec(V.moco_v2_augmentation(20, blur_prob=0.0))
    n = 24
    p = D.sample_colour_params(n, spec, g)
    p = p._replace(jitter=torch.rand(n, generator=g) < 0.85, blur=torch.zeros(n, dtype=torch.bool))
    x = torch.rand(n, 3, 7, 9, generator=g)
    x[:3] = x[:3, :1]  # gray pixels (no chroma)
    x[3:6, 0] = x[3:6, 1]  # ties between the largest channels
    x[6:9] = (x[6:9] > 0.5).float()  # saturated
    pk = D._Packer()
    D._pack_colour(pk, "c", p, 2.0, (7, 9), fused=True)
    packed = pk.finish()
    t = packed.to(torch.device("cpu"))
    ref = x.clone()
    D._apply_colour(ref, t, packed.host, "c")
    worst = 0.0
    for y in (x.clone(), x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3).clone()):
        D._apply_colour(y, t, packed.host, "c", fused=True)
        worst = max(worst, float((y - ref).abs().max()))
    return worst


def blur_case() -> float:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 9, 14, generator=g)
    idx = torch.tensor([4, 1, 5])
    k = D.gaussian_kernels(torch.tensor([0.3, 1.0, 2.0]), 4)
    ref = x.clone()
    ref.index_copy_(0, idx, D._gaussian_blur(ref.index_select(0, idx), k))
    y = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
    torch.ops.ssl_cropmix.blur_(y, idx, k)
    return float((y - ref).abs().max())


def views_case(query: str) -> float:
    """DeviceViews end to end (blur on: small_image=False), fused vs eager, same parameters."""
    imgs = torch.randint(0, 256, (4, 3, 30, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    sizes = torch.tensor([[30, 36], [24, 36], [30, 20], [16, 16]])
    out = {}
    for kind in ("eager", "fused"):
        dv = DeviceViews("moco", query, size=16, small_image=False, resize="matrix",
                         generator=torch.Generator().manual_seed(0), colour_kernel=kind)
        out[kind] = dv.apply(imgs, dv.sample(sizes))
    return max(float((a - b).abs().max()) for a, b in zip(out["eager"], out["fused"]))


def guard_case() -> float:
    """The kernels on images that are views inside a NaN-filled buffer (rows, channels and
    pixels strided by the padding): a read outside an image would turn its output NaN, a
    write outside it would overwrite the padding, which on a GPU is an illegal address or
    silent corruption. Returns the largest difference from the eager ops, ``inf`` when
    the padding changed or an output is not finite."""
    g = torch.Generator().manual_seed(3)
    n, h, w = 7, 9, 11
    spec = D.colour_spec(V.moco_v2_augmentation(20, blur_prob=0.0))
    p = D.sample_colour_params(n, spec, g)
    p = p._replace(jitter=torch.rand(n, generator=g) < 0.7, blur=torch.zeros(n, dtype=torch.bool))
    pk = D._Packer()
    D._pack_colour(pk, "c", p, 2.0, (h, w), fused=True)
    packed = pk.finish()
    t = packed.to(torch.device("cpu"))
    big = torch.full((n + 2, 5, h + 4, w + 6), float("nan"))
    inside = torch.zeros(big.shape, dtype=torch.bool)
    inside[1 : n + 1, 1:4, 2 : h + 2, 3 : w + 3] = True
    x = big[1 : n + 1, 1:4, 2 : h + 2, 3 : w + 3]
    x.copy_(torch.rand(n, 3, h, w, generator=g))
    ref = x.clone()
    D._apply_colour(ref, t, packed.host, "c")
    D._apply_colour(x, t, packed.host, "c", fused=True)
    idx = torch.tensor([5, 0, 3])
    k = D.gaussian_kernels(torch.tensor([0.4, 1.0, 2.5]), 4)
    ref.index_copy_(0, idx, D._gaussian_blur(ref.index_select(0, idx), k))
    torch.ops.ssl_cropmix.blur_(x, idx, k)
    if not (big[~inside].isnan().all() and x.isfinite().all()):
        return float("inf")
    return float((x - ref).abs().max())


DeviceViews = D.DeviceViews

if __name__ == "__main__":
    assert K.interpreting(), "run with TRITON_INTERPRET=1"
    print(json.dumps({"colour": colour_case(), "blur": blur_case(), "guard": guard_case(),
                      **{q: views_case(q) for q in ("contrastive", "cropmix")}}))
