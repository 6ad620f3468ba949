import Foundation
import KangarooImage
import KangarooOCI
import Synchronization

/// An in-memory layer for `ImageBuilder`.
final class MemoryLayer: LayerEntrySource {
    var items: [(entry: LayerEntry, data: [UInt8])] = []
    private var index = -1
    private var sent = false
    private var held: [UInt8] = []

    func dir(_ path: String) {
        items.append((LayerEntry(path: path, kind: .directory, mode: 0o755, mtimeSeconds: 1_700_000_000), []))
    }
    func file(_ path: String, _ data: [UInt8], xattrs: [String: [UInt8]] = [:]) {
        items.append((LayerEntry(path: path, kind: .regular, mode: 0o644, uid: 7, gid: 8, mtimeSeconds: 1_700_000_001,
                                 mtimeNanoseconds: 5, size: UInt64(data.count), xattrs: xattrs), data))
    }
    func add(_ path: String, _ kind: LayerEntry.Kind) {
        items.append((LayerEntry(path: path, kind: kind, mode: 0o777, mtimeSeconds: 1_600_000_000), []))
    }
    func nextEntry() throws(ImageError) -> LayerEntry? {
        index += 1
        sent = false
        return index < items.count ? items[index].entry : nil
    }
    func nextDataBlock() throws(ImageError) -> (offset: UInt64, bytes: UnsafeRawBufferPointer)? {
        guard index < items.count, !sent, !items[index].data.isEmpty else { return nil }
        sent = true
        held = items[index].data
        return (0, held.withUnsafeBytes { UnsafeRawBufferPointer($0) })
    }
}

func noise(_ count: Int, seed: UInt64) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var out = [UInt8](repeating: 0, count: count)
    for i in 0..<count {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        out[i] = UInt8(truncatingIfNeeded: x)
    }
    return out
}

final class TempDir: @unchecked Sendable {
    let path: String
    init() throws {
        path = "/tmp/kangaroo-test-lazyfs-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// A built test image: files by path, the bootstrap and its blob file.
struct TestImage {
    var bootstrap: Bootstrap
    var blobPath: String
    var files: [String: [UInt8]]

    static func make(in dir: TempDir) throws -> TestImage {
        let layer = MemoryLayer()
        var files: [String: [UInt8]] = [:]
        layer.dir("")
        layer.dir("data")
        files["data/big"] = noise(300_000, seed: 1)          // 5 chunks of 64 KiB
        files["data/exact"] = noise(131_072, seed: 2)        // exactly 2 chunks
        files["data/small"] = Array("hello lazy world\n".utf8)
        files["data/zeros"] = [UInt8](repeating: 0, count: 70_000)
        files["data/other"] = noise(200_000, seed: 3)
        for (path, bytes) in files.sorted(by: { $0.key < $1.key }) {
            layer.file(path, bytes, xattrs: path == "data/small" ? ["user.note": Array("x".utf8)] : [:])
        }
        layer.add("data/link", .symlink(target: "small"))
        layer.add("data/hard", .hardlink(target: "data/big"))
        let work = dir.path + "/work"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let builder = try ImageBuilder(options: BuildOptions(chunkSize: 1 << 16), workDirectory: work)
        try builder.addLayer(layer, name: "L0")
        let blobPath = dir.path + "/blob"
        let result = try builder.finish(blobPath: blobPath)
        return TestImage(bootstrap: try Bootstrap(bytes: result.bootstrap), blobPath: blobPath, files: files)
    }
}

/// A chunk source over the blob file with hooks: counts reads, can corrupt
/// bytes, block, or fail the first N reads.
final class TestSource: ChunkSource, @unchecked Sendable {
    let path: String
    let lock = NSLock()
    var reads: [Range<UInt64>] = []
    var corruptOffset: UInt64?
    var failFirst = 0
    var blocked = false
    var delay: Double = 0

    init(path: String) { self.path = path }

    func read(blob: Int, range: Range<UInt64>) throws -> [UInt8] {
        lock.lock()
        reads.append(range)
        let failing = failFirst > 0
        if failing { failFirst -= 1 }
        let corrupt = corruptOffset, block = blocked, delay = self.delay
        lock.unlock()
        if block { while true { Thread.sleep(forTimeInterval: 0.05); if !isBlocked { break } } }
        if delay > 0 { Thread.sleep(forTimeInterval: delay) }
        if failing { throw CocoaError(.fileReadUnknown) }
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: range.lowerBound)
        var bytes = [UInt8](try handle.read(upToCount: range.count) ?? Data())
        if let corrupt, range.contains(corrupt) { bytes[Int(corrupt - range.lowerBound)] ^= 0xFF }
        return bytes
    }

    var isBlocked: Bool { lock.lock(); defer { lock.unlock() }; return blocked }
    var readCount: Int { lock.lock(); defer { lock.unlock() }; return reads.count }
}
