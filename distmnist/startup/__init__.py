"""Start-up plumbing for the entry points: TensorFlow imported quietly (tfquiet.py), XLA's CPU options (xlaflags.py),
Vertex AI's environment (vertex.py), and the doctor's checks (checks.py)."""
