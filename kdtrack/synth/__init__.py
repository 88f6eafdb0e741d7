"""The procedural crowd world: identities, people, scenes and videos written in real dataset layouts.

Entry point: :func:`kdtrack.synth.world.generate_world`.
"""

from kdtrack.synth.appearance import Identity, appearance_differences, make_identity_bank
from kdtrack.synth.world import generate_world, plan_units, run_unit

__all__ = ["Identity", "appearance_differences", "generate_world", "make_identity_bank", "plan_units", "run_unit"]
