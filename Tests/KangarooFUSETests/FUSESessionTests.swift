import Logging
import Testing
@testable import KangarooFUSE

/// Drives FUSESession with hand-built requests (no kernel).
final class SessionHarness {
    let session: FUSESession
    let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: FUSEProtocol.replyBufferSize, alignment: 4096)
    var unique: UInt64 = 100

    init(fileSystem: some FUSEFileSystem, initialize: Bool = true) {
        session = FUSESession(fileSystem: fileSystem, options: FUSEInitOptions(), logger: Logger(label: "test"))
        if initialize { _ = self.initialize(minor: 45, flags: FUSEInitFlags.wanted.union(.posixLocks)) }
    }

    deinit { reply.deallocate() }

    struct Reply {
        var error: Int32
        var body: [UInt8]
        func u32(_ offset: Int) -> UInt32 { body.withUnsafeBytes { UnsafeRawBufferPointer($0).get(UInt32.self, at: offset) } }
        func u64(_ offset: Int) -> UInt64 { body.withUnsafeBytes { UnsafeRawBufferPointer($0).get(UInt64.self, at: offset) } }
        func u16(_ offset: Int) -> UInt16 { body.withUnsafeBytes { UnsafeRawBufferPointer($0).get(UInt16.self, at: offset) } }
    }

    func send(_ opcode: UInt32, node: UInt64 = 1, payload: [UInt8] = []) -> Reply? {
        unique += 1
        var bytes = [UInt8](repeating: 0, count: FUSEWireSize.inHeader)
        let header = FUSEInHeader(length: UInt32(FUSEWireSize.inHeader + payload.count), opcode: opcode, unique: unique, nodeID: node)
        bytes.withUnsafeMutableBytes { header.encode(into: $0) }
        bytes += payload
        let length = bytes.withUnsafeBytes { session.handle(request: $0, reply: reply) }
        guard let length else { return nil }
        let out = UnsafeRawBufferPointer(reply)
        #expect(Int(out.get(UInt32.self, at: 0)) == length)
        #expect(out.get(UInt64.self, at: 8) == unique)
        return Reply(error: out.get(Int32.self, at: 4), body: Array(out[FUSEWireSize.outHeader..<length]))
    }

    func send(_ opcode: FUSEOpcode, node: UInt64 = 1, payload: [UInt8] = []) -> Reply? {
        send(opcode.rawValue, node: node, payload: payload)
    }

    func initialize(minor: UInt32, flags: FUSEInitFlags) -> Reply? {
        var payload = [UInt8](repeating: 0, count: FUSEWireSize.initIn)
        let input = FUSEInitIn(major: 7, minor: minor, maxReadahead: 131072, flags: flags.union(.initExt))
        payload.withUnsafeMutableBytes { input.encode(into: $0) }
        return send(.initialize, payload: payload)
    }
}

func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }
func cstr(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }
func readIn(handle: UInt64 = 0, offset: UInt64, size: UInt32) -> [UInt8] {
    le(handle) + le(offset) + le(size) + le(UInt32(0)) + le(UInt64(0)) + le(UInt32(0)) + le(UInt32(0))
}

@Suite struct FUSESessionTests {
    static let fs: MemoryFileSystem = MemoryTreeBuilder.standard(bigFileSize: 3 << 20)

