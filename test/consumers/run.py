#!/usr/bin/env python3
"""Builds and runs one consumer project of libzpoline, the way a user of that build system would.

  run.py cmake|pkg-config|meson --source-root DIR --work DIR [--library-build DIR]
         [--cc CMD] [--cxx CMD]

cmake, pkg-config: builds libzpoline from the source root (release, library only) in
  --library-build (kept between runs, so later runs rebuild only what changed), installs it into
  a fresh prefix beside it (DIR-prefix), checks what was installed, then builds
  test/consumers/cmake (find_package) or test/consumers/make (pkg-config) against it. A lock
  (DIR.lock) serialises the users of the shared build and prefix.
meson: copies test/consumers/meson, and the source tree into its subprojects/zpoline where its
  wrap expects it, and builds that with Meson, without network.

Each consumer builds app.cpp (its hook must see its own getpid), and the hook library hook.cpp
against libzpoline-hook with hook_host.cpp, the program that loads it and checks its answers.
Each built program must exit 0; 77 (page 0 refused) makes this exit 77, which Meson reports as
skipped. Everything is written under a new directory in --work (removed after success, left for
inspection after a failure; concurrent runs do not meet) and in --library-build; the source tree
is only read.
"""

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP = 77


class Failure(Exception):
    pass


def run(command, cwd=None, env=None, capture=False):
    print("$", shlex.join(str(c) for c in command), flush=True)
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise Failure(f"{command[0]} failed with exit status {result.returncode}")
    return result.stdout


def require_tools(*tools):
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(f"SKIP: {', '.join(missing)} not found (Debian: apt-get install "
              f"{' '.join(missing)}); this consumer cannot be built", flush=True)
        sys.exit(SKIP)


def clean_environment(args):
    env = dict(os.environ)
    # A DESTDIR or pkg-config sysroot from the caller would send the install or the look-up
    # elsewhere; ZPOLINE_* variables would change what the consumers' hooks see.
    for name in list(env):
        if name in ("DESTDIR", "PKG_CONFIG_SYSROOT_DIR", "PKG_CONFIG_LIBDIR") or \
                name.startswith("ZPOLINE_"):
            del env[name]
    if args.cc:
        env["CC"] = args.cc
    if args.cxx:
        env["CXX"] = args.cxx
    return env


def run_programs(commands, env):
    """Runs each consumer program (a list: the program and its arguments); returns SKIP if page 0
    was refused, raises on failure."""
    statuses = []
    for command in commands:
        print("$", shlex.join(str(c) for c in command), flush=True)
        status = subprocess.run([str(c) for c in command], env=env).returncode
        if status not in (0, SKIP):
            raise Failure(f"{Path(command[0]).name} exited with status {status}")
        statuses.append(status)
    if SKIP in statuses:
        print("SKIP: the kernel refuses to map page 0 here (see docs/GUIDE.md)", flush=True)
        return SKIP
    return 0


