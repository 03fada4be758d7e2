"""The fused colour kernels (ssl_cropmix.data.colour_kernel): the plan's layout, the CPU
reference against the eager ops, the Triton kernels under Triton's interpreter against the
eager ops, their compilation for the GPUs users train on, the cost model's target and the
first-batch check of ``colour_kernel="auto"``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_cropmix.data import colour_kernel as K
from ssl_cropmix.data import device_views as D
from ssl_cropmix.data import views as V

HERE = Path(__file__).parent
needs_triton = pytest.mark.skipif(not K.triton_available(), reason="Triton is not installed")


def _params(n: int, seed: int = 0, blur: bool = False) -> D.ColourParams:
    spec = D.colour_spec(V.moco_v2_augmentation(20, blur_prob=0.5))
    g = torch.Generator().manual_seed(seed)
    p = D.sample_colour_params(n, spec, g)
    return p if blur else p._replace(blur=torch.zeros(n, dtype=torch.bool))


def _plan(p: D.ColourParams, size: tuple[int, int]) -> tuple[dict[str, torch.Tensor], dict]:
    pk = D._Packer()
    D._pack_colour(pk, "c", p, 2.0, size, fused=True)
    packed = pk.finish()
    return packed.to(torch.device("cpu")), packed.host


def test_fused_plan_layout():
    """Row 0: jitter in the order hue, contrast, brightness, saturation, no gray; row 1: no
    jitter, gray; the codes, the contrast's position and the factors (hue on the 6-scale)."""
    order = torch.tensor([[3, 1, 0, 2], [0, 1, 2, 3]])
    factors = torch.tensor([[1.1, 0.7, 1.3, -0.05], [0.9, 0.8, 1.2, 0.02]])
    codes, f = K.fused_plan(order, factors, torch.tensor([True, False]), torch.tensor([False, True]))
    assert codes.tolist() == [[3, 1, 0, 2, 1, 0], [-1, -1, -1, -1, 4, 1]]
    torch.testing.assert_close(f[0], torch.tensor([-0.3, 0.7, 1.1, 1.3]))
    assert codes.dtype == torch.int64 and f.dtype == torch.float32


def test_reference_equals_the_eager_colour_ops():
    """The custom op's CPU implementation (a per-row loop over the same primitives) equals the
    eager row-block path: two independent codings of the plan."""
    p = _params(30, seed=3)
    x = torch.rand(30, 3, 11, 13, generator=torch.Generator().manual_seed(4))
    t, host = _plan(p, (11, 13))
    ref = x.clone()
    D._apply_colour(ref, t, host, "c")
    y = x.clone()
    D._apply_colour(y, t, host, "c", fused=True)
    assert (y - ref).abs().max() <= 2e-6
    assert (y - x).abs().amax((1, 2, 3))[~(p.jitter | p.gray)].max() == 0  # untouched rows


