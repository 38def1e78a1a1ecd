"""What every layer may use, none of it TensorFlow: errors, files written atomically and read within bounds, the
run's settings (TrainConfig), the console's progress bar, the filters that keep TensorFlow's log lines quiet, and
cli.py, the flag parsing and one-line errors every entry point shares."""
