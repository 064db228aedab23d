"""Where the CUDA toolkit is, and nvcc/ptxas runs cached under build/nvcc_cache: one place for
setup.py, the tests (tests/test_cuda_build.py, tests/test_cuda_emu.py) and
fused_resnet.cuda_plans.kernel_resources. Standard library only: setup.py imports it before
torch is needed.
"""

import functools
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent


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


# ---- nvcc / ptxas, cached
# The flags torch.utils.cpp_extension adds to every nvcc call (setup.py builds with them).
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                    "--expt-relaxed-constexpr"]


def parse_ptxas(log):
    """kernel (mangled) -> {registers, spill_stores, spill_loads, smem} from `-Xptxas -v`
    output; smem is the kernel's static shared memory in bytes."""
    out, current = {}, None
    for line in log.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$.]+)'?", line)
        if m:
            current = m.group(1)
            out.setdefault(current, {"registers": 0, "spill_stores": 0, "spill_loads": 0,
                                     "smem": 0})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[current]["spill_stores"], out[current]["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[current]["registers"] = int(m.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            out[current]["smem"] = int(smem.group(1)) if smem else 0
    return out


# nvcc outputs are cached under build/nvcc_cache, keyed by every csrc source (any header a
# .cu could include), the full command line and nvcc's own version text: a changed input is
# a miss that rebuilds; an output is stored only after nvcc succeeded.
CACHE = ROOT / "build" / "nvcc_cache"


@functools.cache
def nvcc_identity(nvcc):
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout


def cache_key(cmd, csrc=ROOT / "csrc"):
    """Every file a .cu may include: csrc's headers, csrc/common, csrc/cuda's .cu/.cuh/.h."""
    key = hashlib.sha256("\0".join([*cmd, nvcc_identity(cmd[0])]).encode())
    cuda = [f for f in (csrc / "cuda").glob("*") if f.suffix in (".cu", ".cuh", ".h")]
    for f in sorted([*csrc.glob("*.h"), *(csrc / "common").rglob("*"), *cuda]):
        if f.is_file():
            key.update(str(f.relative_to(csrc)).encode() + b"\0" + f.read_bytes())
    return key.hexdigest()[:24]


def compile_cu(src, arch, nvcc=None):
    """(ptxas log, cubin path) of the .cu ``src`` compiled standalone for ``arch`` ("sm_90"),
    from the cache when nothing changed. Raises RuntimeError when nvcc is missing or fails."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    src = Path(src)
    cmd = [nvcc, "-std=c++20", "-O3", f"-I{ROOT / 'csrc'}", *TORCH_NVCC_FLAGS, f"-arch={arch}",
           "-cubin", "-Xptxas", "-v", str(src)]
    entry = CACHE / f"{src.stem}.{arch}.{cache_key(cmd)}"
    cubin, log_file = entry / f"{src.stem}.cubin", entry / "ptxas.log"
    if cubin.is_file() and log_file.is_file():
        return log_file.read_text(), cubin
    tmp = CACHE / f"tmp-{os.getpid()}-{src.stem}.{arch}"
    tmp.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([*cmd, "-o", str(tmp / cubin.name)], capture_output=True, text=True,
                         timeout=600)
    log = res.stdout + res.stderr
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"nvcc failed for {src.name} ({arch}):\n{log[-4000:]}")
    (tmp / log_file.name).write_text(log)
    shutil.rmtree(entry, ignore_errors=True)
    tmp.rename(entry)  # atomic: a cache entry is complete or absent
    return log, cubin


def demangle(names):
    """mangled -> C++ name of each symbol, through binutils' c++filt (there beside nvcc's
    host compiler)."""
    tool = shutil.which("c++filt")
    if tool is None:
        raise RuntimeError("c++filt (binutils) not found")
    names = list(names)
    res = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True,
                         timeout=120, check=True)
    return dict(zip(names, res.stdout.splitlines()))
