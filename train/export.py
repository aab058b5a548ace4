"""``python -m train.export ckpt=PATH out=DIR``: write a checkpoint as a PyLate/sentence-transformers directory."""

import hydra
from omegaconf import DictConfig

from lightning_modules.model import LateInteractionModel
from lightning_modules.results import card_from_checkpoint
from train.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    model = LateInteractionModel.load(cfg.ckpt, setting="ckpt")
    # The model card tells what the run knew: its data, metrics and config (results.json beside it).
    card = {"base_model": model.encoder.backbone.config._name_or_path, **card_from_checkpoint(cfg.ckpt)}
    out = model.save_pretrained(cfg.out, card=card, overwrite=cfg.overwrite, onnx=cfg.onnx)
    print(f"Exported to {out}")


if __name__ == "__main__":
    main()
