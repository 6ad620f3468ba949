import Foundation
import Testing
@testable import KangarooSystem

@Suite struct MountsTests {
    @Test func parsesMountPointsWithEscapes() {
        let points = Mounts.parseMountPoints(CgroupLayoutTests.hybrid)
        #expect(points.first == "/sys/fs/cgroup")
        #expect(points.last == "/sys/fs/cgroup/with space")
        #expect(points.count == 6)
    }

    /// Real mounts (root only): tmpfs trees stacked below a directory are
    /// all detached, siblings outside it are kept.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["KANGAROO_INTEGRATION"] == "1" && getuid() == 0))
    func detachAllRemovesEverythingBelowAndNothingElse() throws {
        let base = "/tmp/kangaroo-test-mounts-\(getpid())"
        for d in ["a", "a/b", "keep"] { try FileManager.default.createDirectory(atPath: base + "/" + d, withIntermediateDirectories: true) }
        defer { _ = umount2(base + "/keep", Int32(MNT_DETACH)); try? FileManager.default.removeItem(atPath: base) }
        #expect(mount("tmpfs", base + "/a", "tmpfs", 0, nil) == 0)
        try FileManager.default.createDirectory(atPath: base + "/a/b", withIntermediateDirectories: true)
        #expect(mount("tmpfs", base + "/a/b", "tmpfs", 0, nil) == 0)
        #expect(mount("tmpfs", base + "/a/b", "tmpfs", 0, nil) == 0)   // stacked
        #expect(mount("tmpfs", base + "/keep", "tmpfs", 0, nil) == 0)
        #expect(Mounts.detachAll(under: [base + "/a"]).isEmpty)
        let left = try Mounts.mountPoints().filter { $0.hasPrefix(base) }
        #expect(left == [base + "/keep"])
    }
}
