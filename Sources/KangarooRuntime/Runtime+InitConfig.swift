import CKangaroo
import KangarooSystem
#if canImport(Glibc)
import Glibc
#endif

/// Translation of spec types into the C structs of the container init.
extension Runtime {
    /// config-linux.md "Default Devices".
    static let defaultDevices: [Spec.Device] = [
        .init(type: "c", path: "/dev/null", major: 1, minor: 3, fileMode: 0o666, uid: 0, gid: 0),
        .init(type: "c", path: "/dev/zero", major: 1, minor: 5, fileMode: 0o666, uid: 0, gid: 0),
        .init(type: "c", path: "/dev/full", major: 1, minor: 7, fileMode: 0o666, uid: 0, gid: 0),
        .init(type: "c", path: "/dev/random", major: 1, minor: 8, fileMode: 0o666, uid: 0, gid: 0),
        .init(type: "c", path: "/dev/urandom", major: 1, minor: 9, fileMode: 0o666, uid: 0, gid: 0),
        .init(type: "c", path: "/dev/tty", major: 5, minor: 0, fileMode: 0o666, uid: 0, gid: 0),
    ]

    static func devices(_ configured: [Spec.Device], arena: CArena) -> [kr_device] {
        var all = defaultDevices.filter { d in !configured.contains { $0.path == d.path } }
        all.append(contentsOf: configured)
        return all.map { d in
            kr_device(path: UnsafePointer(arena.string(d.path)),
                      type: Int32(d.type == "u" ? UInt8(ascii: "c") : d.type.utf8.first ?? UInt8(ascii: "c")),
                      major: UInt32(truncatingIfNeeded: d.major), minor: UInt32(truncatingIfNeeded: d.minor),
                      mode: d.fileMode ?? 0o666, uid: d.uid ?? 0, gid: d.gid ?? 0)
        }
    }

    /// A mount of config.json for the init. A `cgroup` mount becomes the
    /// container's own cgroup (`cgroupPath` in every hierarchy), never a view
    /// of the host's hierarchies: with a cgroup namespace the fresh mount's
    /// root is the container's cgroup, without one the init keeps only the
    /// container's directory of it.
    static func cMount(_ m: Spec.Mount, arena: CArena, layout: CgroupLayout, cgroupPath: String, cgroupNS: Bool,
                       bundle: String) -> kr_mount {
        let opts = MountOptions.parse(m.options)
        var flags = opts.flags
        let isBind = m.type == "bind" || (flags & UInt(MS_BIND)) != 0
        var kind = KR_MOUNT_NORMAL
        var source = m.source
        var type = m.type
        var sourcePtr: UnsafePointer<CChar>?
        if isBind {
            kind = KR_MOUNT_BIND
            flags |= UInt(MS_BIND)
            if let s = source, !s.hasPrefix("/") { source = bundle + "/" + s }
        } else if m.type == "cgroup" || m.type == "cgroup2" {
            if layout.isPureV2 || m.type == "cgroup2" {
                type = "cgroup2"
                kind = KR_MOUNT_CGROUP_V2
                source = layout.unified ?? "/sys/fs/cgroup"
            } else {
                kind = KR_MOUNT_CGROUP_V1
                // "controllers\0host mount point\0" per hierarchy, double-NUL-terminated.
                var bytes: [UInt8] = []
                for h in layout.v1 {
                    bytes.append(contentsOf: h.controllers.joined(separator: ",").utf8)
                    bytes.append(0)
                    bytes.append(contentsOf: h.mountPoint.utf8)
                    bytes.append(0)
                }
                bytes.append(0)
                bytes.append(0)
                let raw = arena.bytes(bytes)!
                sourcePtr = UnsafePointer(raw.assumingMemoryBound(to: CChar.self))
            }
        }
        if sourcePtr == nil { sourcePtr = UnsafePointer(arena.optionalString(source ?? type)) }
        return kr_mount(source: sourcePtr, destination: UnsafePointer(arena.string(m.destination)),
                        type: UnsafePointer(arena.optionalString(type)),
                        data: opts.data.isEmpty ? nil : UnsafePointer(arena.string(opts.data)),
                        flags: flags, propagation: opts.propagation, kind: Int32(kind.rawValue), is_dir_hint: -1,
                        cgroup_path: kind == KR_MOUNT_CGROUP_V1 || kind == KR_MOUNT_CGROUP_V2
                            ? UnsafePointer(arena.string(cgroupPath)) : nil,
                        cgroup_ns: cgroupNS ? 1 : 0)
    }

    static func cHook(_ h: Spec.Hook, arena: CArena) -> kr_hook {
        kr_hook(path: UnsafePointer(arena.string(h.path)),
                argv: UnsafePointer(arena.stringArray(h.args.isEmpty ? [h.path] : h.args)),
                envp: UnsafePointer(arena.stringArray(h.env)), timeout: Int32(h.timeout ?? 0))
    }

    static func fillProcess(_ cfg: inout kr_init_config, _ p: Spec.Process, arena: CArena) {
        if let caps = p.capabilities {
            cfg.has_caps = 1
            cfg.cap_bounding = Capability.mask(caps.bounding)
            cfg.cap_effective = Capability.mask(caps.effective)
            cfg.cap_inheritable = Capability.mask(caps.inheritable)
            cfg.cap_permitted = Capability.mask(caps.permitted)
            cfg.cap_ambient = Capability.mask(caps.ambient)
        }
        let rl = p.rlimits.compactMap { r -> kr_rlimit? in
            guard let res = Rlimits.resource(r.type) else { return nil }
            return kr_rlimit(resource: res, soft: r.soft, hard: r.hard)
        }
        cfg.rlimits = UnsafePointer(arena.array(rl))
        cfg.n_rlimits = Int32(rl.count)
        cfg.no_new_privs = p.noNewPrivileges ? 1 : 0
        cfg.uid = p.user.uid
        cfg.gid = p.user.gid
        cfg.additional_gids = UnsafePointer(arena.array(p.user.additionalGids))
        cfg.n_gids = Int32(p.user.additionalGids.count)
        cfg.umask = p.user.umask.map { Int32($0) } ?? -1
        if let o = p.oomScoreAdj {
            cfg.oom_score_adj = Int32(o)
            cfg.has_oom_score_adj = 1
        }
        cfg.argv = UnsafePointer(arena.stringArray(p.args))
        cfg.envp = UnsafePointer(arena.stringArray(p.env))
        cfg.cwd = UnsafePointer(arena.string(p.cwd))
        cfg.apparmor_profile = UnsafePointer(arena.optionalString(p.apparmorProfile))
    }
}
