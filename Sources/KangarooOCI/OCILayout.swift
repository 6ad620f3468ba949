import SystemPackage

/// An OCI image layout directory (OCI image-spec, "Image Layout"): the
/// `oci-layout` file, `index.json` and content-addressed `blobs/<alg>/<hex>`.
///
/// Blob writes are atomic (a unique temporary file under `blobs/tmp/`,
/// fsync, digest check, rename); `index.json` rewrites are atomic and
/// serialised across processes by `flock` on `index.json.lock`, so concurrent
/// writers do not lose tags. Temporary files left by a crashed writer are
/// removed when a layout is opened (files still locked by a live writer are
/// left alone).
public struct OCILayout: Sendable {
    public let root: FilePath

    public var indexPath: FilePath { root.appending("index.json") }
    var lockPath: FilePath { root.appending("index.json.lock") }
    var tmpDirectory: FilePath { root.appending("blobs").appending("tmp") }

    /// Opens the layout at `root`; with `create`, makes the directory and its
    /// `oci-layout` and `index.json` when missing.
    public init(at root: FilePath, create: Bool) throws(OCIError) {
        self.root = root
        let layoutFile = root.appending("oci-layout")
        if create {
            try FileIO.mkdirs(root.appending("blobs").appending("sha256"))
            try FileIO.mkdirs(tmpDirectory)
            if !FileIO.exists(layoutFile) {
                try atomicWrite(CanonicalJSON.encode(ImageLayoutHeader()), to: layoutFile)
            }
            if !FileIO.exists(indexPath) {
                try withIndexLock { () throws(OCIError) in
                    if !FileIO.exists(indexPath) {
                        try writeIndex(ImageIndex(manifests: []))
                    }
                }
            }
        } else {
            guard FileIO.exists(root) else {
                throw OCIError(.notFound, "OCI layout '\(root)' does not exist")
            }
            guard FileIO.exists(layoutFile) else {
                throw OCIError(.invalidLayout, "'\(root)' is not an OCI image layout: it has no oci-layout file")
            }
        }
        let header = try CanonicalJSON.decode(ImageLayoutHeader.self, from: FileIO.readAll(layoutFile),
                                              what: "'\(layoutFile)'")
        guard header.imageLayoutVersion.hasPrefix("1.") else {
            throw OCIError(.invalidLayout, "OCI layout '\(root)' has unsupported version \(header.imageLayoutVersion)")
        }
        removeLeftoverTemporaries()
    }

    /// Path of a blob: `blobs/<algorithm>/<encoded>`.
    public func blobPath(_ digest: Digest) -> FilePath {
        root.appending("blobs").appending(digest.algorithm).appending(digest.encoded)
    }

    public func hasBlob(_ digest: Digest) -> Bool {
        FileIO.isRegularFile(blobPath(digest))
    }

    /// Removes temporary blob files whose writer is gone (not flock-ed).
    func removeLeftoverTemporaries() {
        for name in FileIO.list(tmpDirectory) {
            let path = tmpDirectory.appending(name)
            guard let fd = try? FileIO.open(path, .readOnly) else { continue }
            if (try? FileIO.flock(fd, nonBlocking: true, path: path)) == true {
                FileIO.unlink(path)
            }
            try? fd.close()
        }
    }

    /// Writes `bytes` to `path` through a temporary file and a rename.
    func atomicWrite(_ bytes: [UInt8], to path: FilePath) throws(OCIError) {
        let tmp = FilePath(path.string + ".tmp-\(UInt64.random(in: 0...UInt64.max))")
        let fd = try FileIO.open(tmp, .writeOnly, options: [.create, .exclusiveCreate], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        do {
            try narrowingToOCIError { try bytes.withUnsafeBytes { try FileIO.writeAll(fd, $0, path: tmp) } }
            try FileIO.fsync(fd, path: tmp)
        } catch {
            try? fd.close()
            FileIO.unlink(tmp)
            throw error
        }
        try? fd.close()
        do { try FileIO.rename(tmp, path) } catch {
            FileIO.unlink(tmp)
            throw error
        }
        FileIO.syncDirectory(path.removingLastComponent())
    }
}
