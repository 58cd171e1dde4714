"""The published ImageNet-1k checkpoints our models load: one literal row per file.

Facts from /work/shared/WEIGHTS.md (torchvision 0.29.1 weight enums; timm 1.0.29 pretrained
cfgs and ``results/results-imagenet.csv``; Keras 3.15 ``keras/src/applications``). Left out,
because none of our models builds their network: torchvision's quantized files (int8
qnnpack modules), timm's ``mobilenetv1_100h``, ``mobilenetv2_110d``/``120d``,
``mobilenetv3_large_150d`` and ``mobilenetv3_rw`` (not paper architectures), timm's
ImageNet-21k head (11,221 classes), Keras ``*_no_top`` files (feature extractors without a
classifier; load them with :func:`mobilenets.from_keras`) and Keras V2 files at alpha 1.3/1.4
below 224 px (not confirmed to exist). docs/weights.md prints the same list.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.conventions import IMAGENET_MEAN, IMAGENET_STD, TF_MEAN, TF_STD

_TV = "https://download.pytorch.org/models/"
_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_TIMM_TRESNET = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-tresnet/"
_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"

_TV_LICENCE = "none stated (torchvision README: weights may carry the training data's terms)"
_KERAS_LICENCE = "none stated (Keras code Apache-2.0; weights translated from TF-slim)"


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing as the source publishes it: shorter side to ``resize``
    (``interpolation``), centre crop ``crop``, scale to [0, 1], then ``(x - mean) / std``."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable checkpoint. ``tag`` is unique; ``short`` is unique per model and width.

    ``name`` and ``kwargs`` are the source's own model name and options, handed to its
    converter (:mod:`mobilenets.io.convert`), which sets BN eps, padding and stem from them.
    """

    tag: str
    short: str
    source: str
    name: str
    model: str
    width_mult: float
    url: str
    sha256: str | None  # full digest or torch.hub's 8-hex prefix; None when none is published
    md5: str | None
    licence: str
    preprocessing: Preprocessing
    top1: float | None
    top5: float | None
    top1_source: str
    kwargs: tuple[tuple[str, object], ...] = ()
    torchvision_default: bool = False


def _pre(resize: int, crop: int, interpolation: str, norm: str) -> Preprocessing:
    mean, std = {"IN": (IMAGENET_MEAN, IMAGENET_STD), "INC": (TF_MEAN, TF_STD),
                 "Z": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}[norm]
    return Preprocessing(resize, crop, interpolation, mean, std)


def _tv(name: str, model: str, enum: str, file: str, resize: int, top1: float, top5: float,
        default: bool = False) -> WeightsEntry:
    return WeightsEntry(
        f"torchvision.{name}.{enum}", f"torchvision.{enum}", "torchvision", name, model, 1.0,
        _TV + file, file.rsplit("-", 1)[1].split(".")[0], None, _TV_LICENCE,
        _pre(resize, 224, "bilinear", "IN"), top1, top5, "torchvision 0.29.1 weight enum",
        torchvision_default=default)


def _timm(arch: str, tag: str, model: str, width: float, pre: Preprocessing, top1: float,
          legacy: str | None) -> WeightsEntry:
    url = legacy or _HF.format(f"{arch}.{tag}")
    prefix = legacy.rsplit("-", 1)[1].split(".")[0] if legacy else None
    return WeightsEntry(f"timm.{arch}.{tag}", f"timm.{tag}", "timm", arch, model, width, url,
                        prefix, None, "apache-2.0", pre, top1, None,
                        "timm 1.0.29 results-imagenet.csv")


_T875 = _pre(256, 224, "bicubic", "IN")  # 224 px at crop_pct 0.875: resize floor(224 / 0.875)
_TF = _pre(256, 224, "bilinear", "INC")

TORCHVISION: tuple[WeightsEntry, ...] = (
    _tv("mobilenet_v2", "mobilenet_v2", "imagenet1k_v1", "mobilenet_v2-b0353104.pth", 256, 71.878, 90.286),
    _tv("mobilenet_v2", "mobilenet_v2", "imagenet1k_v2", "mobilenet_v2-7ebf99e0.pth", 232, 72.154, 90.822,
        default=True),
    _tv("mobilenet_v3_large", "mobilenet_v3_large", "imagenet1k_v1", "mobilenet_v3_large-8738ca79.pth",
        256, 74.042, 91.340),
    _tv("mobilenet_v3_large", "mobilenet_v3_large", "imagenet1k_v2", "mobilenet_v3_large-5c1a4163.pth",
        232, 75.274, 92.566, default=True),
    _tv("mobilenet_v3_small", "mobilenet_v3_small", "imagenet1k_v1", "mobilenet_v3_small-047dcff4.pth",
        256, 67.668, 87.402, default=True),
)

