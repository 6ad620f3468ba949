import Foundation
import KangarooTestSupport
import Testing

/// containerd drives the node daemon as the shim v2 of its tasks
/// (runtime io.containerd.kangaroo.v2): a private containerd, the sample
/// image imported into it, `ctr` as the client, runc's shim as the oracle.
@Suite("shim v2", .serialized, .enabled(if: TestEnv.enabled && FileManager.default.fileExists(atPath: "/usr/bin/containerd"),
                                        "needs root, KANGAROO_INTEGRATION=1 and containerd"))
final class ShimTests {
    let node: TempDir
    let containerd: TestContainerd
    let kangaroo = ["--runtime", "io.containerd.kangaroo.v2"]
    let image = "kangaroo.test/sample:latest"

    init() throws {
        node = try TempDir("node")
        containerd = try TestContainerd.forKangaroo(node: node)
        let tar = containerd.dir.sub("sample.tar")
        try run("/bin/tar", ["-C", TestEnv.images + "/sample", "-cf", tar, "."], check: true)
        try run("/usr/bin/ctr", containerd.ctr + ["images", "import", "--index-name", image, tar], check: true)
    }

    deinit { tearDownNode(node, containerd: containerd) }

    @discardableResult
    func ctr(_ args: [String], check: Bool = false) throws -> CommandResult {
        try run("/usr/bin/ctr", containerd.ctr + args, check: check)
    }

    /// The node daemons serving this test's socket.
    func daemons() -> [Int32] { nodeDaemons(socket: node.sub("shim.sock")) }

