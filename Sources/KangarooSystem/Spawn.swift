#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// Starting helper processes with posix_spawn (no fork of a multithreaded
/// daemon): stdin from /dev/null, stdout and stderr appended to a log file.
public enum Spawn {
    public struct Options: Sendable {
        /// stdout and stderr go here (created, appended); nil: /dev/null.
        public var log: String?
        /// A descriptor of the caller that the child gets as fd 3.
        public var fd3: Int32?
        /// Descriptors of the caller the child gets as fds 3, 4, ... (after
        /// `fd3`, if set, instead of it).
        public var descriptors: [Int32] = []
        /// setsid: no controlling terminal, no job-control signals.
        public var newSession = false
        /// stdout and stderr stay the caller's (`log` is ignored).
        public var inheritOutput = false
        public init(log: String? = nil, fd3: Int32? = nil, newSession: Bool = false, inheritOutput: Bool = false) {
            self.log = log
            self.fd3 = fd3
            self.newSession = newSession
            self.inheritOutput = inheritOutput
        }
    }

    /// Starts `path` with `arguments` (argv[0] is `path`) and this process's
    /// environment; returns its pid. The caller reaps it.
    public static func start(_ path: String, _ arguments: [String], _ options: Options = Options()) throws(Errno) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if !options.inheritOutput {
            posix_spawn_file_actions_addopen(&actions, 1, options.log ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0o640)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        // Copies above any target number first, so that one source is not
        // overwritten by another's dup2.
        let sources = (options.fd3.map { [$0] } ?? []) + options.descriptors
        let copies = sources.map { fcntl($0, F_DUPFD_CLOEXEC, 64) }
        defer { for c in copies where c >= 0 { close(c) } }
        if copies.contains(where: { $0 < 0 }) { throw Errno(rawValue: errno) }
        for (i, c) in copies.enumerated() { posix_spawn_file_actions_adddup2(&actions, c, Int32(3 + i)) }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        if options.newSession { posix_spawnattr_setflags(&attr, Int16(0x80 /* POSIX_SPAWN_SETSID */)) }
        let cargs = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for a in cargs { free(a) } }
        var pid: pid_t = 0
        let rc = cargs.withUnsafeBufferPointer { argv in
            posix_spawn(&pid, path, &actions, &attr, UnsafeMutablePointer(mutating: argv.baseAddress!), environ)
        }
        guard rc == 0 else { throw Errno(rawValue: rc) }
        return pid
    }
}
