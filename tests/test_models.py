"""Encoder/decoder shapes, gradients, masking invariants and position embeddings."""

import pytest
import torch

from prism.models.masking import gather_tokens, random_masking
from prism.models.patches import patchify, token_grid, unpatchify
from prism.models.pos_embed import pos_embed_for_grid, sincos_pos_embed_3d
from prism.models.pretrain_network import PretrainNetwork
from prism.models.vit3d import VIT_PRESETS, VisionTransformer3d


def tiny_encoder(img_size=32, patch_size=8, **kwargs):
    return VisionTransformer3d("tiny", img_size=img_size, patch_size=patch_size, depth=2, **kwargs)


@pytest.mark.parametrize(
    "img_size,patch_size",
    [((32, 32, 32), (8, 8, 8)), ((32, 48, 16), (8, 16, 4)), ((64, 64, 64), (16, 16, 16))],
)
def test_encoder_shapes_for_sizes_and_anisotropic_patches(img_size, patch_size):
    encoder = tiny_encoder(img_size, patch_size)
    x = torch.randn(2, 1, *img_size)
    out = encoder.forward_features(x, return_layers=(0, 1))
    tokens = 1
    for s, p in zip(img_size, patch_size):
        tokens *= s // p
    assert out["cls"].shape == (2, 192)
    assert out["patch"].shape == (2, tokens, 192)
    assert [t.shape for t in out["intermediate"]] == [(2, tokens, 192)] * 2
    assert out["grid"] == tuple(s // p for s, p in zip(img_size, patch_size))


def test_presets_have_documented_sizes():
    assert VIT_PRESETS["base"] == {"embed_dim": 768, "depth": 12, "num_heads": 12}
    assert set(VIT_PRESETS) == {"tiny", "small", "base", "large"}


def test_other_input_size_keeps_the_token_pitch_of_the_position_embedding():
    encoder = tiny_encoder(32, 8)  # trained grid 4 x 4 x 4
    out = encoder.forward_features(torch.randn(1, 1, 48, 40, 32))
    assert out["patch"].shape == (1, 6 * 5 * 4, 192)
    trained = encoder.pos_embed.reshape(4, 4, 4, 192)
    smaller = encoder.pos_embed_for((2, 2, 4)).reshape(2, 2, 4, 192)
    assert torch.allclose(smaller, trained[1:3, 1:3, :], atol=1e-6)  # the central sub-window, same pitch
    larger = encoder.pos_embed_for((6, 6, 4)).reshape(6, 6, 4, 192)
    assert torch.allclose(larger[1:5, 1:5, :], trained, atol=1e-6)  # the training table, extended on both sides
    assert torch.unique(larger.reshape(-1, 192), dim=0).shape[0] == 6 * 6 * 4


def test_position_shift_moves_the_grid_in_training_only():
    table = sincos_pos_embed_3d((4, 4, 4), 192).reshape(4, 4, 4, 192)
    shifted = sincos_pos_embed_3d((4, 4, 4), 192, shift=torch.tensor([1.0, 0.0, 0.0])).reshape(4, 4, 4, 192)
    assert torch.allclose(shifted[:3], table[1:], atol=1e-6)  # one token along D
    torch.manual_seed(0)
    encoder = VisionTransformer3d(preset="tiny", img_size=32, patch_size=8, depth=1, position_shift=2.0)
    x = torch.randn(1, 1, 32, 32, 32)
    first, second = encoder.embed(x)[0], encoder.embed(x)[0]
    assert not torch.allclose(first, second)
    pair = encoder.embed(x.expand(2, -1, -1, -1, -1))[0]
    assert not torch.allclose(pair[0], pair[1])  # each sample (each view of a subject) its own shift
    per_sample = sincos_pos_embed_3d((4, 4, 4), 192, shift=torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert per_sample.shape == (2, 64, 192)
    assert torch.allclose(per_sample[0].reshape(4, 4, 4, 192), shifted) and torch.allclose(per_sample[1], table.reshape(64, 192))
    encoder.eval()
    plain = encoder.patch_embed(x) + encoder.pos_embed
    assert torch.equal(encoder.embed(x)[0], plain)
    with pytest.raises(ValueError, match="position_shift"):
        VisionTransformer3d(preset="tiny", img_size=32, patch_size=8, position_shift=-1.0)


def test_pos_embed_is_fixed_and_distinct_per_token():
    table = sincos_pos_embed_3d((4, 4, 4), 192)
    assert table.shape == (64, 192)
    assert torch.unique(table, dim=0).shape[0] == 64
    assert not tiny_encoder().pos_embed.requires_grad
    same = pos_embed_for_grid(table, (4, 4, 4), (4, 4, 4))
    assert torch.equal(same, table)


def test_width_not_divisible_by_six_is_padded():
    assert sincos_pos_embed_3d((2, 2, 2), 1024).shape == (8, 1024)


def test_patchify_roundtrip():
    x = torch.randn(2, 1, 16, 24, 8)
    patches = patchify(x, (8, 8, 4))
    assert patches.shape == (2, 2 * 3 * 2, 8 * 8 * 4)
    assert torch.equal(unpatchify(patches, (2, 3, 2), (8, 8, 4)), x)


def test_masking_invariants():
    n, length, ratio = 5, 64, 0.75
    ids_keep, mask, ids_restore = random_masking(n, length, ratio, "cpu", torch.Generator().manual_seed(0))
    assert ids_keep.shape == (n, 16)
    assert torch.all(mask.sum(1) == length - 16)
    # ids_restore inverts the shuffle: kept tokens put back in place are exactly where mask == 0
    tokens = torch.arange(length).float().repeat(n, 1).unsqueeze(-1)
    kept = gather_tokens(tokens, ids_keep)
    padded = torch.cat([kept, torch.full((n, length - 16, 1), -1.0)], dim=1)
    restored = gather_tokens(padded, ids_restore)[..., 0]
    assert torch.equal(restored[mask == 0], tokens[..., 0][mask == 0])
    assert torch.all(restored[mask == 1] == -1)
    # different samples get different masks
    assert not torch.equal(mask[0], mask[1])


def test_every_parameter_receives_a_gradient():
    net = PretrainNetwork(tiny_encoder(), anatomy_dim=32, sequence_dim=16, decoder_dim=32, decoder_depth=1, decoder_heads=4)
    x = torch.randn(2, 1, 32, 32, 32)
    ids_keep, _, ids_restore = random_masking(2, 64, 0.5, "cpu")
    feats = net.encode(x, ids_keep)
    pred = net.decode(feats["anatomy"], feats["sequence_code"], ids_restore, feats["grid"])
    assert pred.shape == (2, 64, 512)
    pred.pow(2).mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"preset": "huge"}, "Unknown ViT preset 'huge'"),
        ({"img_size": 30, "patch_size": 8}, "not divisible by patch size"),
        ({"img_size": (32, 32), "patch_size": 8}, "img_size must be"),
        ({"embed_dim": 100, "num_heads": 3}, "divisible by num_heads"),
    ],
)
def test_bad_encoder_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionTransformer3d(**{"preset": "tiny", "img_size": 32, "patch_size": 8, **kwargs})


