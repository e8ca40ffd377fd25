"""ernievil2: PaddlePaddle-native ERNIE-ViL 2.0 pre-training and cross-modal retrieval."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def requirements(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


setup(
    name="ernievil2",
    version="0.1.0",
    description="ERNIE-ViL 2.0 multi-view contrastive pre-training, evaluation and serving on PaddlePaddle",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ernievil2", "ernievil2.*"]),
    package_data={"ernievil2": ["resources/vocab/*/*", "inference/static/*"]},
    # paddlepaddle or paddlepaddle-gpu is left to the user (see README): requiring
    # one would uninstall the other.
    install_requires=requirements("requirements.txt"),
    extras_require={"dev": requirements("requirements-dev.txt")},
    license="Apache-2.0",
)
