"""Topic ``ablation``: V2 Figure 6a, a linear bottleneck against a ReLU6 one, trained on
the same data order and seed. The only topic that trains, so it imports the trainer only
when it runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class AblationRow:
    variant: str
    project_act: str | None
    best_acc: float
    final_acc: float


def ablation(out: str | Path, *, data: str = "fashion-mnist", epochs: int = 1, seed: int = 0,
             max_steps: int | None = None, width_mult: float = 0.35,
             batch_size: int | None = None, workers: int = 2) -> list[AblationRow]:
    """Train V2 twice with the same seed and schedule: linear projection (the paper's
    bottleneck) and ReLU6 after the projection (V2 Figure 6a).

    A short schedule on Fashion-MNIST shows the direction of the effect, not ImageNet's
    size of it; both runs see the same data order and initialisation seed. The training
    recipe is :mod:`mobilenets.training`'s default; ``batch_size``/``workers`` pass through.
    """
    from ...training import TrainConfig, train

    rows = []
    for variant, act in (("linear", None), ("relu6", "RE6")):
        kwargs: dict[str, object] = {"small_input": True, "in_chans": 1, "num_classes": 10,
                                     "width_mult": width_mult}
        if act is not None:
            kwargs["project_act"] = act
        result = train(TrainConfig(model="mobilenet_v2", model_kwargs=kwargs, data=data,
                                   epochs=epochs, out=str(Path(out) / f"ablation-{variant}"),
                                   seed=seed, max_steps=max_steps, batch_size=batch_size,
                                   workers=workers))
        rows.append(AblationRow(variant, act, float(result.best_acc), float(result.final_acc)))
    return rows
