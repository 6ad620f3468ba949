import Foundation
import KangarooOCI
import Testing
@testable import KangarooImage

/// A comparable view of one path of an image.
struct Snap: Equatable, CustomStringConvertible {
    var type: String
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var size: UInt64
    var mtime: Int64
    var nsec: UInt32
    var nlink: UInt32
    var target: String?
    var rdev: UInt32?
    var xattrs: [String: [UInt8]]
    var sha: String?
    var description: String { "\(type) \(String(mode, radix: 8)) \(uid):\(gid) size=\(size) mtime=\(mtime).\(nsec) nlink=\(nlink) \(target ?? "") \(xattrs.keys.sorted()) \(sha ?? "")" }
}

func snapshot(_ b: Bootstrap, source: any ChunkSource) throws -> [String: Snap] {
    var out: [String: Snap] = [:]
    try b.walk { (path, inode) throws(ImageError) in
        var s = Snap(type: "\(inode.kind)", mode: inode.mode, uid: inode.uid, gid: inode.gid, size: inode.kind == .directory ? 0 : inode.size,
                     mtime: inode.mtimeSeconds, nsec: inode.mtimeNanoseconds, nlink: inode.nlink, target: nil, rdev: nil,
                     xattrs: Dictionary(uniqueKeysWithValues: try b.xattrs(inode).map { ($0.name, $0.value) }), sha: nil)
        switch inode.kind {
        case .symlink: s.target = try b.readlink(inode)
        case .characterDevice, .blockDevice: s.rdev = inode.iu
        case .regular where inode.size <= 64 << 20:
            do { s.sha = Digest.sha256(of: try b.readFile(inode, offset: 0, length: Int(inode.size), source: source)).encoded } catch {
                throw ImageError(.io, "read \(path): \(error)")
            }
        default: break
        }
        out[path] = s
    }
    return out
}

