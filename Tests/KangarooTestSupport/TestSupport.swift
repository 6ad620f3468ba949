import Foundation
import Testing

/// Environment of the integration tests, set by scripts/test.sh (root,
/// KANGAROO_INTEGRATION=1).
public enum TestEnv {
    public static let env = ProcessInfo.processInfo.environment
    public static let enabled = env["KANGAROO_INTEGRATION"] == "1" && getuid() == 0
    public static var images: String { env["KANGAROO_TESTIMAGES"] ?? "/var/cache/kangaroo/testimages" }
    public static var repoRoot: String {
        // Tests/KangarooTestSupport/TestSupport.swift -> repository root
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }
    public static var kangaroo: String { env["KANGAROO_BIN"] ?? repoRoot + "/.build/debug/kangaroo" }
    public static var treediff: String { repoRoot + "/scripts/treediff.py" }
}

public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var output: String { stdout + stderr }
}

/// Runs a program to completion, capturing its output (through files, so a
/// chatty child never blocks on a full pipe).
@discardableResult
public func run(_ program: String, _ args: [String], env extra: [String: String] = [:], stdin: String? = nil,
         check: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
    let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("kangaroo-test-out-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: tmp) }
    let outURL = tmp.appendingPathComponent("out"), errURL = tmp.appendingPathComponent("err")
    FileManager.default.createFile(atPath: outURL.path, contents: nil)
    FileManager.default.createFile(atPath: errURL.path, contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: program.hasPrefix("/") ? program : "/usr/bin/env")
    p.arguments = program.hasPrefix("/") ? args : [program] + args
    var environment = ProcessInfo.processInfo.environment
    for (k, v) in extra { environment[k] = v }
    p.environment = environment
    p.standardOutput = try FileHandle(forWritingTo: outURL)
    p.standardError = try FileHandle(forWritingTo: errURL)
    if let stdin {
        let inURL = tmp.appendingPathComponent("in")
        try stdin.write(to: inURL, atomically: true, encoding: .utf8)
        p.standardInput = try FileHandle(forReadingFrom: inURL)
    } else {
        p.standardInput = FileHandle.nullDevice
    }
    try p.run()
    p.waitUntilExit()
    let result = CommandResult(status: p.terminationStatus,
                               stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
                               stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "")
    if check && result.status != 0 {
        Issue.record("\(program) \(args.joined(separator: " ")) exited \(result.status): \(result.output.suffix(3000))",
                     sourceLocation: sourceLocation)
    }
    return result
}

/// Detaches everything mounted at or below `path`, deepest first.
public func unmountAll(below path: String) {
    guard let mounts = procText("/proc/self/mounts") else { return }
    let targets = mounts.split(separator: "\n").compactMap { line -> String? in
        let f = line.split(separator: " ")
        guard f.count > 1 else { return nil }
        let target = String(f[1]).replacingOccurrences(of: "\\040", with: " ")
        return target.hasPrefix(path + "/") || target == path ? target : nil
    }
    for t in targets.sorted(by: { $0.count > $1.count }) { umount2(t, Int32(MNT_DETACH)) }
}

/// A temporary directory removed (after unmounting anything below it) at deinit.
public final class TempDir: @unchecked Sendable {
    public let path: String
    public init(_ label: String) throws {
        path = "/tmp/kangaroo-test-\(label)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    public func sub(_ name: String) -> String { path + "/" + name }
    deinit {
        unmountAll(below: path)
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Runs scripts/treediff.py and records its differences as test issues.
public func expectSameTree(_ left: String, _ right: String, extra: [String] = [], _ what: String,
                    sourceLocation: SourceLocation = #_sourceLocation) throws {
    let r = try run("python3", [TestEnv.treediff] + extra + [left, right])
    #expect(r.status == 0, "\(what): trees differ:\n\(r.output.suffix(4000))", sourceLocation: sourceLocation)
    #expect(r.stdout.contains("0 differences"), "\(what): \(r.output.suffix(500))", sourceLocation: sourceLocation)
}


/// A /proc file read to its end. Foundation's String(contentsOfFile:) stops
/// after one read(2) of a file whose size stat reports as 0, and procfs hands
/// out whole records per read: /proc/self/mountinfo of a busy machine came
/// back short, so mounts seemed absent.
public func procText(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 { if errno == EINTR { continue }; return nil }
        if n == 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Runs `command` on a pty of 30 rows by 100 columns (`ctr -t` needs a
/// terminal) and returns what it printed and its exit status. `input` is
/// typed `typeAfter` seconds after the start or, with `marker`, after the
/// marker appears in the output, at which point `kill` (a pid), if given,
/// is sent SIGKILL. Gives up after 60 s.
public func runOnTerminal(_ command: [String], input: String, typeAfter: Double = 1.0, marker: String? = nil,
                          kill pid: Int32? = nil) throws -> CommandResult {
    let driver = """
    import json, os, pty, sys, time, fcntl, termios, struct, select, signal
    opts, cmd = json.loads(sys.argv[1]), sys.argv[2:]
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(cmd[0], cmd)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    out, sent, start = b"", False, time.time()
    since = None if opts["marker"] else start
    while time.time() - start < 60:
        if since is None and opts["marker"].encode() in out:
            if opts["kill"]: os.kill(opts["kill"], signal.SIGKILL)
            since = time.time()
        if not sent and since is not None and time.time() - since > opts["after"]:
            os.write(fd, opts["input"].encode()); sent = True
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try: data = os.read(fd, 65536)
            except OSError: break
            if not data: break
            out += data
    sys.stdout.write(out.decode(errors="replace"))
    # A command still running 10 s after the output loop ends is killed, so
    # that a hang fails the test instead of stopping the run.
    deadline = time.time() + 10
    while time.time() < deadline:
        p, status = os.waitpid(pid, os.WNOHANG)
        if p:
            break
        time.sleep(0.1)
    else:
        sys.stdout.write("[killed: still running 70 s after it started]")
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
    let options: [String: Any] = ["input": input, "after": typeAfter, "marker": marker ?? "", "kill": pid.map(Int.init) ?? 0]
    let json = String(decoding: try JSONSerialization.data(withJSONObject: options), as: UTF8.self)
    return try run("/usr/bin/python3", ["-c", driver, json] + command)
}

/// Flips the lowest bit of the byte at `offset` of a file.
public func flipByte(_ path: String, at offset: UInt64) throws {
    let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
    defer { try? h.close() }
    try h.seek(toOffset: offset)
    let b = try #require(try h.read(upToCount: 1)).first!
    try h.seek(toOffset: offset)
    try h.write(contentsOf: Data([b ^ 0x01]))
}

/// One entry of a chunk cache's chunk table (`<hex>.toc`, CacheLayout in
/// KangarooChunks), read the way a peer would: `held` when its `.bitmap`
/// bits are set and, for a compressed chunk, its `.pmap` bit.
public struct CachedChunk: Sendable {
    public let offset: UInt64
    public let size: UInt32
    public let uncompressedSize: UInt32
    public let blockAddress: UInt32
    public let compression: UInt8
    public let held: Bool
    public var range: Range<UInt64> { offset..<(offset + UInt64(size)) }
}

/// The chunk tables of every blob in `cache`, by blob hex digest.
public func cachedChunks(_ cache: String) throws -> [String: [CachedChunk]] {
    var out: [String: [CachedChunk]] = [:]
    let names = try FileManager.default.contentsOfDirectory(atPath: cache).filter { $0.hasSuffix(".toc") }
    for name in names {
        let hex = String(name.dropLast(4))
        let toc = try #require(FileManager.default.contents(atPath: cache + "/" + name)).map { $0 }
        let bitmap = (FileManager.default.contents(atPath: cache + "/" + hex + ".bitmap") ?? Data()).map { $0 }
        let pmap = (FileManager.default.contents(atPath: cache + "/" + hex + ".pmap") ?? Data()).map { $0 }
        func u(_ at: Int, _ n: Int) -> UInt64 { (0..<n).reduce(0) { $0 | UInt64(toc[at + $1]) << (8 * $1) } }
        func bit(_ bytes: [UInt8], _ i: UInt64) -> Bool { Int(i / 8) < bytes.count && bytes[Int(i / 8)] & (1 << UInt8(i % 8)) != 0 }
        let count = Int(u(8, 8))
        #expect(toc.count == 16 + count * 21, "\(name): \(toc.count) bytes for \(count) entries")
        out[hex] = (0..<count).map { i in
            let at = 16 + i * 21
            let size = UInt32(u(at + 8, 4)), uncompressed = UInt32(u(at + 12, 4)), block = UInt32(u(at + 16, 4))
            let compression = toc[at + 20]
            let blocks = UInt64(block)..<(UInt64(block) + max(1, (UInt64(uncompressed) + 4095) / 4096))
            let held = blocks.allSatisfy { bit(bitmap, $0) } && (compression == 0 || bit(pmap, UInt64(i)))
            return CachedChunk(offset: u(at, 8), size: size, uncompressedSize: uncompressed, blockAddress: block,
                               compression: compression, held: held)
        }
    }
    return out
}
