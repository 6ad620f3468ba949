import Testing
@testable import KangarooRuntime

@Suite struct CLITests {
    @Test func parsesContainerdCreateInvocation() throws {
        let a = try CLI.parse(["runc", "--root", "/run/x", "--log", "/tmp/l.json", "--log-format", "json", "create",
                               "--bundle", "/b", "--pid-file", "/p", "--console-socket=/s", "id1"])
        #expect(a.global == ["root": "/run/x", "log": "/tmp/l.json", "log-format": "json"])
        #expect(a.command == "create")
        #expect(a.flag("bundle") == "/b")
        #expect(a.flag("pid-file") == "/p")
        #expect(a.flag("console-socket") == "/s")
        #expect(a.positional == ["id1"])
    }

    @Test func execPassesArgumentsAfterIdThrough() throws {
        let a = try CLI.parse(["runc", "exec", "-d", "--env", "A=1", "-e", "B=2", "--user", "1000:1000", "c1", "ls", "-la", "--x"])
        #expect(a.has("detach"))
        #expect(a.all("env") == ["A=1", "B=2"])
        #expect(a.flag("user") == "1000:1000")
        #expect(a.positional == ["c1", "ls", "-la", "--x"])
    }

    @Test func shortFMeansForceForDeleteAndFormatForList() throws {
        #expect(try CLI.parse(["runc", "delete", "-f", "c1"]).has("force"))
        #expect(try CLI.parse(["runc", "list", "-f", "json"]).flag("format") == "json")
    }

    @Test func missingFlagValueIsAnError() {
        #expect(throws: RuntimeError.self) { try CLI.parse(["runc", "create", "--bundle"]) }
    }

    @Test(arguments: [("9", 9), ("KILL", 9), ("SIGKILL", 9), ("term", 15), ("SIGUSR1", 10), ("RTMIN+2", 36), ("SIGRTMAX", 64)] as [(String, Int32)])
    func parsesSignals(_ text: String, _ value: Int32) {
        #expect(Signals.parse(text) == value)
    }

    @Test(arguments: ["0", "65", "SIGFOO", "RTMIN+40"])
    func rejectsBadSignals(_ text: String) {
        #expect(Signals.parse(text) == nil)
    }

    @Test(arguments: [("1024", 1024), ("64k", 65536), ("100m", 104_857_600), ("1g", 1_073_741_824), ("2MB", 2_097_152), ("-1", -1)] as [(String, Int64)])
    func parsesSizes(_ text: String, _ value: Int64) {
        #expect(CLI.parseSize(text) == value)
    }

    @Test func mountOptionsSplitIntoFlagsPropagationAndData() {
        let o = MountOptions.parse(["nosuid", "noexec", "rbind", "rslave", "mode=755", "size=65536k", "rw"])
        #expect(o.flags & UInt(MS_NOSUID) != 0)
        #expect(o.flags & UInt(MS_NOEXEC) != 0)
        #expect(o.flags & UInt(MS_BIND) != 0 && o.flags & UInt(MS_REC) != 0)
        #expect(o.flags & UInt(MS_RDONLY) == 0)
        #expect(o.propagation == UInt(MS_SLAVE) | UInt(MS_REC))
        #expect(o.data == "mode=755,size=65536k")
    }

    @Test func capabilityMasks() {
        #expect(Capability.mask(["CAP_CHOWN", "CAP_KILL"]) == (1 << 0) | (1 << 5))
        #expect(Capability.number("sys_admin") == 21)
        #expect(Capability.number("CAP_NOPE") == nil)
    }

    @Test(arguments: [
        (nil, "c1", "/c1"), ("/a/b", "c1", "/a/b"), ("rel/x", "c1", "/rel/x"),
        ("machine.slice:libpod:abc", "c1", "/machine.slice/libpod-abc.scope"),
    ] as [(String?, String, String)])
    func cgroupPaths(_ configured: String?, _ id: String, _ expected: String) {
        #expect(Runtime.cgroupPath(configured, id: id) == expected)
    }

    @Test(arguments: ["", ".", "..", "a/b"])
    func rejectsBadIds(_ id: String) {
        #expect(throws: RuntimeError.self) { try Runtime.validate(id: id) }
    }

    @Test func tableAlignsColumns() {
        let t = CLI.table([["ID", "PID"], ["abc", "1"]])
        #expect(t == "ID          PID\nabc         1\n")
    }
}

import Glibc
