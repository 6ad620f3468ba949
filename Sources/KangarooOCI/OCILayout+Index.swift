import SystemPackage

extension OCILayout {
    /// Runs `body` holding an exclusive `flock` on `index.json.lock`.
    func withIndexLock<T>(_ body: () throws(OCIError) -> T) throws(OCIError) -> T {
        let fd = try FileIO.open(lockPath, .readWrite, options: [.create], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        defer { try? fd.close() }  // closing releases the lock
        try FileIO.flock(fd, path: lockPath)
        return try body()
    }

    /// The layout's `index.json`.
    public func readIndex() throws(OCIError) -> ImageIndex {
        let bytes: [UInt8]
        do throws(OCIError) { bytes = try FileIO.readAll(indexPath) } catch where error.code == .notFound {
            throw OCIError(.invalidLayout, "OCI layout '\(root)' has no index.json")
        }
        return try CanonicalJSON.decode(ImageIndex.self, from: bytes, what: "'\(indexPath)'")
    }

    func writeIndex(_ index: ImageIndex) throws(OCIError) {
        try atomicWrite(CanonicalJSON.encode(index), to: indexPath)
    }

    /// Tags (the `org.opencontainers.image.ref.name` annotations of index.json) and their descriptors.
    public func tags() -> [String: Descriptor] {
        guard let index = try? readIndex() else { return [:] }
        var out: [String: Descriptor] = [:]
        for d in index.manifests {
            if let name = d.annotations?[AnnotationKeys.refName] { out[name] = d }
        }
        return out
    }

    /// The manifest (or index) descriptor tagged `tag`.
    public func resolve(tag: String) throws(OCIError) -> Descriptor {
        let index = try readIndex()
        guard let d = index.manifests.last(where: { $0.annotations?[AnnotationKeys.refName] == tag }) else {
            let known = tags().keys.sorted()
            let hint = known.isEmpty ? "it has no tags" : "its tags are: \(known.joined(separator: ", "))"
            throw OCIError(.notFound, "tag '\(tag)' is not in OCI layout '\(root)' (\(hint))")
        }
        return d
    }

    /// Points `tag` at `descriptor` (replacing an earlier entry with that tag).
    public func setTag(_ tag: String, to descriptor: Descriptor) throws(OCIError) {
        guard !tag.isEmpty, !tag.contains(where: { $0 == "\n" || $0 == "\0" }) else {
            throw OCIError(.invalidReference, "tag '\(tag)' is empty or contains control characters")
        }
        guard hasBlob(descriptor.digest) else {
            throw OCIError(.notFound, "cannot tag '\(tag)': manifest \(descriptor.digest) is not in OCI layout '\(root)'")
        }
        try withIndexLock { () throws(OCIError) in
            var index = try readIndex()
            index.manifests.removeAll { $0.annotations?[AnnotationKeys.refName] == tag }
            var d = descriptor
            var annotations = d.annotations ?? [:]
            annotations[AnnotationKeys.refName] = tag
            d.annotations = annotations
            index.manifests.append(d)
            try writeIndex(index)
        }
    }

    /// Removes `tag`; returns whether it existed.
    @discardableResult
    public func removeTag(_ tag: String) throws(OCIError) -> Bool {
        try withIndexLock { () throws(OCIError) -> Bool in
            var index = try readIndex()
            let before = index.manifests.count
            index.manifests.removeAll { $0.annotations?[AnnotationKeys.refName] == tag }
            guard index.manifests.count != before else { return false }
            try writeIndex(index)
            return true
        }
    }

    /// Reads the image manifest `descriptor` names; an index (OCI or Docker
    /// list) is resolved to the manifest for `platform`.
    public func readManifest(_ descriptor: Descriptor, platform: Platform = .linuxAMD64) throws(OCIError) -> ImageManifest {
        var current = descriptor
        for _ in 0..<4 {
            let bytes = try readBlob(current.digest)
            if MediaTypes.indexes.contains(current.mediaType) || Self.looksLikeIndex(bytes) {
                let index = try CanonicalJSON.decode(ImageIndex.self, from: bytes, what: "image index \(current.digest)")
                guard let next = index.manifest(for: platform) else {
                    let available = index.manifests.compactMap { $0.platform?.description }
                    throw OCIError(.notFound, "image index \(current.digest) has no manifest for \(platform) (it has: \(available.joined(separator: ", ")))")
                }
                current = next
                continue
            }
            return try CanonicalJSON.decode(ImageManifest.self, from: bytes, what: "image manifest \(current.digest)")
        }
        throw OCIError(.invalidManifest, "image index \(descriptor.digest) nests indexes too deeply")
    }

    /// Reads and decodes the image configuration of `manifest`.
    public func readConfig(_ manifest: ImageManifest) throws(OCIError) -> ImageConfiguration {
        try CanonicalJSON.decode(ImageConfiguration.self, from: readBlob(manifest.config.digest),
                                 what: "image configuration \(manifest.config.digest)")
    }

    static func looksLikeIndex(_ bytes: [UInt8]) -> Bool {
        struct Probe: Decodable { var manifests: [Descriptor]?; var layers: [Descriptor]? }
        guard let probe = try? CanonicalJSON.decode(Probe.self, from: bytes, what: "") else { return false }
        return probe.manifests != nil && probe.layers == nil
    }

    /// Deletes blobs not reachable from index.json (manifests, indexes,
    /// configs, layers, subjects). Returns the removed digests.
    @discardableResult
    public func garbageCollect() throws(OCIError) -> [Digest] {
        try withIndexLock { () throws(OCIError) -> [Digest] in
            var reachable = Set<Digest>()
            var queue = try readIndex().manifests
            while let d = queue.popLast() {
                guard reachable.insert(d.digest).inserted, hasBlob(d.digest) else { continue }
                let isJSON = MediaTypes.indexes.contains(d.mediaType) || MediaTypes.manifests.contains(d.mediaType)
                guard isJSON, let bytes = try? readBlob(d.digest) else { continue }
                if let index = try? CanonicalJSON.decode(ImageIndex.self, from: bytes, what: ""), Self.looksLikeIndex(bytes) {
                    queue.append(contentsOf: index.manifests)
                    if let s = index.subject { queue.append(s) }
                } else if let m = try? CanonicalJSON.decode(ImageManifest.self, from: bytes, what: "") {
                    queue.append(m.config)
                    queue.append(contentsOf: m.layers)
                    if let s = m.subject { queue.append(s) }
                }
            }
            var removed: [Digest] = []
            for algorithm in ["sha256", "sha512"] {
                let dir = root.appending("blobs").appending(algorithm)
                for name in FileIO.list(dir) {
                    guard let d = try? Digest(algorithm: algorithm, encoded: name), !reachable.contains(d) else { continue }
                    FileIO.unlink(dir.appending(name))
                    removed.append(d)
                }
            }
            return removed.sorted()
        }
    }
}
