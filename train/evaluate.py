"""``python -m train.evaluate model=DIR tasks=[...]``: STS evaluation with MaxSim; a table and JSON."""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_modules.evaluation.sts import evaluate_sts, format_table, load_any_model
from train.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    tasks = OmegaConf.to_container(cfg.tasks) if OmegaConf.is_list(cfg.tasks) else [cfg.tasks]
    model = load_any_model(cfg.model)
    evaluation = evaluate_sts(model, [str(t) for t in tasks], cfg.split, cfg.batch_size)
    evaluation["model"] = str(cfg.model)
    print(format_table(evaluation))
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
        print(f"Written to {cfg.out}")


if __name__ == "__main__":
    main()
