#if canImport(Glibc)
import Glibc
#endif
import CKangaroo
import ContainerdAPI
import Foundation
import KangarooNode
import KangarooSystem
import SwiftProtobuf

/// User-namespaced CRI sandboxes, a runtime handler option: a handler whose
/// containerd options name a Kangaroo handler file (`ConfigPath`, in
/// containerd's `runtimeoptions.v1.Options`) saying `{"userns": true}` puts
/// every container of its sandboxes into a user namespace of the sandbox's:
///
/// - the sandbox's own task gets a new user namespace mapping 0-65535 to a
///   range of 65,536 host ids no other sandbox has (`IDRangePool`), kept in
///   STATE/userns/NAMESPACE/SANDBOX/range;
/// - every other container of the sandbox joins that user namespace (the
///   sandbox task's `/proc/PID/ns/user`), so that it shares the sandbox's
///   IPC and UTS namespaces with its privileges; the pod's network
///   namespace stays the host's (CNI made it), joined before the user
///   namespace is entered (the runtime does so, as runc);
/// - the image's layers (overlay lower directories) are cloned idmapped
///   with the range at STATE/userns/NAMESPACE/CONTAINER/lowerN, so that the
///   image's root-owned files are root's inside; the writable layer's top
///   (the overlay upper directory, on the sandbox disk when there is one)
///   belongs to the range's first id, so what a container writes belongs on
///   the host to a mapped, unprivileged id.
public final class SandboxUserNamespaces: Sendable {
    let root: String
    let ranges: IDRangePool

    public init(stateRoot: String) {
        root = stateRoot + "/userns"
        ranges = IDRangePool(directory: stateRoot + "/idranges")
    }

    /// The containerd options type whose config_path names the handler file.
    static let runtimeOptionsType = "runtimeoptions.v1.Options"

    /// Whether the task's handler options ask for user namespaces.
    static func wanted(_ options: Google_Protobuf_Any) throws(ShimError) -> Bool {
        guard !options.typeURL.isEmpty else { return false }
        guard options.typeURL.hasSuffix("/" + runtimeOptionsType) || options.typeURL == runtimeOptionsType else { return false }
        guard let path = configPath(options.value), !path.isEmpty else { return false }
        guard let text = try? FileSystem.readString(path) else {
            throw ShimError(.invalidArgument, "the runtime handler's ConfigPath \(path) cannot be read")
        }
        guard let json = try? JSON.parse(text), case .object = json else {
            throw ShimError(.invalidArgument, "the runtime handler's ConfigPath \(path) is not a JSON object (e.g. {\"userns\": true})")
        }
        if let v = json["userns"], v.bool == nil {
            throw ShimError(.invalidArgument, "\(path): \"userns\" must be true or false")
        }
        return json["userns"]?.bool ?? false
    }

    /// Field 2 (config_path) of a runtimeoptions.v1.Options message.
    static func configPath(_ data: Data) -> String? {
        var bytes = [UInt8](data)[...]
        func varint() -> UInt64? {
            var v: UInt64 = 0, shift: UInt64 = 0
            while let b = bytes.popFirst() {
                v |= UInt64(b & 0x7f) << shift
                if b & 0x80 == 0 { return v }
                shift += 7
                if shift > 63 { return nil }
            }
            return nil
        }
        var found: String?
        while !bytes.isEmpty {
            guard let key = varint() else { return nil }
            switch key & 7 {
            case 0: guard varint() != nil else { return nil }
            case 1: guard bytes.count >= 8 else { return nil }; bytes = bytes.dropFirst(8)
            case 5: guard bytes.count >= 4 else { return nil }; bytes = bytes.dropFirst(4)
            case 2:
                guard let n = varint(), n <= bytes.count else { return nil }
                let field = bytes.prefix(Int(n))
                bytes = bytes.dropFirst(Int(n))
                if key >> 3 == 2 { found = String(decoding: field, as: UTF8.self) }
            default: return nil
            }
        }
        return found
    }

    /// Whether any task of a user-namespaced sandbox may exist (the state
    /// directory exists): other tasks skip reading their spec.
    var inUse: Bool { FileSystem.exists(root) }

    func sandboxDir(_ namespace: String, _ sandbox: String) -> String { root + "/" + namespace + "/" + sandbox }
    func containerDir(_ namespace: String, _ id: String) -> String { root + "/" + namespace + "/" + id + ".mounts" }

