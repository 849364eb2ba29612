"""The machine a measurement ran on: CPU model, cores, the bf16/AMX flags that decide bf16 speed, load average.

bench/ prints it beside every figure; a training run can record it in its config.json the same way."""
import os

CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f")


def machine_info():
    """What a figure depends on: CPU model, cores, the bf16/AMX flags and the 1/5/15-minute load average now."""
    try:
        cpuinfo = open("/proc/cpuinfo").read()
    except OSError:
        cpuinfo = ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 "unknown")
    return {"cpu": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in CPU_FLAGS},
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def busy_cores(window=0.25):
    """CPU cores kept busy by other processes, measured now: the non-idle share of /proc/stat's CPU time over
    `window` seconds (this process sleeps through it) times the cores. Unlike the load average it does not remember
    the previous minute (a preceding stage of the same pipeline, or the other side of a benchmark pair). None
    where /proc/stat is not readable."""
    import time

    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle  # user nice system idle iowait irq softirq steal (guest is inside user)

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total1 - total0
    return round((1 - (idle1 - idle0) / elapsed) * (os.cpu_count() or 1), 2) if elapsed > 0 else 0.0


def wait_policy_for(busy, cores):
    """ACTIVE (idle OpenMP threads spin) unless other processes keep more than half the cores busy."""
    return "PASSIVE" if busy > cores / 2 else "ACTIVE"


def choose_omp_wait_policy():
    """Set OMP_WAIT_POLICY for this process unless the user did, before torch starts its thread pool: idle
    OpenMP threads spin (ACTIVE) on a quiet machine, sleep (PASSIVE) when other processes keep more than half the
    cores busy right now (busy_cores; the 1-minute load average where /proc/stat is missing). Measured
    (docs/testing.md, Benchmarks): quiet, ACTIVE trains 1.1-1.9x faster than PASSIVE; at load 4.5-5 on 2 cores
    PASSIVE was 5x faster than ACTIVE. Deciding on the load average instead picked PASSIVE right after a preceding
    stage or benchmark run had finished (load 1.4-1.8 on an otherwise idle 2-core machine), halving training speed.
    Returns {"omp_wait_policy", "chosen_by", "load_avg", "busy_cores"}."""
    load = round(os.getloadavg()[0], 2)
    if "OMP_WAIT_POLICY" in os.environ:
        return {"omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "chosen_by": "environment", "load_avg": load}
    busy = busy_cores()
    policy = wait_policy_for(load if busy is None else busy, os.cpu_count() or 1)
    os.environ["OMP_WAIT_POLICY"] = policy
    return {"omp_wait_policy": policy, "chosen_by": "load average" if busy is None else "busy cores",
            "load_avg": load, "busy_cores": busy}
