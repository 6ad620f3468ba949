import KangarooOCI
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Media types and annotations of Kangaroo images (docs/FORMAT.md, "OCI manifest").
/// The layer media types start with `application/vnd.oci.image.layer.` so
/// that containerd hands them to its unpacker (and so to the snapshotter)
/// instead of fetching them with the config.
public enum KangarooMediaTypes {
    public static let bootstrap = "application/vnd.oci.image.layer.kangaroo.bootstrap.v1"
    public static let blob = "application/vnd.oci.image.layer.kangaroo.blob.v1"
    /// Written by format version 1 before containerd support; still read.
    public static let legacyBootstrap = "application/vnd.kangaroo.image.bootstrap.v1"
    public static let legacyBlob = "application/vnd.kangaroo.image.blob.v1"
    public static let versionAnnotation = "dev.kangaroo.image.version"
    public static let chunkSizeAnnotation = "dev.kangaroo.image.chunk-size"
    /// On every layer: `bootstrap` or `blob`. containerd passes annotations
    /// with the `containerd.io/snapshot/` prefix to the snapshotter's
    /// Prepare as labels, which is how Kangaroo's snapshotter knows a layer
    /// needs no download.
    public static let snapshotLayerAnnotation = "containerd.io/snapshot/kangaroo.layer"

    public static func isBootstrap(_ mediaType: String) -> Bool { mediaType == bootstrap || mediaType == legacyBootstrap }
    public static func isBlob(_ mediaType: String) -> Bool { mediaType == blob || mediaType == legacyBlob }
}

/// A Kangaroo image: its manifest, its parsed bootstrap and blob descriptors.
public struct KangarooImage: Sendable {
    public let manifest: ImageManifest
    /// The manifest's own descriptor, when loaded from a layout.
    public let manifestDescriptor: Descriptor?
    public let bootstrap: Bootstrap
    public var bootstrapDescriptor: Descriptor { manifest.layers[0] }
    /// One descriptor per blob, in blob table (= EROFS device) order.
    public var blobDescriptors: [Descriptor] { Array(manifest.layers.dropFirst()) }

    /// Validates that `bootstrapBytes` is the manifest's bootstrap and that
    /// the manifest's blob layers match the blob table.
    public init(manifest: ImageManifest, manifestDescriptor: Descriptor? = nil, bootstrapBytes: [UInt8]) throws(ImageError) {
        guard let first = manifest.layers.first, KangarooMediaTypes.isBootstrap(first.mediaType) else {
            throw ImageError(.invalidArgument, "manifest is not a Kangaroo image (first layer must have media type \(KangarooMediaTypes.bootstrap))")
        }
        let actual = Digest.sha256(of: bootstrapBytes)
        guard actual == first.digest, Int64(bootstrapBytes.count) == first.size else {
            throw ImageError(.digestMismatch, "bootstrap hashes to \(actual) (\(bootstrapBytes.count) bytes), manifest says \(first.digest) (\(first.size) bytes)")
        }
        let bootstrap = try Bootstrap(bytes: bootstrapBytes)
        let blobLayers = manifest.layers.dropFirst()
        guard blobLayers.count == bootstrap.blobs.count else {
            throw ImageError(.corruptBootstrap, "manifest lists \(blobLayers.count) blobs, the bootstrap \(bootstrap.blobs.count)")
        }
        for (layer, blob) in zip(blobLayers, bootstrap.blobs) {
            guard KangarooMediaTypes.isBlob(layer.mediaType), layer.digest.algorithm == "sha256", layer.digest.bytes == blob.digest,
                  layer.size >= 0, UInt64(layer.size) == blob.compressedSize else {
                throw ImageError(.corruptBootstrap, "manifest layer \(layer.digest) (\(layer.size) bytes) does not match blob table entry sha256:\(blob.digestHex) (\(blob.compressedSize) bytes)")
            }
        }
        self.manifest = manifest
        self.manifestDescriptor = manifestDescriptor
        self.bootstrap = bootstrap
    }

