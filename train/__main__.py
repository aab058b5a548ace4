"""``python -m train +experiment=sts``: compose the config, train, test, write results.json."""

import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from lightning_modules.data.errors import DataError
from lightning_modules.encoder import ModelLoadError
from train.pipeline import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        results = run(cfg)
    except (DataError, ModelLoadError, InstantiationException) as error:
        # A constructor's error reaches us wrapped by Hydra's instantiate.
        cause = error.__cause__ if isinstance(error, InstantiationException) else error
        if not isinstance(cause, (DataError, ModelLoadError)):
            raise
        # Bad input is the user's to fix: one clear paragraph, not a library traceback.
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
    # Returned so that Hydra sweepers (-m model.lr=1e-5,3e-5) can optimise it.
    return results.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
