"""``model=sklearn_pickle``: a user's fitted scikit-learn estimator or Pipeline (.pkl/.joblib).

Classifiers and regressors alike; the service answers with whatever the estimator offers
(``predict``, ``predict_proba``, ``decision_function``). Encrypted schemes need a linear model
or a Pipeline of affine steps ending in one (see ``aideploy_scoring.linearize``).
"""

from aideploy import hookimpl
from aideploy.registry import model_path, register_model


@hookimpl
def aideploy_prepare_model(cfg, ctx):
    path = model_path(cfg, "a .pkl/.joblib file, e.g. model.path=sklearn_mnist_model.pkl")
    return register_model(ctx, cfg.name, path, "sklearn", tags={"source": str(path)})
