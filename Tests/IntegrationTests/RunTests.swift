import Foundation
import Testing

/// `kangaroo run/ps/stop/rm` on the sample image, each test with its own
/// store, state directory and runtime root under /tmp/kangaroo-test-*.
final class RunFixture {
    let tmp: TempDir
    let env: [String: String]

    init() throws {
        tmp = try TempDir("run")
        env = ["KANGAROO_STORE": tmp.sub("store"), "KANGAROO_STATE_DIR": tmp.sub("state"),
               "KANGAROO_RUNTIME_ROOT": tmp.sub("runtime")]
        try run("bash", [TestEnv.repoRoot + "/scripts/testimages/build-all.sh", "--sample-only"], check: true)
        try kangaroo(["image", "convert", "--quiet", "oci:\(TestEnv.images)/sample:latest", "sample"], store: tmp.sub("store"))
    }

    /// `kangaroo ARGS` with this fixture's environment (the store comes from
    /// KANGAROO_STORE: trailing flags would belong to the container's command).
    @discardableResult
    func k(_ args: [String], check: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
        try run(TestEnv.kangaroo, args, env: env, check: check, sourceLocation: sourceLocation)
    }

    /// Mount points below the fixture's directory.
    func mounts() -> [String] {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            return f.count > 4 && f[4].hasPrefix(tmp.path + "/") ? String(f[4]) : nil
        }
    }

    func containerDirectories() -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: tmp.sub("state/containers"))) ?? []
    }

    func expectNothingLeft(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(mounts().isEmpty, "\(what): mounts left: \(mounts())", sourceLocation: sourceLocation)
        #expect(containerDirectories().isEmpty, "\(what): container dirs left: \(containerDirectories())",
                sourceLocation: sourceLocation)
    }

    deinit {
        // a failed test must not leave containers (processes, cgroups) behind
        if let ids = try? run(TestEnv.kangaroo, ["ps", "-q"], env: env).stdout.split(separator: "\n") {
            for id in ids { _ = try? run(TestEnv.kangaroo, ["rm", "-f", String(id)], env: env) }
        }
    }
}

@Suite("kangaroo run", .serialized, .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct RunTests {
    @Test("run --rm prints the sample's greeting and leaves nothing behind")
    func runRemove() throws {
        let f = try RunFixture()
        let r = try f.k(["run", "--rm", "--time", "--name", "sample", "sample"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("hello from sample"), "output: \(r.output)")
        #expect(r.stderr.contains("run took"), "no timing: \(r.stderr)")
        f.expectNothingLeft("after run --rm")
        // the materialized image stays cached for the next run
        let images = try FileManager.default.contentsOfDirectory(atPath: f.tmp.sub("state/images"))
        #expect(images.count == 1)
        let again = try f.k(["run", "--rm", "--name", "again", "sample"])
        #expect(again.stdout.contains("hello from again"))
        f.expectNothingLeft("after the second run --rm")
    }

    @Test("the container's exit status is run's", arguments: [0, 7, 42])
    func exitCode(_ code: Int) throws {
        let f = try RunFixture()
        let r = try f.k(["run", "--rm", "sample", "/bin/sh", "-c", "exit \(code)"], check: false)
        #expect(r.status == Int32(code), "output: \(r.output)")
        f.expectNothingLeft("after exit \(code)")
    }

    @Test("a container without --rm is listed as exited until rm")
    func exitedThenRemoved() throws {
        let f = try RunFixture()
        let r = try f.k(["run", "--name", "once", "sample", "/bin/sh", "-c", "echo written > /tmp/x; exit 3"], check: false)
        #expect(r.status == 3)
        let ps = try f.k(["ps"]).stdout
        #expect(ps.contains("once") && ps.contains("exited (3)"), "ps: \(ps)")
        #expect(f.mounts().allSatisfy { !$0.contains("/containers/") }, "overlay still mounted: \(f.mounts())")
        try f.k(["rm", "once"])
        #expect(try !f.k(["ps"]).stdout.contains("once"))
        f.expectNothingLeft("after rm")
    }

    @Test("-d, ps, stop (SIGKILL after the timeout), rm")
    func detached() throws {
        let f = try RunFixture()
        let r = try f.k(["run", "-d", "--name", "bg", "--memory", "64M", "--cpus", "0.5", "sample", "/bin/sleep", "1000"])
        let id = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id.count == 12, "no id printed: \(r.output)")
        let ps = try f.k(["ps"]).stdout
        #expect(ps.contains(id) && ps.contains("bg") && ps.contains("running"), "ps: \(ps)")
        // limits as the host sees them
        let memory = try String(contentsOfFile: "/sys/fs/cgroup/memory/kangaroo-\(id)/memory.limit_in_bytes", encoding: .utf8)
        #expect(memory.trimmingCharacters(in: .whitespacesAndNewlines) == "67108864")
        let quota = try String(contentsOfFile: "/sys/fs/cgroup/cpu/kangaroo-\(id)/cpu.cfs_quota_us", encoding: .utf8)
        #expect(quota.trimmingCharacters(in: .whitespacesAndNewlines) == "50000")
        // a running container is not removed without -f
        let refused = try f.k(["rm", "bg"], check: false)
        #expect(refused.status != 0 && refused.stderr.contains("running"))
        // sleep as pid 1 ignores SIGTERM: stop falls back to SIGKILL after -t
        let start = Date()
        try f.k(["stop", "-t", "1", "bg"])
        #expect(Date().timeIntervalSince(start) < 10)
        #expect(try f.k(["ps"]).stdout.contains("stopped"))
        try f.k(["rm", id.prefix(6).description])
        #expect(try f.k(["ps", "-q"]).stdout.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/kangaroo-\(id)"))
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/cpu/kangaroo-\(id)"))
        f.expectNothingLeft("after stop + rm")
    }

    @Test("--memory is the limit inside the container's cgroup")
    func memoryInside() throws {
        let f = try RunFixture()
        let r = try f.k(["run", "--rm", "--memory", "64M", "sample", "/bin/cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"])
        #expect(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "67108864", "output: \(r.output)")
        f.expectNothingLeft("after --memory run")
    }

    @Test("rm -f removes a running container")
    func forceRemove() throws {
        let f = try RunFixture()
        let id = try f.k(["run", "-d", "sample", "/bin/sleep", "1000"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try f.k(["rm", "-f", id])
        #expect(try f.k(["ps", "-q"]).stdout.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/kangaroo-\(id)"))
        f.expectNothingLeft("after rm -f")
    }

    @Test("a failing start leaves no mount, directory or container")
    func failureCleansUp() throws {
        let f = try RunFixture()
        let r = try f.k(["run", "--rm", "sample", "/does/not/exist"], check: false)
        #expect(r.status != 0)
        f.expectNothingLeft("after a missing command (foreground)")
        let d = try f.k(["run", "-d", "sample", "/does/not/exist"], check: false)
        #expect(d.status != 0 && d.stderr.contains("kangaroo"), "output: \(d.output)")
        #expect(try f.k(["ps", "-q"]).stdout.isEmpty)
        f.expectNothingLeft("after a missing command (-d)")
        let bad = try f.k(["run", "--rm", "no-such-image"], check: false)
        #expect(bad.status != 0)
        f.expectNothingLeft("after a missing image")
    }
}