    @Test func initNegotiatesFlagsAndLimits() throws {
        let harness = SessionHarness(fileSystem: Self.fs, initialize: false)
        let offered: FUSEInitFlags = [.asyncRead, .posixLocks, .doReaddirplus, .readdirplusAuto, .parallelDirops,
                                      .cacheSymlinks, .maxPages, .noOpendirSupport, .explicitInvalData, .passthrough]
        let reply = try #require(harness.initialize(minor: 45, flags: offered))
        #expect(reply.error == 0)
        #expect(reply.body.count == 64)
        #expect(reply.u32(0) == 7)
        #expect(reply.u32(4) == 45)
        #expect(reply.u32(8) == 131072)  // not above the kernel's offer
        let flags = FUSEInitFlags(rawValue: UInt64(reply.u32(12)) | UInt64(reply.u32(32)) << 32)
        #expect(flags.contains([.asyncRead, .doReaddirplus, .parallelDirops, .cacheSymlinks, .maxPages]))
        #expect(!flags.contains(.readdirplusAuto))  // always READDIRPLUS: no LOOKUP per entry after plain READDIR
        #expect(!flags.contains(.posixLocks))
        #expect(flags.contains(.noOpendirSupport))  // zero-message opendir acknowledged
        #expect(!flags.contains(.noOpenSupport))  // not offered, not taken
        #expect(!flags.contains(.explicitInvalData))
        #expect(!flags.contains(.passthrough))
        #expect(reply.u32(20) == 1 << 20)  // max_write
        #expect(reply.u16(28) == 256)  // max_pages
        #expect(harness.session.negotiatedState?.minor == 45)
    }

    @Test func initWithNewerKernelMinorAnswersOurs() throws {
        let harness = SessionHarness(fileSystem: Self.fs, initialize: false)
        let reply = try #require(harness.initialize(minor: 99, flags: [.asyncRead]))
        #expect(reply.u32(4) == FUSEProtocol.minor)
    }

    @Test func initWithAncientKernelIsRefused() throws {
        let harness = SessionHarness(fileSystem: Self.fs, initialize: false)
        let reply = try #require(harness.initialize(minor: 20, flags: []))
        #expect(reply.error == -71)  // EPROTO
        #expect(harness.session.negotiatedState == nil)
    }

    @Test func requestsBeforeInitFail() throws {
        let harness = SessionHarness(fileSystem: Self.fs, initialize: false)
        #expect(try #require(harness.send(.getattr, payload: le(UInt64(0)) + le(UInt64(0)))).error == -5)
    }

    @Test func lookupFindsEntryAndCachesMisses() throws {
        let harness = SessionHarness(fileSystem: Self.fs)
        let found = try #require(harness.send(.lookup, payload: cstr("d000")))
        #expect(found.error == 0)
        #expect(found.body.count == 128)
        #expect(found.u64(0) == Self.fs.paths["d000"])
        #expect(found.u64(16) == 86_400)
        #expect(found.u32(40 + 60) == 0o040755)
        let missing = try #require(harness.send(.lookup, payload: cstr("nope")))
        #expect(missing.error == 0)  // negative entry
        #expect(missing.u64(0) == 0)
        #expect(missing.u64(16) == 86_400)
        let notDir = try #require(harness.send(.lookup, node: Self.fs.paths["empty"]!, payload: cstr("x")))
        #expect(notDir.error == -20)
    }

    @Test func getattrAndReadlink() throws {
        let harness = SessionHarness(fileSystem: Self.fs)
        let id = try #require(Self.fs.paths["d003/f007"])
        let attr = try #require(harness.send(.getattr, node: id, payload: le(UInt64(0)) + le(UInt64(0))))
        #expect(attr.error == 0)
        #expect(attr.body.count == 104)
        #expect(attr.u64(16) == id)
        #expect(attr.u64(16 + 8) == Self.fs.nodes[id]?.attributes.size)
        let link = try #require(harness.send(.readlink, node: Self.fs.paths["links/s005"]!))
        #expect(String(decoding: link.body, as: UTF8.self) == "../d005/f005")
        #expect(try #require(harness.send(.getattr, node: 999_999)).error == -2)
    }

    @Test func openKeepsCacheAndRefusesWrites() throws {
        let harness = SessionHarness(fileSystem: Self.fs)
        let id = try #require(Self.fs.paths["big"])
        let opened = try #require(harness.send(.open, node: id, payload: le(UInt32(0)) + le(UInt32(0))))
        #expect(opened.error == 0)
        #expect(FUSEOpenFlags(rawValue: opened.u32(8)).contains(.keepCache))
        let writing = try #require(harness.send(.open, node: id, payload: le(UInt32(2)) + le(UInt32(0))))  // O_RDWR
        #expect(writing.error == -30)
        let opendir = try #require(harness.send(.opendir, node: 1, payload: le(UInt32(0)) + le(UInt32(0))))
        #expect(FUSEOpenFlags(rawValue: opendir.u32(8)).contains(.cacheDir))
    }