def test_no_weight_decay_names_exist():
    net = PretrainNetwork(tiny_encoder(), decoder_dim=32, decoder_depth=1, decoder_heads=4)
    names = {n for n, _ in net.named_parameters()} | {n for n, _ in net.named_buffers()}
    assert net.no_weight_decay() <= names


def test_latent_split_sequence_pool_reads_the_chosen_tokens():
    from prism.models.latent_split import LatentSplit

    torch.manual_seed(0)
    patches, cls = torch.randn(2, 5, 8), torch.randn(2, 8)
    cls_only = LatentSplit(8, anatomy_dim=4, sequence_dim=3, sequence_pool="cls")
    both = LatentSplit(8, anatomy_dim=4, sequence_dim=3, sequence_pool="cls_and_patches")
    both.load_state_dict(cls_only.state_dict())
    _, code_cls = cls_only(patches, cls)
    _, code_cls_changed_patches = cls_only(patches + 1.0, cls)
    _, code_both_changed_patches = both(patches + 1.0, cls)
    assert torch.allclose(code_cls, code_cls_changed_patches)
    assert not torch.allclose(code_cls, code_both_changed_patches)
    with pytest.raises(ValueError, match="sequence_pool"):
        LatentSplit(8, sequence_pool="mean")


def test_running_standardise_gives_unit_spread_in_any_mode_and_batch_size():
    from prism.models.running_standardise import RunningStandardise

    torch.manual_seed(0)
    norm = RunningStandardise(3, momentum=0.9)
    shared = torch.tensor([5.0, -2.0, 100.0])
    for _ in range(50):
        out = norm(shared + 0.01 * torch.randn(16, 3))
    assert out.mean(0).abs().max() < 0.5 and 0.6 < float(out.std(0).mean()) < 1.6  # tiny differences, unit scale
    assert norm.running_mean.sub(shared).abs().max() < 0.01
    frozen = norm.running_mean.clone()
    norm(torch.randn(1, 3))  # one volume: no statistics update, no error
    norm.eval()
    norm(torch.randn(8, 3))
    assert torch.equal(norm.running_mean, frozen)
    x = torch.randn(4, 3, requires_grad=True)
    norm(x).sum().backward()
    assert torch.allclose(x.grad, torch.rsqrt(norm.running_var + norm.eps).expand(4, 3))  # no gradient through the stats


