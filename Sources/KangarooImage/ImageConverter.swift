import Foundation
import KangarooOCI
import SystemPackage

/// Adapts `KangarooOCI.LayerReader` to `LayerEntrySource`.
final class LayerReaderSource: LayerEntrySource {
    let reader: LayerReader
    let name: String

    init(reader: LayerReader, name: String) {
        self.reader = reader
        self.name = name
    }

    func nextEntry() throws(ImageError) -> LayerEntry? {
        do { return try reader.next() } catch {
            throw ImageError(error.code == .hostileEntry ? .hostileEntry : .source, "layer \(name)", underlying: error)
        }
    }

    func nextDataBlock() throws(ImageError) -> (offset: UInt64, bytes: UnsafeRawBufferPointer)? {
        do { return try reader.nextDataBlock() } catch {
            throw ImageError(error.code == .hostileEntry ? .hostileEntry : .source, "layer \(name)", underlying: error)
        }
    }
}

/// The result of a conversion.
public struct ConvertResult: Sendable {
    public var manifest: ImageManifest
    public var manifestDescriptor: Descriptor
    public var stats: ConvertStats
}

/// Converts an OCI image (gzip/zstd/plain tar layers) into a Kangaroo image
/// stored in an OCI layout.
public struct ImageConverter: Sendable {
    public var options: BuildOptions
    /// Images whose chunks are reused instead of stored again.
    public var dictionaries: [KangarooImage]
    /// Layouts holding the dictionary images' blobs (copied into the
    /// destination when referenced and missing there).
    public var dictionaryLayouts: [OCILayout]
    public var progress: ConvertProgress?

    public init(options: BuildOptions = BuildOptions(), dictionaries: [KangarooImage] = [], dictionaryLayouts: [OCILayout] = [],
                progress: ConvertProgress? = nil) {
        self.options = options
        self.dictionaries = dictionaries
        self.dictionaryLayouts = dictionaryLayouts
        self.progress = progress
    }

    /// Converts `manifest` (from `source`) and stores the Kangaroo image in
    /// `destination`, tagged `tag` when given.
    public func convert(source: OCILayout, manifest: ImageManifest, destination: OCILayout, tag: String?) throws(ImageError) -> ConvertResult {
        var dictionary = ChunkDictionary()
        for image in dictionaries { dictionary.add(image.bootstrap) }
        // The work directory lives in the destination (same filesystem, no
        // files outside it); one left by a crashed convert is removed here.
        let workRoot = destination.root.appending("tmp").string
        Self.removeStaleWorkDirectories(in: workRoot)
        let work = workRoot + "/convert-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        do { try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true) } catch {
            throw ImageError(.io, "cannot create work directory \(work): \(error)")
        }
        defer { try? FileManager.default.removeItem(atPath: work) }

        let builder = try ImageBuilder(options: options, dictionary: dictionary, workDirectory: work, progress: progress)
        for (i, layer) in manifest.layers.enumerated() {
            try Self.verifyBlob(source.blobPath(layer.digest).string, layer, what: "layer \(i)")
            let compression: LayerReader.Compression = MediaTypes.layerCompression(layer.mediaType) ?? .auto
            let reader: LayerReader
            do { reader = try LayerReader(path: source.blobPath(layer.digest), compression: compression) } catch {
                throw ImageError(.source, "cannot open layer \(i) (\(layer.digest))", underlying: error)
            }
            try builder.addLayer(LayerReaderSource(reader: reader, name: "\(i) \(layer.digest)"), name: "\(i) \(layer.digest)")
        }
        let blobPath = work + "/blob"
        let result = try builder.finish(blobPath: blobPath)

