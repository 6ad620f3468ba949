import Foundation
import KangarooTestSupport
import Testing

/// The node's sandbox disks (`kangaroo disk`, `kangaroo run --disk-size`):
/// a node file of its own per test under /tmp, loop devices over regions
/// of it, all detached at the end.
final class DiskFixture: @unchecked Sendable {
    let run: RunFixture
    var env: [String: String]
    var nodeFile: String { run.tmp.sub("disks/node.img") }

    init(nodeSize: String = "1G", diskSize: String = "64M", pool: Int = 2) throws {
        run = try RunFixture()
        env = run.env.merging(["KANGAROO_DISK_FILE": run.tmp.sub("disks/node.img"), "KANGAROO_DISK_STATE": run.tmp.sub("disks/state"),
                               "KANGAROO_DISK_NODE_SIZE": nodeSize, "KANGAROO_DISK_SIZE": diskSize, "KANGAROO_DISK_POOL": "\(pool)"]) { _, b in b }
        try FileManager.default.createDirectory(atPath: run.tmp.sub("disks"), withIntermediateDirectories: true)
    }

    @discardableResult
    func k(_ args: [String], check: Bool = true) throws -> CommandResult {
        try KangarooTestSupport.run(TestEnv.kangaroo, args, env: env, check: check)
    }

    func status() throws -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(try k(["disk", "status", "--json"]).stdout.utf8)) as? [String: Any]) ?? [:]
    }

    /// Loop devices over this fixture's node file.
    func loops() throws -> [String] {
        try KangarooTestSupport.run("/usr/sbin/losetup", ["-a"]).stdout.split(separator: "\n").filter { $0.contains(nodeFile) }.map(String.init)
    }

    deinit {
        if let ids = try? KangarooTestSupport.run(TestEnv.kangaroo, ["ps", "-q"], env: env).stdout.split(separator: "\n") {
            for id in ids { _ = try? KangarooTestSupport.run(TestEnv.kangaroo, ["rm", "-f", String(id)], env: env) }
        }
        _ = try? KangarooTestSupport.run(TestEnv.kangaroo, ["disk", "remove"], env: env)
    }
}

