import CKangaroo
import Foundation
import KangarooFUSE
import KangarooSystem
import Logging
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Keeps lazy mounts alive across the death of their FUSE server, as
/// nydusd's failover does: for every failover mount (`kangaroo image mount
/// --failover`) it holds a copy of the server's /dev/fuse session file
/// (pidfd_getfd), so a killed server neither ends the connection (no
/// ENOTCONN) nor loses the requests it had read; it watches the server's
/// pidfd and, when the server dies while the mount is still there, starts a
/// new one on that file (`--takeover-fd`), which asks the kernel to resend
/// the unanswered requests. Readers see a pause.
///
/// Held by a long-lived process (the node daemon); when that process
/// restarts it adopts the running servers again.
public final class FUSEKeeper: Sendable {
    struct Kept: Sendable {
        /// Our copy of the session file.
        var descriptor: Int32
        var pid: Int32
        var pidfd: Int32
        var arguments: [String]
        var takeovers = 0
    }

    public struct Status: Sendable {
        public var mountPoint: String
        public var pid: Int32
        public var takeovers: Int
    }

    let executable: String
    let logger: Logger
    private let kept = Mutex<[String: Kept]>([:])

    /// `executable` is `kangaroo`; takeovers run it with the adopted
    /// mount's arguments plus `--takeover-fd 3`.
    public init(executable: String, logger: Logger) {
        self.executable = executable
        self.logger = logger
    }

    /// Takes a copy of the connection of the failover mount at
    /// `mountPoint` (its server's state file names the pid and descriptor)
    /// and watches its server. `arguments` start a server for it
    /// (`image mount ... REF MOUNTPOINT`, without --daemon).
    public func adopt(mountPoint: String, arguments: [String]) throws(LazyFSError) {
        let path = MountControl.normalize(mountPoint)
        guard kept.withLock({ $0[path] == nil }) else { return }
        guard let state = MountControl.readState(path), state.mode == "fuse", let remote = state.fuseDescriptor else {
            throw LazyFSError(.mount, "\(path) is not a failover FUSE mount (no session descriptor in its state)")
        }
        let pidfd = kr_pidfd_open(state.pid)
        guard pidfd >= 0 else { throw LazyFSError(.mount, "pidfd_open of the FUSE server \(state.pid) of \(path)", underlying: Errno(rawValue: -pidfd)) }
        let copy = kr_pidfd_getfd(pidfd, remote)
        guard copy >= 0 else {
            close(pidfd)
            throw LazyFSError(.mount, "pidfd_getfd of /dev/fuse from the FUSE server \(state.pid) of \(path)", underlying: Errno(rawValue: -copy))
        }
        kept.withLock { $0[path] = Kept(descriptor: copy, pid: state.pid, pidfd: pidfd, arguments: arguments) }
        logger.info("fuse keeper: holding the connection", metadata: ["mount": "\(path)", "server": "\(state.pid)"])
        Thread.detachNewThread { [self] in watch(path) }
    }

    /// Stops keeping `mountPoint` (before unmounting it): a server that
    /// exits after this is not replaced.
    public func release(mountPoint: String) {
        let path = MountControl.normalize(mountPoint)
        guard let k = kept.withLock({ $0.removeValue(forKey: path) }) else { return }
        close(k.descriptor)
        close(k.pidfd)
    }

    /// The mounts kept, their current server and how often it was replaced.
    public var status: [Status] {
        kept.withLock { $0.map { Status(mountPoint: $0.key, pid: $0.value.pid, takeovers: $0.value.takeovers) } }
            .sorted { $0.mountPoint < $1.mountPoint }
    }

    /// Waits for the server's exit while the mount is kept; replaces it.
    private func watch(_ path: String) {
        while true {
            guard let k = kept.withLock({ $0[path] }) else { return }
            var p = pollfd(fd: k.pidfd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 500)
            if ready <= 0 { continue }
            // The server exited. Still ours, still mounted: a new server.
            guard kept.withLock({ $0[path]?.pid == k.pid }) else { continue }
            guard MountControl.mountedType(path) == "fuse.kangaroo" else {
                logger.info("fuse keeper: mount gone with its server", metadata: ["mount": "\(path)", "server": "\(k.pid)"])
                release(mountPoint: path)
                return
            }
            logger.warning("fuse keeper: FUSE server died; starting a new one on its connection",
                           metadata: ["mount": "\(path)", "server": "\(k.pid)"])
            var attempt = 0
            while kept.withLock({ $0[path] != nil }) {
                attempt += 1
                if let (pid, pidfd) = takeOver(path, k) {
                    let replaced = kept.withLock { map -> Bool in
                        guard map[path] != nil else { return false }
                        close(map[path]!.pidfd)
                        map[path]!.pid = pid
                        map[path]!.pidfd = pidfd
                        map[path]!.takeovers += 1
                        return true
                    }
                    if !replaced { close(pidfd) }
                    logger.info("fuse keeper: new server serves the mount", metadata: ["mount": "\(path)", "server": "\(pid)"])
                    break
                }
                if attempt >= 5 {
                    logger.error("fuse keeper: giving up on the mount after \(attempt) failed takeovers", metadata: ["mount": "\(path)"])
                    release(mountPoint: path)
                    return
                }
                Thread.sleep(forTimeInterval: 0.2 * Double(attempt))
            }
        }
    }

    /// Starts a server on our copy of the connection; its pid and pidfd
    /// once it serves (its state file names it), nil if it failed.
    private func takeOver(_ path: String, _ k: Kept) -> (Int32, Int32)? {
        let pid: Int32
        do {
            pid = try Spawn.start(executable, k.arguments + ["--takeover-fd", "3"],
                                  .init(log: MountControl.logPath(path), fd3: k.descriptor, newSession: true))
        } catch {
            logger.error("fuse keeper: cannot start \(executable): \(error)", metadata: ["mount": "\(path)"])
            return nil
        }
        let pidfd = kr_pidfd_open(pid)
        guard pidfd >= 0 else { return nil }
        let limit = Date().addingTimeInterval(60)
        while Date() < limit {
            if MountControl.readState(path)?.pid == pid { return (pid, pidfd) }
            var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 5) > 0 {
                logger.error("fuse keeper: the new server exited before serving (log \(MountControl.logPath(path)))",
                             metadata: ["mount": "\(path)", "server": "\(pid)"])
                close(pidfd)
                return nil
            }
        }
        kill(pid, SIGKILL)
        close(pidfd)
        return nil
    }
}
