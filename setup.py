"""Installable package `explore`: LLM-planned interest exploration for recommenders."""

import pathlib

import setuptools

ROOT = pathlib.Path(__file__).parent

setuptools.setup(
    name="explore",
    version="0.1.0",
    description="LLM-powered interest exploration for large-scale recommendation (JAX/Flax).",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["explore", "explore.*"]),
    # The serving page (explore serve) is static HTML + JS inside the package.
    package_data={"explore.serving": ["static/*"]},
    # The gin configs ship inside the package folder tree so --gin_file=quickstart.gin
    # resolves after a plain (non-editable) install too.
    data_files=[
        (f"explore/{folder.relative_to(ROOT)}",
         sorted(str(p.relative_to(ROOT)) for p in folder.glob("*.gin")))
        for folder in sorted({p.parent for p in (ROOT / "configs").rglob("*.gin")})
    ],
    # Lower bounds are the versions the test suite runs with (.ci/run); older ones are untested.
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "gin-config>=0.5.0",
        "absl-py>=2.5.1",
        "numpy>=2.4.6",
        "scipy>=1.17.1",
        "sentencepiece>=0.2.3",
        "pyarrow>=26.0.1",
        "safetensors>=0.8.0",
        "tqdm>=4.70.1",
        # The report stage's plots (Agg backend, no display) and tools/plot_coverage.py.
        "matplotlib>=3.11.2",
    ],
    extras_require={
        # Cloud TPU VMs: JAX with libtpu.
        "tpu": ["jax[tpu]"],
        # NVIDIA GPUs: JAX with CUDA 12 wheels.
        "gpu": ["jax[cuda12]"],
        # The seqio Task/Mixture for T5X users (explore.llm.seqio_tasks); seqio brings
        # TensorFlow, tensorflow-text and tensorflow-datasets, which no stage needs.
        "seqio": ["seqio>=0.0.20"],
        # Pretrained checkpoints whose tokenizer is a Hugging Face tokenizer.json
        # (Llama 3 style); SentencePiece tokenizer.model needs nothing extra.
        "hf": ["tokenizers>=0.23.3"],
        # `explore serve`: the HTTP API and page (Starlette on uvicorn).
        "serve": ["starlette", "uvicorn"],
        # Tests and benchmarks: everything the suite imports. shellcheck (for launch/*.sh) is
        # a Debian package: apt-get install shellcheck; the page tests drive Debian's chromium
        # (apt-get install chromium). The checkpoint-import parity test also uses
        # transformers + a CPU build of torch, installed by .ci/run, never required.
        "dev": ["pytest>=9.0.3", "pytest-xdist>=3.8.0", "tokenizers>=0.23.3", "seqio>=0.0.20",
                "starlette", "uvicorn", "httpx"],
    },
    entry_points={"console_scripts": ["explore=explore.main:console_main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
    ],
)
