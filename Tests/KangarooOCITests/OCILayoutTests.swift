import Foundation
import SystemPackage
import Testing
@testable import KangarooOCI

@Suite struct OCILayoutTests {
    /// Writes a one-layer image into `layout` and returns the manifest descriptor.
    static func writeImage(_ layout: OCILayout, layer: [UInt8], arch: String = "amd64") throws -> Descriptor {
        var layerDescriptor = try layout.writeBlob(bytes: layer, mediaType: MediaTypes.layer)
        layerDescriptor.annotations = ["test": arch]
        let config = ImageConfiguration(architecture: arch, os: "linux",
                                        config: .init(env: ["PATH=/usr/bin"], cmd: ["/bin/sh"]),
                                        rootfs: .init(diffIDs: [layerDescriptor.digest]))
        let configDescriptor = try layout.writeJSON(config, mediaType: MediaTypes.imageConfig)
        let manifest = ImageManifest(config: configDescriptor, layers: [layerDescriptor])
        return try layout.writeJSON(manifest, mediaType: MediaTypes.imageManifest)
    }

    @Test func createWriteTagResolveRoundTrip() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let layout = try OCILayout(at: dir.filePath.appending("store"), create: true)
        let descriptor = try Self.writeImage(layout, layer: Array("layer-bytes".utf8))
        try layout.setTag("v1", to: descriptor)
        try layout.setTag("v2", to: descriptor)

        // Reopen without create: content and tags persist.
        let reopened = try OCILayout(at: dir.filePath.appending("store"), create: false)
        #expect(Set(reopened.tags().keys) == ["v1", "v2"])
        let resolved = try reopened.resolve(tag: "v1")
        #expect(resolved.digest == descriptor.digest)
        let manifest = try reopened.readManifest(resolved)
        #expect(manifest.layers.count == 1)
        #expect(try reopened.readBlob(manifest.layers[0].digest) == Array("layer-bytes".utf8))
        #expect(try reopened.readConfig(manifest).config?.cmd == ["/bin/sh"])

        // Retagging replaces, removing deletes.
        let other = try Self.writeImage(layout, layer: Array("other".utf8))
        try layout.setTag("v1", to: other)
        #expect(try layout.resolve(tag: "v1").digest == other.digest)
        #expect(try layout.readIndex().manifests.count == 2)
        #expect(try layout.removeTag("v2"))
        #expect(try !layout.removeTag("v2"))
        do {
            _ = try layout.resolve(tag: "v2")
            Issue.record("removed tag resolved")
        } catch {
            #expect(error.code == .notFound)
            #expect(error.message.contains("v1"))
        }

