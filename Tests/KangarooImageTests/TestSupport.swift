import Foundation
import KangarooOCI
@testable import KangarooImage

/// An in-memory layer: entries with their data blocks (gaps are holes).
final class MemoryLayer: LayerEntrySource {
    struct Item {
        var entry: LayerEntry
        var blocks: [(UInt64, [UInt8])]
    }

    var items: [Item] = []
    private var index = -1
    private var block = 0

    init() {}

    func dir(_ path: String, mode: UInt32 = 0o755, uid: UInt32 = 0, mtime: Int64 = 1_700_000_000, xattrs: [String: [UInt8]] = [:]) {
        items.append(Item(entry: LayerEntry(path: path, kind: .directory, mode: mode, uid: uid, gid: uid, mtimeSeconds: mtime,
                                            mtimeNanoseconds: 5, xattrs: xattrs), blocks: []))
    }

    func file(_ path: String, _ data: [UInt8], mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0, mtime: Int64 = 1_700_000_001,
              nsec: UInt32 = 123_456_789, xattrs: [String: [UInt8]] = [:]) {
        items.append(Item(entry: LayerEntry(path: path, kind: .regular, mode: mode, uid: uid, gid: gid, mtimeSeconds: mtime,
                                            mtimeNanoseconds: nsec, size: UInt64(data.count), xattrs: xattrs),
                          blocks: data.isEmpty ? [] : [(UInt64(0), data)]))
    }

    func sparse(_ path: String, size: UInt64, blocks: [(UInt64, [UInt8])]) {
        items.append(Item(entry: LayerEntry(path: path, kind: .regular, mode: 0o600, size: size), blocks: blocks))
    }

    func add(_ path: String, _ kind: LayerEntry.Kind, mode: UInt32 = 0o777, uid: UInt32 = 0, xattrs: [String: [UInt8]] = [:]) {
        items.append(Item(entry: LayerEntry(path: path, kind: kind, mode: mode, uid: uid, gid: uid, mtimeSeconds: 1_600_000_000,
                                            mtimeNanoseconds: 42, xattrs: xattrs), blocks: []))
    }

    func nextEntry() throws(ImageError) -> LayerEntry? {
        index += 1
        block = 0
        return index < items.count ? items[index].entry : nil
    }

    private var held: [UInt8] = []
    func nextDataBlock() throws(ImageError) -> (offset: UInt64, bytes: UnsafeRawBufferPointer)? {
        guard index < items.count, block < items[index].blocks.count else { return nil }
        let (offset, data) = items[index].blocks[block]
        block += 1
        held = data
        return (offset, held.withUnsafeBytes { UnsafeRawBufferPointer($0) })
    }
}

/// A temp directory removed on deinit.
final class TempDir {
    let path: String
    init() throws {
        path = "/tmp/kangaroo-test-image-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Reads blobs from plain files by index.
struct FileChunkSource: ChunkSource {
    var paths: [String]
    func read(blob: Int, range: Range<UInt64>) throws -> [UInt8] {
        let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: paths[blob]))
        defer { try? h.close() }
        try h.seek(toOffset: range.lowerBound)
        return [UInt8](try h.read(upToCount: range.count) ?? Data())
    }
}

struct Built {
    var result: BuildResult
    var bootstrap: Bootstrap
    var source: FileChunkSource
    var blobBytes: [UInt8]?
}

/// Builds layers with `ImageBuilder` into `dir`; blob paths: dictionary blobs + new blob.
func build(_ layers: [MemoryLayer], options: BuildOptions = BuildOptions(chunkSize: 1 << 16), in dir: TempDir,
           dictionary: ChunkDictionary = ChunkDictionary(), dictionaryBlobs: [[UInt8]: String] = [:], name: String = "blob") throws -> Built {
    let work = dir.path + "/work-\(name)"
    try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    let builder = try ImageBuilder(options: options, dictionary: dictionary, workDirectory: work)
    for (i, layer) in layers.enumerated() { try builder.addLayer(layer, name: "L\(i)") }
    let blobPath = dir.path + "/\(name).blob"
    let result = try builder.finish(blobPath: blobPath)
    let bootstrap = try Bootstrap(bytes: result.bootstrap)
    var paths: [String] = []
    for (i, blob) in result.blobs.enumerated() {
        paths.append(i == result.newBlobIndex ? blobPath : (dictionaryBlobs[blob.digest] ?? "/nonexistent"))
    }
    let blobBytes = result.newBlobIndex == nil ? nil : [UInt8](try Data(contentsOf: URL(fileURLWithPath: blobPath)))
    return Built(result: result, bootstrap: bootstrap, source: FileChunkSource(paths: paths), blobBytes: blobBytes)
}

/// Deterministic pseudo-random bytes.
func noise(_ count: Int, seed: UInt64) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var out = [UInt8](repeating: 0, count: count)
    for i in 0..<count {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        out[i] = UInt8(truncatingIfNeeded: x)
    }
    return out
}

/// Compressible text-like bytes.
func text(_ count: Int, seed: Int) -> [UInt8] {
    let words = ["kangaroo", "image", "chunk", "erofs", "blob", "layer", "\n", " "]
    var out: [UInt8] = []
    var i = seed
    while out.count < count {
        out.append(contentsOf: words[i % words.count].utf8)
        i = (i &* 31 &+ 7) % 1009
    }
    return Array(out.prefix(count))
}
