import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import SystemPackage

extension RegistryClient {
    /// Blobs larger than this are uploaded in chunks even without `chunkSize`.
    public static let defaultChunkThreshold: Int64 = 256 << 20
    public static let defaultChunkSize = 32 << 20

    /// Uploads the blob in `file` unless the registry already has it: HEAD,
    /// then a cross-repository mount from `mountFrom` if given (falling back
    /// to an upload when the registry answers 202), then a monolithic
    /// POST+PUT, or a chunked POST+PATCH…+PUT when `chunkSize` is set or the
    /// blob is large. A failed upload is restarted (bounded by `retries`).
    public func pushBlob(repository: String, from file: FilePath, digest: Digest, size: Int64,
                         mountFrom: String? = nil, chunkSize: Int? = nil) async throws(OCIError) {
        if try await blobDescriptor(repository: repository, digest: digest) != nil {
            logger.debug("blob \(digest) already in \(repository)")
            return
        }
        var attempt = 0
        while true {
            do {
                try await uploadBlob(repository: repository, file: file, digest: digest, size: size,
                                     mountFrom: mountFrom, chunkSize: chunkSize)
                return
            } catch where (error.code == .network || error.code == .timeout || error.code == .unavailable) && attempt < retries {
                attempt += 1
                logger.debug("uploading blob \(digest) failed (\(error)); restarting, attempt \(attempt)/\(retries)")
                try await sleepBackoff(attempt)
            }
        }
    }

    private func uploadBlob(repository: String, file: FilePath, digest: Digest, size: Int64,
                            mountFrom: String?, chunkSize: Int?) async throws(OCIError) {
        let scope = mountFrom.map { "\(Self.pullScope($0)) \(Self.pushScope(repository))" } ?? Self.pushScope(repository)
        var startURL = url(repository, "blobs/uploads/")
        if let mountFrom {
            startURL += "?mount=\(digest)&from=\(mountFrom)"
        }
        let start = Request(method: .POST, url: startURL, headers: ["Content-Length": "0"], scope: scope,
                            operation: mountFrom == nil ? "starting upload of blob \(digest) to \(repository)"
                                                        : "mounting blob \(digest) from \(mountFrom ?? "") into \(repository)")
        let started = try await send(start, expect: [201, 202])
        await drain(started)
        if started.status.code == 201 {
            logger.debug("blob \(digest) mounted from \(mountFrom ?? "?") into \(repository)")
            return
        }
        guard let firstLocation = started.headers.first(name: "Location") else {
            throw OCIError(.registry, "\(start.operation): POST \(startURL) returned no Location header")
        }
        var location = resolveLocation(firstLocation)

        let chunked = chunkSize != nil || size > Self.defaultChunkThreshold
        if chunked {
            let chunk = Int64(max(chunkSize ?? Self.defaultChunkSize, 1))
            var offset: Int64 = 0
            while offset < size {
                let length = min(chunk, size - offset)
                let sequence = FileByteSequence(path: file, offset: offset, length: length)
                let patch = Request(method: .PATCH, url: location,
                                    headers: ["Content-Type": "application/octet-stream",
                                              "Content-Range": "\(offset)-\(offset + length - 1)",
                                              "Content-Length": "\(length)"],
                                    body: { .stream(sequence, length: .known(length)) },
                                    scope: scope,
                                    operation: "uploading bytes \(offset)..<\(offset + length) of blob \(digest) to \(repository)",
                                    idempotent: false, transfer: true)
                let response = try await send(patch, expect: [202, 204])
                await drain(response)
                if let next = response.headers.first(name: "Location") { location = resolveLocation(next) }
                offset += length
            }
            let put = Request(method: .PUT, url: Self.appendingQuery(location, "digest=\(digest)"),
                              headers: ["Content-Length": "0"], scope: scope,
                              operation: "finishing upload of blob \(digest) to \(repository)", idempotent: false)
            let response = try await send(put, expect: [201])
            await drain(response)
        } else {
            let sequence = FileByteSequence(path: file, offset: 0, length: size)
            let put = Request(method: .PUT, url: Self.appendingQuery(location, "digest=\(digest)"),
                              headers: ["Content-Type": "application/octet-stream", "Content-Length": "\(size)"],
                              body: { .stream(sequence, length: .known(size)) },
                              scope: scope, operation: "uploading blob \(digest) to \(repository)",
                              idempotent: false, transfer: true)
            let response = try await send(put, expect: [201])
            await drain(response)
        }
    }

    /// Uploads in-memory bytes as a blob (configs, small metadata).
    public func pushBlob(repository: String, bytes: [UInt8]) async throws(OCIError) -> Digest {
        let digest = Digest.sha256(of: bytes)
        if try await blobDescriptor(repository: repository, digest: digest) != nil { return digest }
        let scope = Self.pushScope(repository)
        let start = Request(method: .POST, url: url(repository, "blobs/uploads/"), headers: ["Content-Length": "0"],
                            scope: scope, operation: "starting upload of blob \(digest) to \(repository)")
        let started = try await send(start, expect: [202])
        await drain(started)
        guard let location = started.headers.first(name: "Location") else {
            throw OCIError(.registry, "\(start.operation): no Location header")
        }
        let put = Request(method: .PUT, url: Self.appendingQuery(resolveLocation(location), "digest=\(digest)"),
                          headers: ["Content-Type": "application/octet-stream", "Content-Length": "\(bytes.count)"],
                          body: { .bytes(bytes) }, scope: scope,
                          operation: "uploading blob \(digest) to \(repository)", idempotent: false)
        let response = try await send(put, expect: [201])
        await drain(response)
        return digest
    }

    /// PUT /v2/<repository>/manifests/<tag> (or by digest when `tag` is nil).
    /// Returns the manifest's digest.
    @discardableResult
    public func pushManifest(repository: String, tag: String?, bytes: [UInt8], mediaType: String) async throws(OCIError) -> Digest {
        let digest = Digest.sha256(of: bytes)
        let reference = tag ?? digest.description
        let request = Request(method: .PUT, url: url(repository, "manifests/\(reference)"),
                              headers: ["Content-Type": mediaType, "Content-Length": "\(bytes.count)"],
                              body: { .bytes(bytes) }, scope: Self.pushScope(repository),
                              operation: "pushing manifest \(repository):\(reference)")
        let response = try await send(request, expect: [201, 200])
        await drain(response)
        if let header = response.headers.first(name: "Docker-Content-Digest"),
           let announced = try? Digest(parsing: header), announced.algorithm == "sha256", announced != digest {
            throw OCIError(.digestMismatch, "pushing manifest \(repository):\(reference): registry stored \(announced), expected \(digest)")
        }
        return digest
    }
}
