"""Example aideploy plugins: ``data=loadtxt`` (:mod:`.csv_data`) and a stage log (:mod:`.stage_log`)."""

__version__ = "0.1.0"
