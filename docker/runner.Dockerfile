# syntax=docker/dockerfile:1
# adl runner: runs agents and evals (CPU only) against a worker, e.g.
#   adl agent run cake_bake --agent adl --provider anthropic:claude-sonnet-4-5 \
#       --worker-url http://worker:8765
#   adl eval run /config/eval.yaml
# Build from the repository root: docker build -f docker/runner.Dockerfile -t adl-agent-runner .
# Run-time environment: ADL_WORKER_TOKEN (the worker's bearer token), OPENAI_API_KEY and/or
# ANTHROPIC_API_KEY. Outputs and caches go under /results (mount a host folder there).
# The core install with the ray extra, without the worker extra: no torch. It runs agents and
# evaluation grids against a worker, or drives a grid on a Ray cluster (`adl eval run --ray`);
# grids are graded by an LLM (`grader: openai:MODEL`, ...): the offline grader needs torch.
FROM python:3.11.15-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /opt/adl/src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY tools ./tools
COPY evals ./evals
COPY prompts ./prompts
RUN pip install --no-cache-dir "./[ray,inspect]" \
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
