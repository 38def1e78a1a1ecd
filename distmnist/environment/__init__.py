"""The environment a run starts in, as the entry points meet it: TensorFlow imported quietly (tfquiet.py), XLA's CPU
options (xlaflags.py), Vertex AI's environment (vertex.py), and the doctor's checks of this machine (checks.py)."""