@Suite("sandbox disks", .serialized, .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct DiskTests {
    @Test("a container's disk: df shows its size, filling it gives ENOSPC, a neighbour writes on, the node file never grows")
    func limitsAndIsolation() throws {
        let f = try DiskFixture()
        let fill = try f.k(["disk", "fill"])
        #expect(fill.stdout.contains("2 disks made"), "\(fill.output)")
        #expect(try f.status()["free"] as? Int == 2)
        let df = try f.k(["run", "--rm", "--disk-size", "64M", "sample", "/bin/sh", "-c", "df -k / | tail -1"])
        let total = Int(df.stdout.split(separator: " ").filter { !$0.isEmpty }.dropFirst().first ?? "") ?? 0
        // ext4's own metadata (journal, inode tables) takes its share.
        #expect(total > 48 * 1024 && total <= 64 * 1024, "df: \(df.stdout)")
        // The neighbour writes once the other container has filled its disk:
        // told so by a signal (a fixed delay is no order on a loaded machine).
        let marker = "neighbour-\(UUID().uuidString.prefix(8))"
        let neighbour = try f.k(["run", "-d", "--name", "neighbour", "--disk-size", "64M", "sample", "/bin/sh", "-c",
                                 "trap 'dd if=/dev/zero of=/ok bs=1M count=20 2>/dev/null; echo status=$? > /ok.status' USR1; "
                                 + "echo > /ready; while :; do sleep 0.1; done", marker]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        // Its upper layer, on its own disk (mounted at containers/ID/disk).
        let upper = f.run.tmp.sub("state/containers/\(neighbour)/disk/upper")
        for _ in 0..<300 where !FileManager.default.fileExists(atPath: upper + "/ready") { usleep(100_000) }
        let full = try f.k(["run", "--rm", "--disk-size", "64M", "sample", "/bin/sh", "-c",
                            "dd if=/dev/zero of=/big bs=1M count=200 2>&1; echo status=$?"], check: false)
        #expect(full.stdout.contains("No space left on device") && !full.stdout.contains("status=0"), "\(full.output)")
        let pid = try KangarooTestSupport.run("/usr/bin/pgrep", ["-f", "^/bin/sh -c .* \(marker)$"], check: false).stdout
            .split(separator: "\n").first.flatMap { pid_t($0) }
        #expect(pid.map { kill($0, SIGUSR1) == 0 } == true, "the neighbour's shell (\(marker)): \(pid.map(String.init) ?? "not found")")
        let flag = upper + "/ok.status"
        for _ in 0..<600 where !((try? String(contentsOfFile: flag, encoding: .utf8)) ?? "").contains("status=") { usleep(100_000) }
        #expect(((try? String(contentsOfFile: flag, encoding: .utf8)) ?? "").contains("status=0"),
                "the neighbour could not write: \(flag): \((try? String(contentsOfFile: flag, encoding: .utf8)) ?? "missing")")
        var st = stat()
        #expect(stat(f.nodeFile, &st) == 0 && st.st_size == 1 << 30, "the node file keeps its size")
        try f.k(["rm", "-f", "neighbour"])
        #expect((try f.status()["attached"] as? Int) == 0)
        #expect(try f.loops().count == ((try f.status()["disks"] as? [Any])?.count ?? -1))
    }

    @Test("a released disk is scrubbed: the next tenant's raw device holds none of the previous tenant's bytes")
    func recycledDisksAreClean() throws {
        let f = try DiskFixture(pool: 0)
        let marker = "KANGAROO-TENANT-SECRET-7f3a"
        try f.k(["run", "--rm", "--disk-size", "64M", "sample", "/bin/sh", "-c",
                 "for i in $(seq 1 2000); do echo \(marker); done > /secret; sync"])
        // The region went back punched: the node file holds no data there.
        let fd = open(f.nodeFile, O_RDONLY)
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 64 << 20)
        let n = pread(fd, &buf, buf.count, 0)
        #expect(n == buf.count && buf.allSatisfy { $0 == 0 }, "the released region reads back zeros")
        // The next disk takes the same region (first fit): its raw device.
        let run = try f.k(["run", "-d", "--name", "next", "--disk-size", "64M", "sample", "sleep", "1000"])
        _ = run
        let disks = try f.status()["disks"] as? [[String: Any]] ?? []
        #expect(disks.count == 1 && (disks.first?["offset"] as? Int) == 0, "\(disks)")
        let device = disks.first?["device"] as? String ?? "?"
        let raw = try KangarooTestSupport.run("/bin/sh", ["-c", "dd if=\(device) bs=1M 2>/dev/null | grep -c \(marker) || true"]).stdout
        #expect(raw.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "the previous tenant's bytes on \(device): \(raw)")
    }

    @Test("kill -9 of the pool while it formats leaves nothing the next start does not reclaim")
    func killedMidAllocation() throws {
        let f = try DiskFixture(nodeSize: "8G", diskSize: "1G", pool: 6)
        for round in 0..<3 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: TestEnv.kangaroo)
            p.arguments = ["disk", "fill"]
            p.environment = ProcessInfo.processInfo.environment.merging(f.env) { _, b in b }
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            usleep(UInt32(40_000 + round * 60_000))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        // A loop device over the node file that no state names (a process
        // killed between attach and record).
        try KangarooTestSupport.run("/usr/sbin/losetup", ["-f", "-o", "\(7 << 30)", "--sizelimit", "\(64 << 20)", f.nodeFile], check: true)
        let fill = try f.k(["disk", "fill"])
        #expect(fill.status == 0, "\(fill.output)")
        let disks = try f.status()["disks"] as? [[String: Any]] ?? []
        #expect(disks.count == 6 && disks.allSatisfy { $0["state"] as? String == "free" }, "\(disks)")
        let loops = try f.loops()
        #expect(loops.count == 6, "\(loops)")
        try f.k(["disk", "remove"])
        #expect(try f.loops().isEmpty)
    }
}