    @Test(arguments: [(0, 4096), (1_000_000, 1 << 20), ((3 << 20) - 10, 4096), (3 << 20, 4096), (5, 2 << 20)])
    func readReturnsFileBytes(offset: Int, size: Int) throws {
        let harness = SessionHarness(fileSystem: Self.fs)
        let id = try #require(Self.fs.paths["big"])
        let reply = try #require(harness.send(.read, node: id, payload: readIn(offset: UInt64(offset), size: UInt32(size))))
        #expect(reply.error == 0)
        let all = Pattern.bytes(count: 3 << 20)
        let expectedCount = max(0, min(size, 1 << 20, all.count - offset))
        #expect(reply.body.count == expectedCount)
        #expect(reply.body == Array(all[min(offset, all.count)..<min(offset, all.count) + expectedCount]))
    }

    func decodeDirents(_ body: [UInt8], plus: Bool) -> [(name: String, ino: UInt64, next: UInt64, type: UInt32, nodeID: UInt64)] {
        var result: [(String, UInt64, UInt64, UInt32, UInt64)] = []
        body.withUnsafeBytes { raw in
            var position = 0
            while position < raw.count {
                var nodeID: UInt64 = 0
                var base = position
                if plus {
                    nodeID = raw.get(UInt64.self, at: position)
                    base += 128
                }
                let length = Int(raw.get(UInt32.self, at: base + 16))
                let name = String(decoding: raw[(base + 24)..<(base + 24 + length)], as: UTF8.self)
                result.append((name, raw.get(UInt64.self, at: base), raw.get(UInt64.self, at: base + 8), raw.get(UInt32.self, at: base + 20), nodeID))
                position = (base + 24 + length + 7) & ~7
            }
        }
        return result.map { (name: $0.0, ino: $0.1, next: $0.2, type: $0.3, nodeID: $0.4) }
    }

