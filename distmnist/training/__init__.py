"""The training library: the model, the step's maths, the input, the trainer (the compiled calls), the evaluator,
the workers' agreement, the controller (the outer loop and its schedule), strategies, devices, the profiler and
the cluster's TF_CONFIG. No flags and no console output: it takes settings objects and reports through a Reporter."""

LAYER_SIZES = (784, 512, 256, 10)  # the network's shape (model.py), importable without TensorFlow
