#if canImport(Glibc)
import Glibc
#endif
import SystemPackage
import Synchronization

/// The host's cgroup layout: cgroup v1 hierarchies (with an optional v2 tree
/// beside them, "hybrid") or a pure cgroup v2 tree. Detected from
/// /proc/self/mountinfo at runtime.
public struct CgroupLayout: Sendable, Equatable {
    /// A v1 hierarchy: its mount point and the controllers (or `name=x`) it carries.
    public struct Hierarchy: Sendable, Equatable {
        public var mountPoint: String
        public var controllers: [String]
    }

    public var v1: [Hierarchy]
    /// Mount point of the cgroup2 tree (pure v2: the only tree; hybrid: no controllers).
    public var unified: String?

    public var isPureV2: Bool { v1.isEmpty && unified != nil }

    public init(v1: [Hierarchy], unified: String?) {
        self.v1 = v1
        self.unified = unified
    }

    /// Parses /proc/self/mountinfo text.
    public static func parse(mountinfo: String) -> CgroupLayout {
        var v1: [Hierarchy] = []
        var unified: String?
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard let sep = fields.firstIndex(of: "-"), sep >= 5, fields.count >= sep + 4 else { continue }
            let pre = fields[..<sep]
            let post = Array(fields[(sep + 1)...])
            let mountPoint = unescape(String(pre[4]))
            switch post[0] {
            case "cgroup2":
                if unified == nil { unified = mountPoint }
            case "cgroup":
                let opts = post[2].split(separator: ",").map(String.init)
                let known: Set<String> = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio",
                                          "pids", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc"]
                let ctrls = opts.filter { known.contains($0) || $0.hasPrefix("name=") }
                if !ctrls.isEmpty, !v1.contains(where: { $0.controllers == ctrls }) {
                    v1.append(Hierarchy(mountPoint: mountPoint, controllers: ctrls))
                }
            default: continue
            }
        }
        return CgroupLayout(v1: v1, unified: unified)
    }

    static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 0x5C, i + 3 < b.count,
               let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v); i += 4
            } else { out.append(b[i]); i += 1 }
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func detect() throws(Errno) -> CgroupLayout {
        parse(mountinfo: try FileSystem.readString("/proc/self/mountinfo"))
    }

    private static let recent = Mutex<(layout: CgroupLayout, at: ContinuousClock.Instant, namespace: UInt64)?>(nil)

    /// `detect()`, reused for up to a second in the same mount namespace:
    /// the node daemon creates, kills and deletes containers by the hundred,
    /// and each detection reads and parses a mountinfo that grows with them.
    /// (The cgroup mounts of a node do not change under its containers.)
    public static func current() throws(Errno) -> CgroupLayout {
        var ns = stat()
        let namespace: UInt64 = stat("/proc/self/ns/mnt", &ns) == 0 ? UInt64(ns.st_ino) : 0
        let now = ContinuousClock.now
        if let r = recent.withLock({ $0 }), r.namespace == namespace, now - r.at < .seconds(1) { return r.layout }
        let layout = try detect()
        recent.withLock { $0 = (layout, now, namespace) }
        return layout
    }

    /// The hierarchy carrying `controller`, if mounted.
    public func hierarchy(_ controller: String) -> Hierarchy? {
        v1.first { $0.controllers.contains(controller) }
    }
}

/// One container's cgroup: a relative path applied in every hierarchy.
public struct Cgroup: Sendable, Equatable {
    public var layout: CgroupLayout
    /// Absolute path inside each hierarchy, e.g. "/kangaroo/abc".
    public var path: String

    public init(layout: CgroupLayout, path: String) {
        self.layout = layout
        self.path = path.hasPrefix("/") ? path : "/" + path
    }

    /// Directories of this cgroup, v1 hierarchies first, then the v2 tree.
    public var directories: [String] {
        var out = layout.v1.map { $0.mountPoint + path }
        if let u = layout.unified { out.append(u + path) }
        return out
    }

    /// Directory for a controller: its v1 hierarchy, else the v2 tree when pure v2.
    public func directory(for controller: String) -> String? {
        if let h = layout.hierarchy(controller) { return h.mountPoint + path }
        if layout.isPureV2, let u = layout.unified { return u + path }
        return nil
    }

    /// Creates the cgroup in every hierarchy. cpuset directories inherit
    /// cpus/mems from their parent, which cgroup v1 does not do by itself.
    public func create() throws(Errno) {
        for h in layout.v1 {
            let dir = h.mountPoint + path
            if h.controllers.contains("cpuset") {
                try createCpuset(root: h.mountPoint, relative: path)
            } else {
                try FileSystem.makeDirectories(dir)
            }
        }
        if let u = layout.unified {
            if layout.isPureV2 { try enableControllers(root: u) }
            try FileSystem.makeDirectories(u + path)
        }
    }

