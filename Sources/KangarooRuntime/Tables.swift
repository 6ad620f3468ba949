#if canImport(Glibc)
import Glibc
#endif

/// Linux capability names (capabilities(7)) and their numbers.
public enum Capability {
    public static let names: [String] = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
        "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
        "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ]

    public static func number(_ name: String) -> Int? {
        let upper = name.uppercased()
        let full = upper.hasPrefix("CAP_") ? upper : "CAP_" + upper
        return names.firstIndex(of: full)
    }

    /// Bit mask of the named capabilities; unknown names are ignored (the
    /// decoder rejects them first).
    public static func mask(_ list: [String]) -> UInt64 {
        var m: UInt64 = 0
        for n in list { if let i = number(n) { m |= 1 << UInt64(i) } }
        return m
    }
}

/// RLIMIT_* names of getrlimit(2).
public enum Rlimits {
    public static let table: [(String, Int32)] = [
        ("RLIMIT_CPU", 0), ("RLIMIT_FSIZE", 1), ("RLIMIT_DATA", 2), ("RLIMIT_STACK", 3), ("RLIMIT_CORE", 4),
        ("RLIMIT_RSS", 5), ("RLIMIT_NPROC", 6), ("RLIMIT_NOFILE", 7), ("RLIMIT_MEMLOCK", 8), ("RLIMIT_AS", 9),
        ("RLIMIT_LOCKS", 10), ("RLIMIT_SIGPENDING", 11), ("RLIMIT_MSGQUEUE", 12), ("RLIMIT_NICE", 13),
        ("RLIMIT_RTPRIO", 14), ("RLIMIT_RTTIME", 15),
    ]

    public static func resource(_ name: String) -> Int32? {
        table.first { $0.0 == name }?.1
    }
}

/// Signal names for `kill` (signal(7)); accepted with or without "SIG".
public enum Signals {
    public static let table: [(String, Int32)] = [
        ("HUP", 1), ("INT", 2), ("QUIT", 3), ("ILL", 4), ("TRAP", 5), ("ABRT", 6), ("IOT", 6), ("BUS", 7),
        ("FPE", 8), ("KILL", 9), ("USR1", 10), ("SEGV", 11), ("USR2", 12), ("PIPE", 13), ("ALRM", 14),
        ("TERM", 15), ("STKFLT", 16), ("CHLD", 17), ("CONT", 18), ("STOP", 19), ("TSTP", 20), ("TTIN", 21),
        ("TTOU", 22), ("URG", 23), ("XCPU", 24), ("XFSZ", 25), ("VTALRM", 26), ("PROF", 27), ("WINCH", 28),
        ("IO", 29), ("POLL", 29), ("PWR", 30), ("SYS", 31),
    ]

    public static func parse(_ text: String) -> Int32? {
        if let n = Int32(text) { return n > 0 && n < 65 ? n : nil }
        var name = text.uppercased()
        if name.hasPrefix("SIG") { name.removeFirst(3) }
        if name.hasPrefix("RTMIN") || name.hasPrefix("RTMAX") {
            let base: Int32 = name.hasPrefix("RTMIN") ? 34 : 64
            let rest = name.dropFirst(5)
            if rest.isEmpty { return base }
            guard let off = Int32(rest) else { return nil }
            let v = base + off
            return v >= 34 && v <= 64 ? v : nil
        }
        return table.first { $0.0 == name }?.1
    }
}

/// mount(8) option names as they appear in config.json mounts.
public enum MountOptions {
    // (set flags, clear flags)
    static let flags: [String: (set: UInt, clear: UInt)] = [
        "ro": (UInt(MS_RDONLY), 0), "rw": (0, UInt(MS_RDONLY)),
        "nosuid": (UInt(MS_NOSUID), 0), "suid": (0, UInt(MS_NOSUID)),
        "nodev": (UInt(MS_NODEV), 0), "dev": (0, UInt(MS_NODEV)),
        "noexec": (UInt(MS_NOEXEC), 0), "exec": (0, UInt(MS_NOEXEC)),
        "sync": (UInt(MS_SYNCHRONOUS), 0), "async": (0, UInt(MS_SYNCHRONOUS)),
        "dirsync": (UInt(MS_DIRSYNC), 0), "remount": (UInt(MS_REMOUNT), 0),
        "mand": (UInt(MS_MANDLOCK), 0), "nomand": (0, UInt(MS_MANDLOCK)),
        "atime": (0, UInt(MS_NOATIME)), "noatime": (UInt(MS_NOATIME), 0),
        "diratime": (0, UInt(MS_NODIRATIME)), "nodiratime": (UInt(MS_NODIRATIME), 0),
        "relatime": (UInt(MS_RELATIME), 0), "norelatime": (0, UInt(MS_RELATIME)),
        "strictatime": (UInt(MS_STRICTATIME), 0), "nostrictatime": (0, UInt(MS_STRICTATIME)),
        "bind": (UInt(MS_BIND), 0), "rbind": (UInt(MS_BIND) | UInt(MS_REC), 0),
        "defaults": (0, 0),
    ]

    static let propagation: [String: UInt] = [
        "private": UInt(MS_PRIVATE), "rprivate": UInt(MS_PRIVATE) | UInt(MS_REC),
        "shared": UInt(MS_SHARED), "rshared": UInt(MS_SHARED) | UInt(MS_REC),
        "slave": UInt(MS_SLAVE), "rslave": UInt(MS_SLAVE) | UInt(MS_REC),
        "unbindable": UInt(MS_UNBINDABLE), "runbindable": UInt(MS_UNBINDABLE) | UInt(MS_REC),
    ]

    /// Splits options into mount flags, propagation flags and fs data.
    public static func parse(_ options: [String]) -> (flags: UInt, propagation: UInt, data: String) {
        var flags: UInt = 0
        var prop: UInt = 0
        var data: [String] = []
        for o in options {
            if let f = self.flags[o] {
                flags = (flags | f.set) & ~f.clear
            } else if let p = propagation[o] {
                prop = p
            } else if o == "tmpcopyup" || o.hasPrefix("idmap") || o == "rro" || o == "rrw" {
                continue  // not supported; ignored like runc does for unknown extensions
            } else {
                data.append(o)
            }
        }
        return (flags, prop, data.joined(separator: ","))
    }
}
