"""``python -m train.export ckpt=PATH out=DIR``: write a checkpoint as a PyLate/sentence-transformers directory."""

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_modules.model import LateInteractionModel
from lightning_modules.model.card import run_command
from lightning_modules.results import card_from_checkpoint
from train.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    model = LateInteractionModel.load(cfg.ckpt, setting="ckpt")
    # The model card tells what the run knew: its data (the checkpoint's DataModule settings),
    # metrics, config (results.json beside it) and command line (its .hydra/overrides.yaml).
    card = {"base_model": model.encoder.backbone.config._name_or_path, **card_from_checkpoint(cfg.ckpt),
            "command": _recorded_command(Path(cfg.ckpt))}
    out = model.save_pretrained(cfg.out, card=card, overwrite=cfg.overwrite, onnx=cfg.onnx)
    print(f"Exported to {out}")


def _recorded_command(ckpt: Path) -> str | None:
    """The command of the run whose ``<run>/checkpoints/`` holds ``ckpt``, from the overrides Hydra
    recorded in ``<run>/.hydra/overrides.yaml`` (a resumed run keeps its first one there); None
    for a checkpoint outside a run folder, or a run that kept no ``.hydra``."""
    run = ckpt.expanduser().resolve().parent.parent
    overrides = run / ".hydra" / "overrides.yaml"
    if not ((run / "config_resolved.yaml").is_file() and overrides.is_file()):
        return None
    try:
        return run_command([str(o) for o in OmegaConf.load(overrides)])
    except Exception:  # noqa: BLE001 - an unreadable record leaves the card without a command
        return None


if __name__ == "__main__":
    main()
