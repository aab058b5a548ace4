"""``python -m train +experiment=sts``: compose the config, train, test, write results.json."""

import sys

import hydra
from omegaconf import DictConfig

from train.cli import exit_on_user_error
from train.pipeline import run
from train.settings import check_run_dir_argument


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    results = run(cfg)
    # Returned so that Hydra sweepers (-m model.lr=1e-5,3e-5) can optimise it.
    return results.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    check_run_dir_argument(sys.argv[1:])
    main()
