import Foundation
import KangarooTestSupport
import Testing
@testable import KangarooRuntime

/// containerd (ctr, io.containerd.runc.v2 with --runc-binary) and podman
/// (--runtime) drive kangaroo-runtime unchanged. Uses a private containerd
/// and private podman storage under /tmp/kangaroo-test-engines-*.
@Suite(.enabled(if: integrationEnabled && FileManager.default.fileExists(atPath: "/usr/bin/containerd")
                && FileManager.default.fileExists(atPath: "/usr/bin/podman")), .serialized)
final class RuntimeEngineTests {
    let dir: String
    let image = "localhost/kangaroo-busybox:test"
    var containerd: pid_t?

    init() throws {
        try Harness.ensureDeps()
        dir = try Harness.tempDir("engines")
        try Harness.run(["/bin/tar", "-C", testRootfs, "-cf", dir + "/rootfs.tar", "."])
    }

    deinit {
        if let c = containerd {
            kill(c, SIGTERM)
            var st: Int32 = 0
            waitpid(c, &st, 0)
        }
        // containerd's overlay snapshots and podman's storage may hold mounts.
        if let mi = procText("/proc/self/mountinfo") {
            for line in mi.split(separator: "\n").reversed() {
                let f = line.split(separator: " ")
                if f.count > 4, f[4].hasPrefix(dir) { _ = umount2(String(f[4]), Int32(MNT_DETACH)) }
            }
        }
        try? FileManager.default.removeItem(atPath: dir)
    }

    var podman: [String] {
        ["/usr/bin/podman", "--root", dir + "/storage", "--runroot", dir + "/run", "--cgroup-manager", "cgroupfs",
         "--events-backend", "file", "--storage-driver", "vfs", "--runtime", Harness.runtimeBinary]
    }
    // This host's root lacks CAP_SYS_RESOURCE: keep podman's rlimits below
    // the current hard limits (runc fails the same way without this).
    let ulimits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

    func importImage() throws {
        let r = try Harness.run(podman + ["import", dir + "/rootfs.tar", image])
        guard r.code == 0 else { throw HarnessError("podman import: \(r.err)") }
    }

    @Test func podmanRunExecStop() throws {
        try importImage()
        let run = try Harness.run(podman + ["run", "--rm"] + ulimits + [image, "sh", "-c", "echo hello; id -u; exit 3"])
        #expect(run.code == 3, "\(run.err)")
        #expect(run.out == "hello\n0\n")
        let d = try Harness.run(podman + ["run", "-d", "--name", "kr-pd"] + ulimits + [image, "sleep", "1000"])
        #expect(d.code == 0, "\(d.err)")
        let e = try Harness.run(podman + ["exec", "kr-pd", "sh", "-c", "echo exec-ok"])
        #expect(e.out == "exec-ok\n", "\(e.err)")
        #expect(try Harness.run(podman + ["pause", "kr-pd"]).code == 0)
        #expect(try Harness.run(podman + ["unpause", "kr-pd"]).code == 0)
        #expect(try Harness.run(podman + ["rm", "-f", "-t", "0", "kr-pd"]).code == 0)

        // -it: the pty comes through the console socket; Python's pty.spawn
        // gives podman a tty. (Not `script`: with stdin at EOF, as under CI,
        // it types ^D into the terminal and podman's output was sometimes lost.)
        let it = podman + ["run", "--rm", "-it"] + ulimits + [image, "sh", "-c", "tty; echo tty-ok"]
        let tty = try Harness.run(["/usr/bin/python3", "-c", "import pty, sys; pty.spawn(sys.argv[1:])"] + it)
        #expect(tty.out.contains("/dev/pts/"), "\(tty.out) \(tty.err)")
        #expect(tty.out.contains("tty-ok"))

        // --memory reaches the container's memory cgroup.
        let m = try Harness.run(podman + ["run", "-d", "--name", "kr-pm", "--memory", "64m"] + ulimits + [image, "sleep", "1000"])
        #expect(m.code == 0, "\(m.err)")
        defer { _ = try? Harness.run(podman + ["rm", "-f", "-t", "0", "kr-pm"]) }
        let line = try Harness.run(podman + ["exec", "kr-pm", "sh", "-c", "grep -E '^[0-9]+:memory:' /proc/self/cgroup"]).out
        let path = line.split(separator: ":", maxSplits: 2).last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
        #expect(!path.isEmpty, "\(line)")
        let limit = path == "/"
            ? try Harness.run(podman + ["exec", "kr-pm", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]).out
            : (try? String(contentsOfFile: "/sys/fs/cgroup/memory" + path + "/memory.limit_in_bytes", encoding: .utf8)) ?? ""
        #expect(limit.trimmingCharacters(in: .whitespacesAndNewlines) == "67108864", "cgroup \(path): \(limit)")
    }