    @Test(arguments: [false, true])
    func readdirPaginatesOverAllEntries(plus: Bool) throws {
        let harness = SessionHarness(fileSystem: Self.fs)
        let dir = try #require(Self.fs.paths["d001"])
        var offset: UInt64 = 0
        var names: [String] = []
        var pages = 0
        while true {
            let reply = try #require(harness.send(plus ? .readdirplus : .readdir, node: dir, payload: readIn(offset: offset, size: 1024)))
            #expect(reply.error == 0)
            #expect(reply.body.count <= 1024)
            let entries = decodeDirents(reply.body, plus: plus)
            if entries.isEmpty { break }
            pages += 1
            for entry in entries {
                names.append(entry.name)
                if plus && entry.name != "." && entry.name != ".." { #expect(entry.nodeID == entry.ino) }
            }
            offset = entries.last!.next
        }
        #expect(pages > 3)
        var expected = [".", ".."]
        for f in 0..<100 { expected.append("f" + MemoryTreeBuilder.pad(f, 3)) }
        expected.append("hard-to-d000-f001")
        #expect(names == expected)
    }

    @Test func xattrSizeProbeValueAndRange() throws {
        let harness = SessionHarness(fileSystem: Self.fs)
        let id = try #require(Self.fs.paths["d000/f001"])
        let probe = try #require(harness.send(.getxattr, node: id, payload: le(UInt32(0)) + le(UInt32(0)) + cstr("user.kangaroo")))
        #expect(probe.error == 0 && probe.u32(0) == 5)
        let value = try #require(harness.send(.getxattr, node: id, payload: le(UInt32(64)) + le(UInt32(0)) + cstr("user.kangaroo")))
        #expect(value.body == Array("hello".utf8))
        let small = try #require(harness.send(.getxattr, node: id, payload: le(UInt32(2)) + le(UInt32(0)) + cstr("user.kangaroo")))
        #expect(small.error == -34)
        let absent = try #require(harness.send(.getxattr, node: id, payload: le(UInt32(64)) + le(UInt32(0)) + cstr("user.none")))
        #expect(absent.error == -61)
        let list = try #require(harness.send(.listxattr, node: id, payload: le(UInt32(4096)) + le(UInt32(0))))
        #expect(list.body == Array("user.binary\0user.empty\0user.kangaroo\0".utf8))
        let listSize = try #require(harness.send(.listxattr, node: id, payload: le(UInt32(0)) + le(UInt32(0))))
        #expect(listSize.u32(0) == UInt32(list.body.count))
    }

    @Test(arguments: [FUSEOpcode.setattr, .mkdir, .unlink, .rmdir, .rename, .link, .write, .setxattr, .removexattr,
                      .create, .symlink, .mknod, .fallocate, .rename2, .copyFileRange, .tmpfile])
    func writeOperationsAreReadOnly(opcode: FUSEOpcode) throws {
        let harness = SessionHarness(fileSystem: Self.fs)
        #expect(try #require(harness.send(opcode, payload: [UInt8](repeating: 0, count: 64))).error == -30)
    }

    @Test(arguments: [UInt32(52), 46, 39, 31, 4000, 9999])  // STATX, LSEEK, IOCTL, GETLK, unknown
    func unsupportedOperationsAreENOSYS(opcode: UInt32) throws {
        let harness = SessionHarness(fileSystem: Self.fs)
        #expect(try #require(harness.send(opcode, payload: [UInt8](repeating: 0, count: 64))).error == -38)
    }

    @Test func forgetsTakeNoReply() {
        let harness = SessionHarness(fileSystem: Self.fs)
        let before = Self.fs.forgets.load(ordering: .relaxed)
        #expect(harness.send(.forget, node: 5, payload: le(UInt64(1))) == nil)
        let batch = le(UInt32(3)) + le(UInt32(0)) + (0..<3).flatMap { le(UInt64($0 + 2)) + le(UInt64(1)) }
        #expect(harness.send(.batchForget, node: 0, payload: batch) == nil)
        #expect(harness.send(.interrupt, payload: le(UInt64(5))) == nil)
        #expect(Self.fs.forgets.load(ordering: .relaxed) - before >= 4)
    }

    @Test func countersTrackRequestsReadsAndErrors() throws {
        let harness = SessionHarness(fileSystem: Self.fs)
        let id = try #require(Self.fs.paths["big"])
        _ = harness.send(.read, node: id, payload: readIn(offset: 0, size: 1000))
        _ = harness.send(.lookup, node: 1, payload: cstr("d000"))
        _ = harness.send(.write, node: id, payload: [UInt8](repeating: 0, count: 64))
        let counters = harness.session.counters.snapshot
        #expect(counters.requests == 4)  // INIT included
        #expect(counters.reads == 1 && counters.bytesRead == 1000)
        #expect(counters.errors == 1)
        #expect(counters.inFlight == 0 && counters.peakInFlight == 1)
    }

    @Test func statfsFlushReleaseAndDestroy() throws {
        let harness = SessionHarness(fileSystem: Self.fs)
        let stats = try #require(harness.send(.statfs))
        #expect(stats.body.count == 80)
        #expect(stats.u64(0) == 1000)
        #expect(stats.u32(40) == 4096)
        #expect(stats.u32(44) == 255)
        // FLUSH is declined with ENOSYS so the kernel stops sending it; not counted as an error.
        let errors = harness.session.counters.snapshot.errors
        #expect(try #require(harness.send(.flush, node: 3, payload: [UInt8](repeating: 0, count: 24))).error == -38)
        #expect(harness.session.counters.snapshot.errors == errors)
        #expect(try #require(harness.send(.release, node: 3, payload: [UInt8](repeating: 0, count: 24))).body.isEmpty)
        #expect(try #require(harness.send(.destroy)).error == 0)
        #expect(harness.session.isDestroyed)
    }
}