    /// The sandbox's range's first host id, if the sandbox is user-namespaced.
    func base(namespace: String, sandbox: String) -> UInt32? {
        (try? FileSystem.readString(sandboxDir(namespace, sandbox) + "/range")).flatMap { UInt32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    struct Plan {
        var base: UInt32
        var rootfs: [Containerd_Types_Mount]
        /// Where the rootfs is mounted (config.json's root.path names it):
        /// a directory the container's root can walk to, which containerd's
        /// bundle directory (below its 0700 state) is not.
        var rootfsTarget: String
    }

    /// For a task of a user-namespaced sandbox (or the sandbox's own task
    /// when `wanted`): the bundle's config.json gets the user namespace, and
    /// the rootfs mounts come back with idmapped lower layers and the upper
    /// directory owned by the range. Nil for any other task.
    /// `sandboxPid`: the sandbox task's init, for its user namespace.
    func prepare(namespace: String, id: String, bundle: String, rootfs: [Containerd_Types_Mount], wanted: Bool,
                 sandboxPid: (String) -> Int32?) throws(ShimError) -> Plan? {
        let configPath = bundle + "/config.json"
        guard let data = try? FileSystem.read(configPath),
              var spec = try? JSONSerialization.jsonObject(with: Data(data)) as? [String: Any],
              let annotations = spec["annotations"] as? [String: String],
              let sandbox = annotations["io.kubernetes.cri.sandbox-id"] else { return nil }
        let isSandbox = annotations["io.kubernetes.cri.container-type"] == "sandbox"
        var linux = spec["linux"] as? [String: Any] ?? [:]
        var namespaces = (linux["namespaces"] as? [[String: Any]] ?? []).filter { $0["type"] as? String != "user" }
        let base: UInt32
        if isSandbox {
            guard wanted else { return nil }
            do {
                base = try ranges.acquire(owner: namespace + "/" + sandbox)
                try FileSystem.makeDirectories(sandboxDir(namespace, sandbox), mode: 0o700)
                try FileSystem.replace(sandboxDir(namespace, sandbox) + "/range", "\(base)\n")
            } catch {
                throw ShimError(.failedPrecondition, "sandbox \(sandbox): no user id range: \(error)")
            }
            namespaces.append(["type": "user"])
            let map: [[String: Any]] = [["containerID": 0, "hostID": Int(base), "size": 65536]]
            linux["uidMappings"] = map
            linux["gidMappings"] = map
        } else {
            guard let b = self.base(namespace: namespace, sandbox: sandbox) else { return nil }
            guard let pid = sandboxPid(sandbox) else {
                throw ShimError(.failedPrecondition, "container \(id): its user-namespaced sandbox \(sandbox) has no running task")
            }
            base = b
            namespaces.append(["type": "user", "path": "/proc/\(pid)/ns/user"])
            linux["uidMappings"] = nil
            linux["gidMappings"] = nil
        }
        linux["namespaces"] = namespaces
        spec["linux"] = linux
        let target = containerDir(namespace, id) + "/rootfs"
        var root = spec["root"] as? [String: Any] ?? [:]
        root["path"] = target
        spec["root"] = root
        do {
            let out = try JSONSerialization.data(withJSONObject: spec)
            try FileSystem.replace(configPath, String(decoding: out, as: UTF8.self))
        } catch {
            throw ShimError(.failedPrecondition, "container \(id): cannot write \(configPath): \(error)")
        }
        let mapped = try mapRootfs(rootfs, namespace: namespace, id: id, base: base)
        do { try FileSystem.makeDirectories(target, mode: 0o755) } catch {
            throw ShimError(.failedPrecondition, "create \(target): \(error)")
        }
        return Plan(base: base, rootfs: mapped, rootfsTarget: target)
    }

    /// Lower directories cloned idmapped; the upper directory chowned.
    func mapRootfs(_ mounts: [Containerd_Types_Mount], namespace: String, id: String, base: UInt32) throws(ShimError) -> [Containerd_Types_Mount] {
        let dir = containerDir(namespace, id)
        var n = 0
        func mapped(_ source: String) throws(ShimError) -> String {
            let target = dir + "/lower\(n)"
            n += 1
            do { try FileSystem.makeDirectories(target, mode: 0o700) } catch {
                throw ShimError(.failedPrecondition, "create \(target): \(error)")
            }
            let rc = kr_idmapped_mount(source, target, base, 65536)
            guard rc == 0 else {
                throw ShimError(.failedPrecondition, "container \(id): cannot mount the image layer \(source) idmapped "
                                + "(\(String(cString: strerror(-rc)))): its file system does not support idmapped mounts")
            }
            return target
        }
        // Walkable (not listable) down to the container's directory, which
        // is the range's alone: its mapped root walks to the rootfs, no
        // other sandbox's id (an escaped process) does.
        do { try FileSystem.makeDirectories(dir, mode: 0o700) } catch {
            throw ShimError(.failedPrecondition, "create \(dir): \(error)")
        }
        for d in [root, root + "/" + namespace] { chmod(d, 0o711) }
        guard chown(dir, base, base) == 0, chmod(dir, 0o700) == 0 else {
            throw ShimError(.failedPrecondition, "container \(id): chown \(dir): \(String(cString: strerror(errno)))")
        }
        var out: [Containerd_Types_Mount] = []
        for m in mounts {
            var m = m
            if m.type == "overlay" {
                var options: [String] = []
                for o in m.options {
                    if o.hasPrefix("lowerdir=") {
                        var lowers: [String] = []
                        for l in o.dropFirst("lowerdir=".count).split(separator: ":") { lowers.append(try mapped(String(l))) }
                        options.append("lowerdir=" + lowers.joined(separator: ":"))
                    } else {
                        if o.hasPrefix("upperdir=") {
                            let upper = String(o.dropFirst("upperdir=".count))
                            guard chown(upper, base, base) == 0 else {
                                throw ShimError(.failedPrecondition, "container \(id): chown \(upper): \(String(cString: strerror(errno)))")
                            }
                        }
                        options.append(o)
                    }
                }
                m.options = options
            } else if m.type == "bind" {
                m.source = try mapped(m.source)
            }
            out.append(m)
        }
        return out
    }

    /// After a task's Delete (its rootfs unmounted): the idmapped layers go;
    /// the sandbox's own Delete gives its range back.
    func deleted(namespace: String, id: String, bundle: String) {
        let dir = containerDir(namespace, id)
        if FileSystem.exists(dir) {
            Mounts.detachAll(under: [dir])
            FileSystem.removeTree(dir)
        }
        let sandbox = sandboxDir(namespace, id)
        if FileSystem.exists(sandbox + "/range") {
            _ = try? ranges.release(owner: namespace + "/" + id)
            FileSystem.removeTree(sandbox)
        }
    }
}
