import Foundation
import KangarooFUSE
import KangarooImage
import Logging
import Testing
@testable import KangarooLazyFS

struct Fixture: @unchecked Sendable {
    let dir: TempDir
    let image: TestImage
    let source: TestSource
    let fetcher: ChunkFetcher
    let fs: LazyFileSystem

    init(deadline: Duration = .seconds(30), retries: Int = 3, mergeGap: UInt64 = 0, dir: TempDir? = nil, image: TestImage? = nil) throws {
        let dir = try dir ?? TempDir()
        self.dir = dir
        let image = try image ?? TestImage.make(in: dir)
        self.image = image
        source = TestSource(path: image.blobPath)
        var configuration = FetchConfiguration()
        configuration.deadline = deadline
        configuration.retries = retries
        configuration.mergeGap = mergeGap
        configuration.backoff = .milliseconds(10)
        let cache = try ChunkCache(directory: dir.path + "/cache", bootstrap: image.bootstrap)
        fetcher = ChunkFetcher(bootstrap: image.bootstrap, source: source, cache: cache, configuration: configuration,
                               logger: Logger(label: "test"))
        fs = LazyFileSystem(fetcher: fetcher, logger: Logger(label: "test"))
    }

    func node(_ path: String) throws -> UInt64 {
        var node = FUSEProtocol.rootID
        for part in path.split(separator: "/") { node = try fs.lookup(parent: node, name: Array(part.utf8)).nodeID }
        return node
    }

    func read(_ path: String, offset: UInt64 = 0, count: Int) throws -> [UInt8] {
        let node = try node(path)
        var out = [UInt8](repeating: 0xAA, count: count)
        let n = try out.withUnsafeMutableBytes { try fs.read(nodeID: node, handle: 0, offset: offset, into: $0) }
        return Array(out.prefix(n))
    }
}

@Suite struct LazyFileSystemTests {
    @Test func readsEveryFileCorrectly() throws {
        let f = try Fixture()
        for (path, bytes) in f.image.files {
            #expect(try f.read(path, count: bytes.count + 100) == bytes, "\(path)")
        }
        // Unaligned reads across chunk boundaries.
        let big = f.image.files["data/big"]!
        for (offset, count) in [(65_530, 20), (1, 200_000), (299_990, 100), (131_072, 65_536)] {
            #expect(try f.read("data/big", offset: UInt64(offset), count: count) == Array(big[offset..<min(big.count, offset + count)]))
        }
        #expect(try f.read("data/big", offset: 400_000, count: 10).isEmpty)
    }

    @Test func metadataMatchesTheBootstrap() throws {
        let f = try Fixture()
        let big = try f.fs.getattr(nodeID: try f.node("data/big"))
        let hard = try f.fs.getattr(nodeID: try f.node("data/hard"))
        #expect(big.inode == hard.inode)
        #expect(big.linkCount == 2)
        #expect(big.size == 300_000)
        #expect(big.uid == 7 && big.gid == 8)
        #expect(big.modificationTime.seconds == 1_700_000_001 && big.modificationTime.nanoseconds == 5)
        #expect(try f.fs.readlink(nodeID: try f.node("data/link")) == Array("small".utf8))
        let small = try f.node("data/small")
        #expect(try f.fs.getxattr(nodeID: small, name: Array("user.note".utf8)) == Array("x".utf8))
        #expect(try f.fs.listxattr(nodeID: small) == [Array("user.note".utf8)])
        #expect(throws: FUSEError.self) { try f.fs.lookup(parent: FUSEProtocol.rootID, name: Array("missing".utf8)) }
        #expect(try f.fs.getattr(nodeID: FUSEProtocol.rootID).type == .directory)
        // Metadata needs no chunk.
        #expect(f.source.readCount == 0)
    }

    @Test func concurrentReadersFetchEachChunkOnce() throws {
        let f = try Fixture()
        f.source.delay = 0.05
        let big = f.image.files["data/big"]!
        let failures = TestCounter()
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            let offset = (i * 37_000) % 290_000
            let got = try? f.read("data/big", offset: UInt64(offset), count: 9_000)
            if got != Array(big[offset..<(offset + 9_000)]) { failures.increment() }
        }
        #expect(failures.value == 0)
        let ranges = f.source.reads
        // Every compressed byte was requested at most once.
        for (i, a) in ranges.enumerated() {
            for b in ranges[(i + 1)...] { #expect(!a.overlaps(b), "\(a) and \(b) overlap") }
        }
        let stats = f.fetcher.stats()
        #expect(stats.chunksFetched <= 5)
        #expect(stats.inFlight == 0)
    }

    @Test func adjacentChunksAreMergedIntoOneRange() throws {
        let f = try Fixture()
        _ = try f.read("data/big", count: 300_000)
        #expect(f.source.readCount == 1)
        #expect(f.fetcher.stats().rangeRequests == 1)
        #expect(f.fetcher.stats().chunksFetched == 5)
        // Everything cached now: no more source reads.
        _ = try f.read("data/big", count: 300_000)
        #expect(f.source.readCount == 1)
        #expect(f.fetcher.stats().cacheHits >= 5)
    }

    @Test func tamperedChunkGivesEIOAndIsNeverCached() throws {
        let f = try Fixture()
        let map = try f.image.bootstrap.chunkMap(try f.image.bootstrap.lookup(path: "data/exact"))
        let index = f.image.bootstrap.extensionRegion.chunkIndex(at: map[0]!)!
        f.source.corruptOffset = f.image.bootstrap.chunks[index].compressedOffset + 10
        do {
            _ = try f.read("data/exact", count: 1000)
            Issue.record("read of a tampered chunk succeeded")
        } catch let error as FUSEError {
            #expect(error.errno == .ioError)
        }
        #expect(!f.fetcher.cache.isCached(index))
        #expect(f.fetcher.stats().verificationFailures == 1)
        // Other files still work; the fixed source serves the chunk again.
        #expect(try f.read("data/small", count: 100) == f.image.files["data/small"])
        f.source.corruptOffset = nil
        #expect(try f.read("data/exact", count: 131_072) == f.image.files["data/exact"])
    }

