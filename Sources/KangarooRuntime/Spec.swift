import KangarooSystem

// OCI runtime-spec types (runtime-spec v1.1, config.md and config-linux.md),
// decoded by hand from JSON so that every error names its JSON path.

/// config.md: the container configuration.
public struct Spec: Sendable {
    public var ociVersion: String
    public var process: Process?
    public var root: Root?
    public var hostname: String?
    public var domainname: String?
    public var mounts: [Mount]
    public var hooks: Hooks
    public var annotations: [(String, String)]
    public var linux: Linux

    /// config.md "Root".
    public struct Root: Sendable {
        public var path: String
        public var readonly: Bool
    }

    /// config.md "Mounts".
    public struct Mount: Sendable {
        public var destination: String
        public var type: String?
        public var source: String?
        public var options: [String]
    }

    /// config.md "POSIX process rlimits".
    public struct Rlimit: Sendable {
        public var type: String
        public var soft: UInt64
        public var hard: UInt64
    }

    /// config.md "Linux process capabilities".
    public struct Capabilities: Sendable {
        public var bounding: [String] = []
        public var effective: [String] = []
        public var inheritable: [String] = []
        public var permitted: [String] = []
        public var ambient: [String] = []
    }

    /// config.md "User".
    public struct User: Sendable {
        public var uid: UInt32 = 0
        public var gid: UInt32 = 0
        public var umask: UInt32?
        public var additionalGids: [UInt32] = []
    }

    /// config.md "Process".
    public struct Process: Sendable {
        public var terminal = false
        public var user = User()
        public var args: [String] = []
        public var env: [String] = []
        public var cwd = "/"
        public var capabilities: Capabilities?
        public var rlimits: [Rlimit] = []
        public var noNewPrivileges = false
        public var oomScoreAdj: Int?
        public var apparmorProfile: String?
    }

    /// config.md "POSIX-platform Hooks".
    public struct Hook: Sendable {
        public var path: String
        public var args: [String]
        public var env: [String]
        public var timeout: Int?
    }

    public struct Hooks: Sendable {
        public var prestart: [Hook] = []
        public var createRuntime: [Hook] = []
        public var createContainer: [Hook] = []
        public var startContainer: [Hook] = []
        public var poststart: [Hook] = []
        public var poststop: [Hook] = []
    }

    /// config-linux.md "Namespaces".
    public struct Namespace: Sendable {
        public var type: String
        public var path: String?
    }

    /// config-linux.md "User namespace mappings".
    public struct IDMapping: Sendable {
        public var containerID: UInt32
        public var hostID: UInt32
        public var size: UInt32
    }

    /// config-linux.md "Devices".
    public struct Device: Sendable {
        public var type: String
        public var path: String
        public var major: Int64
        public var minor: Int64
        public var fileMode: UInt32?
        public var uid: UInt32?
        public var gid: UInt32?
    }

    /// config-linux.md "Seccomp".
    public struct Seccomp: Sendable {
        public struct Arg: Sendable {
            public var index: UInt32
            public var value: UInt64
            public var valueTwo: UInt64
            public var op: String
        }
        public struct Syscall: Sendable {
            public var names: [String]
            public var action: String
            public var errnoRet: UInt32?
            public var args: [Arg]
        }
        public var defaultAction: String
        public var defaultErrnoRet: UInt32?
        public var architectures: [String]
        public var flags: [String]
        public var syscalls: [Syscall]
    }

    /// config-linux.md "Linux".
    public struct Linux: Sendable {
        public var namespaces: [Namespace] = []
        public var uidMappings: [IDMapping] = []
        public var gidMappings: [IDMapping] = []
        public var devices: [Device] = []
        public var cgroupsPath: String?
        public var resources: Resources?
        public var sysctl: [(String, String)] = []
        public var maskedPaths: [String] = []
        public var readonlyPaths: [String] = []
        public var rootfsPropagation: String?
        public var seccomp: Seccomp?
    }
}

