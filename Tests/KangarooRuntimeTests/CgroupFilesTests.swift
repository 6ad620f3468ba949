import Glibc
import KangarooSystem
import SystemPackage
import Testing
@testable import KangarooRuntime

/// CgroupFiles on a fake layout: hierarchies are plain directories under a
/// temporary directory (no root needed), so only what does not depend on
/// cgroupfs semantics is checked here; the integration tests cover the rest.
@Suite struct CgroupFilesTests {
    static func withFakeHierarchies(_ body: (String, CgroupLayout) throws -> Void) throws {
        var template = Array("/tmp/kangaroo-test-cgXXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { FileSystem.removeTree(dir) }
        for h in ["cpu,cpuacct", "memory", "devices", "unified"] { try FileSystem.makeDirectories(dir + "/" + h) }
        let layout = CgroupLayout.parse(mountinfo: """
        30 25 0:27 / \(dir)/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
        31 25 0:28 / \(dir)/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
        32 25 0:29 / \(dir)/devices rw,nosuid shared:12 - cgroup cgroup rw,devices
        26 24 0:23 / \(dir)/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw
        """)
        try body(dir, layout)
    }

    @Test func createsNestedPathInEveryHierarchyAndRemovesIt() throws {
        try Self.withFakeHierarchies { dir, layout in
            let files = CgroupFiles(Cgroup(layout: layout, path: "/k/c1"))
            #expect(files.mountPoints == ["\(dir)/cpu,cpuacct", "\(dir)/memory", "\(dir)/devices", "\(dir)/unified"])
            #expect(files.mountPoint(for: "cpuacct") == "\(dir)/cpu,cpuacct")
            #expect(files.mountPoint(for: "pids") == nil)
            try files.create()
            for h in ["cpu,cpuacct", "memory", "devices", "unified"] {
                #expect(FileSystem.isDirectory("\(dir)/\(h)/k/c1"))
            }
            try files.create()  // existing directories are fine (mkdir -p)
            try files.remove()
            for h in ["cpu,cpuacct", "memory", "devices", "unified"] {
                #expect(!FileSystem.exists("\(dir)/\(h)/k/c1"))
                #expect(FileSystem.isDirectory("\(dir)/\(h)/k"))  // only the leaf goes, as rmdir(2) of the cgroup
            }
            try files.remove()  // already gone: not an error
        }
    }

    @Test func writesEachValueWithItsOwnWriteAndKeepsTheFileOpen() throws {
        try Self.withFakeHierarchies { dir, layout in
            let files = CgroupFiles(Cgroup(layout: layout, path: "/c2"))
            try files.create()
            let allow = "\(dir)/devices/c2/devices.allow"
            try FileSystem.write(allow, "", flags: O_WRONLY | O_CREAT | O_CLOEXEC)
            try files.set("devices", "devices.allow", "c 1:3 rwm")
            try files.set("devices", "devices.allow", "c 1:5 rwm")
            #expect(try FileSystem.readString(allow) == "c 1:3 rwmc 1:5 rwm")
            #expect(files.has("devices", "devices.allow"))
            #expect(!files.has("memory", "memory.limit_in_bytes"))
            #expect(throws: Errno.noSuchFileOrDirectory) { try files.set("pids", "pids.max", "10") }
            #expect(throws: Errno.noSuchFileOrDirectory) { try files.set("memory", "memory.limit_in_bytes", "1") }
            files.closeAll()
            unlink(allow)
            try files.remove()
            #expect(!FileSystem.exists("\(dir)/devices/c2"))
        }
    }
}

@Suite struct ProcessStatusTests {
    @Test func readsStateAndStartTimeOfThisProcess() throws {
        let s = try #require(ProcessStatus.stat(pid: getpid()))
        // Fields 3 and 22 of /proc/<pid>/stat, counted after the last ")" as the kernel documents.
        let text = try FileSystem.readString("/proc/\(getpid())/stat")
        let rest = text[text.index(after: text.lastIndex(of: ")")!)...].split(separator: " ")
        #expect(s.state == rest[0].utf8.first)
        #expect([UInt8(ascii: "R"), UInt8(ascii: "S")].contains(s.state))
        #expect(s.startTime == UInt64(rest[19]))
        #expect(ProcessStatus.isAlive(pid: getpid(), startTime: s.startTime))
        #expect(!ProcessStatus.isAlive(pid: getpid(), startTime: s.startTime + 1))
    }
}
