"""Builds the fused_resnet._C extension (C++ CPU kernels, plus CUDA kernels when possible).

Environment:
  FUSED_RESNET_CUDA_ARCHS    e.g. "8.0;9.0+PTX" (else TORCH_CUDA_ARCH_LIST, else "8.0;9.0+PTX")
  FUSED_RESNET_SKIP_CUDA=1   build the CPU kernels only
  FUSED_RESNET_PTXAS_VERBOSE=1  pass -Xptxas -v (registers / spills per kernel)
  CUDA_HOME                  the CUDA toolkit (else found by following `nvcc` on PATH)
  MAX_JOBS                   parallel compile jobs (ninja)

Install with `pip install --no-build-isolation -e .`: an isolated build would compile against
another torch than the one that loads the extension.
"""

import os
import re
import sys
from pathlib import Path

import torch
import torch.utils.cpp_extension as cpp_ext
from setuptools import setup

ROOT = Path(__file__).parent.resolve()
sys.path.insert(0, str(ROOT))  # cuda_toolkit.py, whichever folder the build runs from
from cuda_toolkit import find_cuda_home, nvcc_version  # noqa: E402

DEFAULT_ARCHS = "8.0;9.0+PTX"
# The named architectures torch accepts in TORCH_CUDA_ARCH_LIST that matter here.
NAMED_ARCHS = {"Ampere": "8.0;8.6+PTX", "Ada": "8.9+PTX", "Hopper": "9.0+PTX",
               "Blackwell": "10.0;12.0+PTX"}


def log(msg):
    print(f"[fused_resnet setup] {msg}", flush=True)


def cuda_arch_flags():
    """-gencode flags for exactly the archs the user asked for ("8.0;9.0+PTX", "9.0a", ...)."""
    spec = (os.environ.get("FUSED_RESNET_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST")
            or DEFAULT_ARCHS)
    for name, value in NAMED_ARCHS.items():
        spec = spec.replace(name, value)
    archs, flags = [], []
    for item in re.split(r"[;,\s]+", spec.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", item)
        if not m:
            raise ValueError(f"bad CUDA arch {item!r} in {spec!r} (expected e.g. '8.0;9.0+PTX')")
        num = f"{m[1]}{m[2]}{m[3]}"
        archs.append(item)
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if m[4]:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return archs, flags


def rel(paths):
    return sorted(str(p.relative_to(ROOT)) for p in paths)


def make_extension():
    cpp_sources = rel([ROOT / "csrc/ops.cpp", ROOT / "csrc/module.cpp",
                       *(ROOT / "csrc/cpu").glob("*.cpp")])
    cuda_sources = rel([*(ROOT / "csrc/cuda").glob("*.cu"), *(ROOT / "csrc/cuda").glob("*.cpp")])
    cxx_flags = ["-O3", "-std=c++20", "-g0"]  # -g0: no debug info, faster builds
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        # at::parallel_for is inline: without -fopenmp the CPU kernels' loops run on one
        # thread. Compile only, no link flag: the OpenMP symbols resolve to the runtime torch
        # has loaded, so the process keeps one thread pool.
        cxx_flags.append("-fopenmp")
    common = dict(name="fused_resnet._C", include_dirs=[str(ROOT / "csrc")])

    cuda_home, how = find_cuda_home()
    if os.environ.get("FUSED_RESNET_SKIP_CUDA") == "1":
        use_cuda, why = False, "FUSED_RESNET_SKIP_CUDA=1"
    elif not torch.version.cuda:
        use_cuda, why = False, f"torch {torch.__version__} is not a CUDA build"
    elif cuda_home is None or not os.path.isfile(os.path.join(cuda_home, "bin", "nvcc")):
        use_cuda, why = False, f"no CUDA toolkit ({how})"
    elif not cuda_sources:
        use_cuda, why = False, "no sources in csrc/cuda"
    elif (nvcc_ver := nvcc_version(cuda_home)) is None or (
            torch.version.cuda and nvcc_ver.split(".")[0] != torch.version.cuda.split(".")[0]):
        # torch refuses a toolkit of another major version: build the CPU kernels instead.
        use_cuda, why = False, (f"nvcc {nvcc_ver} in {cuda_home} does not match torch's CUDA "
                                f"{torch.version.cuda}")
    else:
        use_cuda, why = True, (f"toolkit {cuda_home} ({how}), nvcc {nvcc_ver}, "
                               f"torch CUDA {torch.version.cuda}")

    log(f"MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}")
    log(f"C++ sources: {' '.join(cpp_sources)}")
    if not use_cuda:
        log(f"CUDA: no ({why})")
        return cpp_ext.CppExtension(sources=cpp_sources, extra_compile_args={"cxx": cxx_flags},
                                    **common)

    # torch reads its module-level CUDA_HOME for nvcc, include and library paths.
    cpp_ext.CUDA_HOME = cuda_home
    os.environ["CUDA_HOME"] = cuda_home
    archs, arch_flags = cuda_arch_flags()
    # torch adds its own arch flags unless it sees ours; keep its env view consistent too.
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    nvcc_flags = ["-O3", "-std=c++20", *arch_flags]  # no --use_fast_math: NaN must propagate
    if os.environ.get("FUSED_RESNET_PTXAS_VERBOSE") == "1":
        nvcc_flags.append("-Xptxas=-v")
    log(f"CUDA: yes ({why})")
    log(f"CUDA archs: {';'.join(archs)} -> {' '.join(arch_flags)}")
    log(f"CUDA sources: {' '.join(cuda_sources)}")
    return cpp_ext.CUDAExtension(sources=cpp_sources + cuda_sources,
                                 extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                                 **common)


# Metadata (name, version, dependencies) lives in pyproject.toml when there is one.
metadata = {}
if not (ROOT / "pyproject.toml").is_file():
    metadata = dict(name="fused_resnet", version="0.0.0", packages=["fused_resnet"])

setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": cpp_ext.BuildExtension.with_options(use_ninja=True)},
    **metadata,
)
