"""Ray Tune sweeps: sweep presets (``tune/configs/*.yaml``, checked by :mod:`tune.spec`) and their Ray Tune
objects (:mod:`tune.spaces`); ``python -m jobs.tune`` runs them."""
