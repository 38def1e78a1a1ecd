"""What every layer may use, none of it TensorFlow: errors, files written atomically and read within bounds, the
run's settings (TrainConfig), the console's progress bar, and the filters that keep TensorFlow's log lines quiet."""
