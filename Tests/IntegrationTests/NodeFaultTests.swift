import Foundation
import KangarooTestSupport
import Testing

/// Faults with containers running on the node daemon: containerd killed
/// and restarted, a tampered chunk in the registry.
@Suite("node faults", .serialized, .enabled(if: TestEnv.enabled && FileManager.default.fileExists(atPath: "/usr/bin/containerd"),
                                            "needs root, KANGAROO_INTEGRATION=1 and containerd"))
final class NodeFaultTests {
    let node: TempDir
    let containerd: TestContainerd
    let registry: TestRegistry
    let reference: String
    let store: TempDir
    let kangaroo = ["--runtime", "io.containerd.kangaroo.v2", "--snapshotter", "kangaroo"]

    init() throws {
        node = try TempDir("fault-node")
        containerd = try TestContainerd.forKangaroo(node: node, snapshotter: true)
        registry = try TestRegistry()
        reference = "\(registry.host)/fault/sample:kangaroo"
        store = try TempDir("fault-store")
        try run(TestEnv.kangaroo, ["image", "convert", "--quiet", "--store", store.path, "oci:\(TestEnv.images)/sample:latest", reference],
                check: true)
        try run("/usr/bin/ctr-remote", containerd.ctr + ["image", "rpull", "--plain-http", "--snapshotter", "kangaroo", reference], check: true)
    }

    deinit { tearDownNode(node, containerd: containerd) }

    var nodeLog: String { String(((try? String(contentsOfFile: node.sub("node.log"), encoding: .utf8)) ?? "").suffix(3000)) }

    /// The lazy mount servers' logs (the first server's and the takeovers'),
    /// their last lines: what a failed read says about itself.
    var mountLogs: String {
        var paths = ((try? FileManager.default.contentsOfDirectory(atPath: node.sub("run"))) ?? [])
            .filter { $0.hasSuffix(".log") }.map { node.sub("run/" + $0) }
        let images = node.sub("root/snapshotter/images")
        paths += ((try? FileManager.default.contentsOfDirectory(atPath: images)) ?? []).map { images + "/" + $0 + "/mount.log" }
        return paths.compactMap { path in
            (try? String(contentsOfFile: path, encoding: .utf8)).map { "== \(path)\n" + String($0.suffix(2000)) }
        }.joined(separator: "\n")
    }

    @discardableResult
    func ctr(_ args: [String], check: Bool = false) throws -> CommandResult {
        try run("/usr/bin/ctr", containerd.ctr + args, check: check)
    }

