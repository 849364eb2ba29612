"""common/machine: the CPU flags machine_info reports are the ones /proc/cpuinfo lists, and the load average; busy_cores
sees processes spinning now and forgets them once they stop (the load average does not)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.machine import CPU_FLAGS, busy_cores, machine_info, wait_policy_for


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


def test_busy_cores_sees_spinners_now_and_forgets_them_after():
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat on this system")
    cores = os.cpu_count() or 1
    spin = "import time\nend = time.time() + 20\nwhile time.time() < end: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        during = busy_cores(window=0.5)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    time.sleep(0.3)
    after = busy_cores(window=0.5)
    assert during > 0.75 * cores and wait_policy_for(during, cores) == "PASSIVE"
    # the spinners are gone: only what else runs on this machine remains (the load average would still show them)
    assert after < during - 0.5 * cores
    assert wait_policy_for(0.2, 2) == "ACTIVE" and wait_policy_for(1.2, 2) == "PASSIVE"