/// User-namespaced containers (in the disk tests' serialized suite: they
/// take disks too).
extension DiskTests {
    /// The host uid of a process (the real uid of /proc/PID/status).
    func hostUID(_ pid: Int32) -> UInt32? {
        guard let text = procText("/proc/\(pid)/status"),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else { return nil }
        return line.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst().first.flatMap { UInt32($0) }
    }

    @Test("--userns: root inside is a range of 65,536 host ids of its own; the image shows its owners; files land on the disk as the mapped id")
    func rangesAndOwners() throws {
        let f = try DiskFixture(pool: 0)
        var ranges: [UInt32] = []
        var ids: [String] = []
        for name in ["u1", "u2"] {
            let id = try f.k(["run", "-d", "--userns", "--disk-size", "64M", "--name", name, "sample", "/bin/sh", "-c",
                              "echo mine > /made-inside; sleep 1000"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            ids.append(id)
            let state = try String(contentsOfFile: f.run.tmp.sub("state/containers/\(id)/userns"), encoding: .utf8)
            ranges.append(UInt32(state.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0)
        }
        #expect(ranges[0] >= 65536 && ranges[1] >= 65536 && (ranges[0] + 65536 <= ranges[1] || ranges[1] + 65536 <= ranges[0]), "\(ranges)")
        // On the host the containers' processes run under their ranges.
        let pids = (try FileManager.default.contentsOfDirectory(atPath: "/proc")).compactMap { Int32($0) }
        for (i, range) in ranges.enumerated() {
            let mine = pids.filter { hostUID($0) == range }
            #expect(!mine.isEmpty, "container \(i): no process of host uid \(range)")
        }
        // Inside: uid 0, the map, the image's files owned by root.
        let inside = try f.k(["run", "--rm", "--userns", "sample", "/bin/sh", "-c", "id -u; cat /proc/self/uid_map; stat -c '%u %n' /bin/busybox; touch /bin/busybox && echo wrote-image-file"])
        let lines = inside.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(lines.first == "0" && lines.count >= 4, "\(inside.output)")
        let map = lines.count > 1 ? lines[1].split(separator: " ").filter { !$0.isEmpty } : []
        #expect(map.count == 3 && map[0] == "0" && UInt32(map[1]) ?? 0 >= 65536 && map[2] == "65536", "\(lines)")
        #expect(lines.contains("0 /bin/busybox") && lines.contains("wrote-image-file"), "\(lines)")
        // A file made inside is owned on the container's disk by its host id.
        for _ in 0..<50 where !FileManager.default.fileExists(atPath: f.run.tmp.sub("state/containers/\(ids[0])/disk/upper/made-inside")) { usleep(100_000) }
        var st = stat()
        #expect(stat(f.run.tmp.sub("state/containers/\(ids[0])/disk/upper/made-inside"), &st) == 0 && st.st_uid == ranges[0], "owner \(st.st_uid), range \(ranges[0])")
        // The first container's ids, escaped to the host, cannot read what
        // the second wrote (its rootfs, its disk) or its image layer.
        for path in ["rootfs/made-inside", "disk/upper/made-inside", "lower/bin/busybox"].map({ f.run.tmp.sub("state/containers/\(ids[1])/" + $0) }) {
            #expect(FileManager.default.fileExists(atPath: path), "\(path)")
            let escaped = try run("/usr/bin/setpriv", ["--reuid=\(ranges[0])", "--regid=\(ranges[0])", "--clear-groups", "/usr/bin/head", "-c1", path])
            #expect(escaped.status != 0 && escaped.output.contains("Permission denied"), "host id \(ranges[0]) reads \(path): \(escaped.output)")
        }
        // Removal gives the ranges and the idmapped image mounts back.
        for id in ids { try f.k(["rm", "-f", id]) }
        let left = (try? String(contentsOfFile: f.run.tmp.sub("state/idranges/idranges.json"), encoding: .utf8)) ?? ""
        #expect(!left.contains(ids[0]) && !left.contains(ids[1]), "\(left)")
        let mounts = (procText("/proc/self/mountinfo") ?? "").split(separator: "\n").filter { $0.contains(f.run.tmp.path + "/state/containers") }
        #expect(mounts.isEmpty, "\(mounts)")
    }
}
