import Foundation
import KangarooImage
#if canImport(Glibc)
import Glibc
#endif

/// Kernel handoff: once every chunk is cached, the kernel's EROFS driver
/// mounts the bootstrap (a file-backed mount) with each cache `.data` file
/// as a `device=`; no daemon is needed.
public enum KernelMount {
    /// Mounts `image` read-only at `mountPoint` from the complete cache in
    /// `cacheDirectory`.
    public static func mount(image: KangarooImage, cacheDirectory: String, at mountPoint: String) throws(LazyFSError) {
        let cache = try ChunkCache(directory: cacheDirectory, bootstrap: image.bootstrap)
        guard cache.isComplete else {
            throw LazyFSError(.unsupported, "the cache in \(cacheDirectory) holds \(cache.cachedCount()) of \(image.bootstrap.chunks.count) chunks; the kernel mount needs all (use --mode fuse or --prefetch all first)")
        }
        let hex = image.bootstrapDescriptor.digest.description.split(separator: ":").last.map(String.init) ?? "bootstrap"
        let bootstrapPath = cacheDirectory + "/" + hex + ".bootstrap"
        if !Sys.exists(bootstrapPath) {
            do { try Data(image.bootstrap.bytes).write(to: URL(fileURLWithPath: bootstrapPath), options: .atomic) } catch {
                throw LazyFSError(.cache, "writing \(bootstrapPath) failed", underlying: LazyFSErrorBox(error))
            }
        }
        let devices = image.bootstrap.blobs.indices.map { "device=" + cache.dataPath(blob: $0) }.joined(separator: ",")
        guard !devices.contains(",,"), !cacheDirectory.contains(",") else {
            throw LazyFSError(.unsupported, "cache directory \(cacheDirectory) contains ',' which mount options cannot carry")
        }
        if Glibc.mount(bootstrapPath, mountPoint, "erofs", UInt(MS_RDONLY), devices) != 0 {
            throw Sys.errno("mount -t erofs \(bootstrapPath) \(mountPoint) (\(devices))", code: .mount)
        }
    }
}
