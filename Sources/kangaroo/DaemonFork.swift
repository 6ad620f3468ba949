import ArgumentParser
import Glibc

/// The early fork of `kangaroo image mount --daemon` (see main.swift).
enum DaemonFork {
    /// In the parent: the daemon child's pid (nil when not forked).
    nonisolated(unsafe) static var childPID: pid_t?
    /// In the child: true; its Mount command then writes to the mount's log.
    nonisolated(unsafe) static var isChild = false
    /// The arguments to parse (the child's lack --daemon).
    nonisolated(unsafe) static var arguments = Array(CommandLine.arguments.dropFirst())

    /// Parses `arguments` and runs the command (what `@main` would do).
    static func runCommand() async {
        await Kangaroo.main(arguments)
    }

    /// `kangaroo node` is a daemon too: a descriptor its starter left open
    /// (a pipe Foundation's Process waits on to see its child exit, say) must
    /// not stay open for the daemon's life. Only --ready-fd is kept.
    static func closeDescriptorsForNode() {
        let args = arguments
        guard args.first == "node" else { return }
        var kept: Set<Int32> = []
        if let i = args.firstIndex(of: "--ready-fd"), i + 1 < args.count, let fd = Int32(args[i + 1]) { kept.insert(fd) }
        for a in args where a.hasPrefix("--ready-fd=") { if let fd = Int32(a.dropFirst("--ready-fd=".count)) { kept.insert(fd) } }
        // A supervised daemon's listening and control sockets.
        if let i = args.firstIndex(of: "--worker-fds"), i + 1 < args.count {
            for part in args[i + 1].split(separator: ",") { if let fd = Int32(part) { kept.insert(fd) } }
        }
        closeInheritedDescriptors(keeping: kept)
    }

    static func forkIfRequested() {
        let args = arguments
        guard args.count >= 2, args[0] == "image", args[1] == "mount", args.contains("--daemon"),
              !args.contains("--help"), !args.contains("-h"), threadCount() == 1 else { return }
        let pid = fork()
        if pid < 0 { return }  // the parent falls back to spawning a process
        if pid > 0 {
            childPID = pid
            return
        }
        // Child: its own session (no terminal signals), no stdio of the
        // caller (a `$(kangaroo ...)` must not wait for the daemon); the
        // Mount command redirects stdout/stderr to the mount's log.
        setsid()
        closeInheritedDescriptors()
        let null = open("/dev/null", O_RDWR)
        if null >= 0 {
            for fd: Int32 in [0, 1, 2] { dup2(null, fd) }
            if null > 2 { close(null) }
        }
        isChild = true
        arguments = args.filter { $0 != "--daemon" }
    }

    /// Closes every descriptor above stderr the caller passed down (a
    /// caller that waits for a pipe or socket to close, as Foundation's
    /// Process does to see its child exit, must not wait for the daemon).
    static func closeInheritedDescriptors(keeping kept: Set<Int32> = []) {
        guard let dir = opendir("/proc/self/fd") else { return }
        var fds: [Int32] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let fd = Int32(name), fd > 2 { fds.append(fd) }
        }
        let own = dirfd(dir)
        closedir(dir)
        for fd in fds where fd != own && !kept.contains(fd) { close(fd) }
    }

    /// Threads of this process (fork is only safe with one).
    static func threadCount() -> Int {
        guard let file = fopen("/proc/self/status", "r") else { return -1 }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(cString: line)
            if text.hasPrefix("Threads:") { return Int(String(text.dropFirst(8).filter(\.isNumber))) ?? -1 }
        }
        return -1
    }

    /// In the child: stdout and stderr to `path` (truncated first).
    static func redirectOutput(to path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        dup2(fd, 1)
        dup2(fd, 2)
        close(fd)
    }
}
