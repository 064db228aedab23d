"""Where the CUDA toolkit is: one place for setup.py and the tests (tests/test_cuda_build.py,
tests/test_cuda_emu.py). Standard library only: setup.py imports it before torch is needed.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path


def _is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _resolve_nvcc(path, depth=0):
    """Follow symlinks and wrapper scripts (`exec /opt/cuda/bin/nvcc "$@"`) to the real nvcc."""
    path = os.path.realpath(path)
    if _is_elf(path):
        return path
    if depth > 4:
        return None
    try:
        text = Path(path).read_text(errors="ignore")[:16384]
    except OSError:
        return None
    for cand in re.findall(r"(/[^\s\"'`;|&$()]*/nvcc)(?![\w.-])", text):
        if os.path.isfile(cand) and os.path.realpath(cand) != path:
            real = _resolve_nvcc(cand, depth + 1)
            if real:
                return real
    return None


def find_cuda_home():
    """(toolkit root or None, how it was found). torch guesses the folder above a wrapper."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return env, "CUDA_HOME/CUDA_PATH environment variable"
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = _resolve_nvcc(nvcc)
        if real:
            return str(Path(real).parent.parent), f"nvcc on PATH ({nvcc} -> {real})"
    if os.path.isfile("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda", "default /usr/local/cuda"
    return None, "no nvcc on PATH and no /usr/local/cuda"


def nvcc_version(cuda_home):
    """"13.0" from `nvcc --version`, or None."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def find_nvcc():
    """The toolkit's nvcc (wrappers resolved), or None."""
    home, _ = find_cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    return nvcc if nvcc and os.path.isfile(nvcc) else None


def cuda_include():
    """The toolkit's include folder (cuda_fp16.h and friends), or None."""
    home, _ = find_cuda_home()
    inc = Path(home) / "include" if home else None
    return inc if inc and (inc / "cuda_fp16.h").is_file() else None
