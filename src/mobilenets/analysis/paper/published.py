"""The published figures the paper analyses compare against: literal tables (SPEC §1-§3).

Data only. Each row names the network it describes and the numbers a source prints; the
topic modules build those networks and count them. A known conflict between sources is
recorded as a ``note`` beside the row rather than in code, so a reviewer can hold the paper
next to this file and tick the rows off.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    """One published row: the network it names and the MAdds/params it prints (millions).

    ``params_without_bn``: the source counts convolution and classifier weights only (no
    BatchNorm γ/β). ``note`` records a known conflict between sources (README "The model
    zoo"); a disagreement with a note is marked "⚠", without one "✗". ``top1``: the
    ImageNet top-1 (%) the same row prints (float models), by which ``mobilenets pick``
    ranks candidates; ``None`` where the row prints none.
    """

    source: str
    label: str
    model: str
    resolution: int
    madds_m: float
    params_m: float
    width_mult: float = 1.0
    width_convention: str = "torchvision"
    params_without_bn: bool = False
    note: str = ""
    top1: float | None = None

    def model_kwargs(self) -> dict[str, object]:
        """The ``create_model`` options that build the network this row names."""
        kwargs: dict[str, object] = {}
        if self.width_mult != 1.0:
            kwargs["width_mult"] = self.width_mult
        if self.width_convention != "torchvision":
            kwargs["width_convention"] = self.width_convention
        return kwargs


_OLD_SMALL = ("TF-slim keeps the older V3-Small generation (66 M / 2.9 M in the PDF version "
              "of the paper); arXiv v5 and every implementation have 56.51 M / 2.54 M")
_SLIM_V2_PARAMS = ("TF-slim's Params column counts no BatchNorm γ/β: conv + classifier "
                   "weights agree at every width; with BN the count is ~1% higher")
_T9_ONE_OFF = "Table 9 prints 1 M above both rounding and truncation of our count"
_T9_PARAMS = ("Table 9's params differ from the TF-slim 'tf' build whose MAdds it matches; "
              "not explained by any convention we know")


def _v2_slim(width: float, res: int, madds: int, params: float, top1: float) -> Published:
    return Published("TF-slim V2", f"mobilenet_v2_{width}_{res}", "mobilenet_v2", res, madds,
                     params, width, params_without_bn=True, note=_SLIM_V2_PARAMS, top1=top1)


def _v3_t9(size: str, width: float, res: int, madds: int, params: float, top1: float,
           note: str = "") -> Published:
    return Published("V3 Table 9 (v5)", f"{size} {res}/{width}", f"mobilenet_v3_{size}", res,
                     madds, params, width, "tf", note=note, top1=top1)


PUBLISHED: tuple[Published, ...] = (
    # V1 Table 6 (width multiplier) and Table 7 (resolution), SPEC §1.6-1.7.
    Published("V1 Table 6", "1.0 MobileNet-224", "mobilenet_v1", 224, 569, 4.2, top1=70.6),
    Published("V1 Table 6", "0.75 MobileNet-224", "mobilenet_v1", 224, 325, 2.6, 0.75, top1=68.4),
    Published("V1 Table 6", "0.5 MobileNet-224", "mobilenet_v1", 224, 149, 1.3, 0.5, top1=63.7),
    Published("V1 Table 6", "0.25 MobileNet-224", "mobilenet_v1", 224, 41, 0.5, 0.25, top1=50.6),
    Published("V1 Table 7", "1.0 MobileNet-224", "mobilenet_v1", 224, 569, 4.2, top1=70.6),
    Published("V1 Table 7", "1.0 MobileNet-192", "mobilenet_v1", 192, 418, 4.2, top1=69.1),
    Published("V1 Table 7", "1.0 MobileNet-160", "mobilenet_v1", 160, 290, 4.2,
              note="290.68 M: the paper truncates to 290, TF-slim rounds to 291", top1=67.2),
    Published("V1 Table 7", "1.0 MobileNet-128", "mobilenet_v1", 128, 186, 4.2, top1=64.4),
    # TF-slim MobileNetV2 checkpoints, SPEC §2.7 (the table truncates MAdds).
    _v2_slim(1.4, 224, 582, 6.06, 75.0), _v2_slim(1.3, 224, 509, 5.34, 74.4),
    _v2_slim(1.0, 224, 300, 3.47, 71.8), _v2_slim(1.0, 192, 221, 3.47, 70.7),
    _v2_slim(1.0, 160, 154, 3.47, 68.8), _v2_slim(1.0, 128, 99, 3.47, 65.3),
    _v2_slim(1.0, 96, 56, 3.47, 60.3),
    _v2_slim(0.75, 224, 209, 2.61, 69.8), _v2_slim(0.75, 192, 153, 2.61, 68.7),
    _v2_slim(0.75, 160, 107, 2.61, 66.4), _v2_slim(0.75, 128, 69, 2.61, 63.2),
    _v2_slim(0.75, 96, 39, 2.61, 58.8),
    _v2_slim(0.5, 224, 97, 1.95, 65.4), _v2_slim(0.5, 192, 71, 1.95, 63.9),
    _v2_slim(0.5, 160, 50, 1.95, 61.0), _v2_slim(0.5, 128, 32, 1.95, 57.7),
    _v2_slim(0.5, 96, 18, 1.95, 51.2),
    _v2_slim(0.35, 224, 59, 1.66, 60.3), _v2_slim(0.35, 192, 43, 1.66, 58.2),
    _v2_slim(0.35, 160, 30, 1.66, 55.7), _v2_slim(0.35, 128, 20, 1.66, 50.8),
    _v2_slim(0.35, 96, 11, 1.66, 45.5),
    # V3 Table 9 (arXiv v5), SPEC §3.7: width rows follow TF-slim's "tf" convention.
    _v3_t9("large", 1.25, 224, 356, 7.5, 76.6, _T9_PARAMS),
    _v3_t9("large", 1.0, 224, 217, 5.4, 75.2, "Table 3 of the same paper prints 219 M"),
    _v3_t9("large", 0.75, 224, 155, 4.0, 73.3), _v3_t9("large", 0.5, 224, 69, 2.6, 68.8),
    _v3_t9("large", 0.35, 224, 40, 2.2, 64.2, f"{_T9_ONE_OFF}; {_T9_PARAMS}"),
    _v3_t9("large", 1.0, 256, 282, 5.4, 76.0), _v3_t9("large", 1.0, 192, 160, 5.4, 73.7),
    _v3_t9("large", 1.0, 160, 112, 5.4, 71.7), _v3_t9("large", 1.0, 128, 73, 5.4, 68.4),
    _v3_t9("large", 1.0, 96, 43, 5.4, 63.3),
    _v3_t9("small", 1.25, 224, 91, 3.6, 70.4), _v3_t9("small", 1.0, 224, 57, 2.5, 67.5),
    _v3_t9("small", 0.75, 224, 44, 2.0, 65.4, _T9_ONE_OFF), _v3_t9("small", 0.5, 224, 21, 1.6, 58.0),
    _v3_t9("small", 0.35, 224, 12, 1.4, 49.8, "1.3498 M rounds to 1.3; Table 9 prints 1.4"),
    _v3_t9("small", 1.0, 256, 74, 2.5, 68.5, _T9_ONE_OFF), _v3_t9("small", 1.0, 160, 30, 2.5, 62.8),
    _v3_t9("small", 1.0, 128, 20, 2.5, 57.3), _v3_t9("small", 1.0, 96, 12, 2.5, 51.7),
    # TF-slim V3 checkpoints (float rows; the 8-bit rows repeat them), SPEC §3.8.
    Published("TF-slim V3", "Large dm=1", "mobilenet_v3_large", 224, 217, 5.4, 1.0, "tf",
              top1=75.2),
    Published("TF-slim V3", "Large dm=0.75", "mobilenet_v3_large", 224, 155, 4.0, 0.75, "tf",
              top1=73.3),
    Published("TF-slim V3", "Small dm=1", "mobilenet_v3_small", 224, 66, 2.9, 1.0, "tf",
              note=_OLD_SMALL, top1=67.5),
    Published("TF-slim V3", "Small dm=0.75", "mobilenet_v3_small", 224, 44, 2.4, 0.75, "tf",
              note=f"{_OLD_SMALL}; 0.75: 43.40 M / 2.04 M", top1=65.4),
    Published("TF-slim V3", "Large minimalistic", "mobilenet_v3_large_minimal", 224, 209, 3.9,
              1.0, "tf", top1=72.3),
    Published("TF-slim V3", "Small minimalistic", "mobilenet_v3_small_minimal", 224, 65, 2.0,
              1.0, "tf", note="65 M comes from the same older V3-Small generation as its 66 M",
              top1=61.9),
)
TABLE_SOURCES: tuple[str, ...] = tuple(dict.fromkeys(p.source for p in PUBLISHED))

#: V1 Table 2 as printed (SPEC §1.3): layer type -> (MAdds %, params %).
V1_TABLE_2: dict[str, tuple[float, float]] = {
    "Conv 1×1": (94.86, 74.59), "Conv DW 3×3": (3.06, 1.06),
    "Conv 3×3": (1.19, 0.02), "Fully Connected": (0.18, 24.33),
}
#: The note V1 Table 2's misprinted row carries.
V1_TABLE_2_NOTES: dict[str, str] = {
    "Conv 3×3": "the paper prints 1.19%, digits transposed: its column then sums to 99.29%",
}

#: V1 Table 3 (SPEC §1.4): one 3×3 layer, N = M, cumulative modifications:
#: (label, M, D_F, separable, (published MAdds M, published params M)).
#: ρ = 0.714 is the resolution multiplier 160/224: D_F = 14 · 0.714 = 10.
V1_TABLE_3: tuple[tuple[str, int, int, bool, tuple[float, float]], ...] = (
    ("Convolution", 512, 14, False, (462, 2.36)),
    ("Depthwise Separable Conv", 512, 14, True, (52.3, 0.27)),
    ("α = 0.75", 384, 14, True, (29.6, 0.15)),
    ("ρ = 0.714", 384, 10, True, (15.1, 0.15)),
)

#: V2 Table 3 (arXiv v4), SPEC §2.4: size → (channels, Kb) for V1 and V2.
V2_TABLE_3: dict[int, dict[str, tuple[int, int]]] = {
    112: {"mobilenet_v1": (64, 1600), "mobilenet_v2": (16, 400)},
    56: {"mobilenet_v1": (128, 800), "mobilenet_v2": (32, 200)},
    28: {"mobilenet_v1": (256, 400), "mobilenet_v2": (64, 100)},
    14: {"mobilenet_v1": (512, 200), "mobilenet_v2": (160, 62)},
    7: {"mobilenet_v1": (1024, 199), "mobilenet_v2": (320, 32)},
    1: {"mobilenet_v1": (1024, 2), "mobilenet_v2": (1280, 2)},
}
