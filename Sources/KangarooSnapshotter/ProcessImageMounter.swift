import Foundation
import KangarooLazyFS
import KangarooSystem
import Logging

/// Lazy image mounts made by `kangaroo image mount --daemon`: each image's
/// FUSE server is a process of its own, so a snapshotter restart leaves the
/// mounts (and the containers on them) serving.
public struct ProcessImageMounter: ImageMounter {
    /// The `kangaroo` executable.
    public let executable: String
    /// The OCI layout the mount keeps manifests and bootstraps in.
    public let store: String
    /// The node's chunk cache, shared by every image (files per blob digest).
    public let cache: String
    public let reaper: Reaper?
    let logger: Logger

    public init(executable: String, store: String, cache: String, reaper: Reaper?, logger: Logger) {
        self.executable = executable
        self.store = store
        self.cache = cache
        self.reaper = reaper
        self.logger = logger
    }

    public func mount(reference: String, image: String, at mountPoint: String) async throws {
        let log = (mountPoint as NSString).deletingLastPathComponent + "/mount.log"
        try? FileManager.default.removeItem(atPath: log)
        let args = ["image", "mount", "--store", store, "--quiet", "--cache", cache, "--daemon", reference, mountPoint]
        let status = try await run(args, log: log)
        guard status == 0, isMounted(mountPoint) else {
            let text = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            throw SnapshotterError(.unavailable, "kangaroo image mount \(reference) exited with status \(status): \(text.suffix(1500))")
        }
    }

    public func isMounted(_ mountPoint: String) -> Bool {
        let type = MountControl.mountedType(mountPoint)
        return (type == "fuse.kangaroo" || type == "erofs") && !MountControl.isDead(mountPoint)
    }

    public func unmount(_ mountPoint: String) async throws {
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
