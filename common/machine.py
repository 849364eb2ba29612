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


def choose_omp_wait_policy():
    """Set OMP_WAIT_POLICY for this process unless the user did, before torch starts its thread pool: idle
    OpenMP threads spin (ACTIVE) on a quiet machine, sleep (PASSIVE) when the 1-minute load average is above
    half the cores. Measured (docs/testing.md, Benchmarks): quiet, ACTIVE trains 1.1-1.85x faster than PASSIVE;
    at load 4.5-5 on 2 cores PASSIVE was 5x faster than ACTIVE. Returns {"omp_wait_policy", "chosen_by", "load_avg"}."""
    load = os.getloadavg()[0]
    if "OMP_WAIT_POLICY" in os.environ:
        return {"omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "chosen_by": "environment", "load_avg": load}
    policy = "PASSIVE" if load > (os.cpu_count() or 1) / 2 else "ACTIVE"
    os.environ["OMP_WAIT_POLICY"] = policy
    return {"omp_wait_policy": policy, "chosen_by": "load average", "load_avg": round(load, 2)}
