"""The Azure ML image for ``encryption=fast``: the conda environment, then the kernels compiled in it.

Given a conda file and a base image, Azure ML builds the image itself (``conda env create``
on the base), and aideploy's kernels (:mod:`aideploy_scoring.fastkernels_aot`) would then be
compiled by the first worker's ``init()`` in every new container. With a Docker build context
instead (azure-ai-ml's ``Environment(build=BuildContext(path=...))``, the REST body's
``properties.build``), the image takes the same steps and one more: it compiles the kernels
(``fastkernels_aot.py --portable``: one module per x86-64 level, since the image is built on
one machine and served on another), and its workers load the best one their CPU runs.
A compile that fails does not fail the image: the workers then compile in ``init()``, or run
numba's kernels.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from aideploy_scoring import fastkernels_aot

CONTEXT_DIR = "image"  # beside the environment's conda file
CONDA_FILE = "environment.yml"
KERNELS_DIR = "kernels"  # the build's sources, in the context
ENV_PREFIX = "/azureml-envs/aideploy"  # where Azure ML's own image build puts a conda environment
KERNEL_CACHE = "/aideploy/kernels"  # AIDEPLOY_KERNEL_CACHE in the image: where the workers look
SCHEMES = ("fast",)  # the encryption schemes whose service runs the kernels

DOCKERFILE = f"""\
# Written by aideploy (aideploy/kernel_image.py): the scoring image for encryption=fast. The steps
# Azure ML takes for a conda file on a base image, then the fast scheme's kernels compiled into the
# image, so that no worker compiles them; a failed compile leaves that to the first worker.
FROM {{image}}
USER root
COPY {CONDA_FILE} /aideploy/{CONDA_FILE}
RUN conda env create -p {ENV_PREFIX} -f /aideploy/{CONDA_FILE} && conda clean -a -y
ENV AZUREML_CONDA_ENVIRONMENT_PATH={ENV_PREFIX}
ENV PATH={ENV_PREFIX}/bin:$PATH
ENV {fastkernels_aot.CACHE_ENV}={KERNEL_CACHE}
COPY {KERNELS_DIR} /aideploy/kernels-src
RUN (command -v gcc >/dev/null || (apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \\
        && rm -rf /var/lib/apt/lists/*)) \\
    && python /aideploy/kernels-src/fastkernels_aot.py --portable \\
    || echo "aideploy: the fast scheme's kernels were not compiled in the image; the first worker compiles them"
"""


def build_context(conda_file: Path, image: str) -> Path:
    """Write the build context (Dockerfile, the conda file, the kernels' sources) beside ``conda_file``."""
    context = conda_file.parent / CONTEXT_DIR
    shutil.rmtree(context, ignore_errors=True)
    (context / KERNELS_DIR).mkdir(parents=True)
    (context / "Dockerfile").write_text(DOCKERFILE.format(image=image))
    shutil.copyfile(conda_file, context / CONDA_FILE)
    sources = Path(fastkernels_aot.__file__).parent
    for name in (fastkernels_aot.SOURCE, "fastkernels_aot.py"):
        shutil.copyfile(sources / name, context / KERNELS_DIR / name)
    return context


def environment(conda_file: Path, image: str, scheme: str) -> Any:
    """azure-ai-ml's ``Environment`` for a deployment: the conda file on ``image``, built by Azure ML,
    or, for a scheme with kernels, the build context that also compiles them."""
    from azure.ai.ml.entities import BuildContext, Environment

    if scheme not in SCHEMES:
        return Environment(conda_file=str(conda_file), image=image)
    return Environment(build=BuildContext(path=str(build_context(conda_file, image))))
