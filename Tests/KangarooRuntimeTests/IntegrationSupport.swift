import Foundation
import KangarooTestSupport
import Testing
import KangarooSystem
@testable import KangarooRuntime

let integrationEnabled = ProcessInfo.processInfo.environment["KANGAROO_INTEGRATION"] == "1" && getuid() == 0

/// Test rootfs built by scripts/runtime-test-deps.sh.
let testRootfs = "/var/lib/kangaroo-test/rootfs"

enum Harness {
    /// kangaroo-runtime next to the test bundle (swift test builds every product).
    static let runtimeBinary: String = {
        if let p = ProcessInfo.processInfo.environment["KANGAROO_RUNTIME_BIN"] { return p }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("kangaroo-runtime").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return "kangaroo-runtime"
    }()

    static func ensureDeps() throws {
        if FileManager.default.fileExists(atPath: testRootfs + "/bin/busybox"),
           FileManager.default.fileExists(atPath: "/usr/bin/crun") { return }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/runtime-test-deps.sh").path
        let r = try run(["/bin/sh", script])
        guard r.code == 0 else { throw HarnessError("runtime-test-deps.sh failed: \(r.err)") }
    }

    struct Result { var out: String; var err: String; var code: Int32 }

    /// Runs a command to completion with posix_spawn. Output goes through
    /// files, not pipes: a `create`d container init keeps the caller's stdio.
    @discardableResult
    static func run(_ argv: [String], stdin: String? = nil, timeout: Double = 300) throws -> Result {
        let tmp = try tempDir("io")
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        _ = FileManager.default.createFile(atPath: tmp + "/in", contents: Data((stdin ?? "").utf8))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdin == nil ? "/dev/null" : tmp + "/in", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, tmp + "/out", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, tmp + "/err", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        var cargs = argv.map { strdup($0) } + [nil]
        defer { for a in cargs { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, &cargs, environ)
        guard rc == 0 else { throw HarnessError("spawn \(argv[0]): errno \(rc)") }
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { throw HarnessError("waitpid: errno \(errno)") }
            if Date() > deadline { kill(pid, SIGKILL) }
            usleep(1000)
        }
        let o = (try? String(contentsOfFile: tmp + "/out", encoding: .utf8)) ?? ""
        let e = (try? String(contentsOfFile: tmp + "/err", encoding: .utf8)) ?? ""
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Result(out: o, err: e, code: code)
    }

    /// Starts a command in the background (output discarded); returns its pid.
    static func spawn(_ argv: [String]) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd in Int32(0)...2 { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_RDWR, 0) }
        var cargs = argv.map { strdup($0) } + [nil]
        defer { for a in cargs { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, &cargs, environ)
        guard rc == 0 else { throw HarnessError("spawn \(argv[0]): errno \(rc)") }
        return pid
    }

    /// kangaroo-runtime with a private --root.
    @discardableResult
    static func kr(_ root: String, _ args: [String], stdin: String? = nil) throws -> Result {
        try run([runtimeBinary, "--root", root] + args, stdin: stdin)
    }

    /// crun, inside a private mount namespace without the hybrid v2 tree,
    /// which Debian's crun 1.8 refuses.
    static func crun(_ root: String, _ args: [String]) throws -> Result {
        let quoted = args.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        return try run(["/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                        "umount /sys/fs/cgroup/unified 2>/dev/null; exec /usr/bin/crun --root \(root) \(quoted)"])
    }

    static func tempDir(_ tag: String) throws -> String {
        let path = "/tmp/kangaroo-test-\(tag)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A bundle using the shared busybox rootfs, runc's default config with
    /// `args`, changed by `edit`.
    static func bundle(_ tag: String, args: [String], edit: (inout JSON) throws -> Void = { _ in }) throws -> String {
        let dir = try tempDir(tag)
        var config = try JSON.parse(Runtime.specTemplate(args: args, terminal: false))
        config.set(["root", "path"], .string(testRootfs))
        config.set(["root", "readonly"], .bool(true))
        config.set(["linux", "cgroupsPath"], .string("/kangaroo-test-\(tag)"))
        try edit(&config)
        try config.serialized(indent: "  ").write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        return dir
    }

    static func mountCount() -> Int {
        (procText("/proc/self/mountinfo") ?? "").split(separator: "\n").count
    }

    /// Mounts at or below the given directories (other suites, running at
    /// the same time, mount and unmount elsewhere).
    static func mountCount(below dirs: [String]) -> Int {
        (procText("/proc/self/mountinfo") ?? "").split(separator: "\n").filter { line in
            let f = line.split(separator: " ")
            guard f.count > 4 else { return false }
            let point = String(f[4])
            return dirs.contains { point == $0 || point.hasPrefix($0 + "/") }
        }.count
    }

    static func cgroupExists(_ path: String) -> Bool {
        ["memory", "pids", "cpu", "freezer", "unified"].contains { FileManager.default.fileExists(atPath: "/sys/fs/cgroup/\($0)\(path)") }
    }

    static func processes(matching marker: String) -> [Int32] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap { Int32($0) } ?? []
        return pids.filter { pid in
            guard let d = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            return String(decoding: d, as: UTF8.self).contains(marker)
        }
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

extension JSON {
    /// Sets a value at a key path, creating objects on the way.
    mutating func set(_ path: [String], _ value: JSON) {
        guard let key = path.first else { self = value; return }
        switch self {
        case var .object(members):
            var child = members.first { $0.0 == key }?.1 ?? .object([])
            child.set(Array(path.dropFirst()), value)
            if let i = members.firstIndex(where: { $0.0 == key }) { members[i].1 = child } else { members.append((key, child)) }
            self = .object(members)
        case var .array(items):
            if let i = Int(key), i < items.count {
                items[i].set(Array(path.dropFirst()), value)
                self = .array(items)
            }
        default:
            self = .object([])
            set(path, value)
        }
    }

    mutating func append(_ path: [String], _ value: JSON) {
        var list: [JSON] = []
        var node: JSON? = self
        for k in path { node = node?[k] }
        if case let .array(items)? = node { list = items }
        list.append(value)
        set(path, .array(list))
    }
}
