import Foundation
import KangarooTestSupport
import Testing

struct InspectBlob: Decodable { var digest: String; var compressedSize: Int64; var uncompressedSize: Int64; var chunks: Int }
struct InspectOutput: Decodable {
    var files: Int
    var chunks: Int
    var uniqueChunks: Int
    var compressedSize: Int64
    var blobs: [InspectBlob]
    var prefetchCount: Int
}

func inspect(_ ref: String, store: String) throws -> InspectOutput {
    let r = try kangaroo(["image", "inspect", "--json", ref], store: store)
    return try JSONDecoder().decode(InspectOutput.self, from: Data(r.stdout.utf8))
}

func blobFiles(_ store: String) throws -> Set<String> {
    Set(try FileManager.default.contentsOfDirectory(atPath: store + "/blobs/sha256"))
}

/// Chunk dictionaries and store-level dedup.
@Suite("deduplication", .serialized, .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct ImageDedupTests {
    @Test("--chunk-dict: the python image adds only the chunks the base image lacks")
    func chunkDict() throws {
        let tmp = try TempDir("dedup")
        let store = tmp.sub("store")
        let layout = "\(TestEnv.images)/debian-python"
        try kangaroo(["image", "convert", "--quiet", "oci:\(layout):base", "base"], store: store)
        try kangaroo(["image", "convert", "--quiet", "oci:\(layout):python", "python-alone"], store: tmp.sub("alone"))
        let base = try inspect("base", store: store)
        let alone = try inspect("python-alone", store: tmp.sub("alone"))
        #expect(base.blobs.count == 1 && alone.blobs.count == 1)

        try kangaroo(["image", "convert", "--quiet", "--chunk-dict", "base", "oci:\(layout):python", "python"], store: store)
        let withDict = try inspect("python", store: store)
        // the dictionary's blob is referenced, not copied; one new blob holds the rest
        #expect(withDict.blobs.contains { $0.digest == base.blobs[0].digest })
        #expect(withDict.blobs.count == 2)
        let newBlob = try #require(withDict.blobs.first { $0.digest != base.blobs[0].digest })
        #expect(withDict.uniqueChunks == alone.uniqueChunks, "same tree, same unique chunks")
        #expect(newBlob.chunks < alone.uniqueChunks)
        #expect(newBlob.chunks > 0)
        // every chunk is either in the base blob or in the new one, never both
        #expect(newBlob.chunks + withDict.blobs.first { $0.digest == base.blobs[0].digest }!.chunks >= withDict.uniqueChunks)
        #expect(newBlob.compressedSize < alone.blobs[0].compressedSize / 2,
                "new blob \(newBlob.compressedSize) B vs \(alone.blobs[0].compressedSize) B without the dictionary")
        try kangaroo(["image", "check", "python"], store: store)
        // the image still reads back exactly
        try run("umoci", ["unpack", "--image", "\(layout):python", tmp.sub("umoci")], check: true)
        try kangaroo(["image", "unpack", "python", tmp.sub("unpacked")], store: store)
        try expectSameTree(tmp.sub("umoci/rootfs"), tmp.sub("unpacked"), "python image converted with a chunk dict")
    }

    @Test("converting the same image twice stores nothing new")
    func twice() throws {
        let tmp = try TempDir("twice")
        let store = tmp.sub("store")
        let source = "oci:\(TestEnv.images)/sample:latest"
        try kangaroo(["image", "convert", "--quiet", source, "s1"], store: store)
        let before = try blobFiles(store)
        try kangaroo(["image", "convert", "--quiet", source, "s2"], store: store)
        #expect(try blobFiles(store) == before)
        let s1 = try inspect("s1", store: store), s2 = try inspect("s2", store: store)
        #expect(s1.blobs.map(\.digest) == s2.blobs.map(\.digest))
        // within the image, duplicate files share chunks
        #expect(s1.uniqueChunks < s1.chunks)
    }
}

/// `kangaroo image check` finds a single flipped byte anywhere.
@Suite("verification", .serialized, .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct ImageCheckTests {
    @Test("a flipped byte in a blob names the blob, the chunk and a file", arguments: [0.1, 0.5, 0.97])
    func blobCorruption(position: Double) throws {
        let tmp = try TempDir("check-blob")
        let store = tmp.sub("store")
        try kangaroo(["image", "convert", "--quiet", "oci:\(TestEnv.images)/sample:latest", "s"], store: store)
        let info = try inspect("s", store: store)
        let blob = info.blobs[0]
        let hex = String(blob.digest.dropFirst("sha256:".count))
        try flipByte(store + "/blobs/sha256/" + hex, at: UInt64(Double(blob.compressedSize) * position))
        let r = try kangaroo(["image", "check", "s"], store: store, check: false)
        #expect(r.status != 0)
        #expect(r.output.contains(hex.prefix(12)), "check does not name the blob: \(r.output)")
        #expect(r.output.contains("chunk"), "check does not name the chunk: \(r.output)")
        #expect(r.output.contains("/app/") || r.output.contains("/bin/") || r.output.contains("/etc/"),
                "check names no file path: \(r.output)")
    }

    @Test("a flipped byte in the bootstrap fails its digest")
    func bootstrapCorruption() throws {
        let tmp = try TempDir("check-boot")
        let store = tmp.sub("store")
        try kangaroo(["image", "convert", "--quiet", "oci:\(TestEnv.images)/sample:latest", "s"], store: store)
        let r0 = try kangaroo(["image", "inspect", "--json", "s"], store: store)
        let boot = try #require((try JSONSerialization.jsonObject(with: Data(r0.stdout.utf8)) as? [String: Any])?["bootstrapDigest"] as? String)
        let path = store + "/blobs/sha256/" + boot.dropFirst("sha256:".count)
        let size = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64)
        try flipByte(path, at: size / 2)
        let r = try kangaroo(["image", "check", "s"], store: store, check: false)
        #expect(r.status != 0)
        #expect(r.output.contains("bootstrap"), "\(r.output)")
    }
}
