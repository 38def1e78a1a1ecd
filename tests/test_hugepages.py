"""numpy's huge-page advice: off in distmnist's processes (the stall it caused is in docs/performance.md), unless
the user set NUMPY_MADVISE_HUGEPAGE."""

import pytest

from helpers import run_python

# Whether numpy advises huge pages in a process that imported distmnist first (as every entry point does):
# numpy's setter hands back the setting it replaces.
PROBE = "import distmnist, numpy; from numpy._core import multiarray; print(multiarray._set_madvise_hugepage(True))"


@pytest.mark.parametrize("users_setting,advised", [(None, "False"), ("1", "True"), ("0", "False")])
def test_numpy_advises_no_huge_pages_unless_the_user_asks(users_setting, advised):
    result = run_python(
        PROBE,
        timeout_s=60,
        env={"NUMPY_MADVISE_HUGEPAGE": users_setting} if users_setting else {},
        unset=() if users_setting else ("NUMPY_MADVISE_HUGEPAGE",),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == advised
