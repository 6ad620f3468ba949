#if canImport(Glibc)
import Glibc
#endif
import ContainerdAPI
import Foundation
import KangarooNode
import KangarooSystem
import Synchronization

/// The node daemon's sandbox disks under CRI: a sandbox's task Create takes
/// a disk from the pool (size: the pod annotation `io.kangaroo.disk-size`,
/// which containerd passes on with the runtime's `pod_annotations`; else
/// the pool's size) and mounts it at STATE/disks/NAMESPACE/SANDBOX; every
/// container task of the sandbox then has its overlay's upper and work
/// directories there instead of the snapshotter's; the sandbox's Delete
/// unmounts the disk and gives it back (scrubbed).
public final class SandboxDisks: Sendable {
    public let pool: DiskConfig
    let root: String
    /// One pool object for the process, so that the acquires of a burst
    /// are booked together.
    private let shared = Mutex<DiskPool?>(nil)

    func diskPool() throws(DiskError) -> DiskPool {
        try shared.withLock { (p: inout DiskPool?) throws(DiskError) -> DiskPool in
            if let p { return p }
            let made = try DiskPool(config: pool)
            p = made
            return made
        }
    }

    public init(pool: DiskConfig, stateRoot: String) {
        self.pool = pool
        root = stateRoot + "/disks"
        // Root's alone (the daemon mounts the overlays over the disks; no
        // tenant walks there): made so below, and set once here for a state
        // directory an earlier version made walkable.
        chmod(root, 0o700)
    }

    public static let sizeAnnotation = "io.kangaroo.disk-size"

    func mountPoint(namespace: String, sandbox: String) -> String { root + "/" + namespace + "/" + sandbox }
    func owner(namespace: String, sandbox: String) -> String { namespace + "/" + sandbox }

    /// A bundle's CRI role: the sandbox's id, whether it is the sandbox's own
    /// task, the disk size asked for.
    struct Role {
        var sandbox: String
        var isSandbox: Bool
        var size: UInt64?
    }

    static func role(bundle: String) throws(ShimError) -> Role? {
        guard let data = try? FileSystem.read(bundle + "/config.json"),
              let json = try? JSONSerialization.jsonObject(with: Data(data)) as? [String: Any],
              let annotations = json["annotations"] as? [String: String],
              let sandbox = annotations["io.kubernetes.cri.sandbox-id"] else { return nil }
        var size: UInt64?
        if let text = annotations[sizeAnnotation] {
            guard let n = parseBytes(text), n >= 16 << 20 else {
                throw ShimError(.invalidArgument, "pod annotation \(sizeAnnotation)=\(text) is not a size of at least 16M (e.g. 512M, 2G)")
            }
            size = n
        }
        return Role(sandbox: sandbox, isSandbox: annotations["io.kubernetes.cri.container-type"] == "sandbox", size: size)
    }

    static func parseBytes(_ text: String) -> UInt64? {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var t = text.uppercased()
        if t.hasSuffix("I") { t.removeLast() }
        if t.hasSuffix("B") { t.removeLast() }
        if let u = t.last.flatMap({ units[$0] }) { return UInt64(t.dropLast()).map { $0 * u } }
        return UInt64(t)
    }

    /// The sandbox's disk, mounted (taken from the pool by the sandbox's
    /// own task; a container of a sandbox whose task is gone gets none, or
    /// the disk it took would outlive the sandbox's Delete).
    func mountSandbox(namespace: String, role: Role) throws(ShimError) -> String {
        let mnt = mountPoint(namespace: namespace, sandbox: role.sandbox)
        if Mounts.isMountPoint(mnt) { return mnt }
        guard role.isSandbox else {
            throw ShimError(.failedPrecondition, "sandbox \(role.sandbox) has no disk mounted: its sandbox task is gone")
        }
        let disk: Disk
        do { disk = try diskPool().acquire(owner: owner(namespace: namespace, sandbox: role.sandbox), size: role.size) } catch {
            throw ShimError(.failedPrecondition, "sandbox \(role.sandbox): no disk: \(error)")
        }
        do { try FileSystem.makeDirectories(mnt, mode: 0o700) } catch {
            throw ShimError(.failedPrecondition, "create \(mnt): \(error)")
        }
        guard mount(disk.device!, mnt, "ext4", 0, nil) == 0 else {
            let e = errno
            _ = try? diskPool().release(owner: owner(namespace: namespace, sandbox: role.sandbox))
            throw ShimError(.failedPrecondition, "mount the sandbox disk \(disk.device!) at \(mnt): \(String(cString: strerror(e)))")
        }
        return mnt
    }

    /// The rootfs mounts of a container task with its overlay's upper and
    /// work directories on its sandbox's disk (unchanged for a task of no
    /// sandbox, or for the sandbox's own task, which writes nothing).
    func rootfs(_ mounts: [Containerd_Types_Mount], namespace: String, id: String, bundle: String) throws(ShimError) -> [Containerd_Types_Mount] {
        guard let role = try Self.role(bundle: bundle) else { return mounts }
        let mnt = try mountSandbox(namespace: namespace, role: role)
        guard !role.isSandbox else { return mounts }
        let dir = mnt + "/" + id
        for sub in ["upper", "work"] {
            do { try FileSystem.makeDirectories(dir + "/" + sub, mode: 0o755) } catch {
                throw ShimError(.failedPrecondition, "create \(dir)/\(sub): \(error)")
            }
        }
        return mounts.map { m in
            guard m.type == "overlay" else { return m }
            var m = m
            m.options = m.options.map { o in
                if o.hasPrefix("upperdir=") { return "upperdir=" + dir + "/upper" }
                if o.hasPrefix("workdir=") { return "workdir=" + dir + "/work" }
                return o
            }
            return m
        }
    }

    /// After a task's Delete: a container's layer goes from the disk; the
    /// sandbox's own Delete unmounts and releases the disk.
    func deleted(namespace: String, id: String, bundle: String) {
        guard let role = try? Self.role(bundle: bundle) else { return }
        let mnt = mountPoint(namespace: namespace, sandbox: role.sandbox)
        if role.isSandbox {
            // A plain unmount first (the disk is then free at once); lazily
            // if something still holds it (the pool waits for the device).
            if umount2(mnt, 0) != 0 { Mounts.detachAll(under: [mnt]) }
            rmdir(mnt)
            _ = try? diskPool().release(owner: owner(namespace: namespace, sandbox: role.sandbox))
        } else {
            FileSystem.removeTree(mnt + "/" + id)
        }
    }
}
