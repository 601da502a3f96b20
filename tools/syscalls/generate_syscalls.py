#!/usr/bin/env python3
"""Generates include/zpoline/syscalls.hpp, the table of every x86-64 system call, from the kernel's
own sources.

Usage (from the top of the repository):
  tools/syscalls/generate_syscalls.py /usr/src/linux-source-6.1.tar.xz \
    | clang-format --assume-filename=include/zpoline/syscalls.hpp > include/zpoline/syscalls.hpp

LINUX_SOURCE is a kernel source tree or tarball (Debian: `apt-get install linux-source`, then
/usr/src/linux-source-6.1.tar.xz). Read from it:
  arch/x86/entry/syscalls/syscall_64.tbl  numbers, names and ABIs
  include/linux/syscalls.h                the prototypes (parameter types and names)
  Makefile                                the version, recorded in the output
Read from this directory:
  syscall_64_after_6.1.tbl  system calls added after 6.1, with the version that added each
  x86_64_prototypes.txt     prototypes syscalls.h lacks (arch/x86 calls) or leaves unnamed

The 64-bit and common entries are kept. The x32 entries (512-547) are not: they are entry points
of the x32 ABI, reached only with the x32 bit (0x40000000) set in the number; a 64-bit process
calling 512-547 gets ENOSYS, and <asm/unistd_64.h> does not define them either.

Argument kinds (fd, path, buffer with its size argument, flags family, ...) come from the types and
names of the prototypes by the rules in `classify`, refined by the table ANNOTATIONS below.
"""
import os
import re
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE = "arch/x86/entry/syscalls/syscall_64.tbl"
HEADER = "include/linux/syscalls.h"

# Kernel parameter names renamed to the names of the man pages.
RENAMES = {
    "dfd": "dirfd",
    "olddfd": "olddirfd",
    "newdfd": "newdirfd",
    "filename": "pathname",
    "oldname": "oldpath",
    "newname": "newpath",
    "sigmask": "sigset",  # sigmask is a macro of <signal.h>
}
SYSCALL_RENAMES = {"symlink": {"old": "target", "new": "linkpath"}}

