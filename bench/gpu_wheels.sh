#!/usr/bin/env bash
# Download the wheels bench/gpu_check.py needs on the GPU machine into .whl/ (git-ignored), and
# check them: total size (the device tool carries at most 64 MiB with the working tree; we keep
# under 60 MB), one version of each, and every Requires-Dist satisfied by another carried wheel or
# by the GPU image's own packages (/work/.library/device/KINDS.md).
#
#   bash bench/gpu_wheels.sh            # from the repository root, with network access
#
# The image has torch, transformers, peft, accelerate, h5py, pyarrow, pandas, ... but not trl,
# datasets (trl needs it), deepspeed, submitit or vllm. vllm (hundreds of MB, CUDA builds) does
# not travel: the check records that it does not import. openai is not needed by the check.
# Versions are the ones .venv runs (what the tests exercise); deepspeed ships only an sdist, so
# its wheel is built here (it is pure Python: ops compile at first use on the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=.whl
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
PKGS=(trl submitit datasets dill multiprocess hjson pydantic pydantic_core annotated-types typing-inspection typing_extensions)
SPECS=()
for p in "${PKGS[@]}"; do SPECS+=("$p==$(ver "$p")"); done
# The flags the device tool's README gives for Python 3.12 on manylinux x86-64.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${SPECS[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DEST" "deepspeed==$(ver deepspeed)"
"$PY" - "$DEST" <<'PYEOF'
import sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

dest = Path(sys.argv[1])
# The GPU image's packages (KINDS.md, read 2026-11-17); versions where KINDS.md gives them.
IMAGE = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "transformers": "5.17.0",
         "tokenizers": "0.23.2", "safetensors": "0.8.0", "torch": "2.11.0", "triton": "3.6.0"}
IMAGE_NAMES = """aiohttp anyio attrs certifi charset-normalizer click cloudpickle filelock fsspec h5py httpx idna
jinja2 markupsafe matplotlib msgpack ninja nvidia-ml-py packaging pandas peft pillow psutil py-cpuinfo pyarrow
pyyaml regex requests rich safetensors scipy sentencepiece setuptools tqdm typing-extensions urllib3 xxhash
einops protobuf""".split()
wheels = sorted(dest.glob("*.whl"))
carried, problems, total = {}, [], 0
for w in wheels:
    name, version, _, tags = parse_wheel_filename(w.name)
    if name in carried:
        problems.append(f"two versions of {name}: pip would refuse the install")
    carried[name] = str(version)
    total += w.stat().st_size
    if name == "deepspeed" and not any(t.interpreter == "py3" and t.abi == "none" and t.platform == "any" for t in tags):
        problems.append(f"{w.name}: not py3-none-any")
for w in wheels:
    name = parse_wheel_filename(w.name)[0]
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
    for r in map(Requirement, reqs):
        if r.marker is not None and not r.marker.evaluate({"extra": "", "python_version": "3.12",
                                                             "sys_platform": "linux", "platform_system": "Linux",
                                                             "platform_machine": "x86_64", "implementation_name": "cpython",
                                                             "python_full_version": "3.12.3", "os_name": "posix"}):
            continue
        n = canonicalize_name(r.name)
        if n in carried:
            ok, where = r.specifier.contains(carried[n], prereleases=True), f"carried {carried[n]}"
        elif n in IMAGE:
            ok, where = r.specifier.contains(IMAGE[n], prereleases=True), f"image {IMAGE[n]}"
        elif n in IMAGE_NAMES:
            ok, where = True, "image (version not listed: recorded by the check's device part)"
        else:
            ok, where = False, "missing"
        print(f"  {name:<20} needs {str(r):<40} {'ok' if ok else 'NOT SATISFIED'}: {where}")
        if not ok:
            problems.append(f"{name} needs {r}: {where}")
print(f"{len(wheels)} wheels, {total / 1e6:.1f} MB in all (limit 60 MB)")
if total > 60e6:
    problems.append(f"{total / 1e6:.1f} MB of wheels: over 60 MB")
for p in problems:
    print("PROBLEM:", p)
sys.exit(1 if problems else 0)
PYEOF