    func statuses() throws -> [String: String] {
        var out: [String: String] = [:]
        for line in try ctr(["task", "ls"]).stdout.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            if f.count >= 3 { out[String(f[0])] = String(f[2]) }
        }
        return out
    }

    @Test("kill -9 and restart of containerd with 10 tasks running: every task is still managed (exec, kill, exit status, delete)")
    func containerdCrash() throws {
        let ids = (0..<10).map { "fault-\($0)" }
        for id in ids { try ctr(["run", "-d"] + kangaroo + [reference, id, "sleep", "1000"], check: true) }
        #expect(try statuses().values.filter { $0 == "RUNNING" }.count == 10)
        try containerd.crashAndRestart()
        // containerd reloads each task's shim address and reconnects.
        var after: [String: String] = [:]
        for _ in 0..<50 {
            after = try statuses()
            if after.count == 10 { break }
            usleep(100_000)
        }
        #expect(after.count == 10 && after.values.allSatisfy { $0 == "RUNNING" }, "\(after)\n\(containerd.log.suffix(2000))")
        #expect(nodeDaemons(socket: node.sub("shim.sock")).count == 1, "the node daemon was not restarted")
        for id in ids.prefix(3) {
            let r = try ctr(["task", "exec", "--exec-id", "x", id, "sh", "-c", "cat /etc/hostname >/dev/null; echo alive"])
            #expect(r.status == 0 && r.stdout == "alive\n", "\(id): \(r.output)\n\(nodeLog)")
        }
        // An exit after the restart reaches containerd with its status.
        try ctr(["task", "kill", "-s", "SIGKILL", ids[0]], check: true)
        var status = ""
        for _ in 0..<50 where status != "STOPPED" {
            status = try statuses()[ids[0]] ?? ""
            usleep(100_000)
        }
        #expect(status == "STOPPED")
        let deleted = try ctr(["task", "delete", ids[0]])
        #expect(deleted.output.contains("137"), "exit status of SIGKILL: \(deleted.output)")
        for id in ids {
            try ctr(["task", "delete", "--force", id])
            try ctr(["containers", "delete", id], check: true)
        }
        #expect(try ctr(["task", "ls", "-q"]).stdout.isEmpty)
        try removeImage()
        for _ in 0..<50 where mountCount() > 0 { usleep(100_000) }
        #expect(mountCount() == 0, "\(nodeLog)")
    }

    @Test("kill -9 of the node daemon with 10 tasks running: containerd still manages every task (exec, kill, delete); exits meanwhile are reported; a waiting ctr gets its exit")
    func daemonCrash() throws {
        let ids = (0..<10).map { "dk-\($0)" }
        for id in ids { try ctr(["run", "-d"] + kangaroo + [reference, id, "sleep", "1000"], check: true) }
        var pids: [String: Int32] = [:]
        for line in try ctr(["task", "ls"]).stdout.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            if f.count >= 3, let pid = Int32(f[1]) { pids[String(f[0])] = pid }
        }
        #expect(pids.count == 10)
        // A client waiting on an exec across the crash.
        let waiting = Process()
        waiting.executableURL = URL(fileURLWithPath: "/usr/bin/ctr")
        waiting.arguments = containerd.ctr + ["task", "exec", "--exec-id", "w", ids[1], "sh", "-c", "sleep 3; echo waited; exit 3"]
        let out = Pipe()
        waiting.standardOutput = out
        waiting.standardError = out
        try waiting.run()
        usleep(800_000)
        let old = nodeDaemons(socket: node.sub("shim.sock"))
        #expect(old.count == 1)
        for pid in old { kill(pid, SIGKILL) }
        // A task that dies while the daemon is down.
        if let pid = pids[ids[2]] { kill(pid, SIGKILL) }
        var new: [Int32] = []
        for _ in 0..<100 {
            new = nodeDaemons(socket: node.sub("shim.sock")).filter { !old.contains($0) }
            if !new.isEmpty { break }
            usleep(50_000)
        }
        #expect(new.count == 1, "the supervisor started a new daemon\n\(nodeLog)")
        let statusJSON = try run(TestEnv.kangaroo, ["node", "status", "--json", "--shim-socket", node.sub("shim.sock")]).stdout
        let info = try JSONSerialization.jsonObject(with: Data(statusJSON.utf8)) as? [String: Any]
        #expect(info?["restarts"] as? Int == 1 && (info?["supervisorPID"] as? Int).map(Int32.init) == nodeSupervisors(socket: node.sub("shim.sock")).first,
                "\(statusJSON)")
        waiting.waitUntilExit()
        let waited = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(waiting.terminationStatus == 3 && waited.contains("waited"), "\(waiting.terminationStatus): \(waited)\n\(nodeLog)")
        var after: [String: String] = [:]
        for _ in 0..<50 {
            after = try statuses()
            if after[ids[2]] == "STOPPED" { break }
            usleep(100_000)
        }
        #expect(after.count == 10, "\(after)")
        #expect(after[ids[2]] == "STOPPED", "the exit while the daemon was down is reported: \(after)")
        #expect(ids.filter { $0 != ids[2] }.allSatisfy { after[$0] == "RUNNING" }, "\(after)")
        for id in ids.suffix(3) {
            let r = try ctr(["task", "exec", "--exec-id", "x", id, "sh", "-c", "cat /etc/hostname >/dev/null; echo alive"])
            #expect(r.status == 0 && r.stdout == "alive\n", "\(id): \(r.output)\n\(nodeLog)")
        }
        let deleted = try ctr(["task", "delete", ids[2]])
        #expect(deleted.output.contains("137"), "exit status of the SIGKILL while down: \(deleted.output)")
        // An exit after the takeover (the supervisor reaps it, the new
        // daemon reports it).
        try ctr(["task", "kill", "-s", "SIGKILL", ids[3]], check: true)
        var status = ""
        for _ in 0..<50 where status != "STOPPED" {
            status = try statuses()[ids[3]] ?? ""
            usleep(100_000)
        }
        #expect(status == "STOPPED", "\(nodeLog)")
        let deleted3 = try ctr(["task", "delete", ids[3]])
        #expect(deleted3.output.contains("137"), "\(deleted3.output)")
        // New tasks are the new daemon's.
        let fresh = try ctr(["run", "--rm"] + kangaroo + [reference, "dk-new", "sh", "-c", "echo fresh"])
        #expect(fresh.stdout == "fresh\n", "\(fresh.output)")
        for id in ids {
            try ctr(["task", "delete", "--force", id])
            var removed = try ctr(["containers", "delete", id])
            // The snapshotter came back with the daemon: containerd's proxy
            // connection may still be backing off.
            for _ in 0..<40 where removed.status != 0 && removed.output.contains("unavailable") {
                usleep(200_000)
                removed = try ctr(["containers", "delete", id])
            }
            #expect(removed.status == 0, "\(removed.output)")
        }
        #expect(try ctr(["task", "ls", "-q"]).stdout.isEmpty)
        try removeImage()
        for _ in 0..<50 where mountCount() > 0 { usleep(100_000) }
        #expect(mountCount() == 0, "\(nodeLog)")
        let journal = (try? FileManager.default.contentsOfDirectory(atPath: node.sub("state/inflight"))) ?? []
        #expect(journal.isEmpty, "\(journal)")
        let records = (try? FileManager.default.contentsOfDirectory(atPath: node.sub("state/tasks/default"))) ?? []
        #expect(records.isEmpty, "\(records)")
    }

    /// Removes the Kangaroo image: its lazy mount goes with it (retried
    /// while containerd's proxy connection to a restarted snapshotter backs
    /// off).
    func removeImage() throws {
        var r = try ctr(["images", "rm", "--sync", reference])
        for _ in 0..<40 where r.status != 0 && r.output.contains("unavailable") {
            usleep(200_000)
            r = try ctr(["images", "rm", "--sync", reference])
        }
        #expect(r.status == 0, "\(r.output)")
    }

    /// Mounts below the node directory (container rootfs, lazy mounts).
    func mountCount() -> Int {
        (procText("/proc/self/mountinfo") ?? "").split(separator: "\n")
            .filter { $0.contains(" " + node.path + "/") }.count
    }

    /// The lazy mount servers of this node: pid and state file (from
    /// KANGAROO_RUN_DIR).
    func mountServers() -> [(pid: Int32, descriptor: Int?)] {
        let dir = node.sub("run")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".json") && !$0.hasSuffix(".stats.json") }
        return names.compactMap { name in
            guard let data = FileManager.default.contents(atPath: dir + "/" + name),
                  let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let pid = json["pid"] as? Int, pid > 0, kill(Int32(pid), 0) == 0 else { return nil }
            return (Int32(pid), json["fuseDescriptor"] as? Int)
        }
    }

    @Test("kill -9 of the node daemon under `ctr run -t`: the container keeps its terminal; input typed after the crash reaches it and its output arrives")
    func terminalAcrossDaemonCrash() throws {
        try ctr(["run", "--rm"] + kangaroo + [reference, "tty-warm", "true"], check: true)  // the daemon up first
        let supervisors = nodeSupervisors(socket: node.sub("shim.sock"))
        let worker = try #require(nodeDaemons(socket: node.sub("shim.sock")).first { pid in
            let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
            return supervisors.contains { status.contains("PPid:\t\($0)\n") }
        })
        // On a pty (ctr -t needs one): the daemon is killed once the
        // container is up (containerd's State after the Start is then on
        // its way: a request the daemon had read and not journaled was lost,
        // and ctr waited forever), and a line typed 2 s later.
        let script = "echo ready-1; read line; echo got-$line; for i in 1 2 3; do echo tick-$i; sleep 0.2; done; exit 4"
        let r = try runOnTerminal(["/usr/bin/ctr"] + containerd.ctr + ["run", "--rm", "-t"] + kangaroo + [reference, "tty-crash", "sh", "-c", script],
                                  input: "abc\n", typeAfter: 2.0, marker: "ready-1", kill: worker)
        #expect(r.stdout.contains("got-abc") && r.stdout.contains("tick-3"), "\(r.output)\n\(nodeLog)")
        #expect(r.status == 4, "\(r.output)\n\(nodeLog)")
        #expect(kill(worker, 0) != 0, "the daemon was not killed")
        #expect(nodeLog.contains("terminal taken over"), "\(nodeLog)")
        // Nothing of the terminal is left with the daemon or the supervisor.
        for pid in nodeDaemons(socket: node.sub("shim.sock")) + supervisors {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
            let ptys = fds.filter { ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) ?? "") == "/dev/ptmx" }
            #expect(ptys.isEmpty, "process \(pid) still holds \(ptys.count) pty masters")
        }
    }

    @Test("kill -9 of the supervisor: the daemon serves on, unsupervised, and says so; its tasks stay managed")
    func supervisorKilled() throws {
        try ctr(["run", "-d"] + kangaroo + [reference, "sv-1", "sleep", "1000"], check: true)
        let supervisors = nodeSupervisors(socket: node.sub("shim.sock"))
        // The supervisor's worker (a container's init is briefly a clone
        // of the daemon, with its command line).
        func parent(_ pid: Int32) -> Int32? {
            (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8))?.split(separator: "\n")
                .first { $0.hasPrefix("PPid:") }.flatMap { Int32($0.dropFirst(5).trimmingCharacters(in: .whitespaces)) }
        }
        let daemons = nodeDaemons(socket: node.sub("shim.sock")).filter { supervisors.contains(parent($0) ?? 0) }
        #expect(supervisors.count == 1 && daemons.count == 1)
        for pid in supervisors { kill(pid, SIGKILL) }
        var logged = false
        for _ in 0..<50 where !logged {
            logged = nodeLog.contains("the supervisor is gone")
            if !logged { usleep(100_000) }
        }
        #expect(logged, "\(nodeLog)")
        #expect(daemons.allSatisfy { kill($0, 0) == 0 } && nodeDaemons(socket: node.sub("shim.sock")).contains(daemons.first ?? -1),
                "the daemon died with its supervisor")
        let statusJSON = try run(TestEnv.kangaroo, ["node", "status", "--json", "--shim-socket", node.sub("shim.sock")], check: true).stdout
        let info = try JSONSerialization.jsonObject(with: Data(statusJSON.utf8)) as? [String: Any]
        #expect(info?["supervisorPID"] == nil && (info?["pid"] as? Int).map(Int32.init) == daemons.first, "\(statusJSON)")
        let exec = try ctr(["task", "exec", "--exec-id", "x", "sv-1", "sh", "-c", "echo alive"])
        #expect(exec.status == 0 && exec.stdout == "alive\n", "\(exec.output)\n\(nodeLog)")
        let fresh = try ctr(["run", "--rm"] + kangaroo + [reference, "sv-2", "echo", "new"])
        #expect(fresh.status == 0 && fresh.stdout == "new\n", "\(fresh.output)\n\(nodeLog)")
        try ctr(["task", "kill", "-s", "SIGKILL", "sv-1"], check: true)
        for _ in 0..<50 where try statuses()["sv-1"] != "STOPPED" { usleep(100_000) }
        let deleted = try ctr(["task", "delete", "sv-1"])
        #expect(deleted.output.contains("137"), "\(deleted.output)")
        try ctr(["containers", "rm", "sv-1"], check: true)
    }

    @Test("kill -9 of a lazy mount's FUSE server, twice, while containers read a cold image: every read completes with the bytes runc sees")
    func fuseServerKilled() throws {
        let tar = containerd.dir.sub("sample.tar")
        try run("/bin/tar", ["-C", TestEnv.images + "/sample", "-cf", tar, "."], check: true)
        try ctr(["images", "import", "--index-name", "kangaroo.test/sample:latest", tar], check: true)
        // A file whose read fails is read once more, and counted: the kernel
        // fails with EIO the few requests being copied to or from a server
        // at the instant SIGKILL hits it (fuse_dev_do_read/do_write end a
        // request whose copy fails; a task with SIGKILL pending can copy no
        // more). Every other request waits for the next server.
        let read = "find / -xdev -type f 2>/dev/null | grep -v '^/proc' | sort | "
            + "while read -r f; do md5sum \"$f\" 2>/dev/null || { echo >> /tmp/retried; md5sum \"$f\"; }; done | md5sum; "
            + "echo retried=$(cat /tmp/retried 2>/dev/null | wc -l)"
        let oracle = try ctr(["run", "--rm", "--runtime", "io.containerd.runc.v2", "kangaroo.test/sample:latest", "fk-runc", "sh", "-c", read],
                             check: true).stdout
        #expect(oracle.hasSuffix("retried=0\n"), "\(oracle)")
        func digest(_ text: String) -> String { String(text.split(separator: "\n").first ?? "") }
        let ids = ["fk-1", "fk-2"]
        for id in ids { try ctr(["run", "-d"] + kangaroo + [reference, id, "sleep", "1000"], check: true) }
        let first = mountServers()
        #expect(first.count == 1 && first.first?.descriptor != nil, "one failover mount server: \(first)\n\(nodeLog)")
        // Readers in both containers on a cold cache; the server is killed
        // while they run, and again once its successor serves.
        let readers = ids.map { id in
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/ctr")
            p.arguments = containerd.ctr + ["task", "exec", "--exec-id", "read-\(id)", id, "sh", "-c", read]
            let out = Pipe()
            p.standardOutput = out
            p.standardError = out
            return (p, out)
        }
        for (p, _) in readers { try p.run() }
        usleep(150_000)
        var killed: Set<Int32> = []
        for round in 0..<2 {
            guard let server = mountServers().first(where: { !killed.contains($0.pid) }) else {
                Issue.record("round \(round): no live mount server\n\(nodeLog)")
                break
            }
            kill(server.pid, SIGKILL)
            killed.insert(server.pid)
            var next: Int32?
            // The successor counts once the keeper has it serving (node
            // status names it): a server killed before that is a failed
            // takeover the keeper retries, not a second takeover.
            for _ in 0..<200 {
                if let n = mountServers().first(where: { !killed.contains($0.pid) }),
                   let status = try? run(TestEnv.kangaroo, ["node", "status", "--json", "--shim-socket", node.sub("shim.sock")]).stdout,
                   let mounts = (try? JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])?["mounts"] as? [[String: Any]],
                   mounts.first?["serverPID"] as? Int == Int(n.pid) {
                    next = n.pid
                    break
                }
                usleep(50_000)
            }
            #expect(next != nil, "round \(round): the keeper started a new server\n\(nodeLog)")
        }
        for (p, out) in readers {
            p.waitUntilExit()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let retried = Int(text.split(separator: "\n").last?.split(separator: "=").last ?? "") ?? -1
            #expect(p.terminationStatus == 0 && digest(text) == digest(oracle), "\(text) vs runc \(oracle)\n\(nodeLog)\n\(mountLogs)")
            // At most the requests in copy at each kill (a few per kill).
            #expect(retried >= 0 && retried <= 24, "\(text)\n\(mountLogs)")
        }
        // kangaroo node status counts the takeovers.
        let status = try run(TestEnv.kangaroo, ["node", "status", "--json", "--shim-socket", node.sub("shim.sock")], check: true).stdout
        let json = try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any]
        let kept = json?["mounts"] as? [[String: Any]] ?? []
        #expect(kept.count == 1 && kept.first?["takeovers"] as? Int == 2 && kept.first?["mode"] as? String == "fuse", "\(status)")
        // Served by the successor: a new container, the same bytes.
        let again = try ctr(["run", "--rm"] + kangaroo + [reference, "fk-3", "sh", "-c", read])
        #expect(again.status == 0 && again.stdout == oracle, "\(again.output)")  // no kill: no retry
        for id in ids {
            try ctr(["task", "kill", "-s", "KILL", id])
            for _ in 0..<50 where (try? statuses()[id]) != "STOPPED" { usleep(100_000) }
            try ctr(["task", "delete", id], check: true)
            try ctr(["containers", "delete", id], check: true)
        }
        // The image gone: unmounted, the server gone, not replaced.
        try removeImage()
        for _ in 0..<100 where !mountServers().isEmpty { usleep(100_000) }
        #expect(mountServers().isEmpty, "\(mountServers())\n\(nodeLog)")
        let mounts = (procText("/proc/self/mountinfo") ?? "").split(separator: "\n").filter { $0.contains(node.sub("root/snapshotter/images")) }
        #expect(mounts.isEmpty, "\(mounts)")
    }

    @Test("a tampered chunk in the registry gives EIO inside the container, never wrong bytes")
    func tamperedChunk() throws {
        // The biggest file of the image, and the blob that holds its data.
        let info = try run(TestEnv.kangaroo, ["image", "inspect", "--json", "--store", store.path, reference], check: true).stdout
        let json = try #require(try JSONSerialization.jsonObject(with: Data(info.utf8)) as? [String: Any])
        let blobs = try #require(json["blobs"] as? [[String: Any]])
        let digest = try #require(blobs.first?["digest"] as? String)
        let size = try #require(blobs.first?["compressedSize"] as? Int)
        let hex = String(digest.dropFirst("sha256:".count))
        let data = registry.dir.sub("data/docker/registry/v2/blobs/sha256/\(hex.prefix(2))/\(hex)/data")
        // Flip bytes all over the blob: every chunk is bad.
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: data))
        for offset in stride(from: 0, to: size, by: 4096) {
            handle.seek(toFileOffset: UInt64(offset))
            let byte = handle.readData(ofLength: 1)
            handle.seek(toFileOffset: UInt64(offset))
            handle.write(Data([~(byte.first ?? 0)]))
        }
        try handle.close()
        let r = try ctr(["run", "--rm"] + kangaroo + [reference, "tampered", "sh", "-c",
                                                       "find / -xdev -type f -size +4k 2>/dev/null | head -20 | xargs cat >/dev/null"])
        #expect(r.status != 0)
        #expect(r.output.lowercased().contains("input/output error"), "\(r.output)")
    }
}