# Per system call, per argument: "kind[:detail]" where detail is the ValueSet of a flags argument
# or the size argument's name of a buffer; "input" marks a non-const pointer the call only reads.
ANNOTATIONS = {
    "read": {"buf": "out_buffer:count"},
    "pread64": {"buf": "out_buffer:count"},
    "readlink": {"buf": "out_buffer:bufsiz"},
    "readlinkat": {"buf": "out_buffer:bufsiz"},
    "getcwd": {"buf": "out_buffer:size"},
    "getrandom": {"buf": "out_buffer:count", "flags": "flags"},
    "recvfrom": {"buf": "out_buffer:len", "flags": "flags:msg_flags"},
    "sendto": {"flags": "flags:msg_flags"},
    "sendmsg": {"flags": "flags:msg_flags"},
    "recvmsg": {"flags": "flags:msg_flags"},
    "sendmmsg": {"flags": "flags:msg_flags"},
    "recvmmsg": {"flags": "flags:msg_flags"},
    "open": {"flags": "flags:open_flags"},
    "openat": {"flags": "flags:open_flags"},
    "open_by_handle_at": {"flags": "flags:open_flags"},
    "fcntl": {"cmd": "flags:fcntl_command", "arg": "hex"},
    "access": {"mode": "flags:access_mode"},
    "faccessat": {"mode": "flags:access_mode"},
    "faccessat2": {"mode": "flags:access_mode", "flags": "flags:at_flags"},
    "newfstatat": {"flag": "flags:at_flags"},
    "statx": {"flags": "flags:at_flags", "mask": "hex"},
    "unlinkat": {"flag": "flags:at_flags"},
    "linkat": {"flags": "flags:at_flags"},
    "fchownat": {"flag": "flags:at_flags"},
    "fchmodat2": {"flags": "flags:at_flags"},
    "utimensat": {"flags": "flags:at_flags"},
    "name_to_handle_at": {"flag": "flags:at_flags"},
    "execveat": {"flags": "flags:at_flags"},
    "mmap": {"addr": "address", "prot": "flags:mmap_prot", "flags": "flags:mmap_flags"},
    "mprotect": {"start": "address", "prot": "flags:mmap_prot"},
    "pkey_mprotect": {"start": "address", "prot": "flags:mmap_prot"},
    "munmap": {"addr": "address"},
    "mremap": {"addr": "address", "new_addr": "address", "flags": "flags:mremap_flags"},
    "madvise": {"start": "address", "behavior": "flags:madvise_advice"},
    "process_madvise": {"behavior": "flags:madvise_advice"},
    "msync": {"start": "address"},
    "mlock": {"start": "address"},
    "mlock2": {"start": "address"},
    "munlock": {"start": "address"},
    "mincore": {"start": "address"},
    "remap_file_pages": {"start": "address"},
    "mbind": {"start": "address"},
    "mseal": {"start": "address"},
    "map_shadow_stack": {"addr": "address"},
    "brk": {"brk": "address"},
    "shmat": {"shmaddr": "address"},
    "shmdt": {"shmaddr": "address"},
    "clone": {"flags": "flags:clone_flags", "stack": "address", "tls": "address"},
    "unshare": {"unshare_flags": "flags:clone_flags"},
    "setns": {"nstype": "flags:clone_flags"},
    "socket": {"domain": "flags:socket_domain", "type": "flags:socket_type"},
    "socketpair": {"domain": "flags:socket_domain", "type": "flags:socket_type"},
    "accept4": {"flags": "flags:socket_type"},
    "rt_sigprocmask": {"how": "flags:sigprocmask_how", "set": "input"},
    "rt_sigsuspend": {"unewset": "input"},
    "futex": {"op": "flags:futex_op", "uaddr": "address", "uaddr2": "address"},
    "lseek": {"whence": "flags:lseek_whence"},
    "prctl": {"option": "flags:prctl_option", "arg2": "hex", "arg3": "hex", "arg4": "hex",
              "arg5": "hex"},
    "arch_prctl": {"code": "flags:arch_prctl_code", "addr": "hex"},
    "wait4": {"options": "flags:wait_options"},
    "waitid": {"options": "flags:wait_options"},
    "clock_gettime": {"which_clock": "flags:clock_id"},
    "clock_settime": {"which_clock": "flags:clock_id"},
    "clock_getres": {"which_clock": "flags:clock_id"},
    "clock_nanosleep": {"which_clock": "flags:clock_id"},
    "getrlimit": {"resource": "flags:rlimit_resource"},
    "setrlimit": {"resource": "flags:rlimit_resource", "rlim": "input"},
    "prlimit64": {"resource": "flags:rlimit_resource"},
    "pipe2": {"flags": "flags:fd_flags"},
    "dup3": {"flags": "flags:fd_flags"},
    "eventfd2": {"flags": "flags:fd_flags"},
    "epoll_create1": {"flags": "flags:fd_flags"},
    "inotify_init1": {"flags": "flags:fd_flags"},
    "signalfd4": {"flags": "flags:fd_flags"},
    "timerfd_create": {"clockid": "flags:clock_id", "flags": "flags:fd_flags"},
    "kill": {"sig": "signal"},
    "tkill": {"sig": "signal"},
    "tgkill": {"sig": "signal"},
    "rt_sigqueueinfo": {"sig": "signal"},
    "rt_tgsigqueueinfo": {"sig": "signal"},
    "pidfd_send_signal": {"sig": "signal"},
    "rt_sigaction": {"signum": "signal"},
    "connect": {"addr": "input"},
    "bind": {"addr": "input"},
    "execve": {"argv": "string_array", "envp": "string_array"},
    "execveat": {"argv": "string_array", "envp": "string_array", "flags": "flags:at_flags"},
    "set_tid_address": {"tidptr": "address"},
    "set_robust_list": {"head": "address"},
    "rseq": {"rseq": "address", "sig": "hex"},
    "sethostname": {"name": "in_buffer:len"},
    "setdomainname": {"name": "in_buffer:len"},
}

