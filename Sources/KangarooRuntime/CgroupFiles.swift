import KangarooSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One container's cgroup, reached through directory descriptors.
///
/// An absolute path such as /sys/fs/cgroup/cpu/<id>/cgroup.procs crosses the
/// sysfs dentries "fs" and "cgroup", and kernfs revalidates each of them under
/// the sysfs root's rwsem, which every new network namespace takes for writing
/// while it registers its loopback device. With many containers starting at
/// once, the runtime blocked there about ten times per container (perf
/// sched_switch), each time waiting for the writers and then for a CPU. Here
/// the directory holding the hierarchies is walked once; the hierarchies, the
/// cgroup's directories and the files written repeatedly (devices.allow) are
/// opened relative to it and kept open for the life of the command.
final class CgroupFiles {
    let cgroup: Cgroup
    /// Opened directories holding mount points, by path.
    private var parents: [String: Int32] = [:]
    /// Opened hierarchy mount points, by path.
    private var roots: [String: Int32] = [:]
    /// The cgroup's directory in each hierarchy, by mount point.
    private var directories: [String: Int32] = [:]
    /// Interface files kept open for writing, by mount point + "/" + file.
    private var files: [String: Int32] = [:]

    /// O_PATH (not exported by Glibc) | O_DIRECTORY | O_CLOEXEC.
    private static let dirFlags: Int32 = 0o10000000 | O_DIRECTORY | O_CLOEXEC

    init(_ cgroup: Cgroup) { self.cgroup = cgroup }

    deinit { closeAll() }

    var layout: CgroupLayout { cgroup.layout }
    var path: String { cgroup.path }

    /// The cgroup's path below a mount point, without the leading "/" ("" for the root cgroup).
    private var relative: String { String(cgroup.path.drop { $0 == "/" }) }

    /// Mount points of every hierarchy the cgroup lives in: v1 first, then the v2 tree.
    var mountPoints: [String] {
        var out = layout.v1.map(\.mountPoint)
        if let u = layout.unified { out.append(u) }
        return out
    }

    /// The mount point serving a controller: its v1 hierarchy, else the v2 tree when pure v2.
    func mountPoint(for controller: String) -> String? {
        if let h = layout.hierarchy(controller) { return h.mountPoint }
        if layout.isPureV2 { return layout.unified }
        return nil
    }

    func closeAll() {
        // The root cgroup's directory is its hierarchy's root; close each fd once.
        // (An array, not a Set: a new generic type costs a metadata lookup at startup.)
        var closed: [Int32] = []
        for fd in Array(files.values) + Array(directories.values) + Array(roots.values) + Array(parents.values)
        where !closed.contains(fd) {
            closed.append(fd)
            _ = Glibc.close(fd)
        }
        files = [:]; directories = [:]; roots = [:]; parents = [:]
    }

    /// The hierarchy's mount point, opened relative to its (shared) parent directory.
    func root(_ mountPoint: String) throws(Errno) -> Int32 {
        if let fd = roots[mountPoint] { return fd }
        var parent = "/"
        var name = mountPoint
        if let slash = mountPoint.lastIndex(of: "/"), slash != mountPoint.startIndex {
            parent = String(mountPoint[..<slash])
            name = String(mountPoint[mountPoint.index(after: slash)...])
        } else if mountPoint.hasPrefix("/") {
            name = String(mountPoint.dropFirst())
        }
        let dirFD: Int32
        if let fd = parents[parent] { dirFD = fd } else {
            dirFD = try FileSystem.retrying { open(parent, Self.dirFlags) }
            parents[parent] = dirFD
        }
        let fd = name.isEmpty ? dirFD : try FileSystem.retrying { openat(dirFD, name, Self.dirFlags) }
        roots[mountPoint] = fd
        return fd
    }

    /// The cgroup's directory in a hierarchy (which must exist).
    func directory(_ mountPoint: String) throws(Errno) -> Int32 {
        if let fd = directories[mountPoint] { return fd }
        let r = try root(mountPoint)
        let rel = relative
        let fd = rel.isEmpty ? r : try FileSystem.retrying { openat(r, rel, Self.dirFlags) }
        directories[mountPoint] = fd
        return fd
    }

    // MARK: creation and removal

    /// Creates the cgroup in every hierarchy (mkdir -p). cpuset directories
    /// inherit cpus/mems from their parent, which cgroup v1 does not do by
    /// itself; on pure v2 the controllers are enabled along the path.
    func create() throws(Errno) {
        for h in layout.v1 {
            try makeDirectories(h.mountPoint, cpuset: h.controllers.contains("cpuset"), enableControllers: false)
        }
        if let u = layout.unified {
            try makeDirectories(u, cpuset: false, enableControllers: layout.isPureV2)
        }
    }

