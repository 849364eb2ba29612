"""common/machine.machine_info: the CPU flags it reports are the ones /proc/cpuinfo lists, and the load average."""
import os
from pathlib import Path

import pytest

from common.machine import CPU_FLAGS, machine_info


def test_flags_and_load_match_the_system():
    info = machine_info()
    assert set(info["flags"]) == set(CPU_FLAGS) and len(info["load_avg"]) == 3 and info["cores"] == os.cpu_count()
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    listed = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split()
    for flag, present in info["flags"].items():
        assert present == (flag in listed), flag
    # a flag name that is a prefix of another must not count as present by substring (avx512f vs avx512fp16)
    assert info["flags"]["avx512f"] == ("avx512f" in listed)
