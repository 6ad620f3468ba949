import Foundation
import KangarooTestSupport
import Testing
@testable import KangarooRuntime

@Suite(.enabled(if: integrationEnabled), .serialized)
struct RuntimeLeakTests {
    /// Things a leaking runtime would leave: host mounts of the test rootfs
    /// or bundle, state directories, cgroups, container processes (by marker
    /// and by cgroup). (Host-wide counts are
    /// not used: other tests and other programs mount and open things too.)
    static func snapshot(_ root: String, bundle: String) -> (mounts: Int, stateDirs: Int, cgroups: Int, procs: Int, openFiles: Int) {
        let mi = procText("/proc/self/mountinfo") ?? ""
        let mounts = mi.split(separator: "\n").filter { $0.contains(testRootfs) || $0.contains(bundle) }.count
        let cg = ["memory", "pids", "cpu", "freezer", "devices", "unified"].map { h in
            (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup/\(h)"))?.filter { $0.hasPrefix("kangaroo-test-leak") }.count ?? 0
        }.reduce(0, +)
        let dirs = (try? FileManager.default.contentsOfDirectory(atPath: root))?.count ?? 0
        var open = 0
        for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap({ Int32($0) }) ?? [] {
            // Other suites run containers on the same rootfs in parallel: count
            // only processes of this test's cgroup.
            let cg = (try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)) ?? ""
            guard cg.contains("/kangaroo-test-leak") else { continue }
            let root = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/root")) ?? ""
            if root.hasPrefix(testRootfs) || root == "/" { open += 1 }
        }
        return (mounts, dirs, cg, Harness.processes(matching: "leak-marker").count, open)
    }

    /// 1,000 create/start/delete cycles leave no state directory, cgroup,
    /// mount, process or descriptor behind. Driven through a shell loop so
    /// that the test measures the runtime, not Foundation's Process.
    @Test func thousandCyclesLeakNothing() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("leakroot")
        let bundle = try Harness.bundle("leak", args: ["/bin/true", "leak-marker"])
        defer { try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }
        let before = Self.snapshot(root, bundle: bundle)
        let kr = Harness.runtimeBinary
        let script = """
        set -e
        i=0; fail=0
        while [ $i -lt 1000 ]; do
          \(kr) --root \(root) create --bundle \(bundle) leak$i || fail=$((fail+1))
          \(kr) --root \(root) start leak$i || fail=$((fail+1))
          n=0
          while [ "$(\(kr) --root \(root) state leak$i | grep -c '"stopped"')" = 0 ] && [ $n -lt 500 ]; do n=$((n+1)); done
          \(kr) --root \(root) delete leak$i || fail=$((fail+1))
          i=$((i+1))
        done
        echo fail=$fail
        """
        let r = try Harness.run(["/bin/sh", "-c", script], timeout: 600)
        #expect(r.out.contains("fail=0"), "\(r.out) \(r.err.prefix(2000))")
        let after = Self.snapshot(root, bundle: bundle)
        #expect(after.mounts == before.mounts)
        #expect(after.stateDirs == 0)
        #expect(after.cgroups == 0)
        #expect(after.openFiles == 0)
        #expect(after.procs == 0)
    }
}