    private func makeDirectories(_ mountPoint: String, cpuset: Bool, enableControllers: Bool) throws(Errno) {
        var current = try root(mountPoint)
        var opened: [Int32] = []
        defer {
            // The cgroup's own directory is kept for the writes that follow.
            if !opened.isEmpty, directories[mountPoint] == nil { directories[mountPoint] = opened.removeLast() }
            for fd in opened { _ = Glibc.close(fd) }
        }
        for comp in relative.split(separator: "/").map(String.init) {
            if enableControllers, let avail = try? Self.read(current, "cgroup.controllers") {
                let want = avail.split(whereSeparator: { $0 == " " || $0 == "\n" }).map { "+" + $0 }
                if !want.isEmpty { try? Self.write(current, "cgroup.subtree_control", want.joined(separator: " ")) }
            }
            var made = true
            if mkdirat(current, comp, 0o755) != 0 {
                guard errno == EEXIST else { throw Errno(rawValue: errno) }
                made = false
            }
            let next = try FileSystem.retrying { openat(current, comp, Self.dirFlags) }
            opened.append(next)
            if cpuset && made {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let mine = (try? Self.read(next, file)) ?? ""
                    if mine.trimmingSpace.isEmpty, let p = try? Self.read(current, file) {
                        try Self.write(next, file, p.trimmingSpace)
                    }
                }
            }
            current = next
        }
    }

    /// Removes the cgroup everywhere; kills what is left in it first.
    ///
    /// A killed task keeps the cgroup busy until its parent reaps it. A
    /// container init whose `create` has exited is an orphan of the caller's
    /// pid namespace, and some inits (this machine's) reap only every second
    /// or two: rmdir is retried for up to 10 s before EBUSY is an error.
    func remove() throws(Errno) {
        let rel = relative
        guard !rel.isEmpty else { return }
        var lastError: Errno?
        for mp in mountPoints.reversed() {
            let r: Int32
            do { r = try root(mp) } catch {
                if error != .noSuchFileOrDirectory { lastError = error }
                continue
            }
            if let fd = directories.removeValue(forKey: mp) { _ = Glibc.close(fd) }
            var attempts = 0
            while unlinkat(r, rel, AT_REMOVEDIR) != 0 {
                let e = errno
                if e == ENOENT { break }
                // 200 tries 1 ms apart, then 20 ms apart: about 10 s in all.
                guard e == EBUSY, attempts < 700 else { lastError = Errno(rawValue: e); break }
                if attempts == 0 || attempts % 20 == 0 {
                    for pid in (try? Self.read(r, rel + "/cgroup.procs"))?.split(separator: "\n")
                        .compactMap({ Int32($0) }) ?? [] {
                        _ = Glibc.kill(pid, SIGKILL)
                    }
                }
                attempts += 1
                usleep(attempts < 200 ? 1000 : 20_000)
            }
        }
        if let lastError { throw lastError }
    }

    // MARK: processes

    /// Moves a process into the cgroup in every hierarchy.
    func join(pid: Int32) throws(Errno) {
        let text = String(pid)
        for mp in mountPoints {
            try Self.write(try directory(mp), "cgroup.procs", text)
        }
    }

    // MARK: interface files

    /// Writes one interface file of a controller with one write(2); the file
    /// stays open for further writes (devices.allow takes one rule per write).
    func set(_ controller: String, _ file: String, _ value: String) throws(Errno) {
        guard let mp = mountPoint(for: controller) else { throw Errno.noSuchFileOrDirectory }
        try set(mountPoint: mp, file, value)
    }

    func set(mountPoint mp: String, _ file: String, _ value: String) throws(Errno) {
        let key = mp + "/" + file
        let fd: Int32
        if let open = files[key] { fd = open } else {
            let dir = try directory(mp)
            fd = try FileSystem.retrying { openat(dir, file, O_WRONLY | O_CLOEXEC) }
            files[key] = fd
        }
        try Self.writeAll(fd, value)
    }

    func has(_ controller: String, _ file: String) -> Bool {
        guard let mp = mountPoint(for: controller), let dir = try? directory(mp) else { return false }
        return faccessat(dir, file, F_OK, 0) == 0
    }

    static func read(_ dir: Int32, _ name: String) throws(Errno) -> String {
        let fd = try FileSystem.retrying { openat(dir, name, O_RDONLY | O_CLOEXEC) }
        defer { _ = Glibc.close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = try FileSystem.retrying { chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func write(_ dir: Int32, _ name: String, _ value: String) throws(Errno) {
        let fd = try FileSystem.retrying { openat(dir, name, O_WRONLY | O_CLOEXEC) }
        defer { _ = Glibc.close(fd) }
        try writeAll(fd, value)
    }

    private static func writeAll(_ fd: Int32, _ value: String) throws(Errno) {
        var bytes = Array(value.utf8)
        var off = 0
        repeat {
            let n = try FileSystem.retrying {
                bytes.withUnsafeMutableBytes { b in b.baseAddress.map { Glibc.write(fd, $0 + off, b.count - off) } ?? 0 }
            }
            off += n
        } while off < bytes.count
    }
}