        // Garbage collection keeps what v1 reaches and drops the rest.
        let removed = try layout.garbageCollect()
        #expect(removed.contains(descriptor.digest))
        #expect(layout.hasBlob(other.digest))
        #expect(try layout.readManifest(layout.resolve(tag: "v1")).layers[0].annotations?["test"] == "amd64")
    }

    @Test func layoutFilesFollowTheSpec() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let layout = try OCILayout(at: dir.filePath, create: true)
        let header = try readBytes(dir.file("oci-layout"))
        #expect(String(decoding: header, as: UTF8.self) == #"{"imageLayoutVersion":"1.0.0"}"#)
        let d = try layout.writeBlob(bytes: [1, 2, 3])
        #expect(FileManager.default.fileExists(atPath: dir.file("blobs/sha256/\(d.encoded)")))
        // umoci can read what we wrote (independent implementation).
        let image = try Self.writeImage(layout, layer: try tarBytes(dir))
        try layout.setTag("t", to: image)
        let out = try run("/usr/bin/umoci", ["stat", "--image", "\(dir.path):t", "--json"])
        #expect(out.contains("history") || out.contains("{"))
    }

    func tarBytes(_ dir: TempDir) throws -> [UInt8] {
        try makeTar(dir, "layer.tar", [#"add(t, "hello", data=b"hi")"#])
    }

    @Test func corruptBlobIsDetected() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let layout = try OCILayout(at: dir.filePath, create: true)
        let d = try layout.writeBlob(bytes: Array("good".utf8))
        try Data("evil".utf8).write(to: URL(fileURLWithPath: layout.blobPath(d).string))
        do {
            _ = try layout.readBlob(d)
            Issue.record("corrupt blob accepted")
        } catch {
            #expect(error.code == .digestMismatch)
        }
    }

    @Test func importVerifiesExpectedDigest() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let layout = try OCILayout(at: dir.filePath.appending("l"), create: true)
        let src = dir.file("src")
        let content = [UInt8]((0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try Data(content).write(to: URL(fileURLWithPath: src))
        let (digest, size) = try layout.importBlob(from: FilePath(src), expected: nil)
        #expect(digest == Digest.sha256(of: content) && size == 3_000_000)
        #expect(try layout.readBlob(digest) == content)
        let wrong = Digest.sha256(of: [0])
        do {
            _ = try layout.importBlob(from: FilePath(src), expected: wrong)
            Issue.record("mismatch accepted")
        } catch {
            #expect(error.code == .digestMismatch)
        }
        #expect(!layout.hasBlob(wrong))
        // Nothing is left in blobs/tmp.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.file("l/blobs/tmp")).isEmpty)
    }

    @Test func crashLeftoversAreRemovedButLiveWritersKept() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let layout = try OCILayout(at: dir.filePath, create: true)
        // A live writer (holding its lock) and a dead one's leftover file.
        let live = try layout.makeBlobWriter()
        try live.write(Array("in progress".utf8))
        try Data("partial".utf8).write(to: URL(fileURLWithPath: dir.file("blobs/tmp/blob-crashed")))
        _ = try OCILayout(at: dir.filePath, create: false)
        let left = try FileManager.default.contentsOfDirectory(atPath: dir.file("blobs/tmp"))
        #expect(left == [live.temporaryPath.lastComponent!.string])
        let d = try live.commit()
        #expect(try layout.readBlob(d.digest) == Array("in progress".utf8))
    }

    @Test func concurrentTaggingLosesNothing() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let layout = try OCILayout(at: dir.filePath, create: true)
        let d = try Self.writeImage(layout, layer: [9])
        // Separate processes would use separate fds; so do these threads.
        await withTaskGroup(of: Void.self) { group in
            for i in 0..<32 {
                group.addTask {
                    try? layout.setTag("tag\(i)", to: d)
                }
            }
        }
        #expect(layout.tags().count == 32)
    }

    @Test func indexResolvesPlatform() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let layout = try OCILayout(at: dir.filePath, create: true)
        var amd = try Self.writeImage(layout, layer: [1], arch: "amd64")
        amd.platform = .linuxAMD64
        var arm = try Self.writeImage(layout, layer: [2], arch: "arm64")
        arm.platform = Platform(architecture: "arm64", os: "linux", variant: "v8")
        let index = try layout.writeJSON(ImageIndex(manifests: [arm, amd]), mediaType: MediaTypes.imageIndex)
        try layout.setTag("multi", to: index)
        let tagged = try layout.resolve(tag: "multi")
        #expect(try layout.readManifest(tagged).layers[0].annotations?["test"] == "amd64")
        #expect(try layout.readManifest(tagged, platform: Platform(architecture: "arm64", os: "linux")).layers[0].annotations?["test"] == "arm64")
        #expect(throws: OCIError.self) { try layout.readManifest(tagged, platform: Platform(architecture: "s390x", os: "linux")) }
    }

    @Test func openingANonLayoutFails() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        do {
            _ = try OCILayout(at: dir.filePath, create: false)
            Issue.record("opened a plain directory")
        } catch {
            #expect(error.code == .invalidLayout)
        }
        #expect(throws: OCIError.self) { try OCILayout(at: dir.filePath.appending("missing"), create: false) }
    }
}
