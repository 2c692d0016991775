"""timm with no options: fc2conv picks up timm's registries of untraceable modules and functions by itself. CNN
families convert exactly (dense and global, checked by `verify`); attention and token-mixing models either
convert exactly or are refused with a ConversionError that says why, never another exception. CI runs a spread
of ten CNNs and three transformers; `-m slow` runs the broad sweep."""

from __future__ import annotations

import warnings

import pytest
import torch

import fc2conv
from fc2conv import ConversionError

timm = pytest.importorskip("timm")

# (name, input side): each family's spelling that needed work — VGG's ConvMlp (a shape-dependent `if`),
# TF "same" padding, ECA, split attention, HRNet (modules that append to their input list; sizes that run only on
# a grid), squeeze-excitation, ConvNeXt's channels-last blocks, RegNet, GhostNet.
CI_CNNS = [("resnet10t", 96), ("vgg11", 160), ("tf_efficientnet_lite0", 96), ("ecaresnet26t", 96),
           ("resnest14d", 96), ("hrnet_w18_small", 128), ("mobilenetv3_small_050", 96), ("convnext_atto", 96),
           ("regnetx_002", 96), ("ghostnet_050", 96)]
SLOW_CNNS = [
    "resnet26d", "resnet50d", "seresnet18", "resnext26ts", "regnety_002", "densenet121", "dla34", "dpn48b",
    "vgg11_bn", "efficientnet_b0", "mobilenetv2_050", "mobilenetv3_large_075", "mnasnet_050", "rexnet_100",
    "cspresnet50", "cspdarknet53", "darknet17", "xception41", "inception_v3", "inception_v4", "selecsls42b",
    "skresnet18", "res2net50_14w_8s", "gernet_s", "repvgg_a0", "hardcorenas_a", "lcnet_050", "tinynet_e",
    "convnextv2_atto", "efficientnetv2_rw_t", "nfnet_l0", "dm_nfnet_f0", "resnetv2_50", "cs3darknet_focus_s",
    "fbnetc_100", "spnasnet_100", "semnasnet_050", "mixnet_s", "ese_vovnet19b_dw", "hgnet_tiny", "tresnet_m",
    "gcresnet33ts", "eca_resnet33ts", "lambda_resnet26t", "halonet26t", "bat_resnext26ts", "poolformer_s12",
    "convmixer_768_32", "fastvit_t8", "edgenext_xx_small", "mobilevit_xxs", "nasnetalarge", "pnasnet5large",
]
# Transformers and token mixers, at the size their position embeddings are built for.
CI_TOKENS = ["vit_tiny_patch16_224", "mixer_s16_224", "botnet26t_256"]
SLOW_TOKENS = ["deit_tiny_patch16_224", "levit_128s", "swin_tiny_patch4_window7_224", "coat_tiny", "resmlp_12_224",
               "efficientformer_l1", "crossvit_tiny_240"]
REASONS = ("sequences or tokens", "sees the whole input", "does not run on input_shape")
# Models whose blocks take only some sizes (a multiple of their attention block), checked at their own.
NATIVE = {"bat_resnext26ts", "halonet26t"}


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=7).eval()


def _native_size(name: str) -> int:
    return timm.models.get_pretrained_cfg(name).input_size[-1]


def check_cnn(name: str, size: int) -> None:
    model = _build(name)
    shape = (3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # timm's own notices (e.g. about pretrained configs)
        for mode in ("dense", "global"):
            converted = fc2conv.convert(model, shape, mode=mode)
            report = fc2conv.verify(model, converted, batch=1)
            assert report.checks[0].passed and report.ok, f"{name} {mode}\n{report}"
            if mode == "dense":
                assert report.checks[1].passed, f"{name}\n{report}"
                geo = fc2conv.geometry(converted)
                assert geo.exact in (True, False, None) and (geo.exact is not True or geo.receptive_field)


def check_tokens(name: str) -> None:
    model = _build(name)
    size = _native_size(name)
    try:
        converted = fc2conv.convert(model, (3, size, size))
        fc2conv.geometry(converted)
    except ConversionError as e:
        assert any(reason in str(e) for reason in REASONS), str(e)
        return
    report = fc2conv.verify(model, converted, batch=1)
    assert report.ok, str(report)


@pytest.mark.parametrize(("name", "size"), CI_CNNS, ids=[n for n, _ in CI_CNNS])
def test_timm_cnns_convert_exactly(name, size):
    check_cnn(name, size)


@pytest.mark.parametrize("name", CI_TOKENS)
def test_timm_transformers_convert_or_say_why(name):
    check_tokens(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_CNNS)
def test_timm_sweep(name):
    check_cnn(name, _native_size(name) if name in NATIVE else min(_native_size(name), 160))


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_TOKENS)
def test_timm_transformer_sweep(name):
    check_tokens(name)