/// The snapshotter as a daemon of its own (`kangaroo node --shim-socket
/// none`), killed and restarted while containers run on a lazy image.
@Suite("snapshotter restart", .serialized, .enabled(if: TestEnv.enabled && FileManager.default.fileExists(atPath: "/usr/bin/containerd"),
                                                    "needs root, KANGAROO_INTEGRATION=1 and containerd"))
final class SnapshotterRestartTests {
    let node: TempDir
    let containerd: TestContainerd
    let registry: TestRegistry
    let reference: String
    let kangaroo = ["--runtime", "io.containerd.kangaroo.v2", "--snapshotter", "kangaroo"]

    init() throws {
        node = try TempDir("snaprestart-node")
        containerd = try TestContainerd.forKangaroo(node: node, snapshotter: true, separateSnapshotter: true)
        registry = try TestRegistry()
        reference = "\(registry.host)/restart/sample:kangaroo"
        let store = try TempDir("snaprestart-store")
        try run(TestEnv.kangaroo, ["image", "convert", "--quiet", "--store", store.path, "oci:\(TestEnv.images)/sample:latest", reference],
                check: true)
        try run("/usr/bin/ctr-remote", containerd.ctr + ["image", "rpull", "--plain-http", "--snapshotter", "kangaroo", reference], check: true)
    }

