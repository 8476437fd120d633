"""Signal equations, tissue table and sequence recipes of prism.synth, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from prism.sequences import ACQUISITION_PARAMETERS, SEQUENCE_TYPES
from prism.synth.physics import (
    inversion_recovery,
    mprage,
    null_inversion_time,
    sample_tissue_parameters,
    spin_echo,
    spoiled_gre,
    tissue_signal,
)
from prism.synth.recipes import FAMILIES, RECIPES, get_recipe, sample_acquisition, with_overrides
from prism.synth.tissues import TISSUE_LABELS, tissue_centres, tissue_label

T = torch.tensor
CSF, GM, WM = TISSUE_LABELS["csf"], TISSUE_LABELS["gm"], TISSUE_LABELS["wm"]


def test_spin_echo_matches_hand_computation():
    # PD 0.8, T1 1 s, T2 0.1 s, TR 0.5 s, TE 0.02 s: 0.8 * (1 - e^-0.5) * e^-0.2
    expected = 0.8 * (1 - math.exp(-0.5)) * math.exp(-0.2)
    assert spin_echo(T(0.8), T(1.0), T(0.1), T(0.5), T(0.02)).item() == pytest.approx(expected, rel=1e-6)


def test_spoiled_gre_matches_hand_computation():
    e1 = math.exp(-0.02 / 0.8)
    a = math.radians(20)
    expected = 0.7 * math.sin(a) * (1 - e1) * math.exp(-0.004 / 0.05) / (1 - math.cos(a) * e1)
    got = spoiled_gre(T(0.7), T(0.8), T(0.05), T(0.02), T(0.004), T(20.0)).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_mprage_is_inversion_recovery_read_by_small_flip():
    ir = abs(1 - 2 * math.exp(-1.0 / 0.9) + math.exp(-2.3 / 0.9))
    expected = 0.75 * ir * math.sin(math.radians(9)) * math.exp(-0.003 / 0.05)
    got = mprage(T(0.75), T(0.9), T(0.05), T(2.3), T(0.003), T(1.0), T(9.0)).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_flair_nulls_csf_at_t1_ln2_when_tr_is_long():
    t1 = T(3.5)
    ti = t1 * math.log(2)
    csf = inversion_recovery(T(1.0), t1, T(1.0), T(1000.0), T(0.1), ti)
    assert csf.item() == pytest.approx(0.0, abs=1e-6)
    gm = inversion_recovery(T(0.82), T(1.05), T(0.095), T(1000.0), T(0.1), ti)
    assert gm.item() > 0.1
    # finite TR: the exact null time
    tr = T(9.0)
    assert inversion_recovery(T(1.0), t1, T(1.0), tr, T(0.1), null_inversion_time(t1, tr)).item() == pytest.approx(0, abs=1e-6)


def _render_centres(recipe_name: str, field: float, params: dict[str, float]) -> torch.Tensor:
    recipe = get_recipe(recipe_name)
    acq = torch.zeros(1, len(ACQUISITION_PARAMETERS))
    for k, v in params.items():
        acq[0, ACQUISITION_PARAMETERS.index(k)] = v
    return tissue_signal(tissue_centres(field)[None], acq, T([recipe.family_id]))[0]


@pytest.mark.parametrize("field", [1.5, 3.0])
def test_contrast_orders_at_tissue_centres(field):
    t1w = _render_centres("T1w_SE", field, {"RepetitionTime": 0.5, "EchoTime": 0.015, "FlipAngle": 90})
    assert t1w[WM] > t1w[GM] > t1w[CSF]
    mprage_s = _render_centres("T1w_MPRAGE", field, {"RepetitionTime": 2.2, "EchoTime": 0.003, "InversionTime": 0.95, "FlipAngle": 9})
    assert mprage_s[WM] > mprage_s[GM] > mprage_s[CSF]
    gre = _render_centres("T1w_GRE", field, {"RepetitionTime": 0.015, "EchoTime": 0.004, "FlipAngle": 20})
    assert gre[WM] > gre[GM] > gre[CSF]
    t2w = _render_centres("T2w", field, {"RepetitionTime": 4.0, "EchoTime": 0.1, "FlipAngle": 90})
    assert t2w[CSF] > t2w[GM] > t2w[WM]
    assert int(t2w[:4].argmax()) == CSF  # CSF brightest on T2w
    pdw = _render_centres("PDw", field, {"RepetitionTime": 5.0, "EchoTime": 0.015, "FlipAngle": 90})
    assert pdw[GM] > pdw[WM]
    t1_csf = tissue_centres(field)[CSF, 1]
    flair = _render_centres("FLAIR", field, {"RepetitionTime": 9.0, "EchoTime": 0.1, "FlipAngle": 90,
                                             "InversionTime": float(null_inversion_time(t1_csf, T(9.0)))})
    assert flair[CSF] < 0.01 * flair[GM]
    assert flair[TISSUE_LABELS["lesion_wmh"]] > flair[GM] > flair[WM]  # WMH bright on FLAIR


def test_every_recipe_reports_a_known_sequence_type_and_only_its_parameters():
    g = torch.Generator().manual_seed(0)
    recipes = list(RECIPES.values())
    params, present = sample_acquisition(recipes, torch.full((len(recipes),), 3.0), g)
    ti = ACQUISITION_PARAMETERS.index("InversionTime")
    for i, recipe in enumerate(recipes):
        assert SEQUENCE_TYPES[recipe.sequence_id] == recipe.sequence_type
        assert recipe.family in FAMILIES
        assert bool(present[i, ti]) == (recipe.family in ("inversion_recovery", "mprage")), recipe.name
        assert bool(present[i, ACQUISITION_PARAMETERS.index("MagneticFieldStrength")])
        for name, value in recipe.ranges[3.0].items():
            if isinstance(value, tuple):
                j = ACQUISITION_PARAMETERS.index(name)
                assert value[0] <= params[i, j] <= value[1]
    assert SEQUENCE_TYPES[get_recipe("STIR").sequence_id] == "other"
    assert get_recipe("T1w_MPRAGE").sequence_type == "T1w"


def test_tissue_jitter_is_lognormal_around_centres_and_keeps_the_order():
    g = torch.Generator().manual_seed(0)
    params = sample_tissue_parameters(torch.full((4000,), 3.0), 0.1, g, independent_std=0.04)
    centres = tissue_centres(3.0)
    ratio = (params / centres.clamp_min(1e-9))[:, CSF:WM + 1]
    assert ratio.log().mean().abs() < 0.01
    assert 0.09 < ratio.log().std() < 0.13
    assert (params[:, GM, 1] > params[:, WM, 1]).float().mean() > 0.99  # GM T1 > WM T1 nearly always


def test_unknown_names_raise_clear_errors():
    with pytest.raises(ValueError, match="Unknown synthetic sequence recipe 'T3w'"):
        get_recipe("T3w")
    with pytest.raises(ValueError, match="Unknown tissue name 'grey'"):
        tissue_label("grey")
    assert tissue_label("Grey_Matter") == GM
    with pytest.raises(ValueError, match="min 3.0 > max 1.0"):
        with_overrides(get_recipe("T2w"), {"RepetitionTime": [3.0, 1.0]})
    with pytest.raises(ValueError, match="has no parameter 'InversionTime'"):
        with_overrides(get_recipe("T2w"), {"InversionTime": [1.0, 2.0]})