@Suite struct RoundTripTests {
    static func everyKind(huge: Bool = true) -> MemoryLayer {
        let l = MemoryLayer()
        l.dir("", mode: 0o755, mtime: 1_000)
        l.dir("etc", mode: 0o755)
        l.file("etc/hostname", Array("kangaroo\n".utf8), mode: 0o644, uid: 1000, gid: 1001)
        l.file("etc/empty", [], mode: 0o600)
        l.file("bin/suid", noise(70_000, seed: 1), mode: 0o4755, uid: 0, gid: 0)
        l.file("big/text", text(300_000, seed: 3), xattrs: ["user.comment": Array("hello".utf8), "security.capability": [1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
        l.add("big/link", .hardlink(target: "big/text"))
        l.add("etc/alias", .symlink(target: "hostname"))
        l.add("etc/abs", .symlink(target: "/" + String(repeating: "x/", count: 1500) + "end"))
        l.add("etc/longest", .symlink(target: String(repeating: "y", count: 4095)))  // too long to inline: FLAT_PLAIN
        l.add("dev/null", .characterDevice(major: 1, minor: 3), mode: 0o666)
        l.add("dev/loop300", .blockDevice(major: 7, minor: 300), mode: 0o660)
        l.add("run/fifo", .fifo, mode: 0o644)
        l.add("run/sock", .socket, mode: 0o755)
        l.dir("trusted", xattrs: ["trusted.overlay.opaque": Array("y".utf8), "user." + String(repeating: "n", count: 200): noise(3000, seed: 9)])
        l.dir("many")
        for i in 0..<400 { l.file("many/file-\(String(repeating: "z", count: i % 50))-\(i)", Array("\(i)".utf8)) }
        if huge { l.sparse("sparse/huge", size: 5 << 30, blocks: [(0, Array("head".utf8)), ((5 << 30) - 4, Array("tail".utf8))]) }
        return l
    }

    @Test func everyEntryKindRoundTrips() throws {
        let dir = try TempDir()
        let built = try build([Self.everyKind()], in: dir)
        let b = built.bootstrap
        let snap = try snapshot(b, source: built.source)
        #expect(snap[""]?.mtime == 1_000)
        #expect(snap["etc/hostname"]?.uid == 1000 && snap["etc/hostname"]?.gid == 1001)
        #expect(snap["etc/hostname"]?.sha == Digest.sha256(of: Array("kangaroo\n".utf8)).encoded)
        #expect(snap["etc/hostname"]?.nsec == 123_456_789)
        #expect(snap["etc/empty"]?.size == 0)
        #expect(snap["bin/suid"]?.mode == 0o104755)
        #expect(snap["bin/suid"]?.sha == Digest.sha256(of: noise(70_000, seed: 1)).encoded)
        #expect(snap["big/text"]?.nlink == 2 && snap["big/link"]?.nlink == 2)
        #expect(try b.lookup(path: "big/text").nid == b.lookup(path: "big/link").nid)
        #expect(snap["big/text"]?.xattrs["user.comment"] == Array("hello".utf8))
        #expect(snap["big/text"]?.xattrs.count == 2)
        #expect(snap["trusted"]?.xattrs.count == 2)
        #expect(snap["etc/alias"]?.target == "hostname")
        #expect(snap["etc/abs"]?.target?.hasSuffix("x/end") == true)
        #expect(snap["dev/null"]?.type == "characterDevice")
        #expect(try b.lookup(path: "dev/null").device == (1, 3))
        #expect(try b.lookup(path: "dev/loop300").device == (7, 300))
        #expect(snap["run/fifo"]?.type == "fifo" && snap["run/sock"]?.type == "socket")
        #expect(snap["many"]?.nlink == 2)
        #expect(snap[""]?.nlink == UInt32(10))
        #expect(try b.children(b.lookup(path: "many")).count == 400)
        #expect(snap["sparse/huge"]?.size == 5 << 30)
        let huge = try b.lookup(path: "sparse/huge")
        #expect(try b.readFile(huge, offset: (5 << 30) - 4, length: 10, source: built.source) == Array("tail".utf8))
        #expect(try b.readFile(huge, offset: 0, length: 6, source: built.source) == Array("head".utf8) + [0, 0])
        #expect(try b.chunkMap(huge).compactMap { $0 }.count == 2)
        // Directory entries are sorted byte-wise with "." and "..".
        let names = try b.readdir(b.lookup(path: "etc")).map(\.name)
        #expect(names == [".", "..", "abs", "alias", "empty", "hostname", "longest"])
        #expect(try b.lookup(path: "etc/longest").layout == EROFS.layoutFlatPlain)
        #expect(snap["etc/longest"]?.target?.utf8.count == 4095)
    }

    @Test func blockSearchLookupMatchesReaddir() throws {
        let dir = try TempDir()
        let built = try build([Self.everyKind(huge: false)], in: dir)
        let b = built.bootstrap
        let many = try b.lookup(path: "many")
        #expect(many.size > 4 * 4096)
        let entries = try b.readdir(many)
        for e in entries {
            #expect(try b.lookup(in: many, name: e.name)?.nid == e.nid)
        }
        for missing in ["", "!", "file-0", "file--1000", "many", "zzzz", "file-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-99"] {
            #expect(try b.lookup(in: many, name: missing) == nil, "\(missing)")
        }
    }

    @Test(arguments: [0, 1, 65_535, 65_536, 65_537, 3 * 65_536 + 1])
    func chunkBoundaries(size: Int) throws {
        let dir = try TempDir()
        let l = MemoryLayer()
        let data = noise(size, seed: UInt64(size) + 7)
        l.file("f", data)
        let built = try build([l], in: dir)
        let inode = try built.bootstrap.lookup(path: "f")
        #expect(inode.size == UInt64(size))
        #expect(try built.bootstrap.chunkMap(inode).count == (size + 65_535) / 65_536)
        #expect(try built.bootstrap.readFile(inode, offset: 0, length: size + 10, source: built.source) == data)
        if size > 2 {
            #expect(try built.bootstrap.readFile(inode, offset: UInt64(size / 2), length: 3, source: built.source) == Array(data[(size / 2)..<min(size, size / 2 + 3)]))
        }
    }

    @Test func dedupWithinImageAndZeroChunksAreHoles() throws {
        let dir = try TempDir()
        let l = MemoryLayer()
        let block = noise(65_536, seed: 5)
        l.file("a", block + block + block)
        l.file("b", block)
        l.file("zeros", [UInt8](repeating: 0, count: 200_000))
        let built = try build([l], in: dir)
        #expect(built.result.stats.uniqueChunks == 1)
        #expect(built.result.stats.chunks == 4)
        #expect(built.result.stats.dedupRatio == 4)
        #expect(try built.bootstrap.chunkMap(built.bootstrap.lookup(path: "zeros")).allSatisfy { $0 == nil })
        #expect(built.bootstrap.chunks.count == 1)
    }

    @Test(arguments: [ChunkCompression.zstd, .lz4, .none])
    func compressionsRoundTrip(_ compression: ChunkCompression) throws {
        let dir = try TempDir()
        let l = MemoryLayer()
        l.file("t", text(200_000, seed: 1))
        l.file("n", noise(100_000, seed: 2))
        let built = try build([l], options: BuildOptions(chunkSize: 1 << 16, compression: compression), in: dir)
        let b = built.bootstrap
        #expect(try b.readFile(b.lookup(path: "t"), offset: 0, length: 200_000, source: built.source) == text(200_000, seed: 1))
        #expect(try b.readFile(b.lookup(path: "n"), offset: 0, length: 100_000, source: built.source) == noise(100_000, seed: 2))
        if compression != .none { #expect(built.result.stats.newBytesStored < 300_000) }
        #expect(b.blobs[0].compression == compression)
    }

    @Test func buildsAreDeterministic() throws {
        let dir = try TempDir()
        var options = BuildOptions(chunkSize: 1 << 16, prefetch: ["many/file--0", "etc/hostname"])
        options.workers = 2
        let one = try build([Self.everyKind()], options: options, in: dir, name: "one")
        options.workers = 1
        let two = try build([Self.everyKind()], options: options, in: dir, name: "two")
        #expect(one.result.bootstrap == two.result.bootstrap)
        #expect(one.blobBytes == two.blobBytes)
        #expect(one.bootstrap.prefetch == ["many/file--0", "etc/hostname"])
        // Prefetched chunks come first in the blob.
        let first = try one.bootstrap.chunkMap(one.bootstrap.lookup(path: "many/file--0"))[0]
        #expect(first?.blockAddress == 0)
    }

    @Test func chunkDictionaryAvoidsNewBlob() throws {
        let dir = try TempDir()
        let base = try build([Self.everyKind()], in: dir, name: "base")
        var dict = ChunkDictionary()
        dict.add(base.bootstrap)
        let blobPath = dir.path + "/base.blob"
        let again = try build([Self.everyKind()], in: dir, dictionary: dict, dictionaryBlobs: [base.bootstrap.blobs[0].digest: blobPath], name: "again")
        #expect(again.result.newBlobIndex == nil)
        #expect(again.result.stats.newBytesStored == 0)
        #expect(again.bootstrap.blobs == base.bootstrap.blobs)
        #expect(try snapshot(again.bootstrap, source: again.source) == snapshot(base.bootstrap, source: base.source))
        // Partial overlap: old chunks referenced, new ones in a second blob.
        let extra = MemoryLayer()
        extra.file("new", noise(10_000, seed: 77))
        let mixed = try build([Self.everyKind(), extra], in: dir, dictionary: dict, dictionaryBlobs: [base.bootstrap.blobs[0].digest: blobPath], name: "mixed")
        #expect(mixed.bootstrap.blobs.count == 2)
        #expect(mixed.result.newBlobIndex == 1)
        #expect(try mixed.bootstrap.readFile(mixed.bootstrap.lookup(path: "new"), offset: 0, length: 10_000, source: mixed.source) == noise(10_000, seed: 77))
    }
}
