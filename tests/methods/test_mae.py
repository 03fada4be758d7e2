"""MAECropMix: masking, loss, optimisation settings, errors (tiny 32-px ViT on CPU)."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from lightly.models.utils import patchify, unpatchify
from torch.utils.data import DataLoader, TensorDataset

from ssl_cropmix.losses.reconstruction import normalize_patches
from ssl_cropmix.methods.mae import MAECropMix, random_patch_mask

TINY = dict(
    model_name="vit_tiny_patch16_224", img_size=32, patch_size=4, vit_kwargs={"depth": 2},
    decoder_dim=32, decoder_depth=1, decoder_num_heads=2,
)


def tiny_mae(**kw) -> MAECropMix:
    args = dict(TINY)
    args.update(kw)
    return MAECropMix(**args)


def test_backbone_is_masked_vit_giving_class_token_features():
    from lightly.models.modules import MaskedVisionTransformerTIMM

    m = tiny_mae()
    assert isinstance(m.backbone, MaskedVisionTransformerTIMM)
    x = torch.randn(3, 3, 32, 32)
    feats = m.backbone(x)
    assert feats.shape == (3, 192)
    torch.testing.assert_close(feats, m.backbone.vit.forward_features(x)[:, 0])


@pytest.mark.parametrize("ratio,n,expected", [(0.75, 64, 48), (0.75, 196, 147), (0.5, 63, 32), (0.9, 49, 45)])
def test_exact_masked_count_per_sample(ratio, n, expected):
    g = torch.Generator().manual_seed(1)
    keep, mask = random_patch_mask(16, n, ratio, num_prefix_tokens=1, generator=g)
    assert mask.shape == (16, expected) and keep.shape == (16, 1 + n - expected)
    assert torch.equal(keep[:, 0], torch.zeros(16, dtype=torch.long))  # class token always kept
    for b in range(16):  # a partition of the patch tokens 1..n, per sample
        both = torch.cat([keep[b, 1:], mask[b]]).sort().values
        assert torch.equal(both, torch.arange(1, n + 1))
    # different samples get different masks; same generator seed -> same mask
    assert len({tuple(r.sort().values.tolist()) for r in mask}) == 16
    keep2, mask2 = random_patch_mask(16, n, ratio, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask, mask2) and torch.equal(keep, keep2)


def test_module_masks_exactly_for_every_sample():
    m = tiny_mae()
    keep, mask = m.sample_mask(8)
    assert mask.shape == (8, 48) and keep.shape == (8, 17)


def test_patchify_unpatchify_round_trip():
    x = torch.rand(2, 3, 32, 32)
    p = patchify(x, 4)
    assert p.shape == (2, 64, 48)
    # patch (row 1, col 2) holds the pixels x[:, :, 4:8, 8:12] in (h, w, c) order
    torch.testing.assert_close(p[:, 1 * 8 + 2], x[:, :, 4:8, 8:12].permute(0, 2, 3, 1).reshape(2, 48))
    assert torch.equal(unpatchify(p, 4), x)


def _fixed_mask(m: MAECropMix, b: int):
    return m.sample_mask(b, generator=torch.Generator().manual_seed(7))


def _patch_box(idx: int, grid: int = 8, p: int = 4):
    r, c = divmod(idx, grid)
    return slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p)


def test_loss_ignores_visible_patches_of_the_target():
    m = tiny_mae().eval()
    x = torch.rand(2, 3, 32, 32)
    keep, mask = _fixed_mask(m, 2)
    with torch.no_grad():
        base = m.reconstruction_loss(x, keep, mask)
        t = x.clone()
        for b in range(2):
            for tok in keep[b, 1:].tolist():  # every visible patch of every sample
                hs, ws = _patch_box(tok - 1)
                t[b, :, hs, ws] = torch.rand(3, 4, 4)
        assert torch.equal(m.reconstruction_loss(x, keep, mask, target_images=t), base)
        t = x.clone()
        hs, ws = _patch_box(int(mask[0, 0]) - 1)
        t[0, :, hs, ws] = torch.rand(3, 4, 4)
        assert not torch.allclose(m.reconstruction_loss(x, keep, mask, target_images=t), base)


def test_encoder_never_sees_masked_pixels():
    m = tiny_mae().eval()
    x = torch.rand(2, 3, 32, 32)
    keep, mask = _fixed_mask(m, 2)
    y = x.clone()
    for b in range(2):
        for tok in mask[b].tolist():
            hs, ws = _patch_box(tok - 1)
            y[b, :, hs, ws] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(m.predict_masked(y, keep, mask), m.predict_masked(x, keep, mask))


def test_loss_equals_reference_formula():
    m = tiny_mae().eval()
    x = torch.rand(2, 3, 32, 32)
    keep, mask = _fixed_mask(m, 2)
    with torch.no_grad():
        pred = m.predict_masked(x, keep, mask)
        target = torch.stack([patchify(x, 4)[b, mask[b] - 1] for b in range(2)])
        ref = ((pred - normalize_patches(target)) ** 2).mean()
        torch.testing.assert_close(m.reconstruction_loss(x, keep, mask), ref)
        raw = tiny_mae(norm_pix_loss=False).eval()
        raw.load_state_dict(m.state_dict())
        torch.testing.assert_close(raw.reconstruction_loss(x, keep, mask), ((pred - target) ** 2).mean())


def test_few_cpu_steps_lower_the_loss_on_a_fixed_batch():
    m = tiny_mae()
    x = torch.rand(4, 3, 32, 32)
    keep, mask = _fixed_mask(m, 4)
    opt = torch.optim.AdamW(m.parameter_groups(0.05), lr=2e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(8):
        loss = m.reconstruction_loss(x, keep, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def _mae_reference_groups(model) -> tuple[set[str], set[str]]:
    """MAE's groups (``main_pretrain.py`` calls timm 0.3.2's ``add_weight_decay(model, wd)``
    with no skip list), written out: trainable 1-d parameters and biases are not decayed,
    everything else trainable is."""
    decay, no_decay = set(), set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if len(p.shape) == 1 or name.endswith(".bias") else decay).add(name)
    return decay, no_decay


def test_weight_decay_groups_match_mae():
    m = tiny_mae()
    groups = m.parameter_groups(0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(g["weight_decay"] in (0.0, 0.05) for g in groups)
    assert (decay, no_decay) == _mae_reference_groups(m)
    # MAE decays its tokens (3-d parameters); norms and biases are not decayed
    assert {"backbone.vit.cls_token", "decoder.mask_token", "decoder_pred.weight",
            "backbone.vit.patch_embed.proj.weight"} <= decay
    assert {"backbone.vit.blocks.0.norm1.weight", "decoder_embed.bias", "decoder.norm.weight"} <= no_decay
    # frozen (MAE): the fixed sin-cos position embeddings, and the encoder's unused mask token
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable
    frozen = {"decoder.pos_embed", "backbone.vit.pos_embed", "backbone.mask_token"}
    assert not frozen & trainable


@pytest.mark.parametrize("name", ["decoder_embed", "decoder_pred"])
def test_decoder_linear_layers_use_maes_xavier_init(name):
    """MAE's ``_init_weights``: xavier-uniform weight on U(-b, b), b = sqrt(6 / (fan_in +
    fan_out)), zero bias (PyTorch's default is U(+-1/sqrt(fan_in)) with a non-zero bias)."""
    torch.manual_seed(0)
    layer = getattr(tiny_mae(), name)
    fan_out, fan_in = layer.weight.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    w = layer.weight.detach()
    assert torch.equal(layer.bias.detach(), torch.zeros_like(layer.bias))
    assert w.abs().max() <= bound and w.abs().max() > 0.97 * bound
    # a uniform on (-b, b) has std b / sqrt(3); 4 standard errors of the sample std
    n = w.numel()
    assert abs(w.std().item() - bound / math.sqrt(3)) < 4 * (bound / math.sqrt(3)) / math.sqrt(2 * n) * 1.2


def _patchify_ref(x: torch.Tensor, p: int) -> torch.Tensor:
    """MAE's ``patchify``: (B, 3, H, W) -> (B, L, p*p*3), patches in row-major order,
    pixels in (p, q, c) order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def test_loss_equals_maes_forward_loss_on_the_same_mask():
    """The whole decoder pass and MAE's ``forward_loss`` written out here on the same mask:
    mask tokens at every masked position, fixed position embeddings, blocks, norm,
    prediction of *all* patches, then ``(loss * mask).sum() / mask.sum()`` with per-patch
    normalised targets. The mask token is set to a large random vector (not a constant one,
    which the blocks' LayerNorms would erase) so that a decoder that left masked positions
    empty (or used another token) gives another loss."""
    m = tiny_mae().eval()
    with torch.no_grad():
        m.decoder.mask_token.copy_(3.0 * torch.randn_like(m.decoder.mask_token))
    x = torch.rand(3, 3, 32, 32)
    keep, mask_idx = _fixed_mask(m, 3)
    b, n = 3, m.num_patches
    with torch.no_grad():
        latent = m.decoder_embed(m.backbone.encode(x, idx_keep=keep))  # (B, 1 + K, Dd)
        full = m.decoder.mask_token.expand(b, n + 1, -1).clone()
        for i in range(b):
            full[i, keep[i]] = latent[i]
        full = full + m.decoder.pos_embed
        for blk in m.decoder.blocks:
            full = blk(full)
        pred = m.decoder_pred(m.decoder.norm(full))[:, 1:]  # drop the class token: (B, L, p*p*3)
        mask = torch.zeros(b, n)
        for i in range(b):
            mask[i, mask_idx[i] - 1] = 1.0
        for norm_pix in (True, False):
            target = _patchify_ref(x, 4)
            if norm_pix:
                mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
                target = (target - mean) / (var + 1.0e-6) ** 0.5
            per_patch = ((pred - target) ** 2).mean(dim=-1)
            ref = (per_patch * mask).sum() / mask.sum()
            mm = m if norm_pix else tiny_mae(norm_pix_loss=False).eval()
            if not norm_pix:
                mm.load_state_dict(m.state_dict())
            torch.testing.assert_close(mm.reconstruction_loss(x, keep, mask_idx), ref, rtol=1e-5, atol=1e-6)


def test_lr_scaled_by_effective_batch_with_warmup_and_cosine(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    m = tiny_mae(base_lr=1.0e-3, warmup_epochs=1)
    data = TensorDataset(torch.rand(16, 3, 32, 32), torch.zeros(16, dtype=torch.long))
    trainer = pl.Trainer(
        max_epochs=2, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    lrs = []

    class Rec(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer.callbacks.append(Rec())
    trainer.fit(m, DataLoader(data, batch_size=4))
    assert m.effective_batch_size == 4 * 1 * 2
    peak = 1.0e-3 * 8 / 256
    assert m.scaled_lr == pytest.approx(peak)
    msgs = [r.getMessage() for r in caplog.records if "MAECropMix: effective batch" in r.getMessage()]
    assert len(msgs) == 1 and "effective batch 8 " in msgs[0] and "x 2 accumulation" in msgs[0]
    # 4 optimizer steps in all (2 per epoch), 2 of warmup; each lr seen on two micro-batches
    total, warm = 4, 2
    expected = [peak * ((s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
                for s in range(total)]
    assert lrs == pytest.approx([e for e in expected for _ in range(2)])


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(img_size=30), "img_size 30 is not divisible by patch_size 4"),
        (dict(patch_size=None, img_size=40), "img_size 40 is not divisible by patch_size 16"),
        (dict(mask_ratio=0.0), "mask_ratio must be in \\(0, 1\\), got 0.0"),
        (dict(mask_ratio=1.0), "mask_ratio must be in \\(0, 1\\), got 1.0"),
        (dict(decoder_dim=30), "decoder_dim must be divisible by 4"),
        (dict(model_name="vit_tiny_patch16_2244"), "did you mean.*vit_tiny_patch16_224"),
        (dict(model_name="resnet18"), "does not build a timm VisionTransformer"),
        (dict(decoder_dim=36, decoder_num_heads=8), "decoder_dim 36 must be divisible by decoder_num_heads 8"),
    ],
)
def test_construction_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_mae(**kw)


def test_nan_loss_names_the_step():
    m = tiny_mae()
    images = torch.full((2, 3, 32, 32), float("nan"))
    with pytest.raises(FloatingPointError, match="global step 0"):
        m.training_step((images, torch.zeros(2)), 0)
