import Testing
import KangarooSystem
@testable import KangarooRuntime

/// A valid config (runc's default spec) that each case below breaks in one place.
let validConfig = Runtime.specTemplate(args: ["true"], terminal: false)

func mutate(_ path: [String], _ value: JSON?) throws -> String {
    func set(_ j: JSON, _ path: ArraySlice<String>) -> JSON {
        guard let key = path.first else { return value ?? .null }
        switch j {
        case let .object(members):
            var m = members.filter { $0.0 != key || (value == nil && path.count > 1) }
            if path.count == 1, value == nil { return .object(m) }
            let child = members.first { $0.0 == key }?.1 ?? .object([])
            m.removeAll { $0.0 == key }
            m.append((key, set(child, path.dropFirst())))
            return .object(m)
        case var .array(items):
            guard let i = Int(key), i < items.count else { return j }
            if path.count == 1, value == nil { items.remove(at: i); return .array(items) }
            items[i] = set(items[i], path.dropFirst())
            return .array(items)
        default:
            return j
        }
    }
    return set(try JSON.parse(validConfig), path[...]).serialized()
}

@Suite struct SpecTests {
    @Test func decodesDefaultTemplate() throws {
        let spec = try Spec.parse(validConfig)
        #expect(spec.process?.args == ["true"])
        #expect(spec.root?.path == "rootfs")
        #expect(spec.root?.readonly == true)
        #expect(spec.linux.namespaces.map(\.type) == ["pid", "network", "ipc", "uts", "mount", "cgroup"])
        #expect(spec.mounts.count == 7)
        #expect(spec.process?.rlimits.first?.soft == 1024)
        #expect(spec.linux.resources?.devices.first?.allow == false)
    }

    @Test(arguments: [
        (["ociVersion"], nil, "config.json: ociVersion: missing required field"),
        (["process", "args"], .array([]), "config.json: process.args: args must not be empty"),
        (["process", "args"], .string("sh"), "config.json: process.args: expected an array, got string"),
        (["process", "cwd"], .string("relative"), "config.json: process.cwd: cwd \"relative\" must be an absolute path"),
        (["process", "user", "uid"], .string("0"), "config.json: process.user.uid: expected an integer, got string"),
        (["process", "rlimits", "0", "type"], .string("RLIMIT_X"), "config.json: process.rlimits[0].type: unknown rlimit"),
        (["process", "capabilities", "bounding"], .array([.string("CAP_NOPE")]),
         "config.json: process.capabilities.bounding[0]: unknown capability"),
        (["linux", "namespaces", "1", "type"], .string("nett"), "config.json: linux.namespaces[1].type: unknown namespace type"),
        (["linux", "namespaces", "2", "path"], .string("proc/1/ns/ipc"), "config.json: linux.namespaces[2].path: namespace path must be absolute"),
        (["mounts", "3", "destination"], .number("3"), "config.json: mounts[3].destination: expected a string, got number"),
        (["mounts", "0", "options"], .string("ro"), "config.json: mounts[0].options: expected an array, got string"),
        (["linux", "resources", "memory", "limit"], .string("1g"), "config.json: linux.resources.memory.limit: expected an integer"),
        (["linux", "seccomp"], .object([("defaultAction", .string("SCMP_ACT_MAYBE"))]),
         "config.json: linux.seccomp.defaultAction: unknown seccomp action"),
        (["linux", "devices"], .array([.object([("type", .string("c")), ("path", .string("/dev/x"))])]),
         "config.json: linux.devices[0].major: missing required field"),
        (["hooks", "prestart"], .array([.object([("path", .string("hook"))])]), "config.json: hooks.prestart[0].path: hook path must be absolute"),
        (["linux", "rootfsPropagation"], .string("sideways"), "config.json: linux.rootfsPropagation: unknown propagation"),
        (["process", "oomScoreAdj"], .number("5000"), "config.json: process.oomScoreAdj: must be in -1000...1000"),
        (["linux", "resources", "hugepageLimits"], .array([.object([("pageSize", .string("2MB"))])]),
         "config.json: linux.resources.hugepageLimits[0].limit: missing required field"),
        (["linux", "resources", "network", "priorities"], .array([.object([("name", .string("eth0"))])]),
         "config.json: linux.resources.network.priorities[0].priority: missing required field"),
        (["linux", "resources", "rdma"], .array([]), "config.json: linux.resources.rdma: expected an object"),
        (["linux", "resources", "memory", "kernelTCP"], .string("1m"), "config.json: linux.resources.memory.kernelTCP: expected an integer"),
    ] as [([String], JSON?, String)])
    func rejectsInvalidFieldNamingItsPath(path: [String], value: JSON?, expected: String) throws {
        let text = try mutate(path, value)
        do {
            _ = try Spec.parse(text)
            Issue.record("accepted invalid config (\(path))")
        } catch {
            #expect(error.code == .invalidConfig)
            #expect(error.message.hasPrefix(expected), "got: \(error.message)")
        }
    }

    @Test func seccompRulesDecodeAndCompile() throws {
        let text = try mutate(["linux", "seccomp"], try JSON.parse("""
        {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
         "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                      {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                       "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]}
        """))
        let spec = try Spec.parse(text)
        let seccomp = try #require(spec.linux.seccomp)
        #expect(seccomp.syscalls.count == 2)
        #expect(seccomp.syscalls[0].errnoRet == 38)
        #expect(seccomp.syscalls[1].args.first?.value == 8)
        let bpf = try SeccompFilter.compile(seccomp)
        #expect(bpf.count > 0 && bpf.count % 8 == 0)
    }

    @Test func hostDependentResourcesDecode() throws {
        let r = try Resources.parse(#"""
            {"memory": {"kernelTCP": 4096, "kernel": 8192},
             "hugepageLimits": [{"pageSize": "2MB", "limit": 2097152}],
             "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]},
             "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}}}
            """#, document: "r.json")
        #expect(r.memory?.kernelTCP == 4096)
        #expect(r.memory?.kernel == 8192)
        #expect(r.hugepageLimits.map(\.pageSize) == ["2MB"])
        #expect(r.hugepageLimits.first?.limit == 2_097_152)
        #expect(r.network?.classID == 1_048_577)
        #expect(r.network?.priorities.first?.name == "eth0" && r.network?.priorities.first?.priority == 5)
        #expect(r.rdma.first?.device == "mlx5_1" && r.rdma.first?.handles == 3 && r.rdma.first?.objects == 10000)
    }

    @Test func apparmorProfileDecodes() throws {
        let spec = try Spec.parse(try mutate(["process", "apparmorProfile"], .string("runtime-default")))
        #expect(spec.process?.apparmorProfile == "runtime-default")
        #expect(try Spec.parse(validConfig).process?.apparmorProfile == nil)
    }

    @Test(arguments: [("2MB", true), ("0MB", false), ("2mb", false), ("MB", false), ("7XB", false)])
    func hugepageSizesParse(size: String, wellFormed: Bool) {
        // Well-formed sizes are accepted only when the host has them.
        let host = FileSystem.isDirectory("/sys/kernel/mm/hugepages/hugepages-2048kB")
        #expect((HostSupport.hugepageKiB(size) != nil) == (wellFormed && host))
    }

    @Test func resourcesAcceptNegativeOneAsUnlimited() throws {
        let r = try Resources.parse(#"{"memory": {"limit": -1, "swap": 1048576}, "pids": {"limit": 10}}"#, document: "r.json")
        #expect(r.memory?.limit == -1)
        #expect(r.memory?.swap == 1_048_576)
        #expect(r.pidsLimit == 10)
    }
}
