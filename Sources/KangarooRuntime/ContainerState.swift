import KangarooSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What the runtime remembers about a container in `<root>/<id>/state.json`.
/// Written before the init is cloned (so `delete --force` can clean up after
/// a runtime killed mid-create) and again once the container is created.
public struct ContainerState: Sendable {
    public var id: String
    public var pid: Int32
    /// Start time of `pid` in clock ticks (/proc/<pid>/stat field 22), to detect pid reuse.
    public var pidStartTime: UInt64
    public var bundle: String
    public var rootfs: String
    public var created: String
    public var owner: String
    public var annotations: [(String, String)]
    public var cgroupPath: String
    /// False until `create` has finished.
    public var initialized: Bool
    public var poststart: [Spec.Hook]
    public var poststop: [Spec.Hook]
    /// Namespaces the container shares with someone else (not ours to clean).
    public var sharedPidNamespace: Bool
    /// Host paths of mounts made in the caller's mount namespace (a config
    /// with mounts but no mount namespace); `delete` detaches them.
    public var hostMounts: [String] = []

    /// Lifecycle states of runtime-spec runtime.md, plus runc's "paused".
    public enum Status: String, Sendable {
        case creating, created, running, paused, stopped
    }

    static func hookJSON(_ h: Spec.Hook) -> JSON {
        var m: [(String, JSON)] = [("path", .string(h.path))]
        if !h.args.isEmpty { m.append(("args", .array(h.args.map(JSON.string)))) }
        if !h.env.isEmpty { m.append(("env", .array(h.env.map(JSON.string)))) }
        if let t = h.timeout { m.append(("timeout", .int(t))) }
        return .object(m)
    }

    func toJSON() -> JSON {
        .object([
            ("id", .string(id)), ("pid", .int(Int(pid))), ("pidStartTime", .uint64(pidStartTime)),
            ("bundle", .string(bundle)), ("rootfs", .string(rootfs)), ("created", .string(created)),
            ("owner", .string(owner)), ("annotations", .object(annotations.map { ($0.0, JSON.string($0.1)) })),
            ("cgroupPath", .string(cgroupPath)), ("initialized", .bool(initialized)),
            ("poststart", .array(poststart.map(Self.hookJSON))), ("poststop", .array(poststop.map(Self.hookJSON))), ("sharedPidNamespace", .bool(sharedPidNamespace)),
            ("hostMounts", .array(hostMounts.map(JSON.string))),
        ])
    }

    init(id: String, bundle: String, rootfs: String, cgroupPath: String, annotations: [(String, String)],
         poststart: [Spec.Hook], poststop: [Spec.Hook], sharedPidNamespace: Bool) {
        self.poststart = poststart
        self.id = id
        self.pid = 0
        self.pidStartTime = 0
        self.bundle = bundle
        self.rootfs = rootfs
        self.created = Clock.rfc3339Now()
        self.owner = ""
        self.annotations = annotations
        self.cgroupPath = cgroupPath
        self.initialized = false
        self.poststop = poststop
        self.sharedPidNamespace = sharedPidNamespace
    }

    init(json text: String, path: String) throws(RuntimeError) {
        let json: JSON
        do { json = try JSON.parse(text) } catch {
            throw RuntimeError(.system, "\(path): corrupt state file: \(error.message)")
        }
        let n = JSONNode(json, document: path)
        id = try n.requiredString("id")
        pid = Int32(try n.int64("pid") ?? 0)
        pidStartTime = try n.uint64("pidStartTime") ?? 0
        bundle = try n.string("bundle") ?? ""
        rootfs = try n.string("rootfs") ?? ""
        created = try n.string("created") ?? ""
        owner = try n.string("owner") ?? ""
        annotations = try n.stringMap("annotations")
        cgroupPath = try n.string("cgroupPath") ?? ""
        initialized = try n.bool("initialized") ?? false
        sharedPidNamespace = try n.bool("sharedPidNamespace") ?? false
        hostMounts = try n.strings("hostMounts") ?? []
        func hooks(_ key: String) throws(RuntimeError) -> [Spec.Hook] {
            var out: [Spec.Hook] = []
            for h in try n.array(key) {
                out.append(Spec.Hook(path: try h.requiredString("path"), args: try h.strings("args") ?? [],
                                     env: try h.strings("env") ?? [], timeout: try h.int("timeout")))
            }
            return out
        }
        poststart = try hooks("poststart")
        poststop = try hooks("poststop")
    }

