"""The scoring service that runs inside azmlinfsrv, locally or in Azure.

This directory is the source directory a deployment ships: ``score.py`` is the entry script
and the modules beside it are all it imports besides numpy, scikit-learn/joblib and the
encryption runtimes. Nothing here imports the ``aideploy`` package, which is not installed in
the service's image.
"""