    private func createCpuset(root: String, relative: String) throws(Errno) {
        var current = root
        for comp in relative.split(separator: "/") {
            let parent = current
            current += "/" + comp
            if mkdir(current, 0o755) != 0 {
                if errno == EEXIST { continue }
                throw Errno(rawValue: errno)
            }
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let mine = (try? FileSystem.readString(current + "/" + file)) ?? ""
                if mine.trimmingSpace.isEmpty, let p = try? FileSystem.readString(parent + "/" + file) {
                    try FileSystem.write(current + "/" + file, p.trimmingSpace)
                }
            }
        }
    }

    /// Pure v2: make the controllers available to children along the path.
    private func enableControllers(root: String) throws(Errno) {
        var current = root
        let comps = path.split(separator: "/")
        for (i, comp) in comps.enumerated() {
            if i == comps.count { break }
            if let avail = try? FileSystem.readString(current + "/cgroup.controllers") {
                let want = avail.split(whereSeparator: { $0 == " " || $0 == "\n" }).map { "+" + $0 }
                if !want.isEmpty { try? FileSystem.write(current + "/cgroup.subtree_control", want.joined(separator: " ")) }
            }
            current += "/" + comp
            if mkdir(current, 0o755) != 0, errno != EEXIST { throw Errno(rawValue: errno) }
        }
    }

    /// Moves a process into the cgroup in every hierarchy.
    public func join(pid: Int32) throws(Errno) {
        let text = String(pid)
        for dir in directories {
            try FileSystem.write(dir + "/cgroup.procs", text)
        }
    }

    /// Process ids in the cgroup.
    public func pids() -> [Int32] {
        let candidates = [directory(for: "pids"), directory(for: "memory"), directory(for: "freezer")]
            .compactMap { $0 } + directories
        for dir in candidates {
            if let text = try? FileSystem.readString(dir + "/cgroup.procs") {
                return text.split(separator: "\n").compactMap { Int32($0) }
            }
        }
        return []
    }

    /// Removes the cgroup everywhere; kills what is left in it first.
    public func remove() throws(Errno) {
        var lastError: Errno?
        for dir in directories.reversed() {
            guard FileSystem.exists(dir) else { continue }
            var attempts = 0
            while rmdir(dir) != 0 {
                let e = errno
                if e == ENOENT { break }
                guard e == EBUSY, attempts < 200 else { lastError = Errno(rawValue: e); break }
                if attempts == 0 || attempts % 20 == 0 {
                    for pid in (try? FileSystem.readString(dir + "/cgroup.procs"))?.split(separator: "\n")
                        .compactMap({ Int32($0) }) ?? [] {
                        kill(pid, SIGKILL)
                    }
                }
                attempts += 1
                usleep(1000)
            }
        }
        if let lastError { throw lastError }
    }

    public enum FreezerState: String, Sendable { case frozen = "FROZEN", thawed = "THAWED" }

    /// Freezes or thaws every process in the cgroup and waits until done.
    public func setFrozen(_ frozen: Bool) throws(Errno) {
        if let dir = layout.hierarchy("freezer").map({ $0.mountPoint + path }) {
            let want = frozen ? "FROZEN" : "THAWED"
            for _ in 0..<1000 {
                try FileSystem.write(dir + "/freezer.state", want)
                if (try FileSystem.readString(dir + "/freezer.state")).trimmingSpace == want { return }
                usleep(1000)
            }
            throw Errno.resourceBusy
        } else if layout.isPureV2, let u = layout.unified {
            try FileSystem.write(u + path + "/cgroup.freeze", frozen ? "1" : "0")
            for _ in 0..<1000 {
                let ev = try FileSystem.readString(u + path + "/cgroup.events")
                if ev.contains(frozen ? "frozen 1" : "frozen 0") { return }
                usleep(1000)
            }
            throw Errno.resourceBusy
        }
        throw Errno.notSupported
    }

    /// Whether the cgroup is frozen (false if there is no freezer).
    public func isFrozen() -> Bool {
        if let dir = layout.hierarchy("freezer").map({ $0.mountPoint + path }) {
            let s = (try? FileSystem.readString(dir + "/freezer.state"))?.trimmingSpace
            return s == "FROZEN" || s == "FREEZING"
        }
        if layout.isPureV2, let u = layout.unified {
            return (try? FileSystem.readString(u + path + "/cgroup.freeze"))?.trimmingSpace == "1"
        }
        return false
    }

    /// Writes one interface file of a controller, e.g. ("memory", "memory.limit_in_bytes", "1048576").
    public func set(_ controller: String, _ file: String, _ value: String) throws(Errno) {
        guard let dir = directory(for: controller) else { throw Errno.noSuchFileOrDirectory }
        try FileSystem.write(dir + "/" + file, value)
    }

    public func get(_ controller: String, _ file: String) -> String? {
        guard let dir = directory(for: controller) else { return nil }
        return (try? FileSystem.readString(dir + "/" + file))?.trimmingSpace
    }

    public func has(_ controller: String, _ file: String) -> Bool {
        guard let dir = directory(for: controller) else { return false }
        return FileSystem.exists(dir + "/" + file)
    }
}

extension String {
    /// The string without leading and trailing spaces and newlines.
    public var trimmingSpace: String {
        let u = Array(utf8)
        var a = 0, b = u.count
        while a < b, u[a] == 0x20 || u[a] == 0x0A || u[a] == 0x09 || u[a] == 0x0D { a += 1 }
        while b > a, u[b - 1] == 0x20 || u[b - 1] == 0x0A || u[b - 1] == 0x09 || u[b - 1] == 0x0D { b -= 1 }
        return String(decoding: u[a..<b], as: UTF8.self)
    }
}
