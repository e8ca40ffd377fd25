"""ernievil2: PaddlePaddle-native ERNIE-ViL 2.0 pre-training and cross-modal retrieval."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def commands():
    """``ernievil2-<name>`` console scripts, one per module of ernievil2/commands/ (functions of ernievil2/cli.py)."""
    names = sorted(f[:-3] for f in os.listdir(os.path.join(HERE, "ernievil2", "commands")) if f.endswith(".py") and f != "__init__.py")
    return [f"ernievil2-{name.replace('_', '-')} = ernievil2.cli:{name}" for name in names]


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
    package_data={"ernievil2": ["resources/vocab/*/*", "resources/zeroshot/*", "inference/static/*"]},
    # paddlepaddle or paddlepaddle-gpu is left to the user (see README): requiring
    # one would uninstall the other.
    install_requires=requirements("requirements.txt"),
    extras_require={"dev": requirements("requirements-dev.txt")},
    entry_points={"console_scripts": commands()},
    license="Apache-2.0",
)
