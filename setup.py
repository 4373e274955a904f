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
    # The gin configs ship inside the package folder tree so --gin_file=quickstart.gin
    # resolves after a plain (non-editable) install too.
    data_files=[
        (f"explore/{folder.relative_to(ROOT)}",
         sorted(str(p.relative_to(ROOT)) for p in folder.glob("*.gin")))
        for folder in sorted({p.parent for p in (ROOT / "configs").rglob("*.gin")})
    ],
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10.0",
        "optax",
        "orbax-checkpoint",
        "gin-config>=0.5.0",
        "absl-py",
        "numpy",
        "scipy",
        "seqio",
        "sentencepiece",
        "grain",
        "pyarrow",
        "safetensors",
    ],
    extras_require={
        # Cloud TPU VMs: JAX with libtpu.
        "tpu": ["jax[tpu]"],
        # NVIDIA GPUs: JAX with CUDA 12 wheels.
        "gpu": ["jax[cuda12]"],
        # Tests and benchmarks. shellcheck (for launch/*.sh) is a Debian package:
        # apt-get install shellcheck. The checkpoint-import parity test also uses
        # transformers + a CPU build of torch, installed by .ci/run, never required.
        # Pretrained checkpoints whose tokenizer is a Hugging Face tokenizer.json
        # (Llama 3 style); SentencePiece tokenizer.model needs nothing extra.
        "hf": ["tokenizers"],
        # tools/plot_coverage.py (curves in docs/llm_results.md).
        "plots": ["matplotlib"],
        "dev": ["pytest", "pytest-xdist", "tokenizers"],
    },
    entry_points={"console_scripts": ["explore=explore.main:console_main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
    ],
)
