// containerd-shim-kangaroo-v2: the small executable containerd starts for
// runtime type io.containerd.kangaroo.v2, with containerd's shim v2 command
// line. It runs no task itself: `start` makes sure the node daemon (`kangaroo
// node`) runs, starting it detached if it does not, and hands containerd the
// daemon's ttrpc address; `delete` cleans up a bundle whose task is gone.
//
//   containerd-shim-kangaroo-v2 -namespace NS -address ADDR -publish-binary BIN -id ID start
//   containerd-shim-kangaroo-v2 -namespace NS -address ADDR -publish-binary BIN -id ID -bundle DIR delete
//
// KANGAROO_SHIM_SOCKET, KANGAROO_NODE_STATE and KANGAROO_BIN move the
// daemon's socket, state and binary (tests use them).
//
// containerd runs it for every task it creates (and `delete` after a lost
// connection), so it starts lean: no Foundation, no protobuf library (the
// one message it writes is encoded below), linked fully static in release
// builds; a Foundation build cost 5.5 ms of CPU per start here, and under
// a 50-pod burst 15% of the machine's CPU.
import KangarooRuntime
import KangarooSystem
#if canImport(Glibc)
import Glibc
#endif

func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
let socketPath = environment("KANGAROO_SHIM_SOCKET") ?? "/run/kangaroo/shim.sock"
let statePath = environment("KANGAROO_NODE_STATE") ?? "/run/kangaroo/node"

func fail(_ message: String) -> Never {
    let text = Array("containerd-shim-kangaroo-v2: \(message)\n".utf8)
    _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(1)
}

func currentDirectory() -> String {
    guard let p = getcwd(nil, 0) else { fail("getcwd: \(String(cString: strerror(errno)))") }
    defer { free(p) }
    return String(cString: p)
}

func ownDirectory() -> String {
    var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { return "." }
    let exe = String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return exe.lastIndex(of: "/").map { String(exe[..<$0]) } ?? "."
}

/// The shim v2 DeleteResponse (task.proto: pid = 1, exit_status = 2,
/// exited_at = 3, a google.protobuf.Timestamp of seconds = 1, nanos = 2),
/// in protobuf's wire format; zero fields are left out, as proto3 does.
func deleteResponse(exitStatus: UInt32, seconds: Int64, nanos: Int32) -> [UInt8] {
    func varint(_ v: UInt64) -> [UInt8] {
        var v = v, out: [UInt8] = []
        while v >= 0x80 { out.append(UInt8(v & 0x7f) | 0x80); v >>= 7 }
        return out + [UInt8(v)]
    }
    var timestamp: [UInt8] = []
    if seconds != 0 { timestamp += [0x08] + varint(UInt64(bitPattern: seconds)) }
    if nanos != 0 { timestamp += [0x10] + varint(UInt64(UInt32(bitPattern: nanos))) }
    var out: [UInt8] = []
    if exitStatus != 0 { out += [0x10] + varint(UInt64(exitStatus)) }
    out += [0x1a] + varint(UInt64(timestamp.count)) + timestamp
    return out
}

/// containerd's flags (Go style: -name value, --name value, -name=value).
struct Arguments {
    var flags: [String: String] = [:]
    var action = ""
    init(_ argv: [String]) {
        let valued: Set<String> = ["namespace", "address", "publish-binary", "id", "bundle", "socket"]
        var i = 0
        while i < argv.count {
            let a = argv[i]
            if a.hasPrefix("-") {
                var name = String(a.drop { $0 == "-" })
                var value: String?
                if let eq = name.firstIndex(of: "=") { value = String(name[name.index(after: eq)...]); name = String(name[..<eq]) }
                if valued.contains(name), value == nil, i + 1 < argv.count { i += 1; value = argv[i] }
                flags[name] = value ?? "true"
            } else if action.isEmpty {
                action = a
            }
            i += 1
        }
    }
}

func canConnect(_ path: String) -> Bool {
    guard let fd = try? Runtime.connectUnix(path) else { return false }
    close(fd)
    return true
}