        progress?(.storing, 0, 1)
        do {
            var layers: [Descriptor] = []
            let bootstrapDigest = try destination.writeBlob(bytes: result.bootstrap)
            layers.append(Descriptor(mediaType: KangarooMediaTypes.bootstrap, digest: bootstrapDigest, size: Int64(result.bootstrap.count),
                                     annotations: [KangarooMediaTypes.chunkSizeAnnotation: String(options.chunkSize),
                                                   KangarooMediaTypes.snapshotLayerAnnotation: "bootstrap"]))
            for (i, blob) in result.blobs.enumerated() {
                let digest = try Digest(sha256Bytes: blob.digest)
                if i == result.newBlobIndex {
                    // hashed while the builder wrote it, in a work directory inside `destination`
                    try destination.adoptBlob(moving: FilePath(blobPath), digest: digest)
                } else if !destination.hasBlob(digest) {
                    guard let from = dictionaryLayouts.first(where: { $0.hasBlob(digest) }) else {
                        throw ImageError(.notFound, "dictionary blob \(digest) is in no given layout; pass the dictionary's layout")
                    }
                    _ = try destination.importBlob(from: from.blobPath(digest), expected: digest)
                }
                layers.append(Descriptor(mediaType: KangarooMediaTypes.blob, digest: digest, size: Int64(blob.compressedSize),
                                         annotations: [KangarooMediaTypes.snapshotLayerAnnotation: "blob"]))
            }
            let config = try Self.kangarooConfig(source: source, manifest.config, layers: layers, into: destination)
            var annotations = manifest.annotations ?? [:]
            annotations[KangarooMediaTypes.versionAnnotation] = "1"
            let out = ImageManifest(mediaType: MediaTypes.imageManifest, config: config, layers: layers, annotations: annotations)
            let descriptor = try destination.writeJSON(out, mediaType: MediaTypes.imageManifest)
            if let tag { try destination.setTag(tag, to: descriptor) }
            progress?(.storing, 1, 1)
            return ConvertResult(manifest: out, manifestDescriptor: descriptor, stats: result.stats)
        } catch let error as ImageError {
            throw error
        } catch {
            throw ImageError(.io, "cannot store the converted image in '\(destination.root)'", underlying: error as? OCIError)
        }
    }

    /// The source image's config with `rootfs.diff_ids` naming the Kangaroo
    /// layers (each layer's digest), every other field as it was: containerd
    /// builds snapshot chain ids from the diff_ids and refuses an image whose
    /// diff_ids and layers differ in number.
    static func kangarooConfig(source: OCILayout, _ descriptor: Descriptor, layers: [Descriptor],
                               into destination: OCILayout) throws -> Descriptor {
        let bytes = try source.readBlob(descriptor.digest, limit: 16 << 20)
        guard var json = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw ImageError(.source, "config \(descriptor.digest) is not a JSON object")
        }
        var rootfs = json["rootfs"] as? [String: Any] ?? ["type": "layers"]
        rootfs["diff_ids"] = layers.map { $0.digest.description }
        json["rootfs"] = rootfs
        let data = try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys, .withoutEscapingSlashes])
        return try destination.writeBlob(bytes: Array(data), mediaType: descriptor.mediaType)
    }

    /// Hashes a source blob and compares digest and size with its descriptor.
    static func verifyBlob(_ path: String, _ descriptor: Descriptor, what: String) throws(ImageError) {
        guard descriptor.digest.algorithm == "sha256" else { return }
        let fd = try POSIX.open(path, O_RDONLY)
        defer { POSIX.close(fd) }
        let size = try POSIX.fileSize(fd)
        guard descriptor.size >= 0, size == UInt64(descriptor.size) else {
            throw ImageError(.source, "\(what) \(descriptor.digest) is \(size) bytes, its descriptor says \(descriptor.size)")
        }
        var hasher = DigestHasher()
        var offset: UInt64 = 0
        while offset < size {
            let n = Int(min(UInt64(4 << 20), size - offset))
            hasher.update(try POSIX.preadExact(fd, count: n, at: offset))
            offset += UInt64(n)
        }
        let actual = hasher.finalize()
        guard actual == descriptor.digest else {
            throw ImageError(.digestMismatch, "\(what) '\(path)' hashes to \(actual), not \(descriptor.digest)")
        }
    }

    /// Removes `convert-PID-*` directories whose process is gone.
    static func removeStaleWorkDirectories(in root: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: root) else { return }
        for name in names where name.hasPrefix("convert-") {
            let parts = name.split(separator: "-")
            guard parts.count == 3, let pid = Int32(parts[1]) else { continue }
            if pid != getpid(), kill(pid, 0) != 0, errno == ESRCH {
                try? FileManager.default.removeItem(atPath: root + "/" + name)
            }
        }
    }
}
