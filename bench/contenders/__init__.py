"""The ways of training this MLP that the bench compares, a module each, all timed the same way (timing.py): the
compute bound, the tutorial's eager loop, Keras `fit`, distmnist's trainer, JAX's compiled scan and PyTorch's eager
loop. The last three also run in a process of their own (solo.py): there each has runner() and race()."""