PATH_NAMES = {"pathname", "path", "oldpath", "newpath", "specialfile", "library", "dev_name",
              "dir_name", "new_root", "put_old", "special", "target", "linkpath"}
FD_NAMES = {"fd", "oldfd", "newfd", "fd_in", "fd_out", "in_fd", "out_fd", "epfd", "sockfd",
            "fanotify_fd", "pidfd", "mqdes", "fildes", "ufd", "fd_in", "pidfd"}
DIRFD_NAMES = {"dirfd", "olddirfd", "newdirfd", "from_dfd", "to_dfd"}
SIZE_NAMES = {"count", "len", "size", "bufsiz", "nbytes", "bufsize", "length", "usize", "vlen",
              "sigsetsize", "addrlen", "optlen", "nr_mnt_ids"}
SIGNAL_NAMES = {"sig", "signum"}
PID_TYPES = {"pid_t"}
ID_TYPES = {"uid_t", "gid_t", "qid_t", "old_uid_t", "old_gid_t"}
SIGNED_TYPES = {"int", "long", "__s32", "key_serial_t", "key_t", "mqd_t", "clockid_t", "timer_t",
                "rwf_t", "loff_t", "off_t", "pid_t", "__kernel_old_time_t"}
KEYWORDS = {"new", "delete", "class", "template", "namespace", "operator", "this", "default",
            "register", "union", "private", "public", "protected", "call", "argument",
            "set_argument"}

SCALAR_TYPES = {
    "int": "int", "unsigned int": "unsigned", "unsigned": "unsigned", "long": "long",
    "unsigned long": "unsigned long", "size_t": "std::size_t", "loff_t": "long", "off_t": "long",
    "pid_t": "int", "uid_t": "unsigned", "gid_t": "unsigned", "qid_t": "unsigned",
    "umode_t": "unsigned", "u32": "std::uint32_t", "__u32": "std::uint32_t",
    "uint32_t": "std::uint32_t", "__s32": "std::int32_t", "u64": "std::uint64_t",
    "key_serial_t": "std::int32_t", "key_t": "int", "mqd_t": "int", "clockid_t": "int",
    "timer_t": "int", "rwf_t": "int", "aio_context_t": "unsigned long",
    "__kernel_old_time_t": "long", "unsigned char": "unsigned char", "char": "char",
}


def read_sources(source):
    """Returns (table text, header text, version) from a source tree or tarball."""
    if os.path.isdir(source):
        def read(name):
            with open(os.path.join(source, name)) as f:
                return f.read()
        return read(TABLE), read(HEADER), version_of(read("Makefile"))
    wanted = {TABLE: None, HEADER: None, "Makefile": None}
    with tarfile.open(source) as tar:
        for member in tar:
            relative = member.name.split("/", 1)[1] if "/" in member.name else member.name
            if relative in wanted and wanted[relative] is None:
                wanted[relative] = tar.extractfile(member).read().decode()
                if all(v is not None for v in wanted.values()):
                    break
    missing = [k for k, v in wanted.items() if v is None]
    if missing:
        sys.exit(f"generate_syscalls.py: {source} lacks {', '.join(missing)}")
    return wanted[TABLE], wanted[HEADER], version_of(wanted["Makefile"])


def version_of(makefile):
    fields = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL) = (\d+)", makefile, re.M))
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields['SUBLEVEL']}"


def parse_prototypes(header):
    """Maps each sys_* entry point to its parameter lists (several where #ifdefs differ)."""
    header = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    prototypes = {}
    for match in re.finditer(r"asmlinkage\s+long\s+(sys_\w+)\s*\(([^;]*?)\)\s*;", header, re.S):
        prototypes.setdefault(match.group(1), []).append(" ".join(match.group(2).split()))
    return prototypes


