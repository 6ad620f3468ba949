import KangarooSystem
#if canImport(Glibc)
import Glibc
#endif

/// Settings of config.json that this host cannot honour are refused before
/// anything is created, with the JSON path of the setting (as crun and runc
/// refuse them at create), instead of being accepted and silently dropped.
enum HostSupport {
    /// The first setting of `spec` the host cannot apply, as an error.
    static func check(_ spec: Spec, layout: CgroupLayout) throws(RuntimeError) {
        if let p = spec.process { try check(p, document: "config.json: process") }
        if let r = spec.linux.resources { try check(r, layout: layout, document: "config.json: linux.resources") }
    }

    /// A process (create and `exec`): its AppArmor profile can be applied.
    static func check(_ p: Spec.Process, document: String) throws(RuntimeError) {
        if let profile = p.apparmorProfile, !apparmorEnabled() {
            throw RuntimeError(.unsupported, "\(document).apparmorProfile: AppArmor is not enabled on this host, cannot apply profile \"\(profile)\"")
        }
    }

    /// Resources (create and `update`): every controller they need is mounted.
    static func check(_ r: Resources, layout: CgroupLayout, document: String) throws(RuntimeError) {
        func need(_ controller: String, _ field: String) throws(RuntimeError) {
            guard !available(controller, layout: layout) else { return }
            let where_ = layout.isPureV2 ? "enabled in the cgroup v2 tree" : "mounted as a cgroup v1 hierarchy"
            throw RuntimeError(.unsupported, "\(document).\(field): the \(controller) cgroup controller is not \(where_) on this host")
        }
        if !r.hugepageLimits.isEmpty {
            try need("hugetlb", "hugepageLimits")
            for (i, h) in r.hugepageLimits.enumerated() where hugepageKiB(h.pageSize) == nil {
                throw RuntimeError(.invalidConfig, "\(document).hugepageLimits[\(i)].pageSize: \"\(h.pageSize)\" is not a huge page size of this host (see /sys/kernel/mm/hugepages)")
            }
        }
        if let net = r.network {
            if layout.isPureV2, net.classID != nil || !net.priorities.isEmpty {
                throw RuntimeError(.unsupported, "\(document).network: net_cls and net_prio do not exist on cgroup v2")
            }
            if net.classID != nil { try need("net_cls", "network.classID") }
            if !net.priorities.isEmpty { try need("net_prio", "network.priorities") }
        }
        if !r.rdma.isEmpty { try need("rdma", "rdma") }
        if let tcp = r.memory?.kernelTCP, tcp != 0 {
            if layout.isPureV2 {
                throw RuntimeError(.unsupported, "\(document).memory.kernelTCP: cgroup v2 has no separate TCP memory limit")
            }
            guard let h = layout.hierarchy("memory"), access(h.mountPoint + "/memory.kmem.tcp.limit_in_bytes", F_OK) == 0 else {
                throw RuntimeError(.unsupported, "\(document).memory.kernelTCP: this host's memory cgroup has no memory.kmem.tcp.limit_in_bytes")
            }
        }
    }

    /// Whether a controller can be used: a v1 hierarchy carries it, or the
    /// pure v2 tree lists it in its root's cgroup.controllers.
    static func available(_ controller: String, layout: CgroupLayout) -> Bool {
        if layout.hierarchy(controller) != nil { return true }
        guard layout.isPureV2, let u = layout.unified,
              let list = try? FileSystem.readString(u + "/cgroup.controllers") else { return false }
        return list.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains { $0 == controller }
    }

    /// "2MB", "1GB", "64KB" -> KiB, when the host has that huge page size.
    static func hugepageKiB(_ size: String) -> UInt64? {
        let units: [(String, UInt64)] = [("KB", 1), ("MB", 1024), ("GB", 1024 * 1024)]
        guard let (suffix, mult) = units.first(where: { size.hasSuffix($0.0) }),
              let n = UInt64(size.dropLast(suffix.count)), n > 0 else { return nil }
        let kib = n * mult
        return FileSystem.isDirectory("/sys/kernel/mm/hugepages/hugepages-\(kib)kB") ? kib : nil
    }

    static func apparmorEnabled() -> Bool {
        ((try? FileSystem.readString("/sys/module/apparmor/parameters/enabled")) ?? "").hasPrefix("Y")
    }
}