    func startContainerd() throws -> [String] {
        let cfg = """
        version = 2
        root = "\(dir)/ctrd/root"
        state = "\(dir)/ctrd/state"
        disabled_plugins = ["io.containerd.grpc.v1.cri"]
        [grpc]
          address = "\(dir)/ctrd/sock"
        [ttrpc]
          address = "\(dir)/ctrd/sock.ttrpc"
        """
        try FileManager.default.createDirectory(atPath: dir + "/ctrd", withIntermediateDirectories: true)
        try cfg.write(toFile: dir + "/ctrd/config.toml", atomically: true, encoding: .utf8)
        containerd = try Harness.spawn(["/usr/bin/containerd", "--config", dir + "/ctrd/config.toml"])
        let ctr = ["/usr/bin/ctr", "--address", dir + "/ctrd/sock"]
        for _ in 0..<100 { if FileManager.default.fileExists(atPath: dir + "/ctrd/sock") { break }; usleep(50000) }
        try importImage()
        let save = try Harness.run(podman + ["save", "--format", "oci-archive", "-o", dir + "/img.tar", image])
        guard save.code == 0 else { throw HarnessError("podman save: \(save.err)") }
        let imp = try Harness.run(ctr + ["images", "import", dir + "/img.tar"])  // named by its ref.name annotation
        guard imp.code == 0 else { throw HarnessError("ctr import: \(imp.err)") }
        return ctr
    }

    @Test func containerdRunExecKillPauseDelete() throws {
        let ctr = try startContainerd()
        let rt = ["--runtime", "io.containerd.runc.v2", "--runc-binary", Harness.runtimeBinary]
        let fg = try Harness.run(ctr + ["run", "--rm"] + rt + [image, "kr-c1", "sh", "-c", "echo from-ctr; exit 5"])
        #expect(fg.out == "from-ctr\n", "\(fg.err)")
        #expect(fg.code == 5)

        #expect(try Harness.run(ctr + ["run", "-d"] + rt + [image, "kr-c2", "sleep", "1000"]).code == 0)
        let exec = try Harness.run(ctr + ["task", "exec", "--exec-id", "e1", "kr-c2", "sh", "-c", "echo exec-out; exit 4"])
        #expect(exec.out == "exec-out\n")
        #expect(exec.code == 4)
        let execTTY = (ctr + ["task", "exec", "-t", "--exec-id", "e2", "kr-c2", "sh", "-c", "'tty; echo exec-tty-ok'"]).joined(separator: " ")
        let et = try Harness.run(["/usr/bin/script", "-qc", execTTY, "/dev/null"])
        #expect(et.out.contains("/dev/pts/"), "\(et.out) \(et.err)")
        #expect(et.out.contains("exec-tty-ok"))
        #expect(try Harness.run(ctr + ["task", "pause", "kr-c2"]).code == 0)
        #expect(try Harness.run(ctr + ["task", "ls"]).out.contains("PAUSED"))
        #expect(try Harness.run(ctr + ["task", "resume", "kr-c2"]).code == 0)
        #expect(try Harness.run(ctr + ["task", "ls"]).out.contains("RUNNING"))
        #expect(try Harness.run(ctr + ["task", "kill", "-s", "SIGKILL", "kr-c2"]).code == 0)
        for _ in 0..<100 { if try Harness.run(ctr + ["task", "ls"]).out.contains("STOPPED") { break }; usleep(20000) }
        #expect(try Harness.run(ctr + ["task", "delete", "kr-c2"]).code == 0)
        #expect(try Harness.run(ctr + ["container", "delete", "kr-c2"]).code == 0)

        // -t: the pty goes through the console socket; `script` gives ctr a tty.
        let quoted = (ctr + ["run", "-t", "--rm"] + rt + [image, "kr-c3", "sh", "-c", "'tty; echo tty-ok'"]).joined(separator: " ")
        let tty = try Harness.run(["/usr/bin/script", "-qc", quoted, "/dev/null"])
        #expect(tty.out.contains("/dev/pts/0"), "\(tty.out) \(tty.err)")
        #expect(tty.out.contains("tty-ok"))
    }
}