    deinit { tearDownNode(node, containerd: containerd, sockets: [node.sub("shim.sock"), node.sub("snapshotter.sock")]) }

    func snapshotters() -> [Int32] { nodeDaemons(socket: node.sub("snapshotter.sock")) }

    @discardableResult
    func ctr(_ args: [String], check: Bool = false) throws -> CommandResult {
        try run("/usr/bin/ctr", containerd.ctr + args, check: check)
    }

    func lazyMounts() -> Int {
        (procText("/proc/self/mountinfo") ?? "").split(separator: "\n")
            .filter { $0.contains(" " + node.sub("root/snapshotter/images") + "/") }.count
    }

    var log: String { String(((try? String(contentsOfFile: node.sub("snapshotter.log"), encoding: .utf8)) ?? "").suffix(3000)) }

    @Test("kill -9 of the snapshotter with 3 tasks running: they keep reading; restarted, it serves new containers and unmounts with the image")
    func snapshotterCrash() throws {
        let ids = ["sr-1", "sr-2", "sr-3"]
        for id in ids { try ctr(["run", "-d"] + kangaroo + [reference, id, "sleep", "1000"], check: true) }
        #expect(lazyMounts() == 1)
        let read = "find /bin /etc -type f | sort | xargs md5sum | md5sum"
        let before = try ctr(["task", "exec", "--exec-id", "r0", ids[0], "sh", "-c", read], check: true).stdout
        let pids = snapshotters()
        #expect(pids.count == 1)
        for pid in pids { kill(pid, SIGKILL) }
        for _ in 0..<50 where !snapshotters().isEmpty { usleep(50_000) }
        // The lazy mount is its own process: containers read on.
        let during = try ctr(["task", "exec", "--exec-id", "r1", ids[1], "sh", "-c", read])
        #expect(during.status == 0 && during.stdout == before, "\(during.output)")
        try TestContainerd.startSnapshotterDaemon(node)
        // containerd's proxy connection backs off up to 3 s after the refusals
        // ("connection refused" or "connection closed": unavailable).
        var started = try ctr(["run", "-d"] + kangaroo + [reference, "sr-4", "sleep", "1000"])
        for _ in 0..<40 where started.status != 0 && started.output.contains("unavailable") {
            usleep(200_000)
            started = try ctr(["run", "-d"] + kangaroo + [reference, "sr-4", "sleep", "1000"])
        }
        #expect(started.status == 0, "\(started.output)")
        #expect(lazyMounts() == 1, "the restarted snapshotter reuses the image's mount")
        let after = try ctr(["task", "exec", "--exec-id", "r2", "sr-4", "sh", "-c", read])
        #expect(after.status == 0 && after.stdout == before, "\(after.output)\n\(log)")
        for id in ids + ["sr-4"] {
            try ctr(["task", "delete", "--force", id])
            try ctr(["containers", "delete", id], check: true)
        }
        let ls = try ctr(["snapshots", "--snapshotter", "kangaroo", "ls"]).stdout
        #expect(!ls.contains("Active"), "\(ls)")
        // The mount stays with the image and goes with it.
        #expect(lazyMounts() == 1, "\(log)")
        try ctr(["images", "rm", "--sync", reference], check: true)
        for _ in 0..<50 where lazyMounts() > 0 { usleep(100_000) }
        #expect(lazyMounts() == 0, "\(log)")
    }
}
