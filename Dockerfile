# CUDA image for GPU users: docker build -t ilora-dllm2rec:latest .
# docker run --gpus all -it -v "$(pwd)/result:/workspace/result" ilora-dllm2rec:latest make demo
FROM nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 UV_LINK_MODE=copy
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip make git \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m pip install --no-cache-dir uv

WORKDIR /workspace
COPY . .
RUN uv sync --frozen --python python3.11
# FlashAttention-2 is optional (A100/L4 and newer); the build needs the CUDA toolchain above.
ARG WITH_FLASH_ATTN=0
RUN if [ "$WITH_FLASH_ATTN" = "1" ]; then uv sync --frozen --all-extras; fi

CMD ["make", "help"]
