"""``python -m train.evaluate model=DIR tasks=[...]``: STS evaluation with MaxSim; a table and JSON."""

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_modules.data.errors import DataError
from lightning_modules.encoder import ModelLoadError
from lightning_modules.evaluation import evaluate_sts, format_table, load_any_model


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    tasks = OmegaConf.to_container(cfg.tasks) if OmegaConf.is_list(cfg.tasks) else [cfg.tasks]
    try:
        model = load_any_model(cfg.model)
        evaluation = evaluate_sts(model, [str(t) for t in tasks], cfg.split, cfg.batch_size)
    except (DataError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    evaluation["model"] = str(cfg.model)
    print(format_table(evaluation))
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
        print(f"Written to {cfg.out}")


if __name__ == "__main__":
    main()