TIMM: tuple[WeightsEntry, ...] = (
    _timm("mobilenetv1_100", "ra4_e3600_r224_in1k", "mobilenet_v1", 1.0,
          _pre(256, 224, "bicubic", "INC"), 75.388, None),
    _timm("mobilenetv1_125", "ra4_e3600_r224_in1k", "mobilenet_v1", 1.25,
          _pre(248, 224, "bicubic", "INC"), 76.920, None),
    _timm("mobilenetv2_050", "lamb_in1k", "mobilenet_v2", 0.5, _T875, 65.928,
          _TIMM + "mobilenetv2_050-3d30d450.pth"),
    _timm("mobilenetv2_100", "ra_in1k", "mobilenet_v2", 1.0, _T875, 72.910,
          _TIMM + "mobilenetv2_100_ra-b33bc2c4.pth"),
    _timm("mobilenetv2_140", "ra_in1k", "mobilenet_v2", 1.4, _T875, 76.528,
          _TIMM + "mobilenetv2_140_ra-21a4e913.pth"),
    _timm("mobilenetv3_large_100", "ra_in1k", "mobilenet_v3_large", 1.0, _T875, 75.784,
          _TIMM + "mobilenetv3_large_100_ra-f55367f5.pth"),
    _timm("mobilenetv3_large_100", "ra4_e3600_r224_in1k", "mobilenet_v3_large", 1.0,
          _pre(235, 224, "bicubic", "INC"), 76.310, None),
    _timm("mobilenetv3_large_100", "miil_in21k_ft_in1k", "mobilenet_v3_large", 1.0,
          _pre(256, 224, "bilinear", "Z"), 77.920,
          _TIMM_TRESNET + "mobilenetv3_large_100_1k_miil_78_0-66471c13.pth"),
    _timm("mobilenetv3_small_050", "lamb_in1k", "mobilenet_v3_small", 0.5, _T875, 57.918,
          _TIMM + "mobilenetv3_small_050_lambc-4b7bbe87.pth"),
    _timm("mobilenetv3_small_075", "lamb_in1k", "mobilenet_v3_small", 0.75, _T875, 65.284,
          _TIMM + "mobilenetv3_small_075_lambc-384766db.pth"),
    _timm("mobilenetv3_small_100", "lamb_in1k", "mobilenet_v3_small", 1.0, _T875, 67.636,
          _TIMM + "mobilenetv3_small_100_lamb-266a294c.pth"),
    _timm("tf_mobilenetv3_large_075", "in1k", "mobilenet_v3_large", 0.75, _TF, 73.442,
          _TIMM + "tf_mobilenetv3_large_075-150ee8b0.pth"),
    _timm("tf_mobilenetv3_large_100", "in1k", "mobilenet_v3_large", 1.0, _TF, 75.510,
          _TIMM + "tf_mobilenetv3_large_100-427764d5.pth"),
    _timm("tf_mobilenetv3_large_minimal_100", "in1k", "mobilenet_v3_large_minimal", 1.0, _TF, 72.270,
          _TIMM + "tf_mobilenetv3_large_minimal_100-8596ae28.pth"),
    _timm("tf_mobilenetv3_small_075", "in1k", "mobilenet_v3_small", 0.75, _TF, 65.706,
          _TIMM + "tf_mobilenetv3_small_075-da427f52.pth"),
    _timm("tf_mobilenetv3_small_100", "in1k", "mobilenet_v3_small", 1.0, _TF, 67.922,
          _TIMM + "tf_mobilenetv3_small_100-37f49e2b.pth"),
    _timm("tf_mobilenetv3_small_minimal_100", "in1k", "mobilenet_v3_small_minimal", 1.0, _TF, 62.892,
          _TIMM + "tf_mobilenetv3_small_minimal_100-922a7843.pth"),
)

#: Keras V1 top-1 at 224 px per alpha (keras-io for 1.0; keras-applications' docstring, which
#: quotes TF-slim, for the others); other resolutions publish none.
_KERAS_V1_TOP1 = {1.0: (70.4, "keras-io applications index"), 0.75: (68.4, "keras-applications docstring"),
                  0.5: (63.7, "keras-applications docstring"), 0.25: (50.6, "keras-applications docstring")}
