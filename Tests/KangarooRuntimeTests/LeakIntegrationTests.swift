import Foundation
import Testing
@testable import KangarooRuntime

@Suite(.enabled(if: integrationEnabled), .serialized)
struct LeakIntegrationTests {
    static func snapshot(_ root: String) -> (mounts: Int, stateDirs: Int, cgroups: Int, fds: Int, procs: Int) {
        let cg = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup/memory"))?
            .filter { $0.hasPrefix("kangaroo-test-leak") }.count ?? -1
        let dirs = (try? FileManager.default.contentsOfDirectory(atPath: root))?.count ?? 0
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))?.count ?? -1
        return (Harness.mountCount(), dirs, cg, fds, Harness.processes(matching: "leak-marker").count)
    }

    /// 1,000 create/start/delete cycles leave no state directory, cgroup,
    /// mount, process or descriptor behind. Driven through a shell loop so
    /// that the test measures the runtime, not Foundation's Process.
    @Test func thousandCyclesLeakNothing() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("leakroot")
        let bundle = try Harness.bundle("leak", args: ["/bin/true", "leak-marker"])
        defer { try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }
        let before = Self.snapshot(root)
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
        let after = Self.snapshot(root)
        #expect(after.mounts == before.mounts)
        #expect(after.stateDirs == 0)
        #expect(after.cgroups == 0)
        #expect(after.fds == before.fds)
        #expect(after.procs == 0)
    }
}