/// Starts `kangaroo node` in its own session, its output in the state
/// directory's node.log, and waits for its readiness message on a pipe.
func startDaemon() {
    let kangaroo = environment("KANGAROO_BIN") ?? (ownDirectory() + "/kangaroo")
    guard access(kangaroo, X_OK) == 0 else { fail("cannot start the node daemon: \(kangaroo) is not executable (set KANGAROO_BIN)") }
    var pipeFDs: [Int32] = [-1, -1]
    guard pipe(&pipeFDs) == 0 else { fail("pipe: \(String(cString: strerror(errno)))") }
    _ = fcntl(pipeFDs[0], F_SETFD, FD_CLOEXEC)
    _ = fcntl(pipeFDs[1], F_SETFD, FD_CLOEXEC)
    let log = statePath + "/node.log"
    var args = ["node", "--state", statePath, "--shim-socket", socketPath, "--ready-fd", "3"]
    if let events = environment("TTRPC_ADDRESS") { args += ["--events", events] }
    let spawned: Result<pid_t, any Error>
    do { spawned = .success(try Spawn.start(kangaroo, args, .init(log: log, fd3: pipeFDs[1], newSession: true))) } catch {
        spawned = .failure(error)
    }
    close(pipeFDs[1])
    if case .failure(let error) = spawned { fail("cannot start \(kangaroo) node: \(error)") }
    var pfd = pollfd(fd: pipeFDs[0], events: Int16(POLLIN), revents: 0)
    var buf = [UInt8](repeating: 0, count: 16)
    let ready = poll(&pfd, 1, 10_000) == 1 && buf.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) } > 0
    close(pipeFDs[0])
    guard ready, String(decoding: buf, as: UTF8.self).hasPrefix("ready") else {
        let tail = ((try? FileSystem.readString(log)) ?? "").suffix(1500)
        fail("the node daemon did not become ready within 10 s; its log \(log) ends:\n\(tail)")
    }
}

let args = Arguments(Array(CommandLine.arguments.dropFirst()))
if args.flags["v"] != nil || args.flags["version"] != nil {
    print("containerd-shim-kangaroo-v2 (kangaroo 0.1.0), shim v2 API, ttrpc")
    exit(0)
}
switch args.action {
case "start":
    do { try FileSystem.makeDirectories(statePath, mode: 0o711) } catch { fail("cannot create \(statePath): \(error)") }
    // One shim at a time checks for and starts the daemon.
    let lock = open(statePath + "/start.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
    guard lock >= 0, flock(lock, LOCK_EX) == 0 else { fail("cannot lock \(statePath)/start.lock: \(String(cString: strerror(errno)))") }
    if !canConnect(socketPath) { startDaemon() }
    let address = "unix://" + socketPath
    let cwd = currentDirectory()
    do { try FileSystem.replace(cwd + "/address", address) } catch {
        fail("cannot write the address file in \(cwd): \(error)")
    }
    print(address)
    close(lock)
case "delete":
    // containerd calls this when the task's shim connection is gone: remove
    // what is left of the container and report it killed.
    guard let id = args.flags["id"], !id.isEmpty else { fail("delete: -id is required") }
    let namespace = args.flags["namespace"] ?? "default"
    let bundle = args.flags["bundle"] ?? currentDirectory()
    do {
        try Runtime(root: statePath + "/runtime/" + namespace).delete(id: id, force: true)
    } catch where error.code == .notFound {
    } catch {
        fail("delete \(id): \(error)")
    }
    Mounts.detachAll(under: [bundle + "/rootfs"])
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    let bytes = deleteResponse(exitStatus: 137, seconds: Int64(now.tv_sec), nanos: Int32(now.tv_nsec))
    guard bytes.withUnsafeBytes({ write(1, $0.baseAddress, $0.count) }) == bytes.count else { fail("delete: cannot write the response") }
default:
    fail("unknown action \"\(args.action)\": expected start or delete")
}
