import KangarooSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The runc-compatible runtime: container lifecycle over a state directory
/// (`--root`, default /run/kangaroo-runtime).
public struct Runtime: Sendable {
    public static let version = "0.1.0"
    public static let specVersion = "1.1.0"

    public var root: String

    public init(root: String = "/run/kangaroo-runtime") {
        var r = root
        while r.count > 1, r.hasSuffix("/") { r.removeLast() }
        self.root = r
    }

    func stateDir(_ id: String) -> String { root + "/" + id }

    static func validate(id: String) throws(RuntimeError) {
        guard !id.isEmpty, id != ".", id != "..", !id.contains("/"), id.utf8.count <= 1024 else {
            throw RuntimeError(.invalidArgument, "invalid container id \"\(id)\"")
        }
    }

    /// Loads a container's saved state.
    func load(_ id: String) throws(RuntimeError) -> ContainerState {
        try Self.validate(id: id)
        let path = stateDir(id) + "/state.json"
        let text: String
        do { text = try FileSystem.readString(path) } catch {
            if error == .noSuchFileOrDirectory {
                throw RuntimeError(.notFound, "container \"\(id)\" does not exist")
            }
            throw RuntimeError(.system, "read \(path)", errno: error.rawValue)
        }
        return try ContainerState(json: text, path: path)
    }

    func save(_ state: ContainerState) throws(RuntimeError) {
        let path = stateDir(state.id) + "/state.json"
        do { try FileSystem.replace(path, state.toJSON().serialized()) } catch {
            throw RuntimeError(.system, "write \(path)", errno: error.rawValue)
        }
    }

    /// The container's cgroup (nil when it has none or is unknown).
    public func cgroup(id: String) -> Cgroup? {
        guard let state = try? load(id) else { return nil }
        return cgroup(for: state)
    }

    func cgroup(for state: ContainerState) -> Cgroup? {
        guard !state.cgroupPath.isEmpty, let layout = try? CgroupLayout.current() else { return nil }
        return Cgroup(layout: layout, path: state.cgroupPath)
    }

    /// The container's status now.
    public func status(_ id: String) throws(RuntimeError) -> ContainerState.Status {
        let s = try load(id)
        return s.status(cgroup: cgroup(for: s), stateDir: stateDir(id))
    }

    /// runc `state`: the JSON document.
    public func state(_ id: String) throws(RuntimeError) -> String {
        let s = try load(id)
        return s.runcState(status: s.status(cgroup: cgroup(for: s), stateDir: stateDir(id))).serialized(indent: "  ")
    }

    /// runc `list`: every container under the root.
    public func list() -> [(ContainerState, ContainerState.Status)] {
        guard let names = try? FileSystem.list(root) else { return [] }
        var out: [(ContainerState, ContainerState.Status)] = []
        for name in names.sorted() {
            guard let s = try? load(name) else { continue }
            out.append((s, s.status(cgroup: cgroup(for: s), stateDir: stateDir(name))))
        }
        return out
    }

    /// Converts cgroupsPath to a cgroupfs path; systemd-style
    /// "slice:prefix:name" becomes "/slice/prefix-name.scope".
    static func cgroupPath(_ configured: String?, id: String) -> String {
        guard let p = configured, !p.isEmpty else { return "/" + id }  // runc's and crun's default
        let parts = p.split(separator: ":", omittingEmptySubsequences: false)
        if parts.count == 3, !p.hasPrefix("/") {
            let slice = parts[0].isEmpty ? "system.slice" : String(parts[0])
            return "/" + slice + "/" + (parts[1].isEmpty ? "" : parts[1] + "-") + parts[2] + ".scope"
        }
        return p.hasPrefix("/") ? p : "/" + p
    }

    /// Reads the bundle's config.json.
    static func loadSpec(bundle: String) throws(RuntimeError) -> Spec {
        let path = bundle + "/config.json"
        let text: String
        do { text = try FileSystem.readString(path) } catch {
            throw RuntimeError(.invalidConfig, "cannot read \(path)", errno: error.rawValue)
        }
        return try Spec.parse(text)
    }

    /// Absolute form of a path given relative to the current directory.
    static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buf = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buf, buf.count) != nil else { return path }
        let cwd = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if path == "." || path.isEmpty { return cwd }
        return (cwd == "/" ? "" : cwd) + "/" + (path.hasPrefix("./") ? String(path.dropFirst(2)) : path)
    }
}