    @Test func blockedSourceFailsWithinTheDeadline() throws {
        let f = try Fixture(deadline: .milliseconds(300))
        _ = try f.read("data/small", count: 10)
        f.source.blocked = true
        defer { f.source.blocked = false }
        let start = Date()
        #expect(throws: FUSEError.self) { try f.read("data/other", count: 1000) }
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed >= 0.25 && elapsed < 3, "took \(elapsed) s")
        #expect(f.fetcher.stats().timeouts == 1)
        // Cached data keeps being served.
        #expect(try f.read("data/small", count: 100) == f.image.files["data/small"])
    }

    @Test func transientFailuresAreRetried() throws {
        let f = try Fixture(retries: 3)
        f.source.failFirst = 2
        #expect(try f.read("data/small", count: 100) == f.image.files["data/small"])
        #expect(f.source.readCount == 3)
        let g = try Fixture(retries: 1)
        g.source.failFirst = 5
        #expect(throws: FUSEError.self) { try g.read("data/small", count: 100) }
        #expect(g.source.readCount == 2)
    }

    @Test func cacheSurvivesARestartAndDiscardsBitmapsWithoutData() throws {
        let dir = try TempDir()
        let image = try TestImage.make(in: dir)
        let first = try Fixture(dir: dir, image: image)
        _ = try first.read("data/big", count: 300_000)
        let cachedBefore = first.fetcher.cache.cachedCount()
        #expect(cachedBefore == 5)
        let second = try Fixture(dir: dir, image: image)
        #expect(second.fetcher.cache.cachedCount() == cachedBefore)
        #expect(try second.read("data/big", count: 300_000) == image.files["data/big"])
        #expect(second.source.readCount == 0)
        // A bitmap whose data file vanished is not trusted.
        let blobHex = image.bootstrap.blobs[0].digestHex
        try FileManager.default.removeItem(atPath: dir.path + "/cache/\(blobHex).data")
        let third = try Fixture(dir: dir, image: image)
        #expect(third.fetcher.cache.cachedCount() == 0)
        #expect(try third.read("data/big", count: 300_000) == image.files["data/big"])
    }

    @Test func completeCacheEqualsTheMaterializedBlob() throws {
        let f = try Fixture()
        #expect(!f.fetcher.cache.isComplete)
        try f.fetcher.ensure(Array(f.image.bootstrap.chunks.indices))
        #expect(f.fetcher.cache.isComplete)
        let m = try f.image.bootstrap.materialize(to: f.dir.path + "/mat", source: TestSource(path: f.image.blobPath))
        let materialized = try Data(contentsOf: URL(fileURLWithPath: m.blobPaths[0]))
        let cached = try Data(contentsOf: URL(fileURLWithPath: f.fetcher.cache.dataPath(blob: 0)))
        #expect(materialized == cached)
    }

    @Test(arguments: [(UInt64(0), 3), (UInt64(1 << 20), 1)])
    func mergeWindow(gap: UInt64, expectedRanges: Int) throws {
        let f = try Fixture(mergeGap: gap)
        let b = f.image.bootstrap
        // The first chunk of three files that are not adjacent in the blob.
        var picks: [Int] = []
        for path in ["data/big", "data/exact", "data/other"] {
            let map = try b.chunkMap(try b.lookup(path: path))
            picks.append(b.extensionRegion.chunkIndex(at: map[0]!)!)
        }
        let groups = f.fetcher.mergeRanges(picks)
        #expect(groups.count == expectedRanges)
    }

    @Test func traceRecordsFirstAccessOrder() throws {
        let f = try Fixture()
        let trace = AccessTrace(outputPath: f.dir.path + "/trace.txt", rootNid: f.image.bootstrap.rootNid)
        let fs = LazyFileSystem(fetcher: f.fetcher, trace: trace, logger: Logger(label: "test"))
        func open(_ path: String) throws {
            var node = FUSEProtocol.rootID
            for part in path.split(separator: "/") { node = try fs.lookup(parent: node, name: Array(part.utf8)).nodeID }
            _ = try fs.open(nodeID: node, flags: 0)
        }
        try open("data/small")
        try open("data/big")
        try open("data/small")
        try trace.write()
        let text = try String(contentsOfFile: trace.outputPath, encoding: .utf8)
        #expect(text.split(separator: "\n").filter { !$0.hasPrefix("#") } == ["/data/small", "/data/big"])
    }

    @Test func rateLimitedSourceSpreadsReadsOverTime() throws {
        // 4 MiB through a 16 MiB/s cap takes at least ~0.2 s (minus the
        // 50 ms burst), and the bytes are passed through unchanged.
        let dir = try TempDir()
        let path = dir.path + "/blob"
        let data = noise(4 << 20, seed: 7)
        FileManager.default.createFile(atPath: path, contents: Data(data))
        let limited = RateLimitedChunkSource(TestSource(path: path), bytesPerSecond: 16 << 20)
        let start = Date()
        var read: [UInt8] = []
        for i in 0..<4 { read += try limited.read(blob: 0, range: UInt64(i << 20)..<UInt64((i + 1) << 20)) }
        let elapsed = Date().timeIntervalSince(start)
        #expect(read == data)
        #expect(elapsed >= 0.18, "\(elapsed) s")
    }
}

final class TestCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
