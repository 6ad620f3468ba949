import Foundation
import SystemPackage

/// Files for a kernel EROFS mount of an image.
public struct MaterializedImage: Sendable {
    public var bootstrapPath: String
    /// One uncompressed, sparse blob file per blob, in device order.
    public var blobPaths: [String]
    /// `device=<blob1>,device=<blob2>,…` for mount(2) (type "erofs", source = bootstrapPath, MS_RDONLY).
    public var mountOptions: String
}

extension Bootstrap {
    /// Writes `bootstrap` and per blob `<blobhex>.blob` (chunks decompressed
    /// and verified at their block addresses; holes stay sparse; size =
    /// blocks*4096) into `directory` (created if missing).
    public func materialize(to directory: String, source: any ChunkSource) throws -> MaterializedImage {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let dir = directory.hasPrefix("/") ? directory : FileManager.default.currentDirectoryPath + "/" + directory
        guard !dir.contains(",") else { throw ImageError(.invalidArgument, "directory '\(dir)' contains ',' which mount options cannot carry") }
        let bootstrapPath = dir + "/bootstrap"
        try POSIX.writeFile(bootstrapPath, bytes)
        var paths: [String] = []
        for (i, blob) in blobs.enumerated() {
            let path = dir + "/" + blob.digestHex + ".blob"
            let fd = try POSIX.open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            defer { POSIX.close(fd) }
            try POSIX.ftruncate(fd, blob.uncompressedSize)
            for (index, chunk) in chunks.enumerated() where chunk.blob == i {
                let data = try readChunk(index, source: source)
                try POSIX.pwriteAll(fd, data, at: UInt64(chunk.blockAddress) * UInt64(EROFS.blockSize))
            }
            try POSIX.fsync(fd)
            paths.append(path)
        }
        return MaterializedImage(bootstrapPath: bootstrapPath, blobPaths: paths,
                                 mountOptions: paths.map { "device=" + $0 }.joined(separator: ","))
    }
}

extension KangarooImage {
    /// `kangaroo image unpack`.
    public func unpack(to path: String, source: any ChunkSource) throws { try bootstrap.unpack(to: path, source: source) }
    /// `kangaroo image materialize`.
    public func materialize(to directory: String, source: any ChunkSource) throws -> MaterializedImage {
        try bootstrap.materialize(to: directory, source: source)
    }

    /// `unpack` with a `FilePath`.
    public func unpack(to path: FilePath, source: any ChunkSource) throws { try unpack(to: path.string, source: source) }
    /// `materialize` with a `FilePath`.
    public func materialize(to directory: FilePath, source: any ChunkSource) throws -> MaterializedImage {
        try materialize(to: directory.string, source: source)
    }
}
