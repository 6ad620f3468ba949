import CKangaroo
import CSeccomp
#if canImport(Glibc)
import Glibc
#endif

/// Compiles config-linux.md "Seccomp" into a classic BPF program with
/// libseccomp; the container init loads the bytes with PR_SET_SECCOMP.
public enum SeccompFilter {
    static let actionNames: Set<String> = [
        "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
    ]
    static let operatorNames: Set<String> = [
        "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ",
    ]

    static func action(_ name: String, errnoRet: UInt32?) throws(RuntimeError) -> UInt32 {
        switch name {
        case "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD": return 0x0000_0000
        case "SCMP_ACT_KILL_PROCESS": return 0x8000_0000
        case "SCMP_ACT_TRAP": return 0x0003_0000
        case "SCMP_ACT_ERRNO": return 0x0005_0000 | ((errnoRet ?? UInt32(EPERM)) & 0xffff)
        case "SCMP_ACT_TRACE": return 0x7ff0_0000 | ((errnoRet ?? UInt32(EPERM)) & 0xffff)
        case "SCMP_ACT_ALLOW": return 0x7fff_0000
        case "SCMP_ACT_LOG": return 0x7ffc_0000
        default: throw RuntimeError(.unsupported, "seccomp action \(name) is not supported")
        }
    }

    static func compare(_ op: String) -> scmp_compare {
        switch op {
        case "SCMP_CMP_NE": return SCMP_CMP_NE
        case "SCMP_CMP_LT": return SCMP_CMP_LT
        case "SCMP_CMP_LE": return SCMP_CMP_LE
        case "SCMP_CMP_GE": return SCMP_CMP_GE
        case "SCMP_CMP_GT": return SCMP_CMP_GT
        case "SCMP_CMP_MASKED_EQ": return SCMP_CMP_MASKED_EQ
        default: return SCMP_CMP_EQ
        }
    }

    static func archName(_ oci: String) -> String {
        var s = oci.lowercased()
        if s.hasPrefix("scmp_arch_") { s.removeFirst(10) }
        switch s {
        case "x86_64", "x32", "x86", "arm", "aarch64", "mips", "mips64", "mips64n32", "mipsel", "mipsel64",
             "mipsel64n32", "ppc", "ppc64", "ppc64le", "s390", "s390x", "riscv64": return s
        default: return s
        }
    }

    /// Returns the BPF program as raw `struct sock_filter` bytes.
    public static func compile(_ spec: Spec.Seccomp) throws(RuntimeError) -> [UInt8] {
        let defaultAction = try action(spec.defaultAction, errnoRet: spec.defaultErrnoRet)
        guard let ctx = seccomp_init(defaultAction) else {
            throw RuntimeError(.system, "seccomp_init failed for default action \(spec.defaultAction)")
        }
        defer { seccomp_release(ctx) }
        // Do not let libseccomp set no_new_privs itself: the runtime decides.
        _ = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0)
        for arch in spec.architectures {
            let token = seccomp_arch_resolve_name(archName(arch))
            if token == 0 { continue }
            let rc = seccomp_arch_add(ctx, token)
            if rc < 0 && rc != -EEXIST { throw RuntimeError(.system, "seccomp: add architecture \(arch)", errno: -rc) }
        }
        for rule in spec.syscalls {
            let act = try action(rule.action, errnoRet: rule.errnoRet)
            if act == defaultAction { continue }
            let conds = rule.args.map {
                scmp_arg_cmp(arg: $0.index, op: compare($0.op), datum_a: $0.value, datum_b: $0.valueTwo)
            }
            for name in rule.names {
                let nr = seccomp_syscall_resolve_name(name)
                if nr == -1 { continue }  // unknown on this kernel/arch: ignored, as runc does
                var rc = conds.withUnsafeBufferPointer {
                    seccomp_rule_add_array(ctx, act, nr, UInt32($0.count), $0.baseAddress)
                }
                if rc == -EINVAL, conds.count > 1 {
                    // Several conditions on one argument: one rule per condition.
                    for c in conds {
                        var one = c
                        rc = seccomp_rule_add_array(ctx, act, nr, 1, &one)
                        if rc < 0 { break }
                    }
                }
                if rc < 0 {
                    throw RuntimeError(.invalidConfig, "linux.seccomp: cannot add rule for syscall \(name)", errno: -rc)
                }
            }
        }
        let fd = kr_memfd_create("seccomp", 1 /* MFD_CLOEXEC */)
        guard fd >= 0 else { throw RuntimeError.sys("memfd_create") }
        defer { close(fd) }
        let rc = seccomp_export_bpf(ctx, fd)
        guard rc >= 0 else { throw RuntimeError(.system, "seccomp_export_bpf", errno: -rc) }
        let size = lseek(fd, 0, SEEK_END)
        guard size >= 0 else { throw RuntimeError.sys("lseek seccomp program") }
        var out = [UInt8](repeating: 0, count: Int(size))
        let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n == size else { throw RuntimeError.sys("read seccomp program") }
        return out
    }
}
