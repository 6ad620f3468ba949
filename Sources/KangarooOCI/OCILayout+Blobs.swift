import Crypto
import SystemPackage

extension OCILayout {
    /// Reads a blob and verifies its digest.
    public func readBlob(_ digest: Digest, limit: Int = 256 << 20) throws(OCIError) -> [UInt8] {
        let path = blobPath(digest)
        let bytes: [UInt8]
        do throws(OCIError) { bytes = try FileIO.readAll(path, limit: limit) } catch where error.code == .notFound {
            throw OCIError(.notFound, "blob \(digest) is not in OCI layout '\(root)'")
        }
        let actual = try Self.digest(of: bytes, algorithm: digest.algorithm)
        guard actual == digest else {
            throw OCIError(.digestMismatch, "blob '\(path)' is corrupt: its content hashes to \(actual), not \(digest)")
        }
        return bytes
    }

    static func digest(of bytes: [UInt8], algorithm: String) throws(OCIError) -> Digest {
        switch algorithm {
        case "sha256": return Digest.sha256(of: bytes)
        case "sha512": return try Digest(algorithm: "sha512", encoded: SHA512.hash(data: bytes).hexString)
        default: throw OCIError(.unsupported, "digest algorithm '\(algorithm)' is not supported")
        }
    }

    /// Stores `bytes` as a blob (atomically) and returns its sha256 digest.
    @discardableResult
    public func writeBlob(bytes: [UInt8]) throws(OCIError) -> Digest {
        let digest = Digest.sha256(of: bytes)
        if hasBlob(digest) { return digest }
        let writer = try BlobWriter(layout: self)
        try narrowingToOCIError { try bytes.withUnsafeBytes { try writer.write($0) } }
        return try writer.commit(expected: digest).digest
    }

    /// Stores `bytes` as a blob and returns its descriptor.
    public func writeBlob(bytes: [UInt8], mediaType: String) throws(OCIError) -> Descriptor {
        Descriptor(mediaType: mediaType, digest: try writeBlob(bytes: bytes), size: Int64(bytes.count))
    }

    /// Encodes `value` canonically and stores it as a blob.
    public func writeJSON<T: Encodable>(_ value: T, mediaType: String) throws(OCIError) -> Descriptor {
        try writeBlob(bytes: CanonicalJSON.encode(value), mediaType: mediaType)
    }

    /// Copies a file into the layout as a blob, hashing it on the way;
    /// fails with `.digestMismatch` (and stores nothing) when `expected` is given and differs.
    public func importBlob(from file: FilePath, expected: Digest?) throws(OCIError) -> (Digest, Int64) {
        if let expected, expected.algorithm != "sha256" {
            throw OCIError(.unsupported, "importing \(expected.algorithm) blobs is not supported")
        }
        let source = try FileIO.open(file, .readOnly)
        defer { try? source.close() }
        let writer = try BlobWriter(layout: self)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n: Int
            do { n = try buffer.withUnsafeMutableBytes { try source.read(into: $0, retryOnInterrupt: true) } } catch {
                writer.abort()
                throw FileIO.ioError("read", file, error as? Errno ?? .ioError)
            }
            if n == 0 { break }
            try narrowingToOCIError { try buffer.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0[..<n])) } }
        }
        let result = try writer.commit(expected: expected)
        return (result.digest, result.size)
    }

    /// Moves a file whose digest the caller computed while writing it (a
    /// blob built in a work directory inside this layout) into place
    /// without copying or hashing it again: fsync, rename, directory sync.
    /// Falls back to `importBlob` (copy + verify) across filesystems.
    public func adoptBlob(moving file: FilePath, digest: Digest) throws(OCIError) {
        if hasBlob(digest) {
            FileIO.unlink(file)
            return
        }
        let fd = try FileIO.open(file, .readOnly)
        defer { try? fd.close() }
        try FileIO.fsync(fd, path: file)
        let target = blobPath(digest)
        try FileIO.mkdirs(target.removingLastComponent())
        do throws(OCIError) {
            try FileIO.rename(file, target)
        } catch {
            guard (error.underlying as? Errno) == .improperLink else { throw error }
            _ = try importBlob(from: file, expected: digest)
            FileIO.unlink(file)
            return
        }
        FileIO.syncDirectory(target.removingLastComponent())
    }

    /// Starts a streamed blob write (e.g. a download or a built blob).
    public func makeBlobWriter() throws(OCIError) -> BlobWriter {
        try BlobWriter(layout: self)
    }
}

/// Writes one blob into an `OCILayout`: bytes go to a locked temporary file
/// under `blobs/tmp/` while being hashed; `commit` fsyncs, checks the digest
/// and renames the file to its content address. Not thread-safe.
public final class BlobWriter {
    private let layout: OCILayout
    public let temporaryPath: FilePath
    private var fd: FileDescriptor?
    private var hasher = DigestHasher()
    public private(set) var size: Int64 = 0

    init(layout: OCILayout) throws(OCIError) {
        self.layout = layout
        try FileIO.mkdirs(layout.tmpDirectory)
        var attempt = 0
        while true {
            attempt += 1
            let path = layout.tmpDirectory.appending("blob-\(UInt64.random(in: 0...UInt64.max))")
            let fd = try FileIO.open(path, .readWrite, options: [.create, .exclusiveCreate],
                                     permissions: [.ownerReadWrite, .groupRead, .otherRead])
            // The lock tells `removeLeftoverTemporaries` that a writer is alive.
            do { try FileIO.flock(fd, path: path) } catch {
                try? fd.close()
                FileIO.unlink(path)
                throw error
            }
            // A concurrent open may have removed the file before the lock was taken.
            if FileIO.isRegularFile(path) {
                self.temporaryPath = path
                self.fd = fd
                return
            }
            try? fd.close()
            if attempt > 8 {
                throw OCIError(.io, "temporary blob files in '\(layout.tmpDirectory)' keep disappearing")
            }
        }
    }

    deinit { abort() }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(OCIError) {
        guard let fd else { throw OCIError(.io, "blob writer for '\(temporaryPath)' is already finished") }
        do { try FileIO.writeAll(fd, bytes, path: temporaryPath) } catch {
            abort()
            throw error
        }
        hasher.update(bytes)
        size += Int64(bytes.count)
    }

    public func write(_ bytes: [UInt8]) throws(OCIError) {
        try narrowingToOCIError { try bytes.withUnsafeBytes { try write($0) } }
    }

    /// Makes the blob durable under its digest; with `expected`, refuses a mismatch.
    @discardableResult
    public func commit(expected: Digest? = nil) throws(OCIError) -> Descriptor {
        guard let fd else { throw OCIError(.io, "blob writer for '\(temporaryPath)' is already finished") }
        let digest = hasher.finalize()
        if let expected, expected != digest {
            abort()
            throw OCIError(.digestMismatch, "blob content hashes to \(digest), expected \(expected)")
        }
        do { try FileIO.fsync(fd, path: temporaryPath) } catch {
            abort()
            throw error
        }
        let target = layout.blobPath(digest)
        if layout.hasBlob(digest) {
            abort()
        } else {
            do {
                try FileIO.mkdirs(target.removingLastComponent())
                try FileIO.rename(temporaryPath, target)
            } catch {
                abort()
                throw error
            }
            try? fd.close()
            self.fd = nil
            FileIO.syncDirectory(target.removingLastComponent())
        }
        return Descriptor(mediaType: "application/octet-stream", digest: digest, size: size)
    }

    /// Drops the temporary file.
    public func abort() {
        guard let fd else { return }
        FileIO.unlink(temporaryPath)
        try? fd.close()
        self.fd = nil
    }
}