    /// Loads the image tagged `tag` from a layout.
    public static func load(from layout: OCILayout, tag: String) throws(ImageError) -> KangarooImage {
        let descriptor: Descriptor
        do { descriptor = try layout.resolve(tag: tag) } catch { throw ImageError(.notFound, "cannot resolve tag '\(tag)'", underlying: error) }
        return try load(from: layout, descriptor: descriptor)
    }

    /// Loads the image whose manifest `descriptor` names.
    public static func load(from layout: OCILayout, descriptor: Descriptor) throws(ImageError) -> KangarooImage {
        do {
            let manifest = try layout.readManifest(descriptor)
            guard let first = manifest.layers.first else { throw ImageError(.invalidArgument, "manifest \(descriptor.digest) has no layers") }
            let bytes = try readBootstrap(layout, first.digest, image: descriptor.digest)
            return try KangarooImage(manifest: manifest, manifestDescriptor: descriptor, bootstrapBytes: bytes)
        } catch let error as ImageError {
            throw error
        } catch {
            throw ImageError(.source, "cannot load Kangaroo image \(descriptor.digest)", underlying: error as? OCIError)
        }
    }

    /// Reads the bootstrap blob, naming it when its digest check fails.
    private static func readBootstrap(_ layout: OCILayout, _ digest: Digest, image: Digest) throws(ImageError) -> [UInt8] {
        do {
            return try layout.readBlob(digest, limit: 1 << 30)
        } catch {
            let code: ImageError.Code = error.code == .digestMismatch ? .digestMismatch : .source
            throw ImageError(code, "bootstrap \(digest) of image \(image)" + (code == .digestMismatch ? " fails its digest check" : " cannot be read"),
                             underlying: error)
        }
    }

    /// The digest of blob `index`.
    public func blobDigest(_ index: Int) -> Digest { manifest.layers[index + 1].digest }
}

/// Where compressed chunk bytes come from: a local layout, a registry and
/// its mirrors (KangarooChunks).
public protocol ChunkSource: Sendable {
    /// Compressed bytes `range` of blob `blob` (index in the blob table).
    func read(blob: Int, range: Range<UInt64>) throws -> [UInt8]
    /// The same, for a caller that checks the bytes (against the ToC): a
    /// source with several hosts hands bytes that `accept` rejects to no
    /// one, it takes that host out of use and asks the next. Bytes the last
    /// host gives are returned whether accepted or not (the caller reports).
    func read(blob: Int, range: Range<UInt64>, accept: ([UInt8]) -> Bool) throws -> [UInt8]
    /// Told once the chunks making up `range` of blob `blob` are in the cache.
    func stored(blob: Int, range: Range<UInt64>)
}

extension ChunkSource {
    /// Told once the chunks making up `range` of blob `blob` are in the
    /// cache (a P2P source announces them); nothing by default.
    public func stored(blob: Int, range: Range<UInt64>) {}

    /// One host: nothing to fall back on.
    public func read(blob: Int, range: Range<UInt64>, accept: ([UInt8]) -> Bool) throws -> [UInt8] {
        try read(blob: blob, range: range)
    }
}

/// Reads blobs from an OCI layout directory.
public final class LayoutChunkSource: ChunkSource {
    private let paths: [String]

    public init(layout: OCILayout, image: KangarooImage) {
        paths = image.blobDescriptors.map { layout.blobPath($0.digest).string }
    }

    public func read(blob: Int, range: Range<UInt64>) throws -> [UInt8] {
        guard paths.indices.contains(blob) else { throw ImageError(.invalidArgument, "blob index \(blob) out of range") }
        let fd = try POSIX.open(paths[blob], O_RDONLY)
        defer { POSIX.close(fd) }
        return try POSIX.preadExact(fd, count: Int(range.count), at: range.lowerBound)
    }
}
