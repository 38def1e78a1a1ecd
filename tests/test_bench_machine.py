"""bench/machine.py: what /proc/cpuinfo says, and the kind of machine that names its results file
(bench/results/<kind>.md), for the CPUs these sessions meet and a few more."""

import pytest

from bench import machine

ZEN3 = "AMD EPYC 7B13 64-Core Processor", "fpu avx avx2 fma sha_ni"
ZEN4 = "AMD EPYC 9B14 96-Core Processor", "avx2 fma avx512f avx512_bf16 avx512_vnni"
SAPPHIRE_RAPIDS = (
    "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
    "avx2 fma avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8",
)
CASCADE_LAKE = "Intel(R) Xeon(R) CPU @ 2.80GHz", "avx2 fma avx512f avx512_vnni"


@pytest.mark.parametrize(
    "model, flags, arch, kind",
    [
        (*ZEN3, "x86_64", "amd-epyc-avx2"),
        (*ZEN4, "x86_64", "amd-epyc-avx512-bf16"),
        (*SAPPHIRE_RAPIDS, "x86_64", "intel-xeon-amx"),
        (*CASCADE_LAKE, "x86_64", "intel-xeon-avx512"),
        ("AMD EPYC", "avx2 fma", "x86_64", "amd-epyc-avx2"),  # a hypervisor that hides the model number
        ("Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz", "avx2 fma", "x86_64", "intel-core-avx2"),
        ("", "fp asimd sve sve2 bf16 i8mm", "aarch64", "aarch64-sve2-bf16"),  # Arm kernels give no model name
        ("", "fp asimd", "aarch64", "aarch64"),
        ("", "", "", "unknown"),
    ],
)
def test_the_kind_is_vendor_line_and_widest_instructions(model, flags, arch, kind):
    assert machine.cpu_kind(model, set(flags.split()), arch) == kind


def test_machines_with_gpus_have_kinds_of_their_own():
    assert machine.kind(ZEN3[0], set(ZEN3[1].split()), ["NVIDIA L4"]).endswith("-avx2-1x-nvidia-l4")
    assert machine.kind(ZEN3[0], set(ZEN3[1].split()), []).endswith("-avx2")


def test_cpuinfo_is_read_for_x86_and_arm_and_its_absence(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n"
        "flags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n"
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd sve bf16\nCPU implementer\t: 0x41\n")
    assert machine.read_cpuinfo(str(x86)) == ("AMD EPYC 7B13 64-Core Processor", {"fpu", "avx2", "fma"})
    assert machine.read_cpuinfo(str(arm)) == ("", {"fp", "asimd", "sve", "bf16"})
    assert machine.read_cpuinfo(str(tmp_path / "missing")) == ("", set())