def split_parameter(text):
    """'const char __user *filename' -> ('const char *', 'filename'); None if unnamed."""
    text = text.replace("__user", " ")
    text = " ".join(text.replace("*", " * ").split()).replace("* *", "**")
    match = re.match(r"^(.*?[\s*])(\w+)$", text)
    if not match or match.group(1).strip() in ("", "const", "struct", "enum", "union"):
        return None
    if match.group(2) in ("int", "long", "char", "short") or match.group(2) in SCALAR_TYPES:
        return None
    return " ".join(match.group(1).split()), match.group(2)


def parse_parameters(text, where):
    if text.strip() == "void":
        return []
    parameters = []
    for part in text.split(","):
        parsed = split_parameter(part.strip())
        if parsed is None:
            raise ValueError(f"{where}: unnamed parameter '{part.strip()}'")
        ctype, name = parsed
        name = SYSCALL_RENAMES.get(where, {}).get(name, name)
        parameters.append((ctype, RENAMES.get(name, name)))
    return parameters


def cpp_type(ctype, kind):
    if kind in ("fd", "dirfd"):
        return "int"
    stars = ctype.count("*")
    if kind in ("in_buffer", "out_buffer") and stars == 1:
        return "const void*" if ctype.startswith("const") else "void*"
    base = ctype.replace("*", "").strip()
    const = base.startswith("const ")
    base = base.removeprefix("const ").strip()
    if stars == 0:
        if base.startswith("enum "):
            return "int"
        if base in ("cap_user_header_t", "cap_user_data_t"):
            return "const void*" if const else "void*"
        if base not in SCALAR_TYPES:
            raise ValueError(f"no C++ type for '{ctype}'")
        return SCALAR_TYPES[base]
    if stars == 2:
        return "const char* const*" if "char" in base.split() else "void* const*"
    if base in SCALAR_TYPES and not base.startswith("__kernel"):
        pointee = SCALAR_TYPES[base]
    else:
        pointee = "void"
    return ("const " if const else "") + pointee + "*"


def classify(syscall, parameters):
    """Returns one dict per argument: name, type, cpp, kind, values, size_argument, output."""
    names = [name for _, name in parameters]
    notes = ANNOTATIONS.get(syscall, {})
    for name in notes:
        if name not in names:
            raise ValueError(f"{syscall}: annotation for unknown argument '{name}'")
    arguments = []
    for index, (ctype, name) in enumerate(parameters):
        if name in KEYWORDS:
            raise ValueError(f"{syscall}: argument name '{name}' is reserved")
        pointer = "*" in ctype
        const = ctype.startswith("const")
        base = ctype.replace("*", "").replace("const", "").strip()
        following = names[index + 1] if index + 1 < len(names) else None
        size_argument = -1
        values = "none"
        output = pointer and not const
        note = notes.get(name, "")
        if note:
            kind, _, detail = note.partition(":")
            if kind == "input":
                kind, output = None, False
            elif kind == "flags":
                values = detail or "none"
            elif kind in ("in_buffer", "out_buffer"):
                size_argument = names.index(detail)
                output = kind == "out_buffer"
            elif kind in ("address", "hex", "signal", "string_array"):
                output = False
        else:
            kind = None
        if kind is None:
            if pointer and base == "char" and ctype.count("*") == 1:
                if const and following in SIZE_NAMES:
                    kind, size_argument = "in_buffer", index + 1
                elif const:
                    kind = "path" if name in PATH_NAMES else "string"
                elif following in SIZE_NAMES:
                    kind, size_argument = "out_buffer", index + 1
                else:
                    kind = "pointer"
            elif pointer and base == "void" and ctype.count("*") == 1 and following in SIZE_NAMES:
                kind = "in_buffer" if const else "out_buffer"
                size_argument = index + 1
            elif pointer and (base.startswith("struct ") or base.startswith("union ")):
                kind = "structure"
            elif pointer:
                kind = "pointer"
            elif name in FD_NAMES:
                kind = "fd"
            elif name in DIRFD_NAMES:
                kind = "dirfd"
            elif base in PID_TYPES:
                kind = "pid"
            elif base in ID_TYPES:
                kind = "id"
            elif base == "umode_t":
                kind = "mode"
            elif name in SIGNAL_NAMES and base == "int":
                kind = "signal"
            elif base in ("loff_t", "off_t") or name in ("offset", "pos"):
                kind = "offset"
            elif base == "size_t" or name in SIZE_NAMES:
                kind = "size"
            elif name in ("flags", "flag", "at_flags"):
                kind, values = "flags", ("at_flags" if name == "at_flags" else "none")
            elif base in SIGNED_TYPES or base.startswith("enum "):
                kind = "integer"
            else:
                kind = "unsigned_integer"
        if kind == "flags" and values == "none" and name == "at_flags":
            values = "at_flags"
        arguments.append({"name": name, "type": ctype, "cpp": cpp_type(ctype, kind),
                          "kind": kind, "values": values, "size_argument": size_argument,
                          "output": output})
    return arguments