@contextlib.contextmanager
def installed_library(args, env):
    """Builds libzpoline and installs it into a fresh prefix beside its build directory; yields
    (prefix, libdir). Holds a lock meanwhile: the build directory and prefix are shared."""
    if not args.library_build:
        raise Failure("--library-build is required for this consumer")
    build = args.library_build.resolve()
    prefix = build.parent / (build.name + "-prefix")
    build.parent.mkdir(parents=True, exist_ok=True)
    with open(build.parent / (build.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (build / "meson-private" / "coredata.dat").is_file():
            shutil.rmtree(build, ignore_errors=True)
            run(["meson", "setup", build, args.source_root, f"--prefix={prefix}",
                 "--buildtype=release", "-Dtests=false", "-Dbenchmarks=false",
                 "-Dexamples=false"], env=env)
        shutil.rmtree(prefix, ignore_errors=True)
        run(["meson", "install", "-C", build, "--quiet"], env=env)
        options = json.loads(run(["meson", "introspect", "--buildoptions", build], capture=True))
        option = {o["name"]: o["value"] for o in options}
        libdir = prefix / option["libdir"]
        check_installed_files(args.source_root, prefix, prefix / option["includedir"], libdir)
        yield prefix, libdir


def check_installed_files(source_root, prefix, includedir, libdir):
    headers = sorted(p.name for p in (Path(source_root) / "include" / "zpoline").glob("*.hpp"))
    expected = {includedir / "zpoline" / name for name in headers + ["version.hpp"]} | {
        libdir / "libzpoline.a",
        libdir / "libzpoline-hook.a",
        libdir / "pkgconfig" / "zpoline.pc",
        libdir / "pkgconfig" / "zpoline-hook.pc",
        libdir / "cmake" / "zpoline" / "zpolineConfig.cmake",
        libdir / "cmake" / "zpoline" / "zpolineConfigVersion.cmake",
    }
    installed = {p for p in prefix.rglob("*") if p.is_file()}
    missing, unexpected = expected - installed, installed - expected
    if missing or unexpected:
        raise Failure("installed files differ from what is expected:\n" +
                      "".join(f"  missing: {p}\n" for p in sorted(missing)) +
                      "".join(f"  unexpected: {p}\n" for p in sorted(unexpected)) +
                      "A file newly installed on purpose belongs in check_installed_files() in "
                      "test/consumers/run.py; a new library also in packaging/ (zpoline.pc, the "
                      "CMake package) and in docs/GUIDE.md.")
    print(f"installed: {len(installed)} files as expected", flush=True)


def copy_consumer(args, name, work):
    """Copies test/consumers/<name> and the sources it builds to work/consumer."""
    consumers = Path(args.source_root) / "test" / "consumers"
    destination = work / "consumer"
    destination.mkdir()
    for source in ("app.cpp", "hook.cpp", "hook_host.cpp"):
        shutil.copy2(consumers / source, destination)
    shutil.copytree(consumers / name, destination / name)
    return destination / name


def consumer_cmake(args, work, env):
    require_tools("meson", "cmake")
    project = copy_consumer(args, "cmake", work)
    build = project / "build"
    with installed_library(args, env) as (prefix, _):
        configure = ["cmake", "-S", project, "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}",
                     "-DCMAKE_BUILD_TYPE=Release"]
        if args.cxx:  # CMake takes the compiler itself; a launcher such as ccache is left out
            configure.append(f"-DCMAKE_CXX_COMPILER={shlex.split(args.cxx)[-1]}")
        run(configure, env=env)
        run(["cmake", "--build", build, "--verbose"], env=env)
    return run_programs([[build / "app"], [build / "hook_host", build / "libhook.so"]], env)


def consumer_pkg_config(args, work, env):
    require_tools("meson", "pkg-config", "make")
    project = copy_consumer(args, "make", work)
    with installed_library(args, env) as (_, libdir):
        env["PKG_CONFIG_PATH"] = str(libdir / "pkgconfig")
        for pc in ("zpoline.pc", "zpoline-hook.pc"):
            print(f"{pc}:\n" + (libdir / "pkgconfig" / pc).read_text(), flush=True)
        make = ["make", "-C", project]
        if args.cxx:
            make.append(f"CXX={args.cxx}")
        run(make, env=env)
    return run_programs([[project / "app"], [project / "hook_host", project / "libhook.so"]],
                        env)


def source_tree_filter(source_root):
    """A shutil.copytree filter: the source tree without VCS data, build directories (wherever
    they are) and what the wraps in subprojects/ downloaded."""
    downloads = (Path(source_root) / "subprojects").resolve()

    def ignore(directory, names):
        ignored = {".git", "__pycache__"} & set(names)
        for name in names:
            path = Path(directory) / name
            if not path.is_dir():
                continue
            if (path / "meson-private").is_dir() or (path / "CMakeCache.txt").is_file():
                ignored.add(name)
            elif Path(directory).resolve() == downloads and name != "packagefiles":
                ignored.add(name)
        return ignored

    return ignore


def consumer_meson(args, work, env):
    require_tools("meson")
    project = copy_consumer(args, "meson", work)
    shutil.copytree(args.source_root, project / "subprojects" / "zpoline",
                    ignore=source_tree_filter(args.source_root), symlinks=True)
    build = project / "build"
    # --force-fallback-for: use the subproject even if a zpoline is installed on this machine.
    run(["meson", "setup", build, project, "--wrap-mode=nodownload",
         "--force-fallback-for=zpoline,zpoline-hook"], env=env)

    targets = json.loads(run(["meson", "introspect", "--targets", build], capture=True))
    own = sorted(t["name"] for t in targets if not t["subproject"])
    extra = sorted(t["name"] for t in targets
                   if t["subproject"] and not t["type"].endswith("library"))
    if own != ["app", "app_from_variable", "hook", "hook_host"] or extra:
        raise Failure("expected the consumer's app, app_from_variable, hook and hook_host and "
                      f"libzpoline's libraries only; the consumer has {own}, libzpoline builds "
                      f"also {extra}")
    installed = json.loads(run(["meson", "introspect", "--installed", build], capture=True))
    if installed:
        raise Failure(f"a subproject libzpoline must install nothing, but installs {installed}")

    run(["meson", "compile", "-C", build], env=env)
    return run_programs([[build / "app"], [build / "app_from_variable"],
                         [build / "hook_host", build / "libhook.so"]], env)


CONSUMERS = {"cmake": consumer_cmake, "pkg-config": consumer_pkg_config, "meson": consumer_meson}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("consumer", choices=sorted(CONSUMERS))
    parser.add_argument("--source-root", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--library-build", type=Path,
                        help="build directory of the library for the cmake and pkg-config "
                             "consumers")
    parser.add_argument("--cc", help="C compiler command of the enclosing build")
    parser.add_argument("--cxx", help="C++ compiler command of the enclosing build")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=args.consumer + "-", dir=args.work.resolve()))
    print(f"working in {work}", flush=True)
    try:
        status = CONSUMERS[args.consumer](args, work, clean_environment(args))
    except Failure as failure:
        print(f"FAIL: {failure} (files left in {work})", file=sys.stderr, flush=True)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