    /// Running containerd-shim-kangaroo-v2 processes: `start` exits once it
    /// has handed containerd the daemon's address, so there are none.
    func shimProcesses() -> Int {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap { Int32($0) } ?? []
        return pids.filter { pid in
            ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) ?? "").hasSuffix("/containerd-shim-kangaroo-v2")
        }.count
    }

    /// The STATUS column of `ctr task ls` for a task.
    func status(_ id: String) throws -> String {
        let line = try ctr(["task", "ls"]).stdout.split(separator: "\n").first { $0.hasPrefix(id + " ") }
        return line?.split(separator: " ", omittingEmptySubsequences: true).last.map(String.init) ?? ""
    }

    func mountsBelow(_ dir: String) -> Int {
        (procText("/proc/self/mountinfo") ?? "").split(separator: "\n")
            .filter { $0.contains(" " + dir + "/") }.count
    }

    @Test("ctr run --rm: the container's output and exit code, as under runc's shim")
    func runRemovesAndReportsExitCode() throws {
        let probe = "id; echo $PATH; ls /; cat /proc/self/cgroup | wc -l; exit 3"
        let k = try ctr(["run", "--rm"] + kangaroo + [image, "k-rm", "sh", "-c", probe])
        let r = try ctr(["run", "--rm", "--runtime", "io.containerd.runc.v2", image, "r-rm", "sh", "-c", probe])
        #expect(k.status == 3, "\(k.output)")
        #expect(r.status == 3, "\(r.output)")
        #expect(k.stdout == r.stdout)
        #expect(k.stdout.contains("uid=0(root)"))
        #expect(try ctr(["task", "ls", "-q"]).stdout.isEmpty)
        #expect(mountsBelow(containerd.dir.path) == 0)
    }

    @Test("one daemon serves every task: run -d, exec, ps, pause, resume, metrics, kill, delete")
    func oneDaemonManyTasks() throws {
        for i in 1...3 {
            try ctr(["run", "-d"] + kangaroo + [image, "k-d\(i)", "sleep", "1000"], check: true)
        }
        #expect(daemons().count == 1)
        // No process per task: `start` and containerd's `delete` of an
        // earlier task's connection are short-lived, none stays.
        for _ in 0..<30 where shimProcesses() > 0 { usleep(100_000) }
        #expect(shimProcesses() == 0)
        let ls = try ctr(["task", "ls"]).stdout
        #expect(ls.split(separator: "\n").filter { $0.contains("RUNNING") }.count == 3, "\(ls)")
        let exec = try ctr(["task", "exec", "--exec-id", "e1", "k-d1", "sh", "-c", "echo in-exec; exit 5"])
        #expect(exec.status == 5)
        #expect(exec.stdout == "in-exec\n")
        let ps = try ctr(["task", "ps", "k-d1"]).stdout
        #expect(ps.split(separator: "\n").count >= 2, "\(ps)")
        try ctr(["task", "pause", "k-d1"], check: true)
        #expect(try status("k-d1") == "PAUSED")
        try ctr(["task", "resume", "k-d1"], check: true)
        #expect(try status("k-d1") == "RUNNING")
        let metrics = try ctr(["task", "metrics", "k-d1"]).stdout
        #expect(metrics.contains("pids.current") && metrics.contains("memory.usage_in_bytes"), "\(metrics)")
        try ctr(["task", "kill", "-s", "KILL", "k-d1"], check: true)
        for _ in 0..<50 where try status("k-d1") != "STOPPED" { usleep(100_000) }
        #expect(try status("k-d1") == "STOPPED")
        try ctr(["task", "delete", "k-d1"], check: true)
        try ctr(["task", "delete", "-f", "k-d2"], check: true)
        try ctr(["task", "delete", "-f", "k-d3"], check: true)
        try ctr(["containers", "rm", "k-d1", "k-d2", "k-d3"], check: true)
        #expect(try ctr(["task", "ls", "-q"]).stdout.isEmpty)
        #expect(mountsBelow(containerd.dir.path) == 0)
        // The daemon outlives its tasks and keeps no container state.
        #expect(daemons().count == 1)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: node.sub("state/runtime/default"))) ?? []
        #expect(left.isEmpty, "\(left)")
        // SIGTERM to its supervisor stops both (after an exec, whose thread
        // joined a pid namespace); the next task's shim start brings up a
        // new one.
        let supervisors = nodeSupervisors(socket: node.sub("shim.sock"))
        #expect(supervisors.count == 1)
        for pid in supervisors { kill(pid, SIGTERM) }
        for _ in 0..<50 where !daemons().isEmpty || !nodeSupervisors(socket: node.sub("shim.sock")).isEmpty { usleep(100_000) }
        #expect(daemons().isEmpty && nodeSupervisors(socket: node.sub("shim.sock")).isEmpty, "the node daemon ignored SIGTERM")
        #expect(!FileManager.default.fileExists(atPath: node.sub("shim.sock")))
        let again = try ctr(["run", "--rm"] + kangaroo + [image, "k-again", "echo", "again"])
        #expect(again.stdout == "again\n", "\(again.output)")
        #expect(daemons().count == 1)
    }

    @Test("kangaroo node status and the daemon's metrics show its tasks; a paused and a stopped task as such")
    func statusAndMetrics() throws {
        for i in 1...3 { try ctr(["run", "-d"] + kangaroo + [image, "k-st\(i)", "sleep", "1000"], check: true) }
        try ctr(["task", "pause", "k-st2"], check: true)
        try ctr(["task", "kill", "-s", "KILL", "k-st3"], check: true)
        for _ in 0..<50 where try status("k-st3") != "STOPPED" { usleep(100_000) }
        let status = ["node", "status", "--shim-socket", node.sub("shim.sock")]
        let json = try run(TestEnv.kangaroo, status + ["--json"], check: true).stdout
        let s = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let tasks = try #require(s["tasks"] as? [[String: Any]])
        var states: [String: String] = [:]
        for t in tasks { if let id = t["id"] as? String { states[id] = t["state"] as? String } }
        #expect(states["k-st1"] == "running" && states["k-st2"] == "paused" && states["k-st3"]?.hasPrefix("stopped (137)") == true, "\(states)")
        #expect((s["pid"] as? Int).map(Int32.init) == daemons().first)
        let memory = try #require(s["memory"] as? [String: Any])
        #expect((memory["daemonPSSKiB"] as? Int ?? 0) > 0)
        let requests = try #require(s["requests"] as? [[String: Any]])
        let pause = requests.first { $0["service"] as? String == "containerd.task.v2.Task" && $0["method"] as? String == "Pause" }
        #expect((pause?["count"] as? Int ?? 0) >= 1 && (pause?["seconds"] as? Double ?? 0) > 0, "\(requests)")
        let table = try run(TestEnv.kangaroo, status, check: true).stdout
        #expect(table.contains("TASKS (3)") && table.contains("k-st2") && table.contains("paused"), "\(table)")
        #expect(table.contains("containerd.task.v2.Task/Pause"), "\(table)")
        let address = try #require(s["metrics"] as? String)
        let metrics = try run("curl", ["-sf", "http://\(address)/metrics"], check: true).stdout
        #expect(metrics.contains("kangaroo_node_tasks{state=\"running\"} 1"), "\(metrics)")
        #expect(metrics.contains("kangaroo_node_tasks{state=\"paused\"} 1"), "\(metrics)")
        #expect(metrics.contains("kangaroo_node_tasks{state=\"stopped\"} 1"), "\(metrics)")
        #expect(metrics.contains("kangaroo_node_ttrpc_requests_total{service=\"containerd.task.v2.Task\",method=\"Create\"}"), "\(metrics)")
        try ctr(["task", "resume", "k-st2"], check: true)
        for i in 1...3 {
            try ctr(["task", "delete", "--force", "k-st\(i)"])
            try ctr(["containers", "rm", "k-st\(i)"], check: true)
        }
        let after = try run(TestEnv.kangaroo, status + ["--json"], check: true).stdout
        #expect(after.contains("\"tasks\":[]"), "\(after)")
        let missing = try run(TestEnv.kangaroo, ["node", "status", "--shim-socket", node.sub("no-such.sock")])
        #expect(missing.status != 0 && missing.stderr.contains("no node daemon answers on"), "\(missing.output)")
    }

    @Test("task events reach containerd in order: create, start, exit, delete")
    func eventsInOrder() throws {
        let events = try TestContainerd.EventLog(containerd)
        defer { events.stop() }
        try ctr(["run", "--rm"] + kangaroo + [image, "k-ev", "true"], check: true)
        var topics: [String] = []
        for _ in 0..<30 {
            let text = events.text
            topics = text.split(separator: "\n").filter { $0.contains("k-ev") }
                .compactMap { line in line.split(separator: " ").first { $0.hasPrefix("/tasks/") }.map(String.init) }
            if topics.contains("/tasks/delete") { break }
            usleep(100_000)
        }
        #expect(topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], "\(topics)")
    }

    @Test("a command that does not exist fails with its name and leaves nothing")
    func badCommandFailsClearly() throws {
        let r = try ctr(["run", "--rm"] + kangaroo + [image, "k-bad", "/no/such/program"])
        #expect(r.status != 0)
        #expect(r.output.contains("/no/such/program"), "\(r.output)")
        _ = try? ctr(["containers", "rm", "k-bad"])
        #expect(try ctr(["task", "ls", "-q"]).stdout.isEmpty)
        #expect(mountsBelow(containerd.dir.path) == 0)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: node.sub("state/runtime/default"))) ?? []
        #expect(left.isEmpty, "\(left)")
    }

    /// Runs ctr ARGS on a pseudo-terminal of 30 rows and 100 columns,
    /// types `input` once it runs, and returns what the terminal showed and
    /// ctr's exit status.
    func onTerminal(_ args: [String], input: String) throws -> CommandResult {
        try runOnTerminal(["/usr/bin/ctr"] + containerd.ctr + args, input: input)
    }

    @Test("ctr run -t and ctr task exec -t: a terminal sized by ctr, input typed and output shown, as under runc's shim")
    func terminals() throws {
        let input = "stty size; tty; echo $((6*7)); exit 4\n"
        let k = try onTerminal(["run", "--rm", "-t"] + kangaroo + [image, "k-tty", "sh"], input: input)
        let r = try onTerminal(["run", "--rm", "-t", "--runtime", "io.containerd.runc.v2", image, "r-tty", "sh"], input: input)
        for result in [k, r] {
            #expect(result.status == 4, "\(result.output)")
            #expect(result.stdout.contains("30 100"), "\(result.output)")
            #expect(result.stdout.contains("/dev/pts/0"), "\(result.output)")
            #expect(result.stdout.contains("42"), "\(result.output)")
        }
        // An exec with its own terminal in a task without one.
        try ctr(["run", "-d"] + kangaroo + [image, "k-tty-d", "sleep", "1000"], check: true)
        let e = try onTerminal(["task", "exec", "-t", "--exec-id", "t1", "k-tty-d", "sh"], input: "stty size; tty; exit 6\n")
        #expect(e.status == 6, "\(e.output)")
        #expect(e.stdout.contains("30 100"), "\(e.output)")
        #expect(e.stdout.contains("/dev/pts/"), "\(e.output)")
        try ctr(["task", "kill", "-s", "KILL", "k-tty-d"], check: true)
        for _ in 0..<50 where try status("k-tty-d") != "STOPPED" { usleep(100_000) }
        try ctr(["task", "delete", "k-tty-d"], check: true)
        try ctr(["containers", "rm", "k-tty-d"], check: true)
        #expect(try ctr(["task", "ls", "-q"]).stdout.isEmpty)
        #expect(mountsBelow(containerd.dir.path) == 0)
        let sockets = ((try? FileManager.default.contentsOfDirectory(atPath: node.sub("state"))) ?? []).filter { $0.hasPrefix("console-") }
        #expect(sockets.isEmpty, "\(sockets)")
        for pid in daemons() {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
            let ptys = fds.filter { ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) ?? "") == "/dev/ptmx" }
            #expect(ptys.isEmpty, "the daemon still holds \(ptys.count) pty masters")
        }
    }
}