def load_table(table_text, prototypes):
    prototype_overrides = {}
    with open(os.path.join(HERE, "x86_64_prototypes.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, text = line.rstrip("\n").split("\t")
                prototype_overrides[name] = text
    calls = {}
    for line in table_text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        number, abi, name = int(fields[0]), fields[1], fields[2]
        if abi == "x32":
            continue
        entry = fields[3] if len(fields) > 3 else None
        if name in prototype_overrides:
            text = prototype_overrides[name]
        elif entry is None:
            text = None  # reserved, never implemented: ENOSYS
        else:
            variants = prototypes.get(entry)
            if not variants:
                raise ValueError(f"{name}: no prototype for {entry}")
            if len(set(variants)) > 1:
                raise ValueError(f"{name}: several prototypes for {entry}; add it to "
                                 "x86_64_prototypes.txt")
            text = variants[0]
        calls[number] = {"name": name, "since": "", "implemented": entry is not None,
                         "parameters": parse_parameters(text, name) if text else []}
    with open(os.path.join(HERE, "syscall_64_after_6.1.tbl")) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            number, abi, name, since, text = line.rstrip("\n").split("\t")
            number = int(number)
            if number in calls:
                raise ValueError(f"{name}: number {number} is already {calls[number]['name']}")
            calls[number] = {"name": name, "since": since, "implemented": True,
                             "parameters": parse_parameters(text, name)}
    for call in calls.values():
        call["arguments"] = classify(call["name"], call["parameters"])
    return calls


def emit(calls, version):
    out = []
    w = out.append
    w("// zpoline/syscalls.hpp: every x86-64 system call: number, name, arguments (names, types,")
    w("// kinds), and a typed descriptor per call in zpoline::sys. Header-only and constexpr.")
    w("//")
    w(f"// Generated by tools/syscalls/generate_syscalls.py from Linux {version}")
    w("// (arch/x86/entry/syscalls/syscall_64.tbl, include/linux/syscalls.h) and")
    w("// tools/syscalls/syscall_64_after_6.1.tbl; do not edit.")
    w("#pragma once")
    w("")
    w("#include <array>")
    w("#include <cstddef>")
    w("#include <cstdint>")
    w("#include <string_view>")
    w("")
    w('#include "zpoline/syscall.hpp"')
    w('#include "zpoline/syscall_info.hpp"')
    w("")
    w("namespace zpoline {")
    w("namespace detail {")
    w("")
    numbers = sorted(calls)
    w(f"inline constexpr SyscallInfo syscall_table[{len(numbers)}] = {{")
    for number in numbers:
        call = calls[number]
        args = []
        for a in call["arguments"]:
            args.append(
                f'{{"{a["name"]}", "{a["type"]}", ArgKind::{a["kind"]}, '
                f'ValueSet::{a["values"]}, {a["size_argument"]}, '
                f'{"true" if a["output"] else "false"}}}')
        body = ", ".join(args)
        w(f'    {{{number}, "{call["name"]}", "{call["since"]}", {len(args)}, {{{body}}}}},')
    w("};")
    w("")
    limit = max(numbers) + 1
    index = [-1] * limit
    for position, number in enumerate(numbers):
        index[number] = position
    w(f"// Position in syscall_table of each number below {limit}; -1 where the kernel has none.")
    w(f"inline constexpr std::int16_t syscall_index[{limit}] = {{")
    for start in range(0, limit, 16):
        w("    " + ", ".join(str(v) for v in index[start:start + 16]) + ",")
    w("};")
    w("")
    w("}  // namespace detail")
    w("")
    w("inline namespace ZPOLINE_ABI_NAMESPACE {")
    w("")
    w("// One past the largest system call number in the table.")
    w(f"inline constexpr long syscall_number_limit = {limit};")
    w("")
    w("// Every system call, in increasing order of number.")
    w("constexpr const SyscallInfo* syscalls_begin() noexcept { return detail::syscall_table; }")
    w("constexpr const SyscallInfo* syscalls_end() noexcept {")
    w("  return detail::syscall_table + std::size(detail::syscall_table);")
    w("}")
    w("")
    w("// The system call with this number, or nullptr if x86-64 Linux defines none.")
    w("constexpr const SyscallInfo* syscall_info(long number) noexcept {")
    w("  if (number < 0 || number >= syscall_number_limit) return nullptr;")
    w("  const int position = detail::syscall_index[number];")
    w("  return position < 0 ? nullptr : &detail::syscall_table[position];")
    w("}")
    w("")
    w("// The system call with this name, or nullptr.")
    w("constexpr const SyscallInfo* syscall_info(std::string_view name) noexcept {")
    w("  for (const SyscallInfo& info : detail::syscall_table) {")
    w("    if (info.name == name) return &info;")
    w("  }")
    w("  return nullptr;")
    w("}")
    w("")
    w("// The name of a system call number, or \"unknown\".")
    w("constexpr std::string_view syscall_name(long number) noexcept {")
    w("  // Through the index, not a null check on syscall_info(): g++ rejects comparing such a")
    w("  // pointer with null in a constant expression when built with -fsanitize=undefined.")
    w('  if (number < 0 || number >= syscall_number_limit) return "unknown";')
    w("  const int position = detail::syscall_index[number];")
    w('  return position < 0 ? std::string_view("unknown") : detail::syscall_table[position].name;')
    w("}")
    w("")
    w("// One type per system call: `sys::openat::number`, `::name`, `::info()`, and a View with")
    w("// an accessor and a setter per argument, which Syscall::as<sys::openat>() returns.")
    w("namespace sys {")
    w("")
    for position, number in enumerate(numbers):
        call = calls[number]
        w(f"struct {call['name']} {{")
        w(f"  static constexpr long number = {number};")
        w(f'  static constexpr std::string_view name = "{call["name"]}";')
        w("  static constexpr const SyscallInfo& info() noexcept {")
        w(f"    return detail::syscall_table[{position}];")
        w("  }")
        w("  class View : public detail::ArgumentView {")
        w("   public:")
        w("    using ArgumentView::ArgumentView;")
        for i, a in enumerate(call["arguments"]):
            t, n = a["cpp"], a["name"]
            w(f"    {t} {n}() const noexcept {{ return argument<{t}>({i}); }}")
            w(f"    void set_{n}({t} value) noexcept {{ set_argument({i}, value); }}")
        w("  };")
        w("};")
    w("")
    w("}  // namespace sys")
    w("}  // namespace ZPOLINE_ABI_NAMESPACE")
    w("}  // namespace zpoline")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    table_text, header_text, version = read_sources(sys.argv[1])
    calls = load_table(table_text, parse_prototypes(header_text))
    sys.stdout.write(emit(calls, version))


if __name__ == "__main__":
    main()
