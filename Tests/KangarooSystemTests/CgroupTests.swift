import Glibc
import Testing
@testable import KangarooSystem

@Suite struct CgroupLayoutTests {
    static let hybrid = """
    25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
    26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw
    27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid shared:6 - cgroup cgroup rw,xattr,name=systemd
    30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
    31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
    32 25 0:29 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,pids
    """

    @Test func parsesHybridLayout() {
        let l = CgroupLayout.parse(mountinfo: Self.hybrid)
        #expect(l.unified == "/sys/fs/cgroup/unified")
        #expect(!l.isPureV2)
        #expect(l.v1.map(\.controllers) == [["name=systemd"], ["cpu", "cpuacct"], ["memory"], ["pids"]])
        #expect(l.hierarchy("cpuacct")?.mountPoint == "/sys/fs/cgroup/cpu,cpuacct")
        #expect(l.hierarchy("pids")?.mountPoint == "/sys/fs/cgroup/with space")
    }

    @Test func parsesPureV2Layout() {
        let l = CgroupLayout.parse(mountinfo: "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
        #expect(l.isPureV2)
        let cg = Cgroup(layout: l, path: "k/c1")
        #expect(cg.path == "/k/c1")
        #expect(cg.directory(for: "memory") == "/sys/fs/cgroup/k/c1")
        #expect(cg.directories == ["/sys/fs/cgroup/k/c1"])
    }

    @Test func directoriesCoverEveryHierarchy() {
        let cg = Cgroup(layout: CgroupLayout.parse(mountinfo: Self.hybrid), path: "/x")
        #expect(cg.directories == ["/sys/fs/cgroup/systemd/x", "/sys/fs/cgroup/cpu,cpuacct/x",
                                   "/sys/fs/cgroup/memory/x", "/sys/fs/cgroup/with space/x", "/sys/fs/cgroup/unified/x"])
        #expect(cg.directory(for: "cpu") == "/sys/fs/cgroup/cpu,cpuacct/x")
        #expect(cg.directory(for: "blkio") == nil)
    }

    @Test func trimmingSpace() {
        #expect(" 12 \n".trimmingSpace == "12")
        #expect("\n".trimmingSpace == "")
    }
}

@Suite struct FileSystemTests {
    @Test func writeReadReplaceAndRemoveTree() throws {
        var template = Array("/tmp/kangaroo-test-fsXXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { FileSystem.removeTree(dir) }
        try FileSystem.makeDirectories(dir + "/a/b/c")
        #expect(FileSystem.isDirectory(dir + "/a/b/c"))
        try FileSystem.replace(dir + "/a/f", "hello")
        #expect(try FileSystem.readString(dir + "/a/f") == "hello")
        try FileSystem.replace(dir + "/a/f", "again")
        #expect(try FileSystem.readString(dir + "/a/f") == "again")
        #expect(try FileSystem.list(dir + "/a").sorted() == ["b", "f"])
        #expect(throws: Errno.self) { try FileSystem.read(dir + "/missing") }
        FileSystem.removeTree(dir)
        #expect(!FileSystem.exists(dir))
    }
}

import SystemPackage
