import KangarooSystem
import SystemPackage

/// Devices every container may use, as runc allows them in addition to the
/// configured rules (config-linux.md "Default Devices" plus pts and tun).
let defaultDeviceRules: [String] = [
    "c *:* m", "b *:* m",
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
    "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm",
]

extension CgroupFiles {
    /// Applies linux.resources (create and `update`). On cgroup v1 the v1
    /// files are written; on pure v2 their v2 equivalents.
    func apply(_ r: Resources, devices: [Spec.Device] = [], initial: Bool) throws(RuntimeError) {
        func write(_ controller: String, _ file: String, _ value: String) throws(RuntimeError) {
            do { try set(controller, file, value) } catch {
                throw RuntimeError(.system, "cgroup: write \(value) to \(controller)/\(file) of \(path)", errno: error.rawValue)
            }
        }
        let v2 = layout.isPureV2
        if let cpu = r.cpu {
            if v2 {
                if let s = cpu.shares, s > 0 { try write("cpu", "cpu.weight", String(1 + ((max(s, 2) - 2) * 9999) / 262142)) }
                if cpu.quota != nil || cpu.period != nil {
                    let period = cpu.period ?? 100_000
                    let quota = cpu.quota.map { $0 > 0 ? String($0) : "max" } ?? "max"
                    try write("cpu", "cpu.max", "\(quota) \(period)")
                }
            } else {
                if let s = cpu.shares, s > 0 { try write("cpu", "cpu.shares", String(s)) }
                if let p = cpu.period, p > 0 { try write("cpu", "cpu.cfs_period_us", String(p)) }
                if let q = cpu.quota, q != 0 { try write("cpu", "cpu.cfs_quota_us", String(q > 0 ? q : -1)) }
                if let p = cpu.realtimePeriod, p > 0 { try write("cpu", "cpu.rt_period_us", String(p)) }
                if let rt = cpu.realtimeRuntime, rt != 0 { try write("cpu", "cpu.rt_runtime_us", String(rt)) }
            }
            if let c = cpu.cpus, !c.isEmpty { try write("cpuset", "cpuset.cpus", c) }
            if let m = cpu.mems, !m.isEmpty { try write("cpuset", "cpuset.mems", m) }
        }
        if let mem = r.memory {
            if v2 {
                if let l = mem.limit, l != 0 { try write("memory", "memory.max", l > 0 ? String(l) : "max") }
                if let res = mem.reservation, res != 0 { try write("memory", "memory.low", res > 0 ? String(res) : "max") }
                if let sw = mem.swap, sw != 0 {
                    let value: String
                    if sw < 0 { value = "max" } else { value = String(max(0, sw - (mem.limit ?? 0))) }
                    try write("memory", "memory.swap.max", value)
                }
            } else {
                let hasMemsw = has("memory", "memory.memsw.limit_in_bytes")
                let limit = mem.limit.map { $0 > 0 ? String($0) : "-1" }
                let swap = mem.swap.map { $0 > 0 ? String($0) : "-1" }
                if let limit {
                    do { try set("memory", "memory.limit_in_bytes", limit) } catch {
                        // Raising the limit above memsw: memsw must go first.
                        guard error == .invalidArgument, hasMemsw, let swap else {
                            throw RuntimeError(.system, "cgroup: write \(limit) to memory.limit_in_bytes of \(path)", errno: error.rawValue)
                        }
                        try write("memory", "memory.memsw.limit_in_bytes", swap)
                        try write("memory", "memory.limit_in_bytes", limit)
                    }
                }
                if let swap, mem.swap != 0 {
                    if hasMemsw { try write("memory", "memory.memsw.limit_in_bytes", swap) }
                    else if initial, mem.swap != mem.limit, (mem.swap ?? 0) > 0 {
                        throw RuntimeError(.unsupported, "linux.resources.memory.swap: swap accounting (memory.memsw) is not enabled on this host")
                    }
                }
                if let res = mem.reservation, res != 0 { try write("memory", "memory.soft_limit_in_bytes", res > 0 ? String(res) : "-1") }
                // memory.kernel is not written: Linux 5.16 and later ignore
                // memory.kmem.limit_in_bytes (as runc 1.1 ignores the field).
                if let tcp = mem.kernelTCP, tcp != 0 {
                    try write("memory", "memory.kmem.tcp.limit_in_bytes", tcp > 0 ? String(tcp) : "-1")
                }
                if let sw = mem.swappiness, sw <= 100 { try write("memory", "memory.swappiness", String(sw)) }
                if mem.disableOOMKiller == true { try write("memory", "memory.oom_control", "1") }
            }
        }
        if let p = r.pidsLimit {
            try write("pids", "pids.max", p > 0 ? String(p) : "max")
        }
        if let io = r.blockIO {
            if v2 {
                if let w = io.weight, w > 0 { try write("io", "io.weight", String(1 + (Int(w) - 10) * 9999 / 990)) }
                for (list, key) in [(io.throttleReadBpsDevice, "rbps"), (io.throttleWriteBpsDevice, "wbps"),
                                    (io.throttleReadIOPSDevice, "riops"), (io.throttleWriteIOPSDevice, "wiops")] {
                    for d in list { try write("io", "io.max", "\(d.major):\(d.minor) \(key)=\(d.rate == 0 ? "max" : String(d.rate))") }
                }
            } else {
                if let w = io.weight, w > 0 {
                    if has("blkio", "blkio.weight") { try write("blkio", "blkio.weight", String(w)) }
                    else if has("blkio", "blkio.bfq.weight") { try write("blkio", "blkio.bfq.weight", String(w)) }
                }
                for d in io.weightDevice {
                    guard let w = d.weight else { continue }
                    if has("blkio", "blkio.weight_device") { try write("blkio", "blkio.weight_device", "\(d.major):\(d.minor) \(w)") }
                    else if has("blkio", "blkio.bfq.weight_device") { try write("blkio", "blkio.bfq.weight_device", "\(d.major):\(d.minor) \(w)") }
                }
                for (list, file) in [(io.throttleReadBpsDevice, "blkio.throttle.read_bps_device"),
                                     (io.throttleWriteBpsDevice, "blkio.throttle.write_bps_device"),
                                     (io.throttleReadIOPSDevice, "blkio.throttle.read_iops_device"),
                                     (io.throttleWriteIOPSDevice, "blkio.throttle.write_iops_device")] {
                    for d in list { try write("blkio", file, "\(d.major):\(d.minor) \(d.rate)") }
                }
            }
        }
        if !v2, initial, layout.hierarchy("devices") != nil, !r.devices.isEmpty || !devices.isEmpty {
            for rule in r.devices {
                let type = rule.type ?? "a"
                let access = rule.access ?? "rwm"
                let line: String
                if type == "a" && rule.major == nil && rule.minor == nil {
                    line = "a"
                } else {
                    let maj = rule.major.map { $0 < 0 ? "*" : String($0) } ?? "*"
                    let min = rule.minor.map { $0 < 0 ? "*" : String($0) } ?? "*"
                    line = "\(type) \(maj):\(min) \(access)"
                }
                try write("devices", rule.allow ? "devices.allow" : "devices.deny", line)
            }
            for line in defaultDeviceRules { try write("devices", "devices.allow", line) }
            for d in devices where d.type != "p" {
                try write("devices", "devices.allow", "\(d.type == "u" ? "c" : d.type) \(d.major):\(d.minor) rwm")
            }
        }
        for h in r.hugepageLimits {
            try write("hugetlb", "hugetlb.\(h.pageSize).\(v2 ? "max" : "limit_in_bytes")", String(h.limit))
        }
        if let net = r.network {
            if let id = net.classID { try write("net_cls", "net_cls.classid", String(id)) }
            for p in net.priorities { try write("net_prio", "net_prio.ifpriomap", "\(p.name) \(p.priority)") }
        }
        for d in r.rdma {
            var line = d.device
            if let h = d.handles { line += " hca_handle=\(h)" }
            if let o = d.objects { line += " hca_object=\(o)" }
            try write("rdma", "rdma.max", line)
        }
        for (key, value) in r.unified {
            guard let u = layout.unified else {
                throw RuntimeError(.unsupported, "linux.resources.unified needs a cgroup v2 hierarchy")
            }
            do { try set(mountPoint: u, key, value) } catch {
                throw RuntimeError(.system, "linux.resources.unified.\(key): write \(value)", errno: error.rawValue)
            }
        }
    }
}
