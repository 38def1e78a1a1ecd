"""numpy's huge-page advice: off in distmnist's processes (the stall it caused is in docs/performance.md), unless
the user set NUMPY_MADVISE_HUGEPAGE."""

import os
import subprocess
import sys

import pytest

# Whether numpy advises huge pages in a process that imported distmnist first (as every entry point does):
# numpy's setter hands back the setting it replaces.
PROBE = ("import distmnist, numpy; from numpy._core import multiarray; "
         "print(multiarray._set_madvise_hugepage(True))")


@pytest.mark.parametrize("users_setting,advised", [(None, "False"), ("1", "True"), ("0", "False")])
def test_numpy_advises_no_huge_pages_unless_the_user_asks(users_setting, advised):
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if users_setting is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = users_setting
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == advised
