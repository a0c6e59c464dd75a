"""``model=onnx``: an ``.onnx`` file (e.g. converted with skl2onnx), served with onnxruntime.

Served in plain only: the encrypted schemes need the model's weights as one affine map,
which an ONNX graph does not hand over.
"""

from aideploy import hookimpl
from aideploy.registry import model_path, register_model

PLUGIN_NAME = "onnx_model"
RUNTIME = ["onnxruntime>=1.17", "onnx>=1.14"]


@hookimpl
def aideploy_scoring_requirements(ctx):
    return RUNTIME if ctx.cfg.model.plugin == PLUGIN_NAME else None


@hookimpl
def aideploy_prepare_model(cfg, ctx):
    path = model_path(cfg, "an .onnx file, e.g. model.path=model.onnx")
    return register_model(ctx, cfg.name, path, "onnx", tags={"source": str(path)})