@needs_triton
@pytest.mark.slow
def test_triton_kernels_under_the_interpreter_equal_the_eager_ops():
    """The Triton kernels themselves (run by Triton's interpreter on CPU tensors) equal the
    eager ops: jitter + grayscale on grays, ties and saturated colours, contiguous and
    strided; blur with per-image taps; both on images inside a NaN-padded buffer (no read or
    write outside an image); whole contrastive / cropmix views."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(HERE / "colour_kernel_interpret.py")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = json.loads(proc.stdout.strip().splitlines()[-1])
    print(worst)
    assert set(worst) == {"colour", "blur", "guard", "contrastive", "cropmix"}
    assert worst["colour"] <= 2e-6 and worst["blur"] <= 1e-6 and worst["guard"] <= 2e-6
    assert worst["contrastive"] <= 2e-5 and worst["cropmix"] <= 2e-5  # normalised: / std ~ 0.22


@needs_triton
def test_triton_kernels_compile_for_a100_and_h100():
    """Every kernel compiles to a cubin for sm_80 and sm_90 (Triton's own compiler and ptxas,
    no GPU needed): what the interpreter cannot check (types, constexpr use, lowering)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ssl_cropmix.data import _triton_colour as T

    ints = {n: "i32" for n in ("hw", "width", "sn", "sc", "sh", "sw")}
    sig = {"x_ptr": "*fp32", "codes_ptr": "*i64", "fac_ptr": "*fp32", "mean_ptr": "*fp32", **ints, "BLOCK": "constexpr"}
    bsig = {"src_ptr": "*fp32", "dst_ptr": "*fp32", "idx_ptr": "*i64", "k_ptr": "*fp32", "height": "i32", "width": "i32",
            **{n: "i32" for n in ("s_n", "s_c", "s_h", "s_w", "d_n", "d_c", "d_h", "d_w")},
            **{n: "constexpr" for n in ("SRC_INDEXED", "DST_INDEXED", "VERTICAL", "TAPS", "BLOCK")}}
    sources = [ASTSource(fn=T._mean_kernel, signature=sig, constexprs={"BLOCK": K.BLOCK}),
               ASTSource(fn=T._apply_kernel, signature=sig, constexprs={"BLOCK": K.BLOCK})]
    sources += [ASTSource(fn=T._blur_kernel, signature=bsig, constexprs={
        "SRC_INDEXED": v, "DST_INDEXED": not v, "VERTICAL": v, "TAPS": 13, "BLOCK": K.BLOCK}) for v in (True, False)]
    # as launched on a contiguous image: Triton specialises a stride of 1 into a constant
    unit = {**sig, "sw": "constexpr"}
    sources += [ASTSource(fn=k, signature=unit, constexprs={"sw": 1, "BLOCK": K.BLOCK})
                for k in (T._mean_kernel, T._apply_kernel)]
    for cap in (80, 90):
        for src in sources:
            try:
                compiled = triton.compile(src, target=GPUTarget("cuda", cap, 32))
            except RuntimeError as e:  # no CUDA toolchain in this Triton build
                if "ptxas" in str(e):
                    pytest.skip(f"Triton cannot assemble here: {e}")
                raise
            assert len(compiled.asm["cubin"]) > 1000


def _cost(query: str, kind: str) -> D.DeviceOpCounter:
    dv = D.DeviceViews("moco", query, size=224, resize="matrix", generator=torch.Generator().manual_seed(0),
                       colour_kernel=kind)
    p = dv.sample(torch.full((256, 2), 448))
    with D.DeviceOpCounter("meta") as cost:
        dv.apply(torch.empty((256, 3, 448, 448), dtype=torch.uint8, device="meta"), p)
    print(f"{query} {kind}: kernels {cost.kernels}, {cost.bytes / 1e9:.2f} GB")
    return cost


def test_cost_model_with_the_fused_kernels_meets_the_target():
    """256 contrastive pairs at 224 px from 448-px sources: <= 10 GB and <= 200 kernels with
    the fused colour kernels (8.6 GB, 49 kernels; eager 27.0 GB, 148), one copy, no sync."""
    fused, eager = _cost("contrastive", "fused"), _cost("contrastive", "eager")
    assert fused.bytes <= 10e9 and fused.kernels <= 200 and fused.h2d == 1 and fused.syncs == 0
    assert fused.by_op["colour_"][0] == 2 and fused.by_op["blur_"][0] == 2  # one call: key and crops
    assert eager.bytes > 2.5 * fused.bytes


def test_colour_kernel_is_validated():
    with pytest.raises(ValueError, match="colour_kernel must be one of .* got 'triton'"):
        D.DeviceViews("moco", "contrastive", size=16, colour_kernel="triton")


def _batch(n: int = 6, seed: int = 5):
    p = _params(n, seed, blur=True)
    x = torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
    pk = D._Packer()
    pk.float("norm", torch.zeros(2, 3))
    D._pack_colour(pk, "c", p, 2.0, (12, 12), fused=True)
    packed = pk.finish()
    return x, packed.to(torch.device("cpu")), packed.host