def test_latent_split_standardise_pooled_code_varies_between_nearly_equal_volumes():
    from prism.models.latent_split import LatentSplit

    torch.manual_seed(0)
    plain = LatentSplit(8, anatomy_dim=4, sequence_dim=3)
    standardised = LatentSplit(8, anatomy_dim=4, sequence_dim=3, standardise_pooled=True)
    standardised.load_state_dict(plain.state_dict(), strict=False)
    patches = torch.randn(1, 5, 8) * 3 + 0.01 * torch.randn(32, 5, 8)  # volumes that differ by 1 %
    cls = torch.randn(1, 8) + 0.01 * torch.randn(32, 8)
    _, code_plain = plain(patches, cls)
    _, code_standardised = standardised(patches, cls)
    assert float(code_standardised.std(0).mean()) > 10 * float(code_plain.std(0).mean())
    assert {"pooled_norm.running_mean", "pooled_norm.running_var"} <= set(standardised.state_dict())
    assert not any(k.startswith("pooled_norm") for k in plain.state_dict())  # older checkpoints still load


def test_decoder_sequence_conditioning_add_reaches_every_position_directly():
    from prism.models.mae_decoder import MAEDecoder3d

    torch.manual_seed(0)
    anatomy, code, other_code = torch.randn(2, 8, 16), torch.randn(2, 4), torch.randn(2, 4)
    # without blocks nothing attends, so only 'add' lets the code change the prediction
    by_token = MAEDecoder3d(16, 4, (2, 2, 2), 8, embed_dim=16, depth=0, num_heads=4, sequence_conditioning="token")
    by_add = MAEDecoder3d(16, 4, (2, 2, 2), 8, embed_dim=16, depth=0, num_heads=4, sequence_conditioning="add")
    by_add.load_state_dict(by_token.state_dict())
    assert torch.allclose(by_token(anatomy, code, None, (2, 2, 2)), by_token(anatomy, other_code, None, (2, 2, 2)))
    assert not torch.allclose(by_add(anatomy, code, None, (2, 2, 2)), by_add(anatomy, other_code, None, (2, 2, 2)))
    with pytest.raises(ValueError, match="sequence_conditioning"):
        MAEDecoder3d(16, 4, (2, 2, 2), 8, embed_dim=16, depth=0, num_heads=4, sequence_conditioning="film")


def test_latent_split_sequence_offset_starts_at_zero_and_learns_a_per_volume_shift():
    from prism.models.latent_split import LatentSplit

    torch.manual_seed(0)
    plain = LatentSplit(8, anatomy_dim=4, sequence_dim=3)
    offset = LatentSplit(8, anatomy_dim=4, sequence_dim=3, sequence_offset="attached")
    offset.load_state_dict(plain.state_dict(), strict=False)
    patches, cls = torch.randn(2, 5, 8), torch.randn(2, 8)
    assert torch.equal(plain(patches, cls)[0], offset(patches, cls)[0])  # zero init: old behaviour
    with torch.no_grad():
        offset.sequence_offset.weight.normal_()
    anatomy, code = offset(patches, cls)
    shift = plain(patches, cls)[0] - anatomy  # one vector per volume, the same at every token
    assert torch.allclose(shift, (code @ offset.sequence_offset.weight.T).unsqueeze(1).expand_as(shift), atol=1e-6)
    anatomy.sum().backward()
    assert offset.sequence_offset.weight.grad.abs().sum() > 0 and offset.sequence[0].weight.grad.abs().sum() > 0
    assert not any(k.startswith("sequence_offset") for k in plain.state_dict())  # older checkpoints still load
    detached = LatentSplit(8, anatomy_dim=4, sequence_dim=3, sequence_offset="detached")
    detached.load_state_dict(offset.state_dict())
    anatomy_detached, _ = detached(patches, cls)
    assert torch.allclose(anatomy_detached, offset(patches, cls)[0])  # same value, different gradient
    anatomy_detached.sum().backward()
    assert detached.sequence_offset.weight.grad.abs().sum() > 0 and detached.sequence[0].weight.grad is None
    with pytest.raises(ValueError, match="sequence_offset"):
        LatentSplit(8, sequence_offset="on")
