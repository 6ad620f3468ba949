import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import SystemPackage

/// An image manifest as the registry sent it: decoded, its descriptor, and
/// the exact bytes its digest covers.
public struct ResolvedManifest: Sendable {
    public var manifest: ImageManifest
    public var descriptor: Descriptor
    public var bytes: [UInt8]
}

extension RegistryClient {
    static let manifestAccept = [MediaTypes.imageManifest, MediaTypes.imageIndex,
                                 MediaTypes.dockerManifest, MediaTypes.dockerManifestList].joined(separator: ", ")

    /// The image manifest `reference` names; an index is resolved to the
    /// manifest for `platform` (linux/amd64 when nil). Returns the manifest
    /// and its descriptor (media type, digest, size).
    public func manifest(_ reference: Reference, platform: Platform? = nil) async throws(OCIError) -> (ImageManifest, Descriptor) {
        let resolved = try await resolveManifest(reference, platform: platform)
        return (resolved.manifest, resolved.descriptor)
    }

    /// As `manifest`, keeping the manifest's raw bytes (to store it without
    /// fetching it again).
    public func resolveManifest(_ reference: Reference, platform: Platform? = nil) async throws(OCIError) -> ResolvedManifest {
        let wanted = platform ?? .linuxAMD64
        var ref = reference.manifestReference
        for _ in 0..<3 {
            let (bytes, mediaType, digest) = try await fetchManifestBytes(repository: reference.repository, reference: ref)
            if MediaTypes.indexes.contains(mediaType) || (!MediaTypes.manifests.contains(mediaType) && OCILayout.looksLikeIndex(bytes)) {
                let index = try CanonicalJSON.decode(ImageIndex.self, from: bytes, what: "image index \(reference)")
                guard let d = index.manifest(for: wanted) else {
                    let available = index.manifests.compactMap { $0.platform?.description }
                    throw OCIError(.notFound, "image \(reference) has no manifest for \(wanted) (it has: \(available.joined(separator: ", ")))")
                }
                ref = d.digest.description
                continue
            }
            let manifest = try CanonicalJSON.decode(ImageManifest.self, from: bytes, what: "image manifest \(reference)")
            return ResolvedManifest(manifest: manifest, descriptor: Descriptor(mediaType: mediaType, digest: digest, size: Int64(bytes.count)),
                                    bytes: bytes)
        }
        throw OCIError(.invalidManifest, "image \(reference): indexes nest too deeply")
    }

    /// GET /v2/<repository>/manifests/<reference>: raw bytes, media type and
    /// digest (verified when `reference` is a digest or the registry sends
    /// Docker-Content-Digest).
    public func fetchManifestBytes(repository: String, reference: String) async throws(OCIError) -> (bytes: [UInt8], mediaType: String, digest: Digest) {
        let request = Request(method: .GET, url: url(repository, "manifests/\(reference)"),
                              headers: ["Accept": Self.manifestAccept],
                              scope: Self.pullScope(repository), operation: "fetching manifest \(repository):\(reference)")
        let response = try await send(request, expect: [200])
        let bytes: [UInt8]
        do { bytes = Array(try await response.body.collect(upTo: 8 << 20).readableBytesView) } catch {
            throw OCIError(.network, "\(request.operation): reading the body of \(request.url) failed (manifests are limited to 8 MiB)",
                           underlying: SendableErrorBox(error))
        }
        let digest = Digest.sha256(of: bytes)
        if let expected = try? Digest(parsing: reference), expected.algorithm == "sha256", expected != digest {
            throw OCIError(.digestMismatch, "\(request.operation): content hashes to \(digest), not the requested \(expected)")
        }
        if let header = response.headers.first(name: "Docker-Content-Digest"),
           let announced = try? Digest(parsing: header), announced.algorithm == "sha256", announced != digest {
            throw OCIError(.digestMismatch, "\(request.operation): content hashes to \(digest) but the registry announced \(announced)")
        }
        var mediaType = response.headers.first(name: "Content-Type").map { String($0.split(separator: ";")[0]).trimmingCharacters(in: .whitespaces) } ?? ""
        if !(MediaTypes.manifests.contains(mediaType) || MediaTypes.indexes.contains(mediaType)) {
            struct Probe: Decodable { var mediaType: String? }
            if let probe = try? CanonicalJSON.decode(Probe.self, from: bytes, what: ""), let m = probe.mediaType {
                mediaType = m
            } else if OCILayout.looksLikeIndex(bytes) {
                mediaType = MediaTypes.imageIndex
            } else {
                mediaType = MediaTypes.imageManifest
            }
        }
        return (bytes, mediaType, digest)
    }

    /// HEAD /v2/<repository>/blobs/<digest>: the blob's descriptor if the
    /// registry has it, nil if not; errors other than 404 are thrown.
    public func blobDescriptor(repository: String, digest: Digest) async throws(OCIError) -> Descriptor? {
        let request = Request(method: .HEAD, url: url(repository, "blobs/\(digest)"),
                              scope: Self.pullScope(repository), operation: "checking blob \(digest) in \(repository)")
        let response: HTTPClientResponse
        do throws(OCIError) { response = try await send(request, expect: [200]) } catch where error.code == .notFound {
            return nil
        }
        await drain(response)
        let size = response.headers.first(name: "Content-Length").flatMap { Int64($0) } ?? -1
        let type = response.headers.first(name: "Content-Type") ?? "application/octet-stream"
        return Descriptor(mediaType: type, digest: digest, size: size)
    }

