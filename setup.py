"""spectralar_hf: spectral autoregressive image generation (SpectralAR, FAR) for the Hugging Face stack."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

# Lower bounds are the oldest versions the test suite was run with (README, "Tested versions"); the newest are what
# `.ci/run` installs. No upper bounds: none is known to break.
INSTALL_REQUIRES = [
    # Install torch==2.13.0 first on CPU machines: an unpinned torch pulls the CUDA build.
    "torch>=2.13",
    "transformers>=5.23",
    "diffusers>=0.42",
    "accelerate>=1.15",
    "datasets>=5.2",
    "safetensors>=0.8",
    "huggingface-hub>=2.4",
    "evaluate>=0.4.6",
    "numpy>=2.0",
    "scipy>=1.13",
    "pillow>=10.4",
    "tqdm>=4.66",
    # brace patterns of --train_data_files shards ("shards/{000000..001281}.tar"), as webdataset writes them
    "braceexpand>=0.1.7",
]

EXTRAS = {
    # Real photos for tests, benchmarks and the offline demo data.
    "photos": ["scikit-image>=0.24"],
    # Training scripts in examples/ log to TensorBoard.
    "train": ["tensorboard>=2.18"],
    "dev": ["pytest>=9.0", "scikit-image>=0.24", "tensorboard>=2.18"],
}

setup(
    name="spectralar_hf",
    version="0.1.0",
    description=("Spectral autoregressive image generation (SpectralAR, FAR) with transformers, diffusers and "
                 "accelerate"),
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"spectralar_hf": ["data/*.json", "data/*.md"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["spectralar-hf=spectralar_hf.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
