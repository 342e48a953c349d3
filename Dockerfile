# LoRA Studio for a GPU server: the web UI on port 7860 (login required), state on /data, Hub downloads on /cache.
#
#   docker build -t lora-studio .
#   docker run --gpus all -p 127.0.0.1:7860:7860 -e LORA_STUDIO_AUTH=me:a-long-password \
#       -v lora-studio-data:/data -v lora-studio-hf:/cache lora-studio
#
# PyTorch is pinned to the CUDA 13.0 build (torch 2.13.0 from PyPI ships CUDA 13.0: NVIDIA driver >= 580).
# For older drivers build with the CUDA 12.8 wheel and image:
#   --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python and tini (PID 1: forwards `docker stop` to the server and reaps finished job runners).
# The base image tag pins the Ubuntu release; its security updates replace exact package versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# The pinned CUDA build of PyTorch in its own layer (the big one), then the project from its own files.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY . /src
RUN pip install --no-cache-dir "/src[tensorboard]" \
    && install -m 0755 /src/docker/entrypoint.sh /usr/local/bin/docker-entrypoint

# A non-root user owns the two volumes (Docker copies this ownership into new named volumes).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/studio --shell /usr/sbin/nologin studio \
    && mkdir -p /data /cache/huggingface \
    && chown -R studio:studio /data /cache
ENV LORA_STUDIO_HOME=/data \
    HF_HOME=/cache/huggingface
VOLUME ["/data", "/cache"]
USER 10001:10001
WORKDIR /data

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 CMD ["lora-studio", "healthcheck"]
ENTRYPOINT ["tini", "--", "docker-entrypoint"]
CMD ["serve", "--host", "0.0.0.0"]
