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
