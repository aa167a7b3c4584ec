"""An example mdp plugin package: :class:`~mdp_plugin_example.features.Donchian` (a feature)
and :class:`~mdp_plugin_example.strategies.Breakout` (a strategy)."""

from mdp_plugin_example.features import Donchian
from mdp_plugin_example.strategies import Breakout

__all__ = ["Breakout", "Donchian"]
