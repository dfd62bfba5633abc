"""Build convkit: the C++ core through CMake (pybind11 module convkit._cpu) and the
Cython kernels through setuptools (convkit._im2col, linked to BLAS via SciPy).

One obvious path: `pip install .` runs this file; CMakeLists.txt owns the C++ flags
(release, per-file ISA flags, no -march=native).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()

# CONVKIT_SANITIZE=address,undefined: the Cython kernels get the same checks as the C++
# core (CMakeLists.txt); README, "Checking builds".
SANITIZE = os.environ.get("CONVKIT_SANITIZE", "")
SANITIZE_FLAGS = [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer", "-g"] if SANITIZE else []


class CMakeExtension(Extension):
    """An extension whose sources CMake compiles (sources=[] keeps setuptools away)."""

    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeAwareBuildExt(build_ext):
    def build_extension(self, ext):
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        import pybind11

        # pip builds each time in a new isolated environment (a new temporary prefix for
        # pybind11, cmake and ninja): a CMake cache left in build/ by an earlier `pip
        # install .` names tools that are gone ("ninja --version failed"). Start the CMake
        # tree afresh whenever the tools it was configured with changed.
        tools = "\n".join([pybind11.get_cmake_dir(), shutil.which("cmake") or "", shutil.which("ninja") or ""])
        stamp = build_dir / "configured-with.txt"
        if build_dir.exists() and (not stamp.exists() or stamp.read_text() != tools):
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(tools)

        cfg = os.environ.get("CONVKIT_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCONVKIT_SANITIZE={SANITIZE}",
        ]
        try:
            import ninja  # noqa: F401  (the pip-installed ninja puts its binary on PATH)

            args.append("-GNinja")
        except ImportError:
            pass
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", ".", "--config", cfg, "-j", jobs], cwd=build_dir, check=True)


def cython_extensions():
    import scipy  # noqa: F401  (cimported: scipy.linalg.cython_blas)

    ext = Extension(
        "convkit._im2col",
        sources=["kernels/cython/im2col.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=["-O3", *SANITIZE_FLAGS],
        extra_link_args=SANITIZE_FLAGS[:1],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    return cythonize([ext], compiler_directives={"language_level": "3", "boundscheck": False,
                                                 "wraparound": False, "cdivision": True},
                     quiet=True)


cy_exts = cython_extensions() if (ROOT / "kernels/cython/im2col.pyx").exists() else []

# The Numba CUDA kernels (kernels/cuda) and the benchmark runner (bench/) ship inside
# the package, so `python -m convkit bench` and device="cuda" work after `pip install .`.
PACKAGE_DIRS = {"convkit": "python/convkit", "convkit.cuda": "kernels/cuda", "convkit.bench": "bench"}
PACKAGE_DIRS = {name: d for name, d in PACKAGE_DIRS.items() if (ROOT / d / "__init__.py").exists()}

setup(
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"convkit": ["py.typed", "*.pyi", "data/*.json"], "convkit.bench": ["suite.json"]},
    ext_modules=[CMakeExtension("convkit._cpu"), *cy_exts],
    cmdclass={"build_ext": CMakeAwareBuildExt},
    zip_safe=False,
)