/// config-linux.md "Control groups" resources; also the `update --resources` input.
public struct Resources: Sendable {
    public struct DeviceRule: Sendable {
        public var allow: Bool
        public var type: String?
        public var major: Int64?
        public var minor: Int64?
        public var access: String?
    }
    public struct Memory: Sendable {
        public var limit: Int64?
        public var reservation: Int64?
        public var swap: Int64?
        public var kernel: Int64?
        public var kernelTCP: Int64?
        public var swappiness: UInt64?
        public var disableOOMKiller: Bool?
    }
    /// config-linux.md "Huge page limits".
    public struct HugepageLimit: Sendable {
        public var pageSize: String
        public var limit: UInt64
    }
    /// config-linux.md "Network": net_cls class id and net_prio priorities.
    public struct Network: Sendable {
        public var classID: UInt32?
        public var priorities: [(name: String, priority: UInt32)] = []
    }
    public struct CPU: Sendable {
        public var shares: UInt64?
        public var quota: Int64?
        public var period: UInt64?
        public var realtimeRuntime: Int64?
        public var realtimePeriod: UInt64?
        public var cpus: String?
        public var mems: String?
        public var idle: Int64?
    }
    public struct WeightDevice: Sendable {
        public var major: Int64
        public var minor: Int64
        public var weight: UInt16?
    }
    public struct ThrottleDevice: Sendable {
        public var major: Int64
        public var minor: Int64
        public var rate: UInt64
    }
    public struct BlockIO: Sendable {
        public var weight: UInt16?
        public var leafWeight: UInt16?
        public var weightDevice: [WeightDevice] = []
        public var throttleReadBpsDevice: [ThrottleDevice] = []
        public var throttleWriteBpsDevice: [ThrottleDevice] = []
        public var throttleReadIOPSDevice: [ThrottleDevice] = []
        public var throttleWriteIOPSDevice: [ThrottleDevice] = []
    }
    public var devices: [DeviceRule] = []
    public var memory: Memory?
    public var cpu: CPU?
    public var pidsLimit: Int64?
    public var blockIO: BlockIO?
    public var hugepageLimits: [HugepageLimit] = []
    public var network: Network?
    /// config-linux.md "RDMA": device name -> (hcaHandles, hcaObjects).
    public var rdma: [(device: String, handles: UInt32?, objects: UInt32?)] = []
    public var unified: [(String, String)] = []

    public init() {}
}

// MARK: - Decoding

extension Spec {
    /// Parses config.json text.
    public static func parse(_ text: String, document: String = "config.json") throws(RuntimeError) -> Spec {
        let json: JSON
        do {
            json = try JSON.parse(text)
        } catch {
            throw RuntimeError(.invalidConfig, "\(document): invalid JSON at byte \(error.offset): \(error.message)")
        }
        return try Spec(JSONNode(json, document: document))
    }

    init(_ n: JSONNode) throws(RuntimeError) {
        guard case .object = n.value else { throw n.typeError("an object") }
        ociVersion = try n.requiredString("ociVersion")
        process = try n.child("process").map { node throws(RuntimeError) in try Process(node) }
        root = try n.child("root").map { r throws(RuntimeError) in
            Root(path: try r.requiredString("path"), readonly: try r.bool("readonly") ?? false)
        }
        hostname = try n.string("hostname")
        domainname = try n.string("domainname")
        mounts = []
        for m in try n.array("mounts") {
            let dest = try m.requiredString("destination")
            guard dest.hasPrefix("/") else {
                throw m.child("destination")!.fail("mount destination \"\(dest)\" must be an absolute path")
            }
            mounts.append(Mount(destination: dest, type: try m.string("type"), source: try m.string("source"),
                                options: try m.strings("options") ?? []))
        }
        hooks = Hooks()
        if let h = n.child("hooks") {
            func list(_ key: String) throws(RuntimeError) -> [Hook] {
                var out: [Hook] = []
                for item in try h.array(key) {
                    let path = try item.requiredString("path")
                    guard path.hasPrefix("/") else { throw item.child("path")!.fail("hook path must be absolute") }
                    let timeout = try item.int("timeout")
                    if let timeout, timeout <= 0 { throw item.child("timeout")!.fail("timeout must be positive") }
                    out.append(Hook(path: path, args: try item.strings("args") ?? [], env: try item.strings("env") ?? [],
                                    timeout: timeout))
                }
                return out
            }
            hooks.prestart = try list("prestart")
            hooks.createRuntime = try list("createRuntime")
            hooks.createContainer = try list("createContainer")
            hooks.startContainer = try list("startContainer")
            hooks.poststart = try list("poststart")
            hooks.poststop = try list("poststop")
        }
        annotations = try n.stringMap("annotations")
        linux = Linux()
        if let l = n.child("linux") { linux = try Linux(l) }
    }
}