def test_auto_keeps_the_fused_kernel_when_it_agrees(recwarn):
    dv = D.DeviceViews("moco", "contrastive", size=16)
    x, t, host = _batch()
    ref = x.clone()
    D._apply_colour(ref, t, host, "c")
    assert dv._check_fused(x, t, host, "c") is True
    assert (x - ref).abs().max() <= 2e-6 and not recwarn.list


@pytest.mark.parametrize("failure", ["wrong", "raises"])
def test_auto_falls_back_to_eager_when_the_fused_kernel_is_wrong(monkeypatch, failure):
    """A fused result that differs from the eager ops, or a kernel that raises, warns once
    and leaves the eager result: never a silent wrong view, never a stopped fit."""
    dv = D.DeviceViews("moco", "contrastive", size=16)
    x, t, host = _batch()
    ref = x.clone()
    D._apply_colour(ref, t, host, "c")

    def broken(y, codes, factors):
        if failure == "raises":
            raise RuntimeError("no kernel image is available for execution on the device")
        y.add_(0.01)
        return y

    monkeypatch.setattr(K, "colour_reference", broken)
    with pytest.warns(RuntimeWarning, match="fused colour kernel .*using the eager colour ops"):
        assert dv._check_fused(x, t, host, "c") is False
    assert torch.equal(x, ref)


def test_auto_is_eager_off_cuda():
    """On CPU ``auto`` runs the eager ops (no check, no custom op in the trace)."""
    dv = D.DeviceViews("moco", "contrastive", size=16, small_image=False, generator=torch.Generator().manual_seed(0))
    p = dv.sample(torch.full((4, 2), 40))
    with D.DeviceOpCounter("meta") as cost:
        dv.apply(torch.empty((4, 3, 40, 40), dtype=torch.uint8, device="meta"), p)
    assert "colour_" not in cost.by_op and "blur_" not in cost.by_op and not dv._fused_checked
    if not torch.cuda.is_available():  # nothing to fuse here: sampling does not pack the plan
        assert "crops.fz" not in p.packed.host and "crops.fz" not in p.packed.layout
    fused = D.DeviceViews("moco", "contrastive", size=16, colour_kernel="fused").sample(torch.full((4, 2), 40))
    assert fused.packed.host["crops.fz"][0] > 0 and fused.packed.layout["crops.fz"][2] == (12, 6)


def test_only_the_fused_plan_is_packed_once_the_kernels_passed_their_check(monkeypatch):
    """Where the fused kernels may run (simulated: CUDA and Triton), sampling packs both plans
    until their first-batch check, then only theirs (cheaper sampling); the views are the
    eager ones either way (here on CPU, through the operators' CPU implementation)."""
    real = D.DeviceViews._may_fuse
    monkeypatch.setattr(D.DeviceViews, "_may_fuse", lambda self: real(self) if self.colour_kernel != "auto"
                        else self._fused_checked.get("cuda") is not False)
    imgs = torch.randint(0, 256, (4, 3, 40, 44), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    sizes = torch.tensor([[40, 44], [36, 44], [40, 30], [20, 20]])
    for query in ("contrastive", "cropmix"):
        dv, ref = (D.DeviceViews("moco", query, size=16, small_image=False, resize="matrix",
                                 generator=torch.Generator().manual_seed(0), colour_kernel=k) for k in ("auto", "eager"))
        name = "crops" if query == "contrastive" else "pair"
        first, ref_first = dv.sample(sizes), ref.sample(sizes)
        assert f"{name}.jit" in first.packed.host and f"{name}.fz" in first.packed.host
        dv._fused_checked["cuda"] = True  # as after a passed check
        then, ref_then = dv.sample(sizes), ref.sample(sizes)
        assert f"{name}.jit" not in then.packed.host and f"{name}.fz" in then.packed.host
        assert f"{name}.fz" not in ref_then.packed.host  # eager: its own plan only
        for p, r in ((first, ref_first), (then, ref_then)):
            for a, b in zip(dv.apply(imgs, p), ref.apply(imgs, r)):
                assert (a - b).abs().max() <= 2e-5
        dv._fused_checked["cuda"] = False  # a failed check: eager plan only from then on
        assert f"{name}.fz" not in dv.sample(sizes).packed.host