    /// Like `blobDescriptor`, but any failure reads as "absent".
    public func blobExists(repository: String, digest: Digest) async -> Descriptor? {
        do { return try await blobDescriptor(repository: repository, digest: digest) } catch {
            logger.debug("blob HEAD failed: \(error)")
            return nil
        }
    }

    /// Streams a blob into the file at `path` (created or truncated),
    /// verifying its digest; on mismatch the file is removed. Returns the size.
    @discardableResult
    public func fetchBlob(repository: String, digest: Digest, to path: FilePath,
                          progress: (@Sendable (Int64, Int64?) -> Void)? = nil) async throws(OCIError) -> Int64 {
        guard digest.algorithm == "sha256" else {
            throw OCIError(.unsupported, "fetching \(digest.algorithm) blobs is not supported")
        }
        var attempt = 0
        while true {
            do {
                return try await fetchBlobOnce(repository: repository, digest: digest, to: path, progress: progress)
            } catch where (error.code == .network || error.code == .timeout) && attempt < retries {
                attempt += 1
                logger.debug("fetching blob \(digest) failed (\(error)); retry \(attempt)/\(retries)")
                try await sleepBackoff(attempt)
            }
        }
    }

    private func fetchBlobOnce(repository: String, digest: Digest, to path: FilePath,
                               progress: (@Sendable (Int64, Int64?) -> Void)?) async throws(OCIError) -> Int64 {
        let request = Request(method: .GET, url: url(repository, "blobs/\(digest)"),
                              scope: Self.pullScope(repository), operation: "fetching blob \(digest) from \(repository)",
                              transfer: true)
        let response = try await send(request, expect: [200])
        let total = response.headers.first(name: "Content-Length").flatMap { Int64($0) }
        let fd = try FileIO.open(path, .writeOnly, options: [.create, .truncate],
                                 permissions: [.ownerReadWrite, .groupRead, .otherRead])
        var hasher = DigestHasher()
        var written: Int64 = 0
        do throws(OCIError) {
            do {
                for try await buffer in response.body {
                    try narrowingToOCIError {
                        try buffer.withUnsafeReadableBytes { b in
                            try FileIO.writeAll(fd, b, path: path)
                            hasher.update(b)
                        }
                    }
                    written += Int64(buffer.readableBytes)
                    progress?(written, total)
                }
            } catch let e as OCIError {
                throw e
            } catch {
                throw OCIError(.network, "\(request.operation): the download from \(request.url) broke off after \(written) bytes",
                               underlying: SendableErrorBox(error))
            }
            let actual = hasher.finalize()
            guard actual == digest else {
                throw OCIError(.digestMismatch, "\(request.operation): downloaded content hashes to \(actual), not \(digest)")
            }
            try FileIO.fsync(fd, path: path)
        } catch {
            try? fd.close()
            FileIO.unlink(path)
            throw error
        }
        try? fd.close()
        return written
    }

    /// GET of `range` of a blob with an HTTP Range header. Handles both 206
    /// (partial content) and 200 (a registry that ignores Range: the range
    /// is cut out of the full body). The result is shorter than the range
    /// only when the blob ends first.
    public func fetchBlobRange(repository: String, digest: Digest, range: Range<Int64>) async throws(OCIError) -> [UInt8] {
        guard range.lowerBound >= 0 else {
            throw OCIError(.invalidReference, "blob range \(range) starts before 0")
        }
        if range.isEmpty { return [] }
        let count = Int(range.upperBound - range.lowerBound)
        let request = Request(method: .GET, url: url(repository, "blobs/\(digest)"),
                              headers: ["Range": "bytes=\(range.lowerBound)-\(range.upperBound - 1)"],
                              scope: Self.pullScope(repository),
                              operation: "fetching bytes \(range.lowerBound)..<\(range.upperBound) of blob \(digest) from \(repository)",
                              transfer: true)
        let response = try await send(request, expect: [200, 206])
        var out: [UInt8] = []
        out.reserveCapacity(count)
        if response.status.code == 206 {
            if let contentRange = response.headers.first(name: "Content-Range") {
                // "bytes START-END/TOTAL"
                let spec = contentRange.split(separator: " ").last.map(String.init) ?? ""
                let start = spec.split(separator: "-").first.flatMap { Int64($0) }
                guard start == range.lowerBound else {
                    await drain(response)
                    throw OCIError(.registry, "\(request.operation): registry answered with range '\(contentRange)'")
                }
            }
            do {
                for try await buffer in response.body {
                    let take = min(buffer.readableBytes, count - out.count)
                    if take > 0 { out.append(contentsOf: buffer.readableBytesView.prefix(take)) }
                }
            } catch {
                throw OCIError(.network, "\(request.operation): reading \(request.url) failed", underlying: SendableErrorBox(error))
            }
            return out
        }
        // 200: the whole blob; keep only the requested window.
        var position: Int64 = 0
        do {
            for try await buffer in response.body {
                let bufferStart = position
                position += Int64(buffer.readableBytes)
                guard out.count < count, position > range.lowerBound else { continue }
                let from = Int(max(range.lowerBound - bufferStart, 0))
                let to = Int(min(range.upperBound - bufferStart, Int64(buffer.readableBytes)))
                if to > from {
                    out.append(contentsOf: buffer.readableBytesView.dropFirst(from).prefix(to - from))
                }
            }
        } catch {
            throw OCIError(.network, "\(request.operation): reading \(request.url) failed", underlying: SendableErrorBox(error))
        }
        return out
    }
}
