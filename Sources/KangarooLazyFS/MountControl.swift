import Foundation
import KangarooFUSE
import KangarooOCI
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Bookkeeping of running lazy mounts (one state file and one stats file per
/// mount point under the run directory) and unmounting, also of dead mounts.
public enum MountControl {
    /// `KANGAROO_RUN_DIR` or /run/kangaroo/lazy.
    public static var runDirectory: String {
        ProcessInfo.processInfo.environment["KANGAROO_RUN_DIR"] ?? "/run/kangaroo/lazy"
    }

    /// What `image mount` records for `umount` and `stats`.
    public struct State: Codable, Sendable {
        public var pid: Int32
        public var mountPoint: String
        public var cacheDirectory: String
        public var mode: String
        public var image: String
        /// A failover FUSE mount: the server's session descriptor (for
        /// pidfd_getfd) and the INIT outcome a new server needs.
        public var fuseDescriptor: Int32?
        public var fuseMinor: UInt32?
        public var fuseFlags: UInt64?
        public init(pid: Int32, mountPoint: String, cacheDirectory: String, mode: String, image: String) {
            self.pid = pid
            self.mountPoint = mountPoint
            self.cacheDirectory = cacheDirectory
            self.mode = mode
            self.image = image
        }
    }

    /// Absolute, lexically normalized path (no stat of the last component,
    /// which fails on a dead mount).
    public static func normalize(_ path: String) -> String {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var parts: [Substring] = []
        for p in absolute.split(separator: "/") {
            if p == "." { continue }
            if p == ".." { _ = parts.popLast(); continue }
            parts.append(p)
        }
        guard let last = parts.popLast() else { return "/" }
        let parent = "/" + parts.joined(separator: "/")
        var real = parent
        if let r = realpath(parent, nil) {
            real = String(cString: r)
            free(r)
        }
        return (real == "/" ? "" : real) + "/" + last
    }

    static func id(_ mountPoint: String) -> String {
        String(Digest.sha256(of: Array(normalize(mountPoint).utf8)).description.dropFirst(7).prefix(16))
    }

    public static func statePath(_ mountPoint: String) -> String { runDirectory + "/" + id(mountPoint) + ".json" }
    public static func statsPath(_ mountPoint: String) -> String { runDirectory + "/" + id(mountPoint) + ".stats.json" }

    /// The run directory, made root's alone (the mounts' logs and state
    /// name images and paths no tenant is to read from the host).
    public static func makeRunDirectory() throws {
        try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        chmod(runDirectory, 0o700)
    }

    public static func writeState(_ state: State) throws {
        try makeRunDirectory()
        try JSONEncoder().encode(state).write(to: URL(fileURLWithPath: statePath(state.mountPoint)), options: .atomic)
    }

    public static func readState(_ mountPoint: String) -> State? {
        guard let data = FileManager.default.contents(atPath: statePath(mountPoint)) else { return nil }
        return try? JSONDecoder().decode(State.self, from: data)
    }

    /// The mount daemon's log (kept after a crash, for its cause).
    public static func logPath(_ mountPoint: String) -> String { runDirectory + "/" + id(mountPoint) + ".log" }

    /// A mount that ended cleanly leaves nothing in the run directory.
    public static func removeState(_ mountPoint: String) {
        try? FileManager.default.removeItem(atPath: statePath(mountPoint))
        try? FileManager.default.removeItem(atPath: statsPath(mountPoint))
        try? FileManager.default.removeItem(atPath: logPath(mountPoint))
    }

    /// The last stats a mount's daemon wrote.
    public static func readStats(_ mountPoint: String) -> LazyStats? {
        guard let data = FileManager.default.contents(atPath: statsPath(mountPoint)) else { return nil }
        return try? JSONDecoder().decode(LazyStats.self, from: data)
    }

    /// The file system type mounted at `mountPoint`, nil if none.
    public static func mountedType(_ mountPoint: String) -> String? {
        FUSEMount.mountInfo(for: FilePath(normalize(mountPoint)))?.fileSystemType
    }

    /// Whether something is mounted at `mountPoint` and answers (a FUSE
    /// mount whose server died gives ENOTCONN), without reading mountinfo,
    /// which the snapshotter would otherwise parse for every Prepare: the
    /// path is on another device than its parent directory. (For the image
    /// mounts of the snapshotter, whose mount points it alone uses.)
    public static func isLiveMountPoint(_ mountPoint: String) -> Bool {
        let path = normalize(mountPoint)
        var here = stat(), parent = stat()
        guard stat(path, &here) == 0, stat(path + "/..", &parent) == 0 else { return false }
        return here.st_dev != parent.st_dev
    }

    public static func isDead(_ mountPoint: String) -> Bool { FUSEMount.isDeadMount(FilePath(normalize(mountPoint))) }

    /// True when process `pid` exists and is not a zombie.
    public static func isAlive(_ pid: Int32) -> Bool { alive(pid) }

    static func alive(_ pid: Int32) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 else { return false }
        // A zombie is not alive.
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        if let close = stat.lastIndex(of: ")") {
            let rest = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces)
            return !rest.hasPrefix("Z")
        }
        return true
    }

    /// Unmounts a lazy mount: a dead FUSE mount (daemon crashed: ENOTCONN) is
    /// detached; a live one is unmounted (detached if busy) and its daemon,
    /// which exits when its mount goes away, is waited for. Returns what was done.
    @discardableResult
    public static func unmount(_ mountPoint: String, timeout: Duration = .seconds(10)) throws(LazyFSError) -> String {
        let path = normalize(mountPoint)
        let state = readState(path)
        defer { removeState(path) }
        if FUSEMount.isDeadMount(FilePath(path)) {
            do { try FUSEMount.unmount(FilePath(path), lazy: true) } catch {
                throw LazyFSError(.mount, "removing the dead mount at \(path) failed", underlying: error)
            }
            if let pid = state?.pid, alive(pid) { kill(pid, SIGKILL) }
            return "removed dead mount \(path)"
        }
        guard mountedType(path) != nil else {
            if let pid = state?.pid, alive(pid) {
                kill(pid, SIGTERM)
                return "\(path) was not mounted; stopped daemon \(pid)"
            }
            throw LazyFSError(.mount, "\(path) is not mounted")
        }
        if umount2(path, 0) != 0 {
            if Glibc.errno == EBUSY {
                if umount2(path, Int32(MNT_DETACH)) != 0 { throw Sys.errno("umount2(\(path), MNT_DETACH)", code: .mount) }
            } else {
                throw Sys.errno("umount2(\(path))", code: .mount)
            }
        }
        if let pid = state?.pid, state?.mode == "fuse", pid != getpid() {
            let limit = Sys.monotonicSeconds() + ChunkFetcher.seconds(timeout)
            while alive(pid) && Sys.monotonicSeconds() < limit { usleep(20_000) }
            if alive(pid) { return "unmounted \(path); daemon \(pid) still running" }
        }
        return "unmounted \(path)"
    }
}