extension Spec.Process {
    init(_ n: JSONNode) throws(RuntimeError) {
        terminal = try n.bool("terminal") ?? false
        if let u = n.child("user") {
            user.uid = try u.uint32("uid") ?? 0
            user.gid = try u.uint32("gid") ?? 0
            user.umask = try u.uint32("umask")
            for g in try u.array("additionalGids") { user.additionalGids.append(try g.asUInt32()) }
        }
        guard let a = n.child("args") else { throw n.missing("args") }
        args = try a.asStringArray()
        guard !args.isEmpty else { throw a.fail("args must not be empty") }
        env = try n.strings("env") ?? []
        cwd = try n.requiredString("cwd")
        guard cwd.hasPrefix("/") else { throw n.child("cwd")!.fail("cwd \"\(cwd)\" must be an absolute path") }
        if let c = n.child("capabilities") {
            var caps = Spec.Capabilities()
            func set(_ key: String) throws(RuntimeError) -> [String] {
                guard let list = c.child(key) else { return [] }
                let names = try list.asStringArray()
                for (i, name) in names.enumerated() where Capability.number(name) == nil {
                    throw JSONNode(.string(name), path: "\(list.path)[\(i)]", document: n.document)
                        .fail("unknown capability \"\(name)\"")
                }
                return names
            }
            caps.bounding = try set("bounding")
            caps.effective = try set("effective")
            caps.inheritable = try set("inheritable")
            caps.permitted = try set("permitted")
            caps.ambient = try set("ambient")
            capabilities = caps
        }
        for r in try n.array("rlimits") {
            let type = try r.requiredString("type")
            guard Rlimits.resource(type) != nil else { throw r.child("type")!.fail("unknown rlimit \"\(type)\"") }
            guard let soft = r.child("soft") else { throw r.missing("soft") }
            guard let hard = r.child("hard") else { throw r.missing("hard") }
            rlimits.append(Spec.Rlimit(type: type, soft: try soft.asUInt64(), hard: try hard.asUInt64()))
        }
        noNewPrivileges = try n.bool("noNewPrivileges") ?? false
        oomScoreAdj = try n.int("oomScoreAdj")
        apparmorProfile = try n.string("apparmorProfile")
        if apparmorProfile?.isEmpty == true { apparmorProfile = nil }
        if let o = oomScoreAdj, o < -1000 || o > 1000 { throw n.child("oomScoreAdj")!.fail("must be in -1000...1000") }
    }
}

extension Spec.Linux {
    static let namespaceTypes: Set<String> = ["pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"]

