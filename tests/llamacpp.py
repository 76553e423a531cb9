"""llama.cpp's own server (`llama-server`) for the engine tests: built once from the llama.cpp source that the
`llama-cpp-python` source release on PyPI vendors, and kept in the test cache (`$XDG_CACHE_HOME` or ~/.cache,
`pseudocot-tests/llama-server-<version>/`), so later runs start at once.

    python tests/llamacpp.py build    # build it now (about 3 minutes on 2 cores; `make llama-server`), or say where it is

The build takes a lock for its whole run; `binary()` (the tests' fixture) waits for a build in progress, and builds
itself when none ran. It needs the PyPI registry, cmake and a C++ compiler (Debian's cmake and g++).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
"""The llama-cpp-python source release whose vendored llama.cpp is built."""

CMAKE_FLAGS = [
    # -O1: half the compile time of Release's -O3 (5 min 48 s of CPU against 10 min 45 s on a 2 vCPU EPYC) for a
    # server about 7% slower on the tests' SmolLM2 (its hot loops are hand-written AVX2 either way).
    "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG", "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG",
    "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF",
    # No web page (its prebuilt copy would be fetched from the Hub), no HTTPS or downloads: a local test server.
    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
    # x86-64 with AVX2, not this CPU's own flags: the binary is cached and may meet another CPU of the pool.
    "-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
]


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "pseudocot-tests" / f"llama-server-{VERSION}"


def binary_path() -> Path:
    return cache_dir() / "llama-server"


def log_path() -> Path:
    return cache_dir() / "build.log"


def binary() -> Path:
    """The built `llama-server`: the cached one, else after the build in progress (or one built now)."""
    if binary_path().is_file():
        return binary_path()
    build()
    return binary_path()


def build() -> Path:
    """Build `llama-server` into the cache unless it is there; a second caller waits for the first."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if binary_path().is_file():
            return binary_path()
        with open(log_path(), "w") as log, tempfile.TemporaryDirectory(prefix="llama-build-") as tmp:
            _build(Path(tmp), log)
    return binary_path()


def _run(cmd: list[str], log: object, **kw: object) -> None:
    print("$", " ".join(cmd), file=log, flush=True)  # type: ignore[call-overload]
    r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise RuntimeError(f"building llama-server failed at `{' '.join(cmd[:4])} ...` (exit {r.returncode}); see {log_path()}.")


def _build(tmp: Path, log: object) -> None:
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"building llama-server needs {tool}; install it (Debian: apt-get install cmake g++).")
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(tmp),
          f"llama-cpp-python=={VERSION}"], log)
    (sdist,) = tmp.glob("llama_cpp_python-*.tar.gz")
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(tmp, members=members, filter="data")
    src, out = tmp / prefix, tmp / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(src), "-B", str(out), *generator, *CMAKE_FLAGS], log)
    _run(["cmake", "--build", str(out), "--target", "llama-server", "-j", str(os.cpu_count() or 2)], log)
    staged = cache_dir() / "llama-server.tmp"
    shutil.copy2(out / "bin" / "llama-server", staged)
    os.replace(staged, binary_path())  # whole or absent


def main(argv: list[str]) -> int:
    if argv[:1] != ["build"]:
        print(__doc__)
        return 2
    if binary_path().is_file():
        print(f"llama-server is built: {binary_path()}")
        return 0
    try:
        print(f"built llama-server: {build()}")
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
