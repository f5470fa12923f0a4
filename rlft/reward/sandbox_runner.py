"""Runs one untrusted Python program inside the sandbox. Executed as `python -I sandbox_runner.py BOX
SETTINGS_JSON` by rlft.reward.sandbox, never imported: it uses the standard library only.

Layers, strongest first (each one that the machine allows is applied, and listed in BOX/isolation):
  namespaces  new network (no interfaces up: no network), PID (the program cannot see or signal the
              trainer; every process it leaves behind dies with the namespace's init) and mount
              namespaces (a fresh /proc, the whole file system read-only except the work folder).
              Needs root or unprivileged user namespaces.
  uid         when run as root and the interpreter is readable by others, the program runs as an
              unprivileged user, so the kernel's permission checks and RLIMIT_NPROC apply.
  nocaps      every capability dropped (bounding, ambient, effective, permitted, inheritable; securebits
              locked so that uid 0 regains none on exec; no_new_privs), so the program cannot undo the
              mounts above (clear the read-only flag, unmount) even when it still runs as uid 0, and
              root's uid no longer bypasses file permissions.
  rlimits     CPU seconds, address space, file size (caps stdout/stderr and every file written),
              open files, no core dumps.
  audit       a sys.addaudithook hook refuses sockets, process creation, signals to other processes,
              writes outside the work folder, other processes' /proc entries, ctypes and raising
              limits. It alone cannot stop code that escapes the interpreter; the kernel layers can.
The program passes only if it runs to its end: this runner then prints a nonce the program never
saw, so `sys.exit(0)` or `os._exit(0)` before the tests is a failure (a determined program could
still find the nonce by walking frames; that is a reward hack, not an escape).
"""

import errno
import json
import os
import resource
import signal
import sys
import traceback

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1000, 0x4000, 0x40000, 0x2, 0x4, 0x8
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 38, 47, 4
SECBITS_LOCKED_NOROOT = 0xEF  # noroot, no_setuid_fixup, no_cap_ambient_raise on; keep_caps off; all locked
LINUX_CAPABILITY_VERSION_3 = 0x20080522
NOBODY = 65534
DENIED_EVENTS = ("socket.", "ctypes.", "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn",
                 "os.spawn", "subprocess.Popen", "pty.spawn", "resource.setrlimit", "resource.prlimit",
                 "gc.get_objects", "gc.get_referrers", "gc.get_referents")
DENIED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "cffi", "_cffi_backend"}
PATH_EVENTS = ("os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.link", "os.symlink", "os.chmod",
               "os.chown", "os.truncate", "os.utime", "os.chflags", "os.lchflags", "shutil.rmtree")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def main() -> None:
    box, settings = sys.argv[1], json.loads(sys.argv[2])
    nonce = sys.stdin.readline().strip()
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    work = os.path.join(box, "work")
    with open(os.path.join(box, "program.py"), encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    report = open(os.path.join(box, "isolation"), "w")  # opened now: the file system may turn read-only
    uid = _unprivileged_uid(settings)
    libc = _libc()
    _die_with_parent(libc)
    layers = []
    if _unshare(libc):
        layers.append("namespaces")
        _fork_and_wait()  # this process stays outside; the child is the PID namespace's init
        _mount_private_filesystem(libc, work, layers)
        _fork_and_wait()  # init waits; when it exits the kernel kills whatever the program left
    _set_limits(settings, nproc=uid is not None)
    layers.append("rlimits")
    os.chdir(work)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        layers.append("uid")
    elif os.getuid() == 0:
        os.chown(work, 0, 0)  # the parent gave it to 'nobody'; without capabilities root is a plain owner
    if _drop_capabilities(libc):
        layers.append("nocaps")
    _die_with_parent(libc)  # a change of credentials clears the parent-death signal
    del libc
    audit = settings.get("audit_hook", True)
    report.write(",".join(layers + (["audit"] if audit else [])))
    report.close()
    for name in [m for m in sys.modules if m.split(".")[0] in DENIED_IMPORTS]:
        del sys.modules[name]  # re-importing them now fires the 'import' event the hook refuses
    if audit:
        sys.addaudithook(_make_hook(os.path.realpath(work), os.getpid()))
    sys.argv = ["program.py"]
    sys.path.insert(0, work)
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException:  # SystemExit too: leaving before the end is not passing
        traceback.print_exc(limit=5)
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os.write(1, f"\n{nonce}\n".encode())
    os._exit(0)


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):  # not Linux/glibc: the namespace layers are skipped
        return None


