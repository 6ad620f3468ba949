import Foundation
import KangarooLazyFS
import KangarooSystem
import Logging

/// Lazy image mounts made by `kangaroo image mount --daemon --failover`:
/// each image's FUSE server is a process of its own, so a snapshotter
/// restart leaves the mounts (and the containers on them) serving, and the
/// keeper holds each mount's connection so that a killed server is replaced
/// without its readers seeing an error.
public struct ProcessImageMounter: ImageMounter {
    /// The `kangaroo` executable.
    public let executable: String
    /// The OCI layout the mount keeps manifests and bootstraps in.
    public let store: String
    /// The node's chunk cache, shared by every image (files per blob digest).
    public let cache: String
    /// More options of every mount (registry mirrors, compressed chunks kept).
    public let options: [String]
    public let reaper: Reaper?
    public let keeper: FUSEKeeper
    let logger: Logger

    public init(executable: String, store: String, cache: String, options: [String] = [], reaper: Reaper?, logger: Logger) {
        self.executable = executable
        self.store = store
        self.cache = cache
        self.options = options
        self.reaper = reaper
        self.logger = logger
        keeper = FUSEKeeper(executable: executable, logger: logger)
    }

    /// The arguments of a server for `reference` at `mountPoint` (without
    /// --daemon).
    func serverArguments(_ reference: String, _ mountPoint: String) -> [String] {
        ["image", "mount", "--store", store, "--quiet", "--cache", cache, "--failover"] + options + [reference, mountPoint]
    }

    public func mount(reference: String, image: String, at mountPoint: String) async throws {
        let log = (mountPoint as NSString).deletingLastPathComponent + "/mount.log"
        try? FileManager.default.removeItem(atPath: log)
        let args = serverArguments(reference, mountPoint)
        let status = try await run(args + ["--daemon"], log: log)
        guard status == 0, isMounted(mountPoint) else {
            let text = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            throw SnapshotterError(.unavailable, "kangaroo image mount \(reference) exited with status \(status): \(text.suffix(1500))")
        }
        keep(mountPoint, arguments: args)
    }

    /// Holds the connection of a FUSE mount (a kernel EROFS mount needs no
    /// server). Without it the mount still serves, only without failover.
    func keep(_ mountPoint: String, arguments: [String]) {
        guard MountControl.mountedType(mountPoint) == "fuse.kangaroo" else { return }
        do { try keeper.adopt(mountPoint: mountPoint, arguments: arguments) } catch {
            logger.warning("lazy mount without failover: \(error)", metadata: ["mount": "\(mountPoint)"])
        }
    }

    /// After a restart: keeps the connections of the FUSE mounts at
    /// `mountPoints` that are still served.
    public func adopt(_ mountPoints: [String]) {
        for mountPoint in mountPoints where isMounted(mountPoint) {
            guard let state = MountControl.readState(mountPoint) else { continue }
            keep(mountPoint, arguments: serverArguments(state.image, mountPoint))
        }
    }

    public func isMounted(_ mountPoint: String) -> Bool {
        MountControl.isLiveMountPoint(mountPoint)
    }

    public func unmount(_ mountPoint: String) async throws {
        keeper.release(mountPoint: mountPoint)
        try MountControl.unmount(mountPoint)
    }

    /// Runs the executable and returns its exit code (128 + signal when
    /// killed). Spawn and watch happen back to back on one thread, with no
    /// suspension between them (the reaper also keeps a late watch's status).
    private func run(_ args: [String], log: String) async throws -> Int32 {
        let decode: @Sendable (Int32) -> Int32 = { status in
            (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        }
        let executable = self.executable
        let reaper = self.reaper
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<Int32, any Error>) in
            let pid: pid_t
            do { pid = try Spawn.start(executable, args, .init(log: log)) } catch {
                c.resume(throwing: SnapshotterError(.internalError, "cannot start \(executable)", underlying: error))
                return
            }
            if let reaper {
                reaper.watch(pid) { _, status in c.resume(returning: decode(status)) }
            } else {
                Thread.detachNewThread {
                    var status: Int32 = 0
                    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                    c.resume(returning: decode(status))
                }
            }
        }
    }
}
