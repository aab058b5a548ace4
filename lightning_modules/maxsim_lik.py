"""Transitional alias of ``lightning_modules.maxsim.late_interaction_kernels``, for
``lightning_modules/module.py`` until it imports ``engine_settings`` from ``lightning_modules.maxsim``;
delete it then."""

from lightning_modules.maxsim.late_interaction_kernels import DTYPES, PACKAGE, check, installed, maxsim_matrix  # noqa: F401