    init(_ n: JSONNode) throws(RuntimeError) {
        var seen: Set<String> = []
        for ns in try n.array("namespaces") {
            let type = try ns.requiredString("type")
            guard Self.namespaceTypes.contains(type) else { throw ns.child("type")!.fail("unknown namespace type \"\(type)\"") }
            guard seen.insert(type).inserted else { throw ns.child("type")!.fail("duplicate namespace \"\(type)\"") }
            let path = try ns.string("path")
            if let path, !path.hasPrefix("/") { throw ns.child("path")!.fail("namespace path must be absolute") }
            namespaces.append(Spec.Namespace(type: type, path: path))
        }
        func mappings(_ key: String) throws(RuntimeError) -> [Spec.IDMapping] {
            var out: [Spec.IDMapping] = []
            for m in try n.array(key) {
                guard let c = m.child("containerID") else { throw m.missing("containerID") }
                guard let h = m.child("hostID") else { throw m.missing("hostID") }
                guard let s = m.child("size") else { throw m.missing("size") }
                out.append(Spec.IDMapping(containerID: try c.asUInt32(), hostID: try h.asUInt32(), size: try s.asUInt32()))
            }
            return out
        }
        uidMappings = try mappings("uidMappings")
        gidMappings = try mappings("gidMappings")
        if !uidMappings.isEmpty || !gidMappings.isEmpty, !seen.contains("user") {
            throw n.child("uidMappings")?.fail("user namespace mappings need a user namespace")
                ?? n.fail("user namespace mappings need a user namespace")
        }
        for d in try n.array("devices") {
            let type = try d.requiredString("type")
            guard ["c", "b", "u", "p"].contains(type) else { throw d.child("type")!.fail("unknown device type \"\(type)\"") }
            let path = try d.requiredString("path")
            guard path.hasPrefix("/") else { throw d.child("path")!.fail("device path must be absolute") }
            let major = try d.int64("major") ?? 0
            let minor = try d.int64("minor") ?? 0
            if type != "p", d.child("major") == nil { throw d.missing("major") }
            if type != "p", d.child("minor") == nil { throw d.missing("minor") }
            devices.append(Spec.Device(type: type, path: path, major: major, minor: minor,
                                       fileMode: try d.uint32("fileMode"), uid: try d.uint32("uid"), gid: try d.uint32("gid")))
        }
        cgroupsPath = try n.string("cgroupsPath")
        if let r = n.child("resources") { resources = try Resources(r) }
        sysctl = try n.stringMap("sysctl")
        maskedPaths = try n.strings("maskedPaths") ?? []
        readonlyPaths = try n.strings("readonlyPaths") ?? []
        rootfsPropagation = try n.string("rootfsPropagation")
        if let p = rootfsPropagation, MountOptions.propagation[p] == nil {
            throw n.child("rootfsPropagation")!.fail("unknown propagation \"\(p)\"")
        }
        if let s = n.child("seccomp") { seccomp = try Spec.Seccomp(s) }
    }
}

extension Spec.Seccomp {
    init(_ n: JSONNode) throws(RuntimeError) {
        defaultAction = try n.requiredString("defaultAction")
        guard SeccompFilter.actionNames.contains(defaultAction) else {
            throw n.child("defaultAction")!.fail("unknown seccomp action \"\(defaultAction)\"")
        }
        defaultErrnoRet = try n.uint32("defaultErrnoRet")
        architectures = try n.strings("architectures") ?? []
        flags = try n.strings("flags") ?? []
        syscalls = []
        for s in try n.array("syscalls") {
            guard let namesNode = s.child("names") else { throw s.missing("names") }
            let names = try namesNode.asStringArray()
            let action = try s.requiredString("action")
            guard SeccompFilter.actionNames.contains(action) else {
                throw s.child("action")!.fail("unknown seccomp action \"\(action)\"")
            }
            var args: [Arg] = []
            for a in try s.array("args") {
                guard let idx = a.child("index") else { throw a.missing("index") }
                guard let val = a.child("value") else { throw a.missing("value") }
                let op = try a.requiredString("op")
                guard SeccompFilter.operatorNames.contains(op) else { throw a.child("op")!.fail("unknown operator \"\(op)\"") }
                let index = try idx.asUInt32()
                guard index < 6 else { throw idx.fail("argument index must be below 6") }
                args.append(Arg(index: index, value: try val.asUInt64(), valueTwo: try a.uint64("valueTwo") ?? 0, op: op))
            }
            syscalls.append(Syscall(names: names, action: action, errnoRet: try s.uint32("errnoRet"), args: args))
        }
    }
}

extension Resources {
    public static func parse(_ text: String, document: String) throws(RuntimeError) -> Resources {
        let json: JSON
        do { json = try JSON.parse(text) } catch {
            throw RuntimeError(.invalidConfig, "\(document): invalid JSON at byte \(error.offset): \(error.message)")
        }
        return try Resources(JSONNode(json, document: document))
    }