def _die_with_parent(libc) -> None:
    """SIGKILL this process when its parent dies, so a killed trainer leaves no program running."""
    if libc is not None and hasattr(libc, "prctl"):
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _unshare(libc) -> bool:
    """New network, PID and mount namespaces: as root directly, else inside a user namespace."""
    if libc is None or not hasattr(libc, "unshare"):
        return False
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
    if libc.unshare(flags) == 0:
        return True
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(flags | CLONE_NEWUSER) != 0:
        return False
    try:  # map ourselves to root inside the user namespace so the mounts below are allowed
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError:
        return False
    return True


def _fork_and_wait() -> None:
    """Fork; the parent waits for the child, forwards its exit status and never returns."""
    pid = os.fork()
    if pid == 0:
        _die_with_parent(_libc())
        return
    while True:
        try:
            done, status = os.waitpid(-1, 0)  # as a namespace's init this also reaps orphans
        except ChildProcessError:
            os._exit(1)
        if done == pid:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)


def _mount_private_filesystem(libc, work: str, layers: list) -> None:
    """A fresh /proc for the new PID namespace; everything read-only except the work folder."""
    import ctypes

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    def setattr_(path: str, recursive: bool, set_: int, clear: int) -> bool:
        attr = MountAttr(set_, clear, 0, 0)
        flags = AT_RECURSIVE if recursive else 0
        return libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr)) == 0

    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return
    if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0:
        layers.append("proc")
    if libc.mount(work.encode(), work.encode(), None, MS_BIND, None) == 0 and setattr_("/", True, MOUNT_ATTR_RDONLY, 0):
        if setattr_(work, False, 0, MOUNT_ATTR_RDONLY):
            layers.append("readonly")


def _drop_capabilities(libc) -> bool:
    """Drop every capability for good; True when none is left (effective and permitted)."""
    if libc is None or not hasattr(libc, "prctl") or not hasattr(libc, "capset"):
        return False
    import ctypes

    libc.prctl(PR_SET_SECUREBITS, SECBITS_LOCKED_NOROOT, 0, 0, 0)  # needs CAP_SETPCAP: first
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the kernel's last capability
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words, all zero
    libc.capset(header, data)
    with open("/proc/self/status") as f:
        caps = dict(line.split(":\t") for line in f if line.startswith(("CapEff", "CapPrm")))
    return all(int(value, 16) == 0 for value in caps.values()) and len(caps) == 2


def _unprivileged_uid(settings: dict):
    """The uid to drop to: only as root, and only if that user can still read the interpreter."""
    if os.getuid() != 0 or not settings.get("drop_root", True):
        return None
    for path in {os.path.dirname(os.__file__), os.path.dirname(os.path.realpath(sys.executable))}:
        while path not in ("/", ""):
            if not os.stat(path).st_mode & 0o001:  # others may not traverse it
                return None
            path = os.path.dirname(path)
    return NOBODY


def _set_limits(settings: dict, nproc: bool) -> None:
    cpu = max(1, int(settings["cpu_s"] + 0.999))
    limits = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard one
        resource.RLIMIT_AS: (settings["memory_bytes"],) * 2,
        resource.RLIMIT_FSIZE: (settings["file_bytes"],) * 2,
        resource.RLIMIT_NOFILE: (64, 64),
        resource.RLIMIT_CORE: (0, 0),
    }
    if nproc:  # counted per user, so only for the sandbox's own user (root is exempt anyway)
        limits[resource.RLIMIT_NPROC] = (settings["max_processes"],) * 2
    for kind, value in limits.items():
        resource.setrlimit(kind, value)


def _make_hook(work: str, pid: int):
    realpath, sep = os.path.realpath, os.sep

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        path = realpath(os.fsdecode(path))
        return path == work or path.startswith(work + sep) or path == os.devnull

    def hook(event: str, args: tuple) -> None:
        if event.startswith(DENIED_EVENTS):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].split(".")[0] in DENIED_IMPORTS:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event in ("os.kill", "os.killpg") and args[0] not in (pid, 0):
            raise PermissionError("sandbox: signals to other processes are not allowed")
        if event == "open" and not isinstance(args[0], int):
            path, flags = os.fsdecode(args[0]), args[2] or 0
            if flags & WRITE_FLAGS and not inside(path):
                raise PermissionError(f"sandbox: writing {path} is outside the work folder")
            parts = realpath(path).split(sep)
            if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != pid:
                raise PermissionError("sandbox: other processes' /proc entries are not readable")
        if event in PATH_EVENTS:
            for path in args[:2] if event in ("os.rename", "os.link", "os.symlink") else args[:1]:
                if path is not None and not inside(path):
                    raise PermissionError(f"sandbox: {event} on {path} is outside the work folder")

    return hook


if __name__ == "__main__":
    main()