    /// The status derived from the live system.
    public func status(cgroup: Cgroup?, stateDir: String) -> Status {
        guard pid > 0, ProcessStatus.isAlive(pid: pid, startTime: pidStartTime) else {
            return initialized || pid > 0 ? .stopped : (FileSystem.exists(stateDir) ? .creating : .stopped)
        }
        if !initialized { return .creating }
        if FileSystem.exists(stateDir + "/exec.fifo") { return .created }
        if let cgroup, cgroup.isFrozen() { return .paused }
        return .running
    }

    /// runtime-spec runtime.md "State", as given to hooks.
    func ociState(status: Status) -> JSON {
        var m: [(String, JSON)] = [
            ("ociVersion", .string(Runtime.specVersion)), ("id", .string(id)), ("status", .string(status.rawValue)),
        ]
        if status != .stopped { m.append(("pid", .int(Int(pid)))) }
        m.append(("bundle", .string(bundle)))
        if !annotations.isEmpty { m.append(("annotations", .object(annotations.map { ($0.0, JSON.string($0.1)) }))) }
        return .object(m)
    }

    /// runc's `state` / `list --format json` object.
    func runcState(status: Status) -> JSON {
        var m: [(String, JSON)] = [
            ("ociVersion", .string(Runtime.specVersion)), ("id", .string(id)),
            ("pid", .int(status == .stopped ? 0 : Int(pid))), ("status", .string(status.rawValue)),
            ("bundle", .string(bundle)), ("rootfs", .string(rootfs)), ("created", .string(created)),
            ("owner", .string(owner)),
        ]
        if !annotations.isEmpty { m.append(("annotations", .object(annotations.map { ($0.0, JSON.string($0.1)) }))) }
        return .object(m)
    }
}

/// /proc facts about a process.
public enum ProcessStatus {
    /// Field 22 (starttime) and field 3 (state) of /proc/<pid>/stat.
    public static func stat(pid: Int32) -> (state: UInt8, startTime: UInt64)? {
        guard let bytes = try? FileSystem.read("/proc/\(pid)/stat"),
              let close = bytes.lastIndex(of: UInt8(ascii: ")")), close + 2 < bytes.count else { return nil }
        // Scanned by hand (no split): this runs in every command, and each new
        // generic type costs a runtime metadata lookup in a short-lived process.
        let state = bytes[close + 2]
        var field = 3, i = close + 2
        while i < bytes.count, field < 22 {
            if bytes[i] == UInt8(ascii: " ") { field += 1 }
            i += 1
        }
        guard field == 22 else { return nil }
        var start: UInt64 = 0
        var digits = 0
        while i < bytes.count, bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") {
            start = start &* 10 &+ UInt64(bytes[i] - UInt8(ascii: "0"))
            digits += 1
            i += 1
        }
        guard digits > 0 else { return nil }
        return (state, start)
    }

    /// Alive, not a zombie, and (when known) the same process that was started.
    public static func isAlive(pid: Int32, startTime: UInt64) -> Bool {
        guard let s = stat(pid: pid) else { return false }
        if s.state == UInt8(ascii: "Z") || s.state == UInt8(ascii: "X") { return false }
        return startTime == 0 || s.startTime == startTime
    }
}

enum Clock {
    /// Current UTC time as RFC 3339 with nanoseconds, as runc prints it.
    static func rfc3339Now() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var tmv = tm()
        gmtime_r(&t, &tmv)
        func pad(_ v: Int32, _ w: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        let nanos = String(ts.tv_nsec)
        return "\(pad(tmv.tm_year + 1900, 4))-\(pad(tmv.tm_mon + 1, 2))-\(pad(tmv.tm_mday, 2))T"
            + "\(pad(tmv.tm_hour, 2)):\(pad(tmv.tm_min, 2)):\(pad(tmv.tm_sec, 2))."
            + String(repeating: "0", count: 9 - nanos.count) + nanos + "Z"
    }
}
