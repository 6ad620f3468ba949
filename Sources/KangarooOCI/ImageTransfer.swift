import Logging
import Synchronization
import SystemPackage

/// Copies images between a registry and an OCI layout (the local store):
/// the manifest's exact bytes (so its digest is kept), the config and every
/// layer, each blob verified against its digest and written atomically.
public struct ImageTransfer: Sendable {
    /// Progress of the blob bytes of one transfer: done, total.
    public typealias Progress = @Sendable (_ done: Int64, _ total: Int64) -> Void

    public let client: RegistryClient
    public let concurrency: Int
    let logger: Logger

    public init(client: RegistryClient, concurrency: Int = 4, logger: Logger = Logger(label: "kangaroo.transfer")) {
        self.client = client
        self.concurrency = max(1, concurrency)
        self.logger = logger
    }

    /// Pulls the image `reference` names (an index resolved for `platform`)
    /// into `layout`, tagging it `tag` when given. Blobs already in the layout
    /// are not fetched again. With `onlyLayers`, only those layer digests are
    /// fetched (the manifest and config always are).
    @discardableResult
    public func pull(_ reference: Reference, into layout: OCILayout, tag: String?, platform: Platform? = nil,
                     onlyLayers: Set<Digest>? = nil, resolved: ResolvedManifest? = nil,
                     progress: Progress? = nil) async throws(OCIError) -> (ImageManifest, Descriptor) {
        let raw: ResolvedManifest
        if let resolved { raw = resolved } else { raw = try await client.resolveManifest(reference, platform: platform) }
        let (manifest, descriptor) = (raw.manifest, raw.descriptor)
        var wanted = [manifest.config]
        wanted += manifest.layers.filter { onlyLayers?.contains($0.digest) ?? true }
        let missing = wanted.filter { !layout.hasBlob($0.digest) }
        let total = missing.reduce(Int64(0)) { $0 + $1.size }
        let done = Mutex(Int64(0))
        progress?(0, total)
        try await forEachConcurrently(missing) { (blob) throws(OCIError) in
            let writer = try layout.makeBlobWriter()
            let counted = Mutex(Int64(0))
            try await client.fetchBlob(repository: reference.repository, digest: blob.digest, to: writer.temporaryPath) { n, _ in
                let delta = counted.withLock { c in defer { c = n }; return n - c }
                let now = done.withLock { d in d += delta; return d }
                progress?(now, total)
            }
            // fetchBlob verified the digest and fsynced the file.
            let target = layout.blobPath(blob.digest)
            try FileIO.mkdirs(target.removingLastComponent())
            try FileIO.rename(writer.temporaryPath, target)
            FileIO.syncDirectory(target.removingLastComponent())
            writer.abort()
        }
        let stored = try layout.writeBlob(bytes: raw.bytes, mediaType: descriptor.mediaType)
        guard stored.digest == descriptor.digest else {
            throw OCIError(.digestMismatch, "manifest of \(reference) hashes to \(stored.digest), expected \(descriptor.digest)")
        }
        if let tag {
            try layout.setTag(tag, to: Descriptor(mediaType: descriptor.mediaType, digest: descriptor.digest, size: descriptor.size))
        }
        return (manifest, descriptor)
    }

    /// Pushes the image tagged `tag` in `layout` to `reference` (its tag or,
    /// when it has none, `tag`). Blobs the repository has are skipped; blobs
    /// of `mountFrom` (another repository of the same registry) are mounted.
    @discardableResult
    public func push(from layout: OCILayout, tag: String, to reference: Reference, mountFrom: String? = nil,
                     progress: Progress? = nil) async throws(OCIError) -> Digest {
        let descriptor = try layout.resolve(tag: tag)
        let bytes = try layout.readBlob(descriptor.digest)
        let manifest = try layout.readManifest(descriptor)
        let blobs = [manifest.config] + manifest.layers
        for blob in blobs where !layout.hasBlob(blob.digest) {
            throw OCIError(.notFound, "image '\(tag)' in '\(layout.root)' lacks blob \(blob.digest); pull it again")
        }
        let total = blobs.reduce(Int64(0)) { $0 + $1.size }
        let done = Mutex(Int64(0))
        progress?(0, total)
        try await forEachConcurrently(blobs) { (blob) throws(OCIError) in
            try await client.pushBlob(repository: reference.repository, from: layout.blobPath(blob.digest),
                                      digest: blob.digest, size: blob.size, mountFrom: mountFrom)
            let now = done.withLock { d in d += blob.size; return d }
            progress?(now, total)
        }
        let mediaType = manifest.mediaType ?? descriptor.mediaType
        return try await client.pushManifest(repository: reference.repository, tag: reference.tag ?? tag,
                                             bytes: bytes, mediaType: mediaType)
    }

    /// Runs `body` for every element, at most `concurrency` at a time; the
    /// first error cancels the rest and is rethrown.
    private func forEachConcurrently<T: Sendable>(_ items: [T],
                                                  _ body: @escaping @Sendable (T) async throws(OCIError) -> Void) async throws(OCIError) {
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                var iterator = items.makeIterator()
                for _ in 0..<concurrency {
                    guard let item = iterator.next() else { break }
                    group.addTask { try await body(item) }
                }
                while try await group.next() != nil {
                    if let item = iterator.next() { group.addTask { try await body(item) } }
                }
            }
        } catch let error as OCIError {
            throw error
        } catch {
            throw OCIError(.io, "image transfer failed", underlying: SendableErrorBox(error))
        }
    }
}