    init(_ n: JSONNode) throws(RuntimeError) {
        guard case .object = n.value else { throw n.typeError("an object") }
        for d in try n.array("devices") {
            guard let allow = d.child("allow") else { throw d.missing("allow") }
            devices.append(DeviceRule(allow: try allow.asBool(), type: try d.string("type"), major: try d.int64("major"),
                                      minor: try d.int64("minor"), access: try d.string("access")))
        }
        if let m = n.child("memory") {
            memory = Memory(limit: try m.int64("limit"), reservation: try m.int64("reservation"), swap: try m.int64("swap"),
                            kernel: try m.int64("kernel"), kernelTCP: try m.int64("kernelTCP"),
                            swappiness: try m.uint64("swappiness"), disableOOMKiller: try m.bool("disableOOMKiller"))
        }
        if let c = n.child("cpu") {
            cpu = CPU(shares: try c.uint64("shares"), quota: try c.int64("quota"), period: try c.uint64("period"),
                      realtimeRuntime: try c.int64("realtimeRuntime"), realtimePeriod: try c.uint64("realtimePeriod"),
                      cpus: try c.string("cpus"), mems: try c.string("mems"), idle: try c.int64("idle"))
        }
        if let p = n.child("pids") {
            guard let l = p.child("limit") else { throw p.missing("limit") }
            pidsLimit = try l.asInt64()
        }
        if let b = n.child("blockIO") {
            var io = BlockIO()
            func weight(_ node: JSONNode, _ key: String) throws(RuntimeError) -> UInt16? {
                guard let w = node.child(key) else { return nil }
                let v = try w.asInt64()
                guard v >= 0, v <= 1000 else { throw w.fail("weight must be in 10...1000") }
                return UInt16(v)
            }
            io.weight = try weight(b, "weight")
            io.leafWeight = try weight(b, "leafWeight")
            for d in try b.array("weightDevice") {
                io.weightDevice.append(WeightDevice(major: try d.int64("major") ?? 0, minor: try d.int64("minor") ?? 0,
                                                    weight: try weight(d, "weight")))
            }
            func throttles(_ key: String) throws(RuntimeError) -> [ThrottleDevice] {
                var out: [ThrottleDevice] = []
                for d in try b.array(key) {
                    guard let maj = d.child("major") else { throw d.missing("major") }
                    guard let min = d.child("minor") else { throw d.missing("minor") }
                    guard let rate = d.child("rate") else { throw d.missing("rate") }
                    out.append(ThrottleDevice(major: try maj.asInt64(), minor: try min.asInt64(), rate: try rate.asUInt64()))
                }
                return out
            }
            io.throttleReadBpsDevice = try throttles("throttleReadBpsDevice")
            io.throttleWriteBpsDevice = try throttles("throttleWriteBpsDevice")
            io.throttleReadIOPSDevice = try throttles("throttleReadIOPSDevice")
            io.throttleWriteIOPSDevice = try throttles("throttleWriteIOPSDevice")
            blockIO = io
        }
        for h in try n.array("hugepageLimits") {
            let size = try h.requiredString("pageSize")
            guard let limit = h.child("limit") else { throw h.missing("limit") }
            hugepageLimits.append(HugepageLimit(pageSize: size, limit: try limit.asUInt64()))
        }
        if let net = n.child("network") {
            var network = Network(classID: try net.uint32("classID"))
            for p in try net.array("priorities") {
                guard let prio = p.child("priority") else { throw p.missing("priority") }
                network.priorities.append((try p.requiredString("name"), try prio.asUInt32()))
            }
            self.network = network
        }
        if let r = n.child("rdma") {
            guard case .object(let entries) = r.value else { throw r.typeError("an object") }
            for (device, _) in entries {
                guard let d = r.child(device) else { continue }
                rdma.append((device, try d.uint32("hcaHandles"), try d.uint32("hcaObjects")))
            }
        }
        unified = try n.stringMap("unified")
    }
}
