"""Entry points: ``python -m train`` (training) and its sub-commands."""

from train.resolvers import register_resolvers

register_resolvers()