_KERAS_V2_TOP1 = {1.0: (71.3, "keras-io applications index"), 1.4: (75.0, "keras-applications docstring")}
#: Keras V3 top files: (file part m, our model, alpha, MD5 of the top file, top-1 in mobilenet_v3.py).
_KERAS_V3 = (
    ("large_224_0.75_float", "mobilenet_v3_large", 0.75, "765b44a33ad4005b3ac83185abf1d0eb", 73.3),
    ("large_224_1.0_float", "mobilenet_v3_large", 1.0, "59e551e166be033d707958cf9e29a6a7", 75.6),
    ("large_minimalistic_224_1.0_float", "mobilenet_v3_large_minimal", 1.0,
     "675e7b876c45c57e9e63e6d90a36599c", 72.3),
    ("small_224_0.75_float", "mobilenet_v3_small", 0.75, "cb65d4e5be93758266aa0a7f2c6708b7", 65.4),
    ("small_224_1.0_float", "mobilenet_v3_small", 1.0, "8768d4c2e7dee89b9d02b2d03d65d862", 68.1),
    ("small_minimalistic_224_1.0_float", "mobilenet_v3_small_minimal", 1.0,
     "99cd97fb2fcdad2bf028eb838de69e37", 61.9),
)


def _keras(name: str, model: str, alpha: float, res: int, file: str, md5: str | None,
           top1: tuple[float, str] | None, minimalistic: bool = False) -> WeightsEntry:
    kwargs: tuple[tuple[str, object], ...] = (("alpha", alpha),) + ((("minimalistic", True),) if minimalistic else ())
    variant = f"{'minimalistic_' if minimalistic else ''}alpha{alpha}_{res}"
    return WeightsEntry(f"keras.{name}.{variant}", f"keras.imagenet_{res}", "keras", name, model, alpha,
                        _KERAS + file, None, md5, _KERAS_LICENCE,
                        _pre(res, res, "bilinear", "INC"), top1[0] if top1 else None, None,
                        top1[1] if top1 else "none published", kwargs)


def _keras_rows() -> tuple[WeightsEntry, ...]:
    rows = []
    for alpha, text in ((1.0, "1_0"), (0.75, "7_5"), (0.5, "5_0"), (0.25, "2_5")):
        for res in (128, 160, 192, 224):
            rows.append(_keras("MobileNet", "mobilenet_v1", alpha, res, f"mobilenet/mobilenet_{text}_{res}_tf.h5",
                               None, _KERAS_V1_TOP1[alpha] if res == 224 else None))
    for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
        for res in (96, 128, 160, 192, 224) if alpha <= 1.0 else (224,):
            file = f"mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{res}.h5"
            rows.append(_keras("MobileNetV2", "mobilenet_v2", alpha, res, file, None,
                               _KERAS_V2_TOP1.get(alpha) if res == 224 else None))
    for m, model, alpha, md5, top1 in _KERAS_V3:
        name = "MobileNetV3Large" if model.startswith("mobilenet_v3_large") else "MobileNetV3Small"
        rows.append(_keras(name, model, alpha, 224, f"mobilenet_v3/weights_mobilenet_v3_{m}.h5", md5,
                           (top1, "keras mobilenet_v3.py docstring"), minimalistic="minimal" in model))
    return tuple(rows)


KERAS: tuple[WeightsEntry, ...] = _keras_rows()

WEIGHTS: tuple[WeightsEntry, ...] = TORCHVISION + TIMM + KERAS

#: What the registry leaves out, and why (docs/weights.md and ``mobilenets weights`` say so).
SKIPPED: tuple[tuple[str, str], ...] = (
    ("torchvision quantization.MobileNet_V2/V3_Large_QuantizedWeights", "int8 qnnpack modules, not float weights"),
    ("timm mobilenetv1_100h, mobilenetv2_110d/120d, mobilenetv3_large_150d, mobilenetv3_rw",
     "architectures we do not build (wider head, deeper stages, timm's own V3)"),
    ("timm mobilenetv3_large_100.miil_in21k", "ImageNet-21k head (11,221 classes)"),
    ("Keras *_no_top*.h5 files", "no classifier: load them with mobilenets.from_keras"),
    ("Keras MobileNetV2 alpha 1.3/1.4 below 224 px", "not confirmed to exist"),
)
