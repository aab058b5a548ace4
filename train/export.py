"""``python -m train.export ckpt=PATH out=DIR``: write a checkpoint as a PyLate/sentence-transformers directory."""

import sys

import hydra
from omegaconf import DictConfig

from lightning_modules.encoder import ModelLoadError
from lightning_modules.export import ExportError, export_model, load_pretrained


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        model = load_pretrained(cfg.ckpt)
        out = export_model(model, cfg.out, card={"base_model": model.encoder.backbone.config._name_or_path},
                           overwrite=cfg.overwrite, onnx=cfg.onnx)
    except (ModelLoadError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"Exported to {out}")


if __name__ == "__main__":
    main()
